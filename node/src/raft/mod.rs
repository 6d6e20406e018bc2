//! The consensus core.
pub mod message;
pub mod types;
