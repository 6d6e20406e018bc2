//! The sans-IO consensus core.
//!
//! Layout: [`types`] (entries, hard state, membership, timing), [`message`] (what
//! members say to each other), [`log`] (the in-memory log the core reasons about),
//! [`progress`] (a leader's view of each follower) and [`core`] (the state machine).
//!
//! Nothing here touches a clock, a socket, a file or a task: the runtime and the
//! simulator drive it the same way.

pub mod core;
pub mod log;
pub mod message;
pub mod progress;
pub mod types;

#[cfg(test)]
mod tests;

pub use self::core::{
    Command, Config, DurableState, Error, ForwardFailure, PeerStatus, RaftCore, ReadFailure, Role, Status,
};
pub use self::message::{Message, MessageBody, ProposeRefusal};
pub use self::progress::ReplicationState;
pub use self::types::{
    ConfChange, ConfChangeError, Entry, EntryPayload, HardState, Index, Membership, NodeId, SnapshotMeta,
    Term, Timing, TimingError,
};
