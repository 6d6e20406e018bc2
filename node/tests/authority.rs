//! The `:authority` forms etcd's own clients send (node/src/security/authority.rs):
//! etcdctl's `endpoint status` and `endpoint status --cluster` with endpoints written as
//! URLs (`http://host:port`, as nearly every script and etcd doc writes them), with
//! etcdctl 3.4 and, when `ETCDCTL36_BIN` is set, 3.6; and raw HTTP/2 requests carrying
//! each form, several on one connection (so the client's HPACK dynamic table is in
//! play), each answered by the Maintenance service.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use httlib_hpack::{Decoder, Encoder};
use support::{etcdctl_bin, ProcCluster};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the server said on one stream: its header fields (response headers and
/// trailers), and whether it reset the stream (and with which code).
#[derive(Debug, Default)]
struct Answer {
    fields: Vec<(String, String)>,
    reset: Option<u32>,
    done: bool,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `requests` Maintenance.Status calls over one HTTP/2 connection, each with
/// `authority` (none when `None`), and returns the answers in order.
fn raw_status_calls(endpoint: &str, authority: Option<&str>, requests: u32) -> Vec<Answer> {
    let mut socket = TcpStream::connect(endpoint).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut encoder = Encoder::with_dynamic_size(4096);
    for i in 0..requests {
        let stream = 1 + 2 * i;
        let mut fields: Vec<(&[u8], Vec<u8>)> = vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/etcdserverpb.Maintenance/Status".to_vec()),
        ];
        if let Some(a) = authority {
            fields.push((b":authority", a.as_bytes().to_vec()));
        }
        fields.push((b"content-type", b"application/grpc".to_vec()));
        fields.push((b"te", b"trailers".to_vec()));
        let mut block = Vec::new();
        for (name, value) in fields {
            // With indexing: later requests refer to the dynamic table, as Go's client does.
            let flags = Encoder::WITH_INDEXING | Encoder::BEST_FORMAT | Encoder::HUFFMAN_VALUE;
            encoder.encode((name.to_vec(), value, flags), &mut block).unwrap();
        }
        out.extend(frame(0x1, 0x4, stream, &block));
        // An empty StatusRequest: the gRPC message header only.
        out.extend(frame(0x0, 0x1, stream, &[0, 0, 0, 0, 0]));
    }
    socket.write_all(&out).unwrap();

    let mut answers: Vec<Answer> = (0..requests).map(|_| Answer::default()).collect();
    let mut decoder = Decoder::with_dynamic_size(4096);
    let mut input = Vec::new();
    let mut pending: Option<(u32, u8, Vec<u8>)> = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !answers.iter().all(|a| a.done) {
        let mut buf = [0u8; 16384];
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
        while input.len() >= 9 {
            let length = (input[0] as usize) << 16 | (input[1] as usize) << 8 | input[2] as usize;
            if input.len() < 9 + length {
                break;
            }
            let (kind, flags) = (input[3], input[4]);
            let stream = u32::from_be_bytes(input[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let payload: Vec<u8> = input[9..9 + length].to_vec();
            input.drain(..9 + length);
            let index = (stream.max(1) as usize - 1) / 2;
            match kind {
                0x4 if flags & 0x1 == 0 => socket.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
                0x3 => {
                    answers[index].reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    answers[index].done = true;
                }
                0x7 => panic!("GOAWAY: {payload:?}"),
                0x1 | 0x9 => {
                    let entry = pending.get_or_insert((stream, flags, Vec::new()));
                    entry.2.extend_from_slice(&payload);
                    if flags & 0x4 != 0 {
                        let (stream, first_flags, mut block) = pending.take().unwrap();
                        let mut fields = Vec::new();
                        decoder.decode(&mut block, &mut fields).unwrap();
                        let answer = &mut answers[(stream as usize - 1) / 2];
                        answer.fields.extend(fields.into_iter().map(|(n, v, _)| {
                            (
                                String::from_utf8(n).unwrap(),
                                String::from_utf8_lossy(&v).to_string(),
                            )
                        }));
                        if first_flags & 0x1 != 0 {
                            answer.done = true;
                        }
                    }
                }
                0x0 if flags & 0x1 != 0 => answers[index].done = true,
                _ => {}
            }
        }
    }
    answers
}

#[test]
fn etcd_clients_authority_forms_are_accepted() {
    let cluster = ProcCluster::start(3, &[]);
    cluster.wait_for_leader(&[0, 1, 2]);
    let host_port = cluster.endpoint(0);

    // Raw HTTP/2: every form answered with grpc-status 0, three requests a connection.
    let forms: Vec<(String, Option<String>)> = vec![
        ("a valid authority".into(), Some(host_port.clone())),
        ("no authority".into(), None),
        (
            "http:// URL (etcdctl 3.4)".into(),
            Some(format!("http://{host_port}")),
        ),
        ("https:// URL".into(), Some(format!("https://{host_port}"))),
        (
            "#initially=[...] (etcd client 3.5.0)".into(),
            Some(format!(
                "#initially=[http://{host_port};http://{}]",
                cluster.endpoint(1)
            )),
        ),
        (
            "not an authority at all".into(),
            Some("%%% not an authority".into()),
        ),
    ];
    for (what, authority) in &forms {
        let answers = raw_status_calls(&host_port, authority.as_deref(), 3);
        for (i, answer) in answers.iter().enumerate() {
            assert!(answer.done, "{what}, request {i}: no complete answer: {answer:?}");
            assert_eq!(
                answer.reset, None,
                "{what}, request {i}: stream reset: {answer:?}"
            );
            assert_eq!(
                answer.field(":status"),
                Some("200"),
                "{what}, request {i}: {answer:?}"
            );
            assert_eq!(
                answer.field("grpc-status"),
                Some("0"),
                "{what}, request {i}: {answer:?}"
            );
        }
        println!("ok   raw HTTP/2, {what}: 3 of 3 Status calls answered");
    }

    // etcdctl with URL endpoints, 3.4 and (when built) 3.6.
    let mut etcdctls = vec!["etcdctl".to_string()];
    if let Ok(bin) = std::env::var("ETCDCTL36_BIN") {
        etcdctls.push(bin);
    }
    let urls = cluster
        .endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect::<Vec<_>>()
        .join(",");
    // `--cluster` reads the client URLs members publish once they run (as in etcd).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, list) = etcdctl_bin("etcdctl", &cluster.endpoint(0), &["member", "list"]);
        if ok && list.lines().filter(|l| l.contains(", started, ")).count() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never all published themselves:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for etcdctl in &etcdctls {
        for args in [
            &["endpoint", "status"][..],
            &["endpoint", "status", "--cluster"][..],
            &["endpoint", "health", "--cluster"][..],
            &["put", "authority-key", "v"][..],
        ] {
            let (ok, out) = etcdctl_bin(etcdctl, &urls, args);
            assert!(ok, "{etcdctl} --endpoints={urls} {args:?}: {out}");
            assert!(!out.contains("PROTOCOL_ERROR"), "{etcdctl} {args:?}: {out}");
            if args[0] == "endpoint" {
                let lines = out.lines().filter(|l| l.contains("127.0.0.1")).count();
                let members = etcdctl_bin(etcdctl, &urls, &["member", "list"]).1;
                assert_eq!(
                    lines, 3,
                    "{etcdctl} {args:?}: one line per member expected:\n{out}\nmember list:\n{members}"
                );
            }
        }
        println!(
            "ok   {etcdctl} endpoint status / status --cluster / health --cluster with http:// endpoints"
        );
    }
}
