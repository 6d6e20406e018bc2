//! Accepting the `:authority` forms etcd's own clients send.
//!
//! Some etcd clients send an HTTP/2 `:authority` that is not an authority at all:
//! etcdctl 3.4's `endpoint status` and `endpoint status --cluster` send the endpoint URL
//! (`http://127.0.0.1:2379`), etcd 3.5.0's client sent `#initially=[https://host:2379]`.
//! Go's gRPC server treats `:authority` as opaque metadata and answers; the HTTP/2
//! server under tonic (h2) checks it is a valid authority and resets the stream with
//! PROTOCOL_ERROR, so those commands fail against a server that is otherwise etcd's
//! equal. h2 keeps that check on purpose (hyperium/h2#525), and it is right for a web
//! server; for an etcd endpoint compatibility with etcd's clients comes first.
//!
//! [`AuthorityFilter`] sits between the socket (after TLS) and h2, on the bytes the
//! client sends, and touches nothing else:
//! - It checks the connection preface, passes frames through unchanged, and decodes the
//!   first header block (HPACK) of the connection.
//! - If that block's `:authority` is valid, absent, or the bytes are not HTTP/2 at all,
//!   everything from then on goes straight through: no copy, no parsing (the case of
//!   every well-behaved client, and of every peer).
//! - If it is one of the malformed forms, the connection is rewritten, because a
//!   client sends the same authority on every request of a connection: each header
//!   block is decoded with a decoder that follows the client's dynamic table, the
//!   `:authority` is replaced by the authority inside the URL (`http://h:p` → `h:p`;
//!   `#initially=[https://h:p;...]` → `h:p`) or dropped when none can be found, and
//!   the block is encoded again without the dynamic table (literals only), so h2's
//!   decoder state never depends on what the client indexed. Padding is dropped;
//!   priority, END_STREAM and the stream id are kept; a block longer than one frame is
//!   split into HEADERS and CONTINUATION frames of at most 16 KiB (the size every
//!   HTTP/2 peer must accept). Every other frame passes through byte for byte.
//!
//! HPACK decoding is loona-hpack's (a maintained fork of hpack-rs, whose decoder returns
//! errors on malformed input: the first crate tried here, httlib-hpack, panicked on
//! truncated blocks within seconds of fuzzing, node/tests/fuzz.rs `http2-authority`);
//! the re-encoding is ours and trivial (literals without indexing, no Huffman).
//!
//! Bounded: a header block over [`BLOCK_MAX`] closes a rewritten connection with an
//! error (before rewriting, such a connection is just passed to h2, which applies its
//! own limits). Nothing is ever added to the request but the fixed authority.

use std::io;

use loona_hpack::Decoder;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 endpoint accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value): rewritten header blocks are split at it.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// The largest header block (all its frames) a rewritten connection may send.
pub const BLOCK_MAX: usize = 256 * 1024;
/// HPACK's dynamic table size until the server's SETTINGS say otherwise (h2 keeps it).
const HEADER_TABLE_SIZE: u32 = 4096;

enum State {
    /// Waiting for the 24-byte connection preface.
    Preface,
    /// Frames pass through until the first header block is complete and checked.
    FirstBlock,
    /// Nothing to fix: bytes go straight from the socket to h2.
    PassThrough,
    /// The client sends a malformed authority: every header block is re-encoded.
    Rewrite,
}

/// The client-to-server half of a connection, checked and fixed as described in the
/// module documentation.
pub struct AuthorityFilter {
    state: State,
    /// Bytes from the socket not examined yet.
    input: Vec<u8>,
    /// Examined bytes not yet handed to h2, from `output_at` on.
    output: Vec<u8>,
    output_at: usize,
    /// Payload bytes of the current non-header frame still to pass through unchanged.
    skip: usize,
    decoder: Option<Decoder<'static>>,
    /// How many header blocks were rewritten (for the log).
    rewritten: u64,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityFilter {
    pub fn new() -> Self {
        AuthorityFilter {
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
            skip: 0,
            decoder: None,
            rewritten: 0,
        }
    }

    /// Bytes from the socket may go straight to h2: nothing is buffered and nothing
    /// needs fixing on this connection.
    pub fn passes_through(&self) -> bool {
        matches!(self.state, State::PassThrough) && self.input.is_empty() && !self.has_output()
    }

    /// The connection is being rewritten (its client sends a malformed authority).
    pub fn rewriting(&self) -> bool {
        matches!(self.state, State::Rewrite)
    }

    pub fn has_output(&self) -> bool {
        self.output_at < self.output.len()
    }

    /// Copies examined bytes into `dst`; returns how many.
    pub fn read_output(&mut self, dst: &mut [u8]) -> usize {
        let ready = &self.output[self.output_at..];
        let n = ready.len().min(dst.len());
        dst[..n].copy_from_slice(&ready[..n]);
        self.output_at += n;
        if self.output_at == self.output.len() {
            self.output.clear();
            self.output_at = 0;
        }
        n
    }

    /// The client closed its side: whatever is left goes to h2 as it came.
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.input);
        self.output.extend_from_slice(&rest);
    }

    /// Takes bytes read from the socket. An error closes the connection: a rewritten
    /// connection whose header block cannot be decoded or is over [`BLOCK_MAX`].
    pub fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        loop {
            match self.state {
                State::PassThrough => {
                    let rest = std::mem::take(&mut self.input);
                    self.output.extend_from_slice(&rest);
                    return Ok(());
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::PassThrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.state = State::FirstBlock;
                }
                State::FirstBlock | State::Rewrite => {
                    // A step that gives up on the connection (PassThrough) flushes
                    // what is buffered on the next turn, even without new input.
                    if !self.step()? && !matches!(self.state, State::PassThrough) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Moves one frame (or the rest of one), or one whole header block, from input to
    /// output. Returns false when more input is needed.
    fn step(&mut self) -> io::Result<bool> {
        if self.skip > 0 {
            let n = self.skip.min(self.input.len());
            if n == 0 {
                return Ok(false);
            }
            self.output.extend(self.input.drain(..n));
            self.skip -= n;
            return Ok(true);
        }
        if self.input.len() < FRAME_HEADER {
            return Ok(false);
        }
        let kind = self.input[3];
        if kind != TYPE_HEADERS {
            // Any other frame passes unchanged, streamed rather than buffered.
            self.skip = frame_length(&self.input);
            self.output.extend(self.input.drain(..FRAME_HEADER));
            return Ok(true);
        }
        let Some(mut block) = self.header_block()? else {
            return Ok(false);
        };
        let fragment = std::mem::take(&mut block.fragment);
        let decoder = self.decoder.get_or_insert_with(|| {
            let mut decoder = Decoder::new();
            decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE as usize);
            decoder
        });
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded = decoder.decode_with_cb(&fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()))
        });
        let first = matches!(self.state, State::FirstBlock);
        match decoded {
            Err(e) if first => {
                // Not ours to judge: h2 answers a bad block itself.
                tracing::debug!(error = ?e, "first header block not decodable; passed to h2 as is");
                self.state = State::PassThrough;
                return Ok(true);
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("HTTP/2 header block not decodable (HPACK: {e:?})"),
                ));
            }
            Ok(_) => {}
        }
        let authority = fields.iter().position(|(name, _)| name == b":authority");
        let fix = authority.and_then(|i| fixed_authority(&fields[i].1));
        if first && fix.is_none() {
            // A valid authority (or none): this connection needs nothing from us.
            self.state = State::PassThrough;
            self.decoder = None;
            return Ok(true);
        }
        if first {
            tracing::info!(
                authority = %String::from_utf8_lossy(&fields[authority.expect("fix implies one")].1),
                "client sends a malformed HTTP/2 :authority (an etcd client's URL form): \
                 its header blocks are rewritten for this connection"
            );
            self.state = State::Rewrite;
        }
        if let (Some(i), Some(fix)) = (authority, fix) {
            match fix {
                Some(value) => fields[i].1 = value,
                None => {
                    fields.remove(i);
                }
            }
        }
        self.input.drain(..block.consumed);
        self.emit(&block, &fields)?;
        self.rewritten += 1;
        Ok(true)
    }

    /// The header block at the start of the input (a HEADERS frame and its
    /// CONTINUATION frames), once complete; None while more input is needed.
    fn header_block(&mut self) -> io::Result<Option<Block>> {
        let mut at = 0;
        let mut fragment = Vec::new();
        let mut header: Option<(u8, u32, Option<[u8; 5]>)> = None;
        loop {
            if self.input.len() < at + FRAME_HEADER {
                return Ok(None);
            }
            let length = frame_length(&self.input[at..]);
            let (kind, flags) = (self.input[at + 3], self.input[at + 4]);
            let stream =
                u32::from_be_bytes(self.input[at + 5..at + 9].try_into().expect("4 bytes")) & 0x7fff_ffff;
            if at + FRAME_HEADER + length > self.input.len() {
                if at + FRAME_HEADER + length > BLOCK_MAX {
                    return self.too_large();
                }
                return Ok(None);
            }
            let payload = &self.input[at + FRAME_HEADER..at + FRAME_HEADER + length];
            match header {
                None => {
                    let mut body = payload;
                    let mut pad = 0;
                    if flags & FLAG_PADDED != 0 {
                        let Some((&p, rest)) = body.split_first() else {
                            return self.malformed("HEADERS frame with PADDED but no pad length");
                        };
                        pad = p as usize;
                        body = rest;
                    }
                    let mut priority = None;
                    if flags & FLAG_PRIORITY != 0 {
                        if body.len() < 5 {
                            return self.malformed("HEADERS frame with PRIORITY too short");
                        }
                        priority = Some(body[..5].try_into().expect("5 bytes"));
                        body = &body[5..];
                    }
                    if pad > body.len() {
                        return self.malformed("HEADERS frame padding longer than its payload");
                    }
                    fragment.extend_from_slice(&body[..body.len() - pad]);
                    header = Some((flags, stream, priority));
                }
                Some((_, first_stream, _)) => {
                    if kind != TYPE_CONTINUATION || stream != first_stream {
                        return self.malformed("header block interrupted by another frame");
                    }
                    fragment.extend_from_slice(payload);
                }
            }
            at += FRAME_HEADER + length;
            if at > BLOCK_MAX {
                return self.too_large();
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (flags, stream, priority) = header.expect("set by the first frame");
                return Ok(Some(Block {
                    consumed: at,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    stream,
                    priority,
                    fragment,
                }));
            }
        }
    }

    /// Before rewriting, h2 judges (and refuses) what we cannot parse; after, the
    /// connection cannot continue.
    fn malformed(&mut self, what: &str) -> io::Result<Option<Block>> {
        if matches!(self.state, State::FirstBlock) {
            self.state = State::PassThrough;
            return Ok(None);
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP/2: {what}"),
        ))
    }

    fn too_large(&mut self) -> io::Result<Option<Block>> {
        if matches!(self.state, State::FirstBlock) {
            self.state = State::PassThrough;
            return Ok(None);
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP/2 header block over {BLOCK_MAX} bytes"),
        ))
    }

    /// Writes `fields` as one header block of literals (no dynamic table), split into
    /// HEADERS and CONTINUATION frames.
    fn emit(&mut self, block: &Block, fields: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let mut encoded = Vec::new();
        for (name, value) in fields {
            encode_literal(name, value, &mut encoded);
        }
        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let room = if first && block.priority.is_some() {
                FRAME_PAYLOAD_MAX - 5
            } else {
                FRAME_PAYLOAD_MAX
            };
            let n = rest.len().min(room);
            let (chunk, tail) = rest.split_at(n);
            let last = tail.is_empty();
            let mut flags = if last { FLAG_END_HEADERS } else { 0 };
            let kind = if first { TYPE_HEADERS } else { TYPE_CONTINUATION };
            let mut length = chunk.len();
            if first {
                if block.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= FLAG_PRIORITY;
                    length += 5;
                }
            }
            self.output.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
            self.output.push(kind);
            self.output.push(flags);
            self.output.extend_from_slice(&block.stream.to_be_bytes());
            if first {
                if let Some(priority) = block.priority {
                    self.output.extend_from_slice(&priority);
                }
            }
            self.output.extend_from_slice(chunk);
            first = false;
            rest = tail;
            if last {
                return Ok(());
            }
        }
    }

    pub fn rewritten_blocks(&self) -> u64 {
        self.rewritten
    }
}

struct Block {
    /// Input bytes the block's frames take.
    consumed: usize,
    end_stream: bool,
    stream: u32,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// HPACK's literal header field without indexing, new name, no Huffman (RFC 7541,
/// 6.2.2): the one representation that leaves both dynamic tables alone.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    for string in [name, value] {
        encode_integer(string.len(), 7, 0x00, out);
        out.extend_from_slice(string);
    }
}

/// HPACK's integer representation (RFC 7541, 5.1) with a `prefix`-bit prefix whose
/// other bits are `flags`.
fn encode_integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn frame_length(header: &[u8]) -> usize {
    (header[0] as usize) << 16 | (header[1] as usize) << 8 | header[2] as usize
}

/// None: the authority is valid as it is. Some(Some(a)): replace it with `a`.
/// Some(None): no authority can be found in it; drop it.
pub fn fixed_authority(value: &[u8]) -> Option<Option<Vec<u8>>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let text = String::from_utf8_lossy(value);
    // etcd 3.5.0: "#initially=[https://host:2379;https://other:2379]".
    let inner = match text.find("=[") {
        Some(open) => {
            let list = &text[open + 2..];
            let list = list.strip_suffix(']').unwrap_or(list);
            list.split(';').next().unwrap_or_default().to_string()
        }
        None => text.to_string(),
    };
    let candidate = inner.trim();
    if let Ok(uri) = http::Uri::try_from(candidate) {
        if let Some(authority) = uri.authority() {
            return Some(Some(authority.as_str().as_bytes().to_vec()));
        }
    }
    if http::uri::Authority::try_from(candidate).is_ok() {
        return Some(Some(candidate.as_bytes().to_vec()));
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use httlib_hpack::Encoder;
    use rand::{Rng, SeedableRng};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// What a client sends: preface, SETTINGS, then per request a header block
    /// (encoded with indexing, so later blocks refer to the dynamic table) and a DATA
    /// frame.
    fn client_bytes(authority: &str, requests: u32, split_every: usize) -> Vec<u8> {
        let mut encoder = Encoder::with_dynamic_size(HEADER_TABLE_SIZE);
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        for i in 0..requests {
            let stream = 1 + 2 * i;
            let mut block = Vec::new();
            let fields: Vec<(&[u8], Vec<u8>)> = vec![
                (b":method", b"POST".to_vec()),
                (b":scheme", b"http".to_vec()),
                (b":path", b"/etcdserverpb.Maintenance/Status".to_vec()),
                (b":authority", authority.as_bytes().to_vec()),
                (b"content-type", b"application/grpc".to_vec()),
                (b"te", b"trailers".to_vec()),
                (b"x-request", format!("request-{i}").into_bytes()),
            ];
            for (name, value) in fields {
                encoder
                    .encode(
                        (
                            name.to_vec(),
                            value,
                            Encoder::WITH_INDEXING | Encoder::BEST_FORMAT | Encoder::HUFFMAN_VALUE,
                        ),
                        &mut block,
                    )
                    .unwrap();
            }
            // Split across HEADERS and CONTINUATION frames, with padding on the first.
            let (head, tail) = block.split_at(split_every.min(block.len()));
            let mut payload = vec![3u8];
            payload.extend_from_slice(head);
            payload.extend_from_slice(&[0, 0, 0]);
            let flags = FLAG_PADDED | if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            out.extend(frame(TYPE_HEADERS, flags, stream, &payload));
            if !tail.is_empty() {
                out.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, stream, tail));
            }
            out.extend(frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        out
    }

    /// Feeds `bytes` in random chunks and returns what h2 would read.
    fn filtered(bytes: &[u8], seed: u64) -> (Vec<u8>, AuthorityFilter) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut filter = AuthorityFilter::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.gen_range(1..=40).min(bytes.len() - at);
            filter.feed(&bytes[at..at + n]).unwrap();
            at += n;
            let mut buf = [0u8; 17];
            while filter.has_output() {
                let k = filter.read_output(&mut buf);
                out.extend_from_slice(&buf[..k]);
            }
        }
        filter.finish();
        let mut buf = [0u8; 64];
        while filter.has_output() {
            let k = filter.read_output(&mut buf);
            out.extend_from_slice(&buf[..k]);
        }
        (out, filter)
    }

    /// Parses what h2 would read, decoding every header block with a fresh decoder as
    /// h2 would: the header lists and the DATA payloads, in order.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn server_view(bytes: &[u8]) -> Vec<(u32, Fields)> {
        assert!(bytes.starts_with(PREFACE));
        let mut decoder = Decoder::new();
        let mut at = PREFACE.len();
        let mut blocks = Vec::new();
        let mut pending: Option<(u32, Vec<u8>)> = None;
        while at < bytes.len() {
            let length = frame_length(&bytes[at..]);
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap());
            let mut payload = &bytes[at + 9..at + 9 + length];
            at += 9 + length;
            match kind {
                TYPE_HEADERS => {
                    if flags & FLAG_PADDED != 0 {
                        let pad = payload[0] as usize;
                        payload = &payload[1..payload.len() - pad];
                    }
                    if flags & FLAG_PRIORITY != 0 {
                        payload = &payload[5..];
                    }
                    pending = Some((stream, payload.to_vec()));
                }
                TYPE_CONTINUATION => pending.as_mut().unwrap().1.extend_from_slice(payload),
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                let (stream, block) = pending.take().unwrap();
                let fields = decoder.decode(&block).unwrap();
                blocks.push((stream, fields));
            }
        }
        blocks
    }

    fn authority_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }

    #[test]
    fn a_valid_authority_passes_through_byte_for_byte() {
        for seed in 0..20 {
            let bytes = client_bytes("127.0.0.1:2379", 5, 12);
            let (out, filter) = filtered(&bytes, seed);
            assert_eq!(out, bytes, "seed {seed}");
            assert!(filter.passes_through());
            assert_eq!(filter.rewritten_blocks(), 0);
        }
    }

    #[test]
    fn a_url_authority_becomes_its_authority_on_every_request() {
        for (sent, expected) in [
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://etcd-0.example.com:2379", Some("etcd-0.example.com:2379")),
            (
                "#initially=[https://example.com:2379;https://other:2379]",
                Some("example.com:2379"),
            ),
            ("#initially=[127.0.0.1:2379]", Some("127.0.0.1:2379")),
            ("not an authority at all", None),
        ] {
            for (seed, split) in [(1, 5), (2, 1000), (3, 1)] {
                let bytes = client_bytes(sent, 6, split);
                let (out, filter) = filtered(&bytes, seed);
                assert!(filter.rewriting(), "{sent}");
                let blocks = server_view(&out);
                assert_eq!(blocks.len(), 6, "{sent}");
                for (i, (stream, fields)) in blocks.iter().enumerate() {
                    assert_eq!(*stream, 1 + 2 * i as u32);
                    assert_eq!(authority_of(fields).as_deref(), expected, "{sent}, request {i}");
                    // Everything else is as the client sent it, in order.
                    let others: Vec<_> = fields.iter().filter(|(n, _)| n != b":authority").collect();
                    assert_eq!(others.len(), 6);
                    assert_eq!(others[0], &(b":method".to_vec(), b"POST".to_vec()));
                    assert_eq!(
                        others[5],
                        &(b"x-request".to_vec(), format!("request-{i}").into_bytes())
                    );
                }
            }
        }
    }

    #[test]
    fn a_large_rewritten_block_is_split_into_continuation_frames() {
        let mut encoder = Encoder::with_dynamic_size(HEADER_TABLE_SIZE);
        let mut block = Vec::new();
        let big = vec![b'v'; 40_000];
        for (name, value) in [
            (b":authority".to_vec(), b"http://h:1".to_vec()),
            (b"x-big".to_vec(), big.clone()),
        ] {
            encoder.encode((name, value, 0), &mut block).unwrap();
        }
        let mut bytes = PREFACE.to_vec();
        let mut payload = vec![0, 0, 0, 1, 16];
        payload.extend_from_slice(&block);
        // One oversized HEADERS frame in, as a client with a larger max frame size may send.
        bytes.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        let (out, _) = filtered(&bytes, 9);
        let blocks = server_view(&out);
        assert_eq!(authority_of(&blocks[0].1).as_deref(), Some("h:1"));
        assert_eq!(blocks[0].1[1].1, big);
        // Frames out are at most 16 KiB each.
        let mut at = PREFACE.len();
        let mut frames = 0;
        while at < out.len() {
            let length = frame_length(&out[at..]);
            assert!(length <= FRAME_PAYLOAD_MAX);
            at += 9 + length;
            frames += 1;
        }
        assert!(frames >= 3, "{frames}");
    }

    #[test]
    fn not_http2_and_garbage_pass_to_h2_unchanged() {
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(filtered(&http1, 1).0, http1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for seed in 0..200 {
            // A preface then random frames: never a panic, and before any rewrite the
            // bytes reach h2 unchanged.
            let mut bytes = PREFACE.to_vec();
            let n = rng.gen_range(0..200);
            bytes.extend((0..n).map(|_| rng.gen::<u8>()));
            let mut filter = AuthorityFilter::new();
            let mut out = Vec::new();
            for chunk in bytes.chunks(7) {
                if filter.feed(chunk).is_err() {
                    break;
                }
                let mut buf = [0u8; 64];
                while filter.has_output() {
                    let k = filter.read_output(&mut buf);
                    out.extend_from_slice(&buf[..k]);
                }
            }
            if !filter.rewriting() {
                filter.finish();
                let mut buf = [0u8; 64];
                while filter.has_output() {
                    let k = filter.read_output(&mut buf);
                    out.extend_from_slice(&buf[..k]);
                }
                assert_eq!(out, bytes, "seed {seed}");
            }
        }
    }

    #[test]
    fn authority_forms() {
        assert_eq!(fixed_authority(b"127.0.0.1:2379"), None);
        assert_eq!(fixed_authority(b"etcd.example.com"), None);
        assert_eq!(
            fixed_authority(b"http://127.0.0.1:2379"),
            Some(Some(b"127.0.0.1:2379".to_vec()))
        );
        assert_eq!(
            fixed_authority(b"https://[::1]:2379"),
            Some(Some(b"[::1]:2379".to_vec()))
        );
        assert_eq!(
            fixed_authority(b"#initially=[https://a:1;https://b:2]"),
            Some(Some(b"a:1".to_vec()))
        );
        assert_eq!(fixed_authority(b"\x01\x02"), Some(None));
    }
}
