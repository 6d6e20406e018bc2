//! Start-up checks across the WAL and the snapshot store.
