//! The replicated member table: who the members are and how to reach them.
//!
//! The Raft core knows members only by id (`ConfChange` carries a `NodeId`). Names,
//! peer URLs and client URLs travel through the log as [`MemberCommand`]s (ordinary
//! `Normal` entries, told apart from key-value commands by their first byte,
//! [`MEMBER_COMMAND_TAG`]), and the apply task keeps them in a [`MemberTable`] next to
//! the key-value store. The table also follows the membership changes it applies, so
//! it knows which members are learners and which ids were removed. It is part of the
//! state-machine snapshot, as its own section after the key-value store's.
//!
//! How a member gets into the table:
//! - initial members (bootstrap `AddVoter` entries) start with no attributes; each one
//!   [`MemberCommand::Publish`]es its name, client URLs and peer URLs once it runs;
//! - `MemberAdd` proposes [`MemberCommand::Add`] (the new id and peer URLs) and then
//!   the `ConfChange`; the change picks the pending attributes up;
//! - `MemberUpdate` proposes [`MemberCommand::UpdatePeerUrls`].
//!
//! A `Remove` change drops the member and records its id in `removed`, so peers can
//! refuse a removed member that comes back, and it can learn that it was removed.
//!
//! Watching membership: `NodeHandle::members()` publishes the table after every
//! applied batch that changed it; [`MemberTable::changes_since`] turns two
//! observations into joins, promotions, updates and leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::kv::CodecError;
use crate::raft::{ConfChange, NodeId, Status as RaftStatus};

/// First byte of an encoded [`MemberCommand`]; key-value commands use small tags.
pub const MEMBER_COMMAND_TAG: u8 = 0xF0;
/// URLs per member and bytes per URL or name (bad input is refused before it is
/// proposed; the decoder enforces the same bounds).
pub const URLS_MAX: usize = 16;
pub const TEXT_BYTES_MAX: usize = 1024;

/// One member as `MemberList` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Empty until the member has started and published it (as in etcd).
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// Changes to member attributes, replicated through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberCommand {
    /// Attributes of a member about to be added by the next `ConfChange` for `id`.
    Add {
        id: NodeId,
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    /// A running member announces itself. `peer_urls` are taken only when the table
    /// has none for it (an initial member); afterwards only `MemberUpdate` changes them.
    Publish {
        id: NodeId,
        name: String,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
    },
    UpdatePeerUrls {
        id: NodeId,
        peer_urls: Vec<String>,
    },
}

const KIND_ADD: u8 = 1;
const KIND_PUBLISH: u8 = 2;
const KIND_UPDATE: u8 = 3;

fn put_text(out: &mut BytesMut, text: &str) {
    out.put_u32_le(text.len() as u32);
    out.put_slice(text.as_bytes());
}

fn put_urls(out: &mut BytesMut, urls: &[String]) {
    out.put_u32_le(urls.len() as u32);
    for url in urls {
        put_text(out, url);
    }
}

fn get_u64(buf: &mut Bytes) -> Result<u64, CodecError> {
    if buf.remaining() < 8 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u64_le())
}

fn get_u32(buf: &mut Bytes) -> Result<u32, CodecError> {
    if buf.remaining() < 4 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u32_le())
}

fn get_text(buf: &mut Bytes) -> Result<String, CodecError> {
    let len = get_u32(buf)? as usize;
    if len > TEXT_BYTES_MAX {
        return Err(CodecError::TooLarge(len as u64));
    }
    if buf.remaining() < len {
        return Err(CodecError::Truncated);
    }
    String::from_utf8(buf.split_to(len).to_vec())
        .map_err(|_| CodecError::Snapshot("text is not UTF-8".into()))
}

fn get_urls(buf: &mut Bytes) -> Result<Vec<String>, CodecError> {
    let count = get_u32(buf)? as usize;
    if count > URLS_MAX {
        return Err(CodecError::TooMany("URLs per member"));
    }
    (0..count).map(|_| get_text(buf)).collect()
}

fn get_flag(buf: &mut Bytes) -> Result<bool, CodecError> {
    if buf.remaining() < 1 {
        return Err(CodecError::Truncated);
    }
    match buf.get_u8() {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CodecError::UnknownType(other)),
    }
}

impl MemberCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(MEMBER_COMMAND_TAG);
        match self {
            MemberCommand::Add {
                id,
                peer_urls,
                is_learner,
            } => {
                out.put_u8(KIND_ADD);
                out.put_u64_le(*id);
                put_urls(&mut out, peer_urls);
                out.put_u8(u8::from(*is_learner));
            }
            MemberCommand::Publish {
                id,
                name,
                peer_urls,
                client_urls,
            } => {
                out.put_u8(KIND_PUBLISH);
                out.put_u64_le(*id);
                put_text(&mut out, name);
                put_urls(&mut out, peer_urls);
                put_urls(&mut out, client_urls);
            }
            MemberCommand::UpdatePeerUrls { id, peer_urls } => {
                out.put_u8(KIND_UPDATE);
                out.put_u64_le(*id);
                put_urls(&mut out, peer_urls);
            }
        }
        out.freeze()
    }

    /// Is this entry payload a member command (rather than a key-value command)?
    pub fn is_member_command(data: &[u8]) -> bool {
        data.first() == Some(&MEMBER_COMMAND_TAG)
    }

    pub fn decode(mut buf: Bytes) -> Result<MemberCommand, CodecError> {
        if buf.remaining() < 2 {
            return Err(CodecError::Truncated);
        }
        let tag = buf.get_u8();
        if tag != MEMBER_COMMAND_TAG {
            return Err(CodecError::UnknownType(tag));
        }
        let command = match buf.get_u8() {
            KIND_ADD => MemberCommand::Add {
                id: get_u64(&mut buf)?,
                peer_urls: get_urls(&mut buf)?,
                is_learner: get_flag(&mut buf)?,
            },
            KIND_PUBLISH => MemberCommand::Publish {
                id: get_u64(&mut buf)?,
                name: get_text(&mut buf)?,
                peer_urls: get_urls(&mut buf)?,
                client_urls: get_urls(&mut buf)?,
            },
            KIND_UPDATE => MemberCommand::UpdatePeerUrls {
                id: get_u64(&mut buf)?,
                peer_urls: get_urls(&mut buf)?,
            },
            other => return Err(CodecError::UnknownType(other)),
        };
        if buf.has_remaining() {
            return Err(CodecError::Trailing);
        }
        Ok(command)
    }
}

/// The members in the applied configuration, with their attributes. Cheap enough to
/// clone: a cluster has a handful of members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberTable {
    members: BTreeMap<NodeId, Member>,
    /// Attributes proposed by `MemberAdd`, waiting for their `ConfChange` (at most
    /// one: membership changes go one at a time).
    pending: Option<Member>,
    /// Every id ever removed. Ids are never reused, so a removed member that comes
    /// back is recognised. Grows by 8 bytes per removal.
    removed: BTreeSet<NodeId>,
}

impl MemberTable {
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains(&id)
    }

    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// The member (or member being added) that advertises `url`.
    pub fn find_by_peer_url(&self, url: &str) -> Option<&Member> {
        let same = |m: &&Member| m.peer_urls.iter().any(|u| same_url(u, url));
        self.members
            .values()
            .find(same)
            .or(self.pending.as_ref().filter(same))
    }

    /// Applies a member command (deterministic: every member ends up with the same
    /// table from the same log).
    pub fn apply_command(&mut self, command: &MemberCommand) {
        match command {
            MemberCommand::Add {
                id,
                peer_urls,
                is_learner,
            } => {
                if self.members.contains_key(id) || self.removed.contains(id) {
                    return;
                }
                self.pending = Some(Member {
                    id: *id,
                    name: String::new(),
                    peer_urls: peer_urls.clone(),
                    client_urls: Vec::new(),
                    is_learner: *is_learner,
                });
            }
            MemberCommand::Publish {
                id,
                name,
                peer_urls,
                client_urls,
            } => {
                if self.removed.contains(id) {
                    return;
                }
                // The leader checked that it is a member; a table restored from a
                // snapshot written before the table existed may not know it yet.
                let member = self.members.entry(*id).or_insert_with(|| Member {
                    id: *id,
                    ..Member::default()
                });
                member.name = name.clone();
                member.client_urls = client_urls.clone();
                if member.peer_urls.is_empty() {
                    member.peer_urls = peer_urls.clone();
                }
            }
            MemberCommand::UpdatePeerUrls { id, peer_urls } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.peer_urls = peer_urls.clone();
                }
            }
        }
    }

    /// Follows a membership change the log applied.
    pub fn apply_conf_change(&mut self, change: &ConfChange) {
        match *change {
            ConfChange::AddLearner(id) | ConfChange::AddVoter(id) => {
                let is_learner = matches!(change, ConfChange::AddLearner(_));
                let pending = self.pending.take_if(|p| p.id == id);
                let member = self.members.entry(id).or_insert_with(|| {
                    pending.unwrap_or(Member {
                        id,
                        ..Member::default()
                    })
                });
                member.is_learner = is_learner;
            }
            ConfChange::Promote(id) => {
                if let Some(member) = self.members.get_mut(&id) {
                    member.is_learner = false;
                }
            }
            ConfChange::Remove(id) => {
                self.members.remove(&id);
                self.removed.insert(id);
            }
        }
    }

    /// Writes the table as the snapshot's member section.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        buf.put_slice(SECTION_MAGIC);
        let all: Vec<&Member> = self.members.values().chain(self.pending.iter()).collect();
        buf.put_u32_le(self.members.len() as u32);
        buf.put_u8(u8::from(self.pending.is_some()));
        for member in all {
            buf.put_u64_le(member.id);
            put_text(&mut buf, &member.name);
            put_urls(&mut buf, &member.peer_urls);
            put_urls(&mut buf, &member.client_urls);
            buf.put_u8(u8::from(member.is_learner));
        }
        buf.put_u32_le(self.removed.len() as u32);
        for id in &self.removed {
            buf.put_u64_le(*id);
        }
        buf.put_u32_le(crc32c::crc32c(&buf));
        out.write_all(&buf)
    }

    /// Reads the member section; a snapshot that ends before it (written before
    /// the table existed) gives an empty table.
    pub fn read_snapshot(input: &mut dyn Read) -> Result<MemberTable, CodecError> {
        let bad = |what: &str| CodecError::Snapshot(format!("member section: {what}"));
        let mut data = Vec::new();
        input
            .take(SECTION_BYTES_MAX + 1)
            .read_to_end(&mut data)
            .map_err(|e| bad(&e.to_string()))?;
        if data.is_empty() {
            return Ok(MemberTable::default());
        }
        if data.len() as u64 > SECTION_BYTES_MAX {
            return Err(bad("too large"));
        }
        if data.len() < SECTION_MAGIC.len() + 4 || &data[..SECTION_MAGIC.len()] != SECTION_MAGIC {
            return Err(bad("missing or unknown format"));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("checksum mismatch"));
        }
        let mut buf = Bytes::copy_from_slice(&body[SECTION_MAGIC.len()..]);
        let count = get_u32(&mut buf)? as usize;
        let has_pending = get_flag(&mut buf)?;
        if count > MEMBERS_MAX {
            return Err(bad("too many members"));
        }
        let mut table = MemberTable::default();
        for i in 0..count + usize::from(has_pending) {
            let member = Member {
                id: get_u64(&mut buf)?,
                name: get_text(&mut buf)?,
                peer_urls: get_urls(&mut buf)?,
                client_urls: get_urls(&mut buf)?,
                is_learner: get_flag(&mut buf)?,
            };
            if i < count {
                table.members.insert(member.id, member);
            } else {
                table.pending = Some(member);
            }
        }
        let removed = get_u32(&mut buf)? as usize;
        if removed * 8 > buf.remaining() {
            return Err(CodecError::Truncated);
        }
        for _ in 0..removed {
            table.removed.insert(get_u64(&mut buf)?);
        }
        if buf.has_remaining() {
            return Err(CodecError::Trailing);
        }
        Ok(table)
    }
}

/// A difference between two observations of the member table (for events such as
/// the admin API's JOIN, LEAVE and PROMOTED).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// In the configuration now, not before (as a learner or a voter).
    Joined(Member),
    /// A learner before, a voter now.
    Promoted(Member),
    /// Removed from the configuration.
    Left(NodeId),
    /// Name, peer URLs or client URLs changed (a member published itself, or
    /// `MemberUpdate`).
    Updated(Member),
}

impl MemberTable {
    /// What changed since `before`, ordered by member id. A `watch` keeps only the
    /// latest table, so changes between two observations are folded together (a
    /// member added and promoted in between shows as `Joined` with
    /// `is_learner == false`).
    pub fn changes_since(&self, before: &MemberTable) -> Vec<MemberChange> {
        let mut changes = Vec::new();
        for (id, now) in &self.members {
            match before.members.get(id) {
                None => changes.push(MemberChange::Joined(now.clone())),
                Some(was) if was.is_learner && !now.is_learner => {
                    changes.push(MemberChange::Promoted(now.clone()))
                }
                Some(was) if was != now => changes.push(MemberChange::Updated(now.clone())),
                Some(_) => {}
            }
        }
        for id in before.members.keys() {
            if !self.members.contains_key(id) {
                changes.push(MemberChange::Left(*id));
            }
        }
        changes
    }
}

/// Members a snapshot's table may hold (a guard against a corrupt count).
const MEMBERS_MAX: usize = 1024;
const SECTION_MAGIC: &[u8] = b"KRMEMBERS1";
const SECTION_BYTES_MAX: u64 = 16 << 20;

/// Names and peer URLs from `--initial-cluster`, by id: what this process knows of
/// the initial members before they published themselves.
pub type InitialMembers = BTreeMap<NodeId, (String, String)>;

/// Every member of the configuration in force, sorted by id, with the attributes the
/// table holds (falling back on `--initial-cluster` for the peer URLs of initial
/// members that have not published yet).
pub fn member_list(status: &RaftStatus, table: &MemberTable, initial: &InitialMembers) -> Vec<Member> {
    let mut ids: Vec<NodeId> = status.membership.members().collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            let mut member = table.get(id).cloned().unwrap_or(Member {
                id,
                ..Member::default()
            });
            // The name stays empty until the member published it (etcdctl then
            // shows it "unstarted", as etcd does).
            if let Some((_, url)) = initial.get(&id) {
                if member.peer_urls.is_empty() {
                    member.peer_urls = vec![url.clone()];
                }
            }
            member.is_learner = status.membership.is_learner(id);
            member
        })
        .collect()
}

/// URLs compare without a trailing slash.
pub fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Checks URLs given by a client or a flag: `http://host:port`, at most [`URLS_MAX`].
pub fn check_urls(urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("no URL given".into());
    }
    if urls.len() > URLS_MAX {
        return Err(format!("{} URLs given; at most {URLS_MAX}", urls.len()));
    }
    for url in urls {
        if url.len() > TEXT_BYTES_MAX {
            return Err("URL too long".into());
        }
        let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
        else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let host_port = rest.trim_end_matches('/');
        let Some((host, port)) = host_port.rsplit_once(':') else {
            return Err(format!("{url:?} has no port"));
        };
        if host.is_empty() || port.parse::<u16>().is_err() || host_port.contains('/') {
            return Err(format!("{url:?} is not http://host:port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_round_trip_and_bad_input_is_refused() {
        let commands = [
            MemberCommand::Add {
                id: 7,
                peer_urls: urls(&["http://127.0.0.1:1"]),
                is_learner: true,
            },
            MemberCommand::Publish {
                id: 7,
                name: "n7".into(),
                peer_urls: urls(&["http://127.0.0.1:1"]),
                client_urls: urls(&["http://127.0.0.1:2", "http://127.0.0.1:3"]),
            },
            MemberCommand::UpdatePeerUrls {
                id: 7,
                peer_urls: urls(&["http://127.0.0.1:4"]),
            },
        ];
        for command in commands {
            let encoded = command.encode();
            assert!(MemberCommand::is_member_command(&encoded));
            assert_eq!(MemberCommand::decode(encoded.clone()).unwrap(), command);
            let cut = encoded.slice(..encoded.len() - 1);
            assert!(MemberCommand::decode(cut).is_err());
        }
        assert!(!MemberCommand::is_member_command(&[1, 2, 3]));
    }

    #[test]
    fn an_added_member_takes_its_pending_attributes_and_a_removed_id_is_remembered() {
        let mut table = MemberTable::default();
        table.apply_conf_change(&ConfChange::AddVoter(1));
        table.apply_command(&MemberCommand::Publish {
            id: 1,
            name: "a".into(),
            peer_urls: urls(&["http://127.0.0.1:10"]),
            client_urls: urls(&["http://127.0.0.1:11"]),
        });
        table.apply_command(&MemberCommand::Add {
            id: 9,
            peer_urls: urls(&["http://127.0.0.1:90"]),
            is_learner: true,
        });
        assert_eq!(table.len(), 1, "pending attributes are not a member yet");
        assert_eq!(
            table.find_by_peer_url("http://127.0.0.1:90/").map(|m| m.id),
            Some(9)
        );
        table.apply_conf_change(&ConfChange::AddLearner(9));
        let added = table.get(9).unwrap();
        assert!(added.is_learner);
        assert_eq!(added.peer_urls, urls(&["http://127.0.0.1:90"]));
        table.apply_conf_change(&ConfChange::Promote(9));
        assert!(!table.get(9).unwrap().is_learner);

        let mut data = Vec::new();
        table.write_snapshot(&mut data).unwrap();
        assert_eq!(MemberTable::read_snapshot(&mut data.as_slice()).unwrap(), table);

        table.apply_conf_change(&ConfChange::Remove(9));
        assert!(table.get(9).is_none());
        assert!(table.is_removed(9));
        // An Add for a removed id changes nothing.
        table.apply_command(&MemberCommand::Add {
            id: 9,
            peer_urls: urls(&["http://127.0.0.1:91"]),
            is_learner: false,
        });
        assert!(table.find_by_peer_url("http://127.0.0.1:91").is_none());
        // Nor does a late Publish bring it back.
        table.apply_command(&MemberCommand::Publish {
            id: 9,
            name: "late".into(),
            peer_urls: urls(&["http://127.0.0.1:90"]),
            client_urls: urls(&["http://127.0.0.1:92"]),
        });
        assert!(table.get(9).is_none());

        let mut data = Vec::new();
        table.write_snapshot(&mut data).unwrap();
        assert_eq!(MemberTable::read_snapshot(&mut data.as_slice()).unwrap(), table);
        let last = data.len() - 5;
        data[last] ^= 1;
        assert!(MemberTable::read_snapshot(&mut data.as_slice()).is_err());
        assert_eq!(
            MemberTable::read_snapshot(&mut [].as_slice()).unwrap(),
            MemberTable::default(),
            "a snapshot written before the table existed"
        );
    }

    #[test]
    fn changes_between_two_tables_name_joins_promotions_updates_and_leaves() {
        let mut before = MemberTable::default();
        before.apply_conf_change(&ConfChange::AddVoter(1));
        before.apply_conf_change(&ConfChange::AddVoter(2));
        before.apply_conf_change(&ConfChange::AddLearner(3));
        let mut after = before.clone();
        after.apply_conf_change(&ConfChange::Promote(3));
        after.apply_conf_change(&ConfChange::Remove(2));
        after.apply_conf_change(&ConfChange::AddLearner(4));
        after.apply_command(&MemberCommand::Publish {
            id: 1,
            name: "a".into(),
            peer_urls: urls(&["http://127.0.0.1:1"]),
            client_urls: urls(&["http://127.0.0.1:2"]),
        });
        let changes = after.changes_since(&before);
        assert!(matches!(&changes[0], MemberChange::Updated(m) if m.id == 1 && m.name == "a"));
        assert!(matches!(&changes[1], MemberChange::Promoted(m) if m.id == 3));
        assert!(matches!(&changes[2], MemberChange::Joined(m) if m.id == 4 && m.is_learner));
        assert_eq!(changes[3], MemberChange::Left(2));
        assert_eq!(changes.len(), 4);
        assert!(after.changes_since(&after).is_empty());
    }

    #[test]
    fn urls_must_be_http_host_port() {
        assert!(check_urls(&urls(&["http://10.0.0.1:2380"])).is_ok());
        assert!(check_urls(&urls(&["http://node-1.peers:2380/"])).is_ok());
        assert!(check_urls(&urls(&["https://node-1.peers:2380"])).is_ok());
        for bad in [
            "10.0.0.1:2380",
            "ftp://a:1",
            "http://a",
            "http://:1",
            "http://a:x",
            "http://a:1/p",
        ] {
            assert!(check_urls(&urls(&[bad])).is_err(), "{bad}");
        }
        assert!(check_urls(&[]).is_err());
    }
}
