//! The consensus core stays sans-IO: no runtime, socket, file or clock. This is what
//! keeps the simulator deterministic, so it is checked, not trusted. The crate
//! boundary does most of it (a dependency outside the list below fails this test);
//! `std` is always there, so its I/O and clock modules are checked in the source.

use std::path::Path;

/// The core's dependencies: pure data and a seeded random generator.
const ALLOWED_DEPENDENCIES: &[&str] = &["bytes", "thiserror", "rand", "rand_chacha"];

const FORBIDDEN_IN_SOURCE: &[&str] = &[
    "tokio",
    "std::net",
    "std::fs",
    "std::io",
    "Instant",
    "SystemTime",
    "std::thread",
    "std::env",
    "std::process",
];

#[test]
fn the_core_depends_only_on_pure_crates() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut section = String::new();
    let mut seen = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if !section.contains("dependencies") || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.']).next().unwrap().trim();
        assert!(
            ALLOWED_DEPENDENCIES.contains(&name),
            "{section} {name}: the core may depend only on {ALLOWED_DEPENDENCIES:?}"
        );
        seen.push(name.to_string());
    }
    assert!(
        seen.len() >= 2,
        "expected the core's dependencies in its Cargo.toml, saw {seen:?}"
    );
}

#[test]
fn the_core_source_uses_no_runtime_socket_file_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (number, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_IN_SOURCE {
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
