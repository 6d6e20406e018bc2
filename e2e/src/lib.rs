//! kuberaft-e2e: end-to-end tests of whole clusters.
//!
//! Not yet written: filled in once `raft-node` runs as a process (local clusters)
//! and the operator exists (kind clusters).
