//! `raft-node`: the kuberaft member process.
//!
//!     raft-node --name n1 --initial-cluster n1=http://127.0.0.1:2380,... [etcd-style flags]
//!     raft-node wal dump --wal-dir DIR [--records]
//!     raft-node restore --snapshot FILE --name n1 --initial-cluster ... [--data-dir DIR]
//!     raft-node failpoints
//!
//! Every flag also reads from an environment variable (`KUBERAFT_NAME`, ...).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kuberaft_node::server::{self, ServeArgs};

/// mimalloc instead of glibc's malloc: start-up builds the key index from millions of
/// rows, and redb allocates a page buffer per page it reads; under glibc every such
/// buffer first consolidated the fast bins (a third of start-up at 2,000,000 keys, by
/// `perf`). Measured by `kv::tests::load_time`: 1.31 s -> 0.84 s at 2,000,000 keys.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "raft-node",
    version,
    about = "kuberaft member: a Raft node speaking the etcd v3 API"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a write-ahead log directory (read-only).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Create a new member's data directories from a backup (`etcdctl snapshot save`
    /// against kuberaft). Run it for every member of the new cluster with the flags
    /// that member will be started with, then start them all.
    Restore {
        /// The backup file.
        #[arg(long)]
        snapshot: PathBuf,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// List the crash points (armed with KUBERAFT_FAILPOINTS or KUBERAFT_FAILPOINTS_FILE;
    /// compiled in only with the cargo feature `failpoints`).
    Failpoints,
}

#[derive(Subcommand)]
enum WalCommand {
    /// Print the segments, the hard state, the log range and any corruption found.
    /// Exits with status 1 when a problem was found.
    Dump {
        /// The member's WAL directory (the same as the server's --wal-dir).
        #[arg(long, env = "KUBERAFT_WAL_DIR")]
        wal_dir: PathBuf,
        /// Also list every record.
        #[arg(long)]
        records: bool,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBERAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Wal {
            command: WalCommand::Dump { wal_dir, records },
        }) => {
            if !wal_dir.is_dir() {
                eprintln!("raft-node: --wal-dir {}: not a directory", wal_dir.display());
                return ExitCode::from(2);
            }
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match kuberaft_node::storage::dump_wal(&wal_dir, records, &mut out) {
                Ok(summary) if summary.problems.is_empty() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("raft-node: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Failpoints) => {
            use kuberaft_node::failpoint;
            println!(
                "crash points: {} (cargo feature `failpoints`); arm with \
                 KUBERAFT_FAILPOINTS=\"name=[P%][N*]abort|panic|sleep(MS)|error|off;...\" \
                 or KUBERAFT_FAILPOINTS_FILE=PATH",
                if failpoint::ENABLED {
                    "compiled in"
                } else {
                    "NOT compiled in, this build has none"
                }
            );
            for (name, place) in failpoint::POINTS {
                println!("{name:<28} {place}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::Restore { snapshot, serve }) => {
            init_logging(serve.log_json);
            match kuberaft_node::restore::restore(&serve, &snapshot) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("raft-node: restore: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            init_logging(cli.serve.log_json);
            if let Err(e) = cli.serve.plan() {
                eprintln!("raft-node: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("raft-node: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(server::serve(cli.serve)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("raft-node: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
