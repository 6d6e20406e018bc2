//! Quorum-loss recovery (issue 18, item 4): the pure decision, not wired into the
//! reconcile yet (no spec field, annotation or step uses it so far).
//!
//! When no quorum of the voters is reachable and recovery was asked for (an
//! annotation value not handled before, or `automatic` and the quorum has been lost
//! for `after_seconds`), the reachable voter with the most up-to-date log (highest
//! last term, then last index) is chosen to be restarted alone with
//! `raft-node --force-new-cluster`; entries only the other voters held beyond its
//! last index are discarded. Never while a quorum is reachable.

/// The opt-in settings (off unless `automatic` or the annotation says otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub automatic: bool,
    /// How long the quorum must have been lost before an automatic recovery.
    pub after_seconds: u32,
}

/// The shortest delay allowed for an automatic recovery.
pub const AFTER_SECONDS_MIN: u32 = 60;
/// The default delay.
pub const AFTER_SECONDS_DEFAULT: u32 = 300;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            automatic: false,
            after_seconds: AFTER_SECONDS_DEFAULT,
        }
    }
}

impl Settings {
    /// Refuses settings a user must fix (and that change nothing meanwhile).
    pub fn check(&self) -> Result<(), String> {
        if self.after_seconds < AFTER_SECONDS_MIN {
            return Err(format!(
                "quorumLossRecovery.afterSeconds: {} is below the minimum of {AFTER_SECONDS_MIN}",
                self.after_seconds
            ));
        }
        Ok(())
    }
}

/// A voter of the last known configuration, as observed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub name: String,
    /// It answered its admin `Status` this round.
    pub reachable: bool,
    pub last_log_index: u64,
    pub last_log_term: u64,
}

/// What the status remembers between rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// The annotation value already handled (never acted on twice).
    pub handled_annotation: Option<String>,
    /// Since when (ms) no quorum was reachable; `None` while one is.
    pub no_quorum_since_ms: Option<u64>,
}

/// The decision of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A quorum is reachable and nothing was asked.
    Healthy,
    /// Asked for (the annotation), but a quorum is reachable: refused, and why.
    Refused { reason: String },
    /// No quorum, and recovery was not asked for (opt-in).
    NotAsked { reason: String },
    /// Automatic: waiting until `due_ms`.
    Waiting { due_ms: u64 },
    /// No quorum and no reachable voter to recover from.
    NoSurvivor,
    /// Restart `member` alone with `--force-new-cluster`; it recovers to `index` at
    /// `term`; `discarded` are the voters whose possibly newer entries are dropped.
    Recover {
        member: String,
        index: u64,
        term: u64,
        discarded: Vec<String>,
    },
}

/// True when a majority of `voters` is reachable.
pub fn quorum_reachable(voters: &[Voter]) -> bool {
    let reachable = voters.iter().filter(|v| v.reachable).count();
    !voters.is_empty() && reachable > voters.len() / 2
}

/// The reachable voter with the highest last term, then last index (then the
/// smallest name, so the choice is stable).
pub fn most_up_to_date(voters: &[Voter]) -> Option<&Voter> {
    voters.iter().filter(|v| v.reachable).max_by(|a, b| {
        (a.last_log_term, a.last_log_index)
            .cmp(&(b.last_log_term, b.last_log_index))
            .then_with(|| b.name.cmp(&a.name))
    })
}

/// The next `no_quorum_since_ms` to remember.
pub fn remember_since(voters: &[Voter], memory: &Memory, now_ms: u64) -> Option<u64> {
    if quorum_reachable(voters) {
        None
    } else {
        Some(memory.no_quorum_since_ms.unwrap_or(now_ms))
    }
}

/// One round's decision; see the module documentation.
pub fn decide(
    settings: Settings,
    annotation: Option<&str>,
    memory: &Memory,
    voters: &[Voter],
    now_ms: u64,
) -> Decision {
    let asked = annotation.is_some_and(|a| memory.handled_annotation.as_deref() != Some(a));
    if quorum_reachable(voters) {
        if asked {
            let reachable = voters.iter().filter(|v| v.reachable).count();
            return Decision::Refused {
                reason: format!(
                    "{reachable} of {} voters are reachable, a quorum: quorum-loss recovery \
                     would discard the data of a working cluster",
                    voters.len()
                ),
            };
        }
        return Decision::Healthy;
    }
    let since = memory.no_quorum_since_ms.unwrap_or(now_ms);
    if !asked {
        if !settings.automatic {
            return Decision::NotAsked {
                reason: "no quorum of voters is reachable; quorum-loss recovery is opt-in: set the \
                         annotation kuberaft.io/recover-quorum or spec.quorumLossRecovery.automatic"
                    .into(),
            };
        }
        let due_ms = since + u64::from(settings.after_seconds) * 1000;
        if now_ms < due_ms {
            return Decision::Waiting { due_ms };
        }
    }
    let Some(chosen) = most_up_to_date(voters) else {
        return Decision::NoSurvivor;
    };
    Decision::Recover {
        member: chosen.name.clone(),
        index: chosen.last_log_index,
        term: chosen.last_log_term,
        discarded: voters
            .iter()
            .filter(|v| v.name != chosen.name)
            .map(|v| v.name.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(name: &str, reachable: bool, term: u64, index: u64) -> Voter {
        Voter {
            name: name.into(),
            reachable,
            last_log_index: index,
            last_log_term: term,
        }
    }

    fn annotated(settings: Settings, voters: &[Voter]) -> Decision {
        decide(
            settings,
            Some("2026-12-08T01:00:00Z"),
            &Memory::default(),
            voters,
            1_000,
        )
    }

    #[test]
    fn refused_while_a_quorum_is_reachable_even_when_asked() {
        let voters = [
            voter("demo-0", true, 3, 10),
            voter("demo-1", true, 3, 10),
            voter("demo-2", false, 3, 10),
        ];
        match annotated(Settings::default(), &voters) {
            Decision::Refused { reason } => assert!(reason.contains("2 of 3"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let automatic = Settings {
            automatic: true,
            after_seconds: 60,
        };
        let memory = Memory {
            handled_annotation: None,
            no_quorum_since_ms: Some(0),
        };
        assert_eq!(
            decide(automatic, None, &memory, &voters, 10_000_000),
            Decision::Healthy
        );
    }

    #[test]
    fn picks_the_highest_last_term_then_the_highest_last_index() {
        let voters = [
            voter("demo-0", true, 4, 90),
            voter("demo-1", true, 5, 20),
            voter("demo-2", false, 9, 500),
            voter("demo-3", false, 5, 30),
            voter("demo-4", false, 5, 30),
        ];
        assert_eq!(
            annotated(Settings::default(), &voters),
            Decision::Recover {
                member: "demo-1".into(),
                index: 20,
                term: 5,
                discarded: vec!["demo-0".into(), "demo-2".into(), "demo-3".into(), "demo-4".into()],
            }
        );
        let same_term = [
            voter("demo-0", true, 5, 90),
            voter("demo-1", true, 5, 20),
            voter("demo-2", false, 5, 10),
            voter("demo-3", false, 5, 10),
            voter("demo-4", false, 5, 10),
        ];
        match annotated(Settings::default(), &same_term) {
            Decision::Recover { member, index, .. } => assert_eq!((member.as_str(), index), ("demo-0", 90)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_annotation_triggers_once() {
        let voters = [
            voter("demo-0", true, 3, 10),
            voter("demo-1", false, 3, 10),
            voter("demo-2", false, 3, 10),
        ];
        let value = "2026-12-08T01:00:00Z";
        assert!(matches!(
            decide(Settings::default(), Some(value), &Memory::default(), &voters, 0),
            Decision::Recover { .. }
        ));
        let handled = Memory {
            handled_annotation: Some(value.into()),
            no_quorum_since_ms: Some(0),
        };
        assert!(matches!(
            decide(Settings::default(), Some(value), &handled, &voters, 0),
            Decision::NotAsked { .. }
        ));
        // A new value asks again.
        assert!(matches!(
            decide(Settings::default(), Some("again"), &handled, &voters, 0),
            Decision::Recover { .. }
        ));
        // Without the annotation and not automatic: opt-in, nothing happens.
        assert!(matches!(
            decide(
                Settings::default(),
                None,
                &Memory::default(),
                &voters,
                u64::MAX / 2
            ),
            Decision::NotAsked { .. }
        ));
    }

    #[test]
    fn automatic_waits_after_seconds_from_the_loss_of_quorum() {
        let voters = [
            voter("demo-0", false, 3, 10),
            voter("demo-1", true, 3, 12),
            voter("demo-2", false, 3, 10),
        ];
        let settings = Settings {
            automatic: true,
            after_seconds: 60,
        };
        let since = remember_since(&voters, &Memory::default(), 5_000);
        assert_eq!(since, Some(5_000));
        let memory = Memory {
            handled_annotation: None,
            no_quorum_since_ms: since,
        };
        // Remembered, not restarted, across rounds.
        assert_eq!(remember_since(&voters, &memory, 9_000), Some(5_000));
        assert_eq!(
            decide(settings, None, &memory, &voters, 64_999),
            Decision::Waiting { due_ms: 65_000 }
        );
        assert!(matches!(
            decide(settings, None, &memory, &voters, 65_000),
            Decision::Recover { ref member, index: 12, .. } if member == "demo-1"
        ));
        // The quorum came back: forgotten.
        let healthy = [
            voter("demo-0", true, 3, 10),
            voter("demo-1", true, 3, 12),
            voters[2].clone(),
        ];
        assert_eq!(remember_since(&healthy, &memory, 70_000), None);
    }

    #[test]
    fn no_reachable_voter_is_no_survivor_and_bad_settings_are_refused() {
        let voters = [voter("demo-0", false, 3, 10), voter("demo-1", false, 3, 10)];
        assert_eq!(annotated(Settings::default(), &voters), Decision::NoSurvivor);
        let bad = Settings {
            automatic: true,
            after_seconds: 59,
        };
        assert!(bad.check().unwrap_err().contains("minimum of 60"));
        assert!(Settings::default().check().is_ok());
    }
}
