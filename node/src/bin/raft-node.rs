//! `raft-node`: the kuberaft member process.
//!
//! Today it carries the offline tools that work on a member's directories; serving
//! (the etcd-style flags of DESIGN.md) joins when the runtime lands.
//!
//!     raft-node wal dump --wal-dir DIR [--records]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "raft-node",
    version,
    about = "kuberaft member process and its offline tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a write-ahead log directory (read-only).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Wal {
            command: WalCommand::Dump { wal_dir, records },
        } => {
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
    }
}
