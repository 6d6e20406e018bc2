//! Deterministic whole-cluster simulation (filled in with the core).
