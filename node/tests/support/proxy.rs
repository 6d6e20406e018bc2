//! A TCP proxy that delays every byte by a fixed time in both directions, to add
//! latency to one link between members (`tc netem` is not available here).
//!
//! It runs on its own thread and runtime (so a test's blocking waits do not delay it
//! further), accepts at most [`CONNECTIONS_MAX`] connections, buffers at most
//! [`CHUNKS_QUEUED_MAX`] chunks per direction, and stops when dropped or after its
//! lifetime, whichever comes first.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub const CONNECTIONS_MAX: usize = 64;
pub const CHUNKS_QUEUED_MAX: usize = 1024;
const CHUNK_BYTES: usize = 64 * 1024;

pub struct DelayProxy {
    /// Where to connect instead of the target.
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, each direction `delay` late.
    pub fn start(target: u16, delay: Duration, lifetime: Duration) -> DelayProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let target: SocketAddr = format!("127.0.0.1:{target}").parse().unwrap();
                tokio::select! {
                    _ = accept(listener, target, delay) => {}
                    _ = stopped => {}
                    _ = tokio::time::sleep(lifetime) => {}
                }
            });
            // Dropping the runtime ends every connection task.
        });
        DelayProxy {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, delay: Duration) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_MAX {
            continue; // refused: dropped at once
        }
        connections.spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(pipe(in_read, out_write, delay), pipe(out_read, in_write, delay));
        });
    }
}

/// Copies `from` to `to`, writing each chunk `delay` after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let reading = async move {
        loop {
            let mut chunk = vec![0; CHUNK_BYTES];
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send((Instant::now() + delay, chunk)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}
