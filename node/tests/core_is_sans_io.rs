//! The consensus core stays sans-IO (DESIGN.md): no runtime, socket, file or clock.
//! This is what keeps the simulator deterministic, so it is checked, not trusted.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::net",
    "std::fs",
    "Instant",
    "SystemTime",
    "std::thread",
    "std::env",
];

#[test]
fn the_raft_core_imports_no_runtime_socket_file_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (number, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{}:{}: the core must not use {word}: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the core's source files in {}",
        dir.display()
    );
}
