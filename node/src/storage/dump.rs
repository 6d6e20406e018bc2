//! wal dump
