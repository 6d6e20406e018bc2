//! `raftctl`: the command line of the kuberaft admin API (`kuberaft.admin.v1`).
//!
//!     raftctl [--endpoints HOST:PORT,...] [-o table|json|yaml] status
//!     raftctl timing get
//!     raftctl timing set --heartbeat-interval MS --election-timeout MS
//!     raftctl timing suggest [--apply]
//!     raftctl leader transfer [--to NAME|ID] [--deadline MS]
//!     raftctl member list
//!     raftctl member add NAME --peer-urls URL[,URL] [--learner]
//!     raftctl member promote NAME|ID
//!     raftctl member remove NAME|ID
//!
//!     raftctl events [--replay N] [--count N]
//!
//! `status` and `timing get` ask every endpoint; `timing set`, `leader transfer` and
//! the `member` commands go to the first endpoint that answers (a follower forwards
//! them to the leader). The `member` commands use the etcd Cluster service, so they
//! do what `etcdctl member ...` does; a member is named by name or hex id.
//! `events` follows the event stream of the first endpoint that answers, until it
//! ends, `--count` events were shown, or the user interrupts. With `-o json` each
//! event is one line of JSON; with `-o yaml` one YAML document.
//! Exit status: 0 on success, 1 when the cluster refused or did not answer, 2 on
//! bad usage.
//!
//! TLS and authentication, named like etcdctl's: `--cacert FILE` (trust this CA; an
//! endpoint without a scheme is then reached over https), `--cert FILE --key FILE` (a
//! client certificate), `--token TOKEN` (a bearer token of the members'
//! `--auth-token-file`; or `RAFTCTL_TOKEN`).

use std::process::ExitCode;
use std::time::Duration;

/// Like `print!`, but a closed pipe (`raftctl status | head`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use clap::{Parser, Subcommand, ValueEnum};
use kuberaft_operator::ctl::{self, Probe};
use kuberaft_proto::admin::admin_client::AdminClient;
use kuberaft_proto::admin::{SetTimingRequest, StatusRequest, TransferLeaderRequest, WatchEventsRequest};
use kuberaft_proto::etcdserverpb::cluster_client::ClusterClient;
use kuberaft_proto::etcdserverpb::kv_client::KvClient;
use kuberaft_proto::etcdserverpb::watch_client::WatchClient;
use kuberaft_proto::etcdserverpb::{
    watch_request, DeleteRangeRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
    MemberRemoveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use std::sync::OnceLock;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A connection to one member, with the bearer token (if any) on every request.
type Conn = InterceptedService<Channel, Token>;

/// Adds `authorization: Bearer TOKEN` to every request when `--token` is given.
#[derive(Clone)]
struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// TLS and token settings from the command line, set once in `main`.
struct Security {
    tls: Option<ClientTlsConfig>,
    token: Token,
}

static SECURITY: OnceLock<Security> = OnceLock::new();

impl Security {
    fn from_cli(cli: &Cli) -> Result<Security, String> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let identity = match (&cli.cert, &cli.key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(read("--cert", cert)?, read("--key", key)?)),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        // raftctl carries no system trust store: kuberaft clusters use their own CA.
        let tls = match (&cli.cacert, identity) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err("--cert needs --cacert (the CA that signed the members' certificates)".into())
            }
            (Some(ca), identity) => {
                let mut config =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--cacert", ca)?));
                if let Some(identity) = identity {
                    config = config.identity(identity);
                }
                Some(config)
            }
        };
        let token = match &cli.token {
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| "--token must be printable ASCII".to_string())?,
            ),
            None => None,
        };
        Ok(Security {
            tls,
            token: Token(token),
        })
    }
}

#[derive(Parser)]
#[command(name = "raftctl", version, about = "Inspect and operate a kuberaft cluster")]
struct Cli {
    /// Client endpoints of the members, comma separated (like etcdctl).
    #[arg(
        long,
        env = "RAFTCTL_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Trust the CA certificates in this PEM file (TLS; endpoints without a scheme are
    /// then reached over https).
    #[arg(long, env = "RAFTCTL_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for members that require one.
    #[arg(long, env = "RAFTCTL_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// Private key of `--cert` (PEM).
    #[arg(long, env = "RAFTCTL_KEY", global = true)]
    key: Option<std::path::PathBuf>,
    /// Bearer token (a line of the members' --auth-token-file).
    #[arg(long, env = "RAFTCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Time allowed to connect to one endpoint, in milliseconds.
    #[arg(long, default_value_t = 2_000, global = true)]
    dial_timeout_ms: u64,
    /// Time allowed for one request, in milliseconds (a transfer may take longer: its
    /// deadline is added).
    #[arg(long, default_value_t = 5_000, global = true)]
    command_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

/// Prints a JSON value as JSON (pretty) or YAML.
fn print_value(output: Output, value: &serde_json::Value) {
    match output {
        Output::Yaml => match serde_norway::to_string(value) {
            Ok(yaml) => out!("{yaml}"),
            Err(e) => eprintln!("raftctl: cannot write YAML: {e}"),
        },
        _ => outln!("{value:#}"),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Role, term, commit, applied index, lag and health of every endpoint.
    /// Exits with 1 unless every endpoint answered.
    Status,
    /// Heartbeat interval and election timeout.
    Timing {
        #[command(subcommand)]
        command: TimingCommand,
    },
    /// Leadership.
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Membership, through the etcd Cluster service.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Follows the membership, health, leadership, timing and snapshot events one
    /// member observes (FAILURE and RECOVERED come from the leader).
    Events {
        /// First show up to this many recent events (at most 128 are kept).
        #[arg(long, default_value_t = 0)]
        replay: u32,
        /// Stop after this many events (default: follow until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Runs a RaftCluster manifest as local raft-node processes, driven by the
    /// operator's planner, until Ctrl-C. Editing the file is like `kubectl apply`.
    Up(UpArgs),
    /// Writes a key (prints the revision it got): trying a cluster needs no other tool.
    Put {
        // Not `key`: that id is the global --key (TLS) flag's.
        #[arg(id = "KEY_NAME", value_name = "KEY")]
        key: String,
        value: String,
    },
    /// Reads a key, or every key under a prefix (linearizable unless --serializable).
    Get {
        // Not `key`: that id is the global --key (TLS) flag's.
        #[arg(id = "KEY_NAME", value_name = "KEY")]
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// At most this many keys (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Answer from the member's local state, without asking the leader.
        #[arg(long)]
        serializable: bool,
    },
    /// Deletes a key, or every key under a prefix (prints how many).
    Del {
        // Not `key`: that id is the global --key (TLS) flag's.
        #[arg(id = "KEY_NAME", value_name = "KEY")]
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Prints every change of a key (or prefix) as it happens, until --count events or
    /// Ctrl-C.
    Watch {
        // Not `key`: that id is the global --key (TLS) flag's.
        #[arg(id = "KEY_NAME", value_name = "KEY")]
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (older changes are replayed, unless compacted).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Every member: id, name, started or not, voter or learner, URLs.
    List,
    /// Adds a member (one change at a time); then start it with
    /// `--initial-cluster-state existing` and the printed flags.
    Add {
        /// The new member's name (what it will be started with).
        name: String,
        /// Its advertised peer URLs, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (it receives the log but does not vote until promoted).
        #[arg(long)]
        learner: bool,
    },
    /// Makes a learner a voter; refused until it has caught up with the leader.
    Promote {
        /// Name or hex id.
        member: String,
    },
    /// Removes a member; it stops once it learns it was removed.
    Remove {
        /// Name or hex id.
        member: String,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// The RaftCluster manifest.
    #[arg(short = 'f', long = "filename")]
    file: std::path::PathBuf,
    /// Where members keep their data (one directory per cluster inside).
    #[arg(long, default_value = "kuberaft-data")]
    data_dir: std::path::PathBuf,
    /// The raft-node binary (default: next to raftctl, else on PATH).
    #[arg(long)]
    node_binary: Option<std::path::PathBuf>,
    /// Milliseconds between two planner rounds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    interval_ms: u64,
    /// Access key of `spec.backup.destination.s3` (a RaftCluster on Kubernetes names a
    /// Secret instead).
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true,
        requires = "s3_secret_access_key"
    )]
    s3_access_key_id: Option<String>,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "s3_access_key_id"
    )]
    s3_secret_access_key: Option<String>,
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    s3_session_token: Option<String>,
}

#[derive(Subcommand)]
enum TimingCommand {
    /// The timing in force on every endpoint and where it came from.
    Get,
    /// What the operator's adaptive rule would set now, from the latency the members
    /// report (RTT p99 from the leader to its peers, fsync p99 of every member), within
    /// the bounds (defaults: the RaftCluster's); `--apply` sets it.
    Suggest {
        /// Set the suggested timing (through the log, like `timing set`).
        #[arg(long)]
        apply: bool,
        #[arg(long, default_value_t = 20)]
        min_heartbeat_interval: u32,
        #[arg(long, default_value_t = 500)]
        max_heartbeat_interval: u32,
        #[arg(long, default_value_t = 200)]
        min_election_timeout: u32,
        #[arg(long, default_value_t = 5_000)]
        max_election_timeout: u32,
    },
    /// Replicates new timing through the log; every member switches when it commits.
    Set {
        /// Milliseconds between heartbeats (a multiple of the 10 ms tick).
        #[arg(long)]
        heartbeat_interval: u32,
        /// Milliseconds without a leader before an election (at least 3x the heartbeat).
        #[arg(long)]
        election_timeout: u32,
    },
}

#[derive(Subcommand)]
enum LeaderCommand {
    /// Hands leadership to a member (default: the most up-to-date voter).
    Transfer {
        /// Name or id (hex with 0x) of the member to hand leadership to.
        #[arg(long)]
        to: Option<String>,
        /// Give up after this many milliseconds (default: the server's, a few
        /// election timeouts).
        #[arg(long, default_value_t = 0)]
        deadline: u64,
    },
}

fn endpoint_url(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// How long to wait for one endpoint.
#[derive(Clone, Copy)]
struct Patience {
    dial: Duration,
    request: Duration,
}

impl Cli {
    fn patience(&self) -> Patience {
        Patience {
            dial: Duration::from_millis(self.dial_timeout_ms),
            request: Duration::from_millis(self.command_timeout_ms),
        }
    }
}

async fn connect(patience: Patience, endpoint: &str) -> Result<AdminClient<Conn>, String> {
    channel(patience, endpoint, true).await.map(AdminClient::new)
}

/// `limit_requests`: each request must finish within `patience.request` (not for a
/// stream that is followed for as long as it lasts).
async fn channel(patience: Patience, endpoint: &str, limit_requests: bool) -> Result<Conn, String> {
    let security = SECURITY.get().expect("set in main");
    let url = endpoint_url(endpoint, security.tls.is_some());
    let mut target = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad endpoint: {e}"))?
        .connect_timeout(patience.dial);
    if url.starts_with("https://") {
        let Some(tls) = security.tls.clone() else {
            return Err("an https:// endpoint needs --cacert (the CA of the members' certificates)".into());
        };
        target = target.tls_config(tls).map_err(|e| format!("TLS settings: {e}"))?;
    }
    if limit_requests {
        target = target.timeout(patience.request);
    }
    let channel = target.connect().await.map_err(|e| {
        // tonic says "transport error"; the causes below it say what went wrong.
        let mut causes: Vec<String> = Vec::new();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if causes.last() != Some(&text) {
                causes.push(text);
            }
            cause = c.source();
        }
        format!("cannot connect: {}", causes.join(": "))
    })?;
    Ok(InterceptedService::new(channel, security.token.clone()))
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn probe(patience: Patience, endpoint: String) -> Probe {
    let answer = async {
        let mut client = connect(patience, &endpoint).await?;
        client
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| describe(&s))
    }
    .await;
    Probe { endpoint, answer }
}

/// Asks every endpoint at once; answers come back in the order of `--endpoints`.
async fn probe_all(cli: &Cli) -> Vec<Probe> {
    let tasks: Vec<_> = cli
        .endpoints
        .iter()
        .map(|e| (e.clone(), tokio::spawn(probe(cli.patience(), e.clone()))))
        .collect();
    let mut probes = Vec::with_capacity(tasks.len());
    for (endpoint, task) in tasks {
        probes.push(task.await.unwrap_or_else(|e| Probe {
            endpoint,
            answer: Err(format!("internal error: {e}")),
        }));
    }
    probes
}

fn no_answer(cli: &Cli, probes: &[Probe]) -> ExitCode {
    eprintln!("raftctl: no member answered at {}", cli.endpoints.join(","));
    for p in probes {
        if let Err(e) = &p.answer {
            eprintln!("  {}: {e}", p.endpoint);
        }
    }
    ExitCode::from(1)
}

/// Sends one request to the first endpoint that is reachable and serving; stops at
/// the first answer that is a decision (success or a refusal that another member
/// would repeat).
async fn first_answer<C, T, F, Fut>(
    cli: &Cli,
    patience: Patience,
    make: fn(Conn) -> C,
    mut call: F,
) -> Result<(String, T), String>
where
    F: FnMut(C) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut errors = Vec::new();
    for endpoint in &cli.endpoints {
        let client = match channel(patience, endpoint, true).await {
            Ok(channel) => make(channel),
            Err(e) => {
                errors.push(format!("  {endpoint}: {e}"));
                continue;
            }
        };
        match call(client).await {
            Ok(answer) => return Ok((endpoint.clone(), answer)),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                errors.push(format!("  {endpoint}: {}", describe(&status)));
            }
            Err(status) => return Err(format!("{endpoint}: {}", describe(&status))),
        }
    }
    Err(format!(
        "no member answered at {}\n{}",
        cli.endpoints.join(","),
        errors.join("\n")
    ))
}

async fn run(cli: &Cli) -> ExitCode {
    match &cli.command {
        Command::Up(args) => up(args).await,
        Command::Status => {
            let probes = probe_all(cli).await;
            let answered = probes.iter().filter(|p| p.answer.is_ok()).count();
            if answered == 0 {
                return no_answer(cli, &probes);
            }
            match cli.output {
                Output::Table => out!("{}", ctl::status_table(&probes)),
                output => print_value(output, &ctl::status_json(&probes)),
            }
            if answered == probes.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Timing {
            command: TimingCommand::Get,
        } => {
            let probes = probe_all(cli).await;
            if probes.iter().all(|p| p.answer.is_err()) {
                return no_answer(cli, &probes);
            }
            match cli.output {
                Output::Table => out!("{}", ctl::timing_table(&probes)),
                output => {
                    let items: Vec<_> = probes
                        .iter()
                        .map(|p| match &p.answer {
                            Ok(s) => serde_json::json!({
                                "endpoint": p.endpoint,
                                "name": s.name,
                                "timing": s.timing.as_ref().map(ctl::timing_json),
                            }),
                            Err(e) => serde_json::json!({"endpoint": p.endpoint, "error": e}),
                        })
                        .collect();
                    print_value(output, &serde_json::Value::Array(items));
                }
            }
            ExitCode::SUCCESS
        }
        Command::Timing {
            command:
                TimingCommand::Suggest {
                    apply,
                    min_heartbeat_interval,
                    max_heartbeat_interval,
                    min_election_timeout,
                    max_election_timeout,
                },
        } => {
            let bounds = kuberaft_operator::adaptive::Bounds {
                heartbeat_min_ms: *min_heartbeat_interval,
                heartbeat_max_ms: *max_heartbeat_interval,
                election_min_ms: *min_election_timeout,
                election_max_ms: *max_election_timeout,
            };
            if bounds.heartbeat_min_ms > bounds.heartbeat_max_ms
                || bounds.election_min_ms > bounds.election_max_ms
                || bounds.election_max_ms < 3 * bounds.heartbeat_min_ms
            {
                eprintln!(
                    "raftctl: inconsistent bounds (min above max, or max election below 3x min heartbeat)"
                );
                return ExitCode::from(2);
            }
            let probes = probe_all(cli).await;
            let members: Vec<_> = probes
                .iter()
                .filter_map(|p| p.answer.as_ref().ok())
                .map(kuberaft_operator::node::observation_from_status)
                .collect();
            if members.is_empty() {
                return no_answer(cli, &probes);
            }
            let latency = kuberaft_operator::plan::latency(&members);
            let Some(target) = kuberaft_operator::adaptive::target(latency, bounds) else {
                eprintln!("raftctl: no member reported latency samples yet (no leader, or no traffic)");
                return ExitCode::from(1);
            };
            let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
            match cli.output {
                Output::Table => outln!(
                    "RTT p99 {}, fsync p99 {}: heartbeat {} ms, election timeout {} ms",
                    shown(latency.rtt_p99_ms),
                    shown(latency.fsync_p99_ms),
                    target.heartbeat_interval_ms,
                    target.election_timeout_ms
                ),
                output => print_value(
                    output,
                    &serde_json::json!({
                        "rtt_p99_ms": latency.rtt_p99_ms,
                        "fsync_p99_ms": latency.fsync_p99_ms,
                        "heartbeat_interval_ms": target.heartbeat_interval_ms,
                        "election_timeout_ms": target.election_timeout_ms,
                    }),
                ),
            }
            if !*apply {
                return ExitCode::SUCCESS;
            }
            set_timing(
                cli,
                target.heartbeat_interval_ms,
                target.election_timeout_ms,
                "raftctl timing suggest",
            )
            .await
        }
        Command::Timing {
            command:
                TimingCommand::Set {
                    heartbeat_interval,
                    election_timeout,
                },
        } => set_timing(cli, *heartbeat_interval, *election_timeout, "raftctl").await,
        Command::Member { command } => run_member(cli, command).await,
        Command::Put { key, value } => kv_put(cli, key, value).await,
        Command::Get {
            key,
            prefix,
            limit,
            serializable,
        } => kv_get(cli, key, *prefix, *limit, *serializable).await,
        Command::Del { key, prefix } => kv_del(cli, key, *prefix).await,
        Command::Watch {
            key,
            prefix,
            rev,
            count,
        } => kv_watch(cli, key, *prefix, *rev, *count).await,
        Command::Events { replay, count } => follow_events(cli, *replay, *count).await,
        Command::Leader {
            command: LeaderCommand::Transfer { to, deadline },
        } => {
            let request = TransferLeaderRequest {
                target_name: to.clone().unwrap_or_default(),
                deadline_ms: *deadline,
            };
            let mut patience = cli.patience();
            // The server waits up to its deadline (by default a few election timeouts).
            patience.request += Duration::from_millis(if *deadline == 0 { 30_000 } else { *deadline });
            let answer = first_answer(cli, patience, AdminClient::new, |mut client| {
                let request = request.clone();
                async move { client.transfer_leader(request).await.map(|r| r.into_inner()) }
            })
            .await;
            match answer {
                Ok((_, response)) => {
                    match cli.output {
                        Output::Table => outln!(
                            "leadership transferred to {} ({:x}) at term {}",
                            response.leader_name,
                            response.leader_id,
                            response.term
                        ),
                        output => print_value(
                            output,
                            &serde_json::json!({
                                "leader_id": format!("{:x}", response.leader_id),
                                "leader_name": response.leader_name,
                                "term": response.term,
                            }),
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("raftctl: leadership not transferred: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The member list from the first endpoint that answers.
async fn list_members(cli: &Cli) -> Result<Vec<kuberaft_proto::etcdserverpb::Member>, String> {
    first_answer(cli, cli.patience(), ClusterClient::new, |mut client| async move {
        client
            .member_list(MemberListRequest { linearizable: false })
            .await
    })
    .await
    .map(|(_, r)| r.into_inner().members)
}

async fn run_member(cli: &Cli, command: &MemberCommand) -> ExitCode {
    // Membership changes wait for the change to be applied.
    let mut patience = cli.patience();
    patience.request += Duration::from_secs(20);
    let members = match list_members(cli).await {
        Ok(members) => members,
        Err(e) => {
            eprintln!("raftctl: cannot list the members: {e}");
            return ExitCode::from(1);
        }
    };
    let resolve = |who: &str| ctl::resolve_member(&members, who);
    match command {
        MemberCommand::List => {
            match cli.output {
                Output::Table => out!("{}", ctl::members_table(&members)),
                Output::Json | Output::Yaml => print_value(
                    cli.output,
                    &serde_json::Value::Array(members.iter().map(ctl::member_json).collect()),
                ),
            }
            ExitCode::SUCCESS
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let request = MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner: *learner,
            };
            let answer = first_answer(cli, patience, ClusterClient::new, |mut client| {
                let request = request.clone();
                async move { client.member_add(request).await }
            })
            .await;
            match answer {
                Ok((_, response)) => {
                    let response = response.into_inner();
                    let id = response.member.as_ref().map_or(0, |m| m.id);
                    let initial = ctl::initial_cluster_for(&response.members, id, name);
                    match cli.output {
                        Output::Table => {
                            outln!(
                                "member {name} added as a {} with id {id:x}; start it with:",
                                if *learner { "learner" } else { "voter" }
                            );
                            outln!(
                                "  raft-node --name {name} --initial-cluster-state existing \\\n    --initial-advertise-peer-urls {} \\\n    --initial-cluster {initial}",
                                peer_urls.join(",")
                            );
                        }
                        Output::Json | Output::Yaml => print_value(
                            cli.output,
                            &serde_json::json!({
                                "id": format!("{id:x}"),
                                "name": name,
                                "learner": learner,
                                "peer_urls": peer_urls,
                                "initial_cluster": initial,
                                "initial_cluster_state": "existing",
                            }),
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("raftctl: member {name} not added: {e}");
                    ExitCode::from(1)
                }
            }
        }
        MemberCommand::Promote { member } | MemberCommand::Remove { member } => {
            let promote = matches!(command, MemberCommand::Promote { .. });
            let verb = if promote { "promoted" } else { "removed" };
            let id = match resolve(member) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("raftctl: member not {verb}: {e}");
                    return ExitCode::from(1);
                }
            };
            let answer = first_answer(cli, patience, ClusterClient::new, |mut client| async move {
                if promote {
                    client
                        .member_promote(MemberPromoteRequest { id })
                        .await
                        .map(|r| r.into_inner().members)
                } else {
                    client
                        .member_remove(MemberRemoveRequest { id })
                        .await
                        .map(|r| r.into_inner().members)
                }
            })
            .await;
            match answer {
                Ok((_, members)) => {
                    match cli.output {
                        Output::Table => outln!("member {member} ({id:x}) {verb}"),
                        Output::Json | Output::Yaml => print_value(
                            cli.output,
                            &serde_json::json!({
                                "id": format!("{id:x}"),
                                "done": verb,
                                "members": members.iter().map(ctl::member_json).collect::<Vec<_>>(),
                            }),
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("raftctl: member {member} ({id:x}) not {verb}: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The raft-node next to this raftctl (a cargo target directory or an install
/// prefix), else the one on PATH.
fn default_node_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("raft-node")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join("raft-node"))
                        .find(|p| p.exists())
                })
                .unwrap_or_else(|| "raft-node".into())
        })
}

async fn up(args: &UpArgs) -> ExitCode {
    if args.s3_access_key_id.is_some() != args.s3_secret_access_key.is_some() {
        eprintln!(
            "raftctl up: --s3-access-key-id and --s3-secret-access-key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) go together"
        );
        return ExitCode::from(2);
    }
    let config = kuberaft_operator::local::UpConfig {
        manifest: args.file.clone(),
        data_dir: args.data_dir.clone(),
        node_binary: args.node_binary.clone().unwrap_or_else(default_node_binary),
        interval: Duration::from_millis(args.interval_ms),
        node_args: Vec::new(),
        s3_credentials: args
            .s3_access_key_id
            .clone()
            .zip(args.s3_secret_access_key.clone())
            .map(
                |(access_key_id, secret_access_key)| kuberaft_operator::backup::S3Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: args.s3_session_token.clone(),
                },
            ),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match kuberaft_operator::local::up(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftctl up: {e}");
            ExitCode::from(1)
        }
    }
}

/// `timing set`: through the first member that answers (a follower forwards it).
async fn set_timing(
    cli: &Cli,
    heartbeat_interval_ms: u32,
    election_timeout_ms: u32,
    reason: &str,
) -> ExitCode {
    let request = SetTimingRequest {
        heartbeat_interval_ms,
        election_timeout_ms,
        reason: reason.into(),
    };
    let answer = first_answer(cli, cli.patience(), AdminClient::new, |mut client| {
        let request = request.clone();
        async move { client.set_timing(request).await.map(|r| r.into_inner()) }
    })
    .await;
    match answer {
        Ok((_, response)) => {
            let timing = response.timing.unwrap_or_default();
            match cli.output {
                Output::Table => outln!(
                    "timing set: {}; every member switches when it learns the commit",
                    ctl::describe_timing(&timing)
                ),
                output => print_value(
                    output,
                    &serde_json::json!({"index": response.index, "timing": ctl::timing_json(&timing)}),
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raftctl: timing not changed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `raftctl events`: follows one member's stream.
async fn follow_events(cli: &Cli, replay: u32, count: Option<u64>) -> ExitCode {
    let patience = cli.patience();
    let mut errors = Vec::new();
    let mut opened = None;
    for endpoint in &cli.endpoints {
        let mut client = match channel(patience, endpoint, false).await.map(AdminClient::new) {
            Ok(client) => client,
            Err(e) => {
                errors.push(format!("  {endpoint}: {e}"));
                continue;
            }
        };
        let request = WatchEventsRequest { replay };
        match tokio::time::timeout(patience.request, client.watch_events(request)).await {
            Ok(Ok(response)) => {
                opened = Some((endpoint.clone(), response.into_inner()));
                break;
            }
            Ok(Err(status)) => errors.push(format!("  {endpoint}: {}", describe(&status))),
            Err(_) => errors.push(format!(
                "  {endpoint}: no answer within {} ms",
                cli.command_timeout_ms
            )),
        }
    }
    let Some((endpoint, mut stream)) = opened else {
        eprintln!(
            "raftctl: no member answered at {}\n{}",
            cli.endpoints.join(","),
            errors.join("\n")
        );
        return ExitCode::from(1);
    };
    if cli.output == Output::Table {
        eprintln!("events seen by {endpoint}:");
        outln!("{}", ctl::event_header());
    }
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        let event = tokio::select! {
            event = stream.message() => event,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match event {
            Ok(Some(event)) => {
                match cli.output {
                    Output::Table => outln!("{}", ctl::event_line(&event)),
                    Output::Json => outln!("{}", ctl::event_json(&event)),
                    Output::Yaml => {
                        out!("---\n");
                        print_value(Output::Yaml, &ctl::event_json(&event));
                    }
                }
                shown += 1;
            }
            Ok(None) => {
                eprintln!("raftctl: {endpoint} ended the event stream");
                return ExitCode::from(1);
            }
            Err(status) => {
                eprintln!(
                    "raftctl: event stream from {endpoint} failed: {}",
                    describe(&status)
                );
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.endpoints.iter().all(|e| e.trim().is_empty()) {
        eprintln!("raftctl: --endpoints is empty");
        return ExitCode::from(2);
    }
    match Security::from_cli(&cli) {
        Ok(security) => {
            let _ = SECURITY.set(security);
        }
        Err(e) => {
            eprintln!("raftctl: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(&cli))
}

// ---------------------------------------------------------------- keys and values

/// The key and range end a command names: the key alone, or with `--prefix` every key
/// starting with it (etcd's rule: range end = the key with its last byte below 0xff
/// incremented; an empty prefix, or one of 0xff bytes only, is every key from the
/// key on, `\0` as etcd writes it).
fn key_range(key: &str, prefix: bool) -> (Vec<u8>, Vec<u8>) {
    let key = key.as_bytes().to_vec();
    if !prefix {
        return (key, Vec::new());
    }
    if key.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = key.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (key, end);
        }
    }
    (key, vec![0])
}

/// A write goes to the first endpoint that connects; once sent it is never sent again
/// elsewhere (a retry after an ambiguous failure could apply it twice).
async fn first_write<C, T, F, Fut>(cli: &Cli, make: fn(Conn) -> C, call: F) -> Result<T, String>
where
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut errors = Vec::new();
    for endpoint in &cli.endpoints {
        match channel(cli.patience(), endpoint, true).await {
            Ok(conn) => {
                return call(make(conn))
                    .await
                    .map_err(|s| format!("{endpoint}: {}", describe(&s)))
            }
            Err(e) => errors.push(format!("  {endpoint}: {e}")),
        }
    }
    Err(format!(
        "no member answered at {}\n{}",
        cli.endpoints.join(","),
        errors.join("\n")
    ))
}

fn fail(e: String) -> ExitCode {
    eprintln!("raftctl: {e}");
    ExitCode::from(1)
}

async fn kv_put(cli: &Cli, key: &str, value: &str) -> ExitCode {
    let request = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    match first_write(cli, KvClient::new, |mut c| async move { c.put(request).await }).await {
        Ok(answer) => {
            let revision = answer.into_inner().header.map_or(0, |h| h.revision);
            match cli.output {
                Output::Table => outln!("OK (revision {revision})"),
                output => print_value(output, &serde_json::json!({ "key": key, "revision": revision })),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn kv_get(cli: &Cli, key: &str, prefix: bool, limit: i64, serializable: bool) -> ExitCode {
    if limit < 0 {
        return fail("--limit must not be negative".into());
    }
    let (key, range_end) = key_range(key, prefix);
    let request = RangeRequest {
        key,
        range_end,
        limit,
        serializable,
        ..Default::default()
    };
    // A read may be retried on another member.
    let answer = first_answer(cli, cli.patience(), KvClient::new, |mut c| {
        let request = request.clone();
        async move { c.range(request).await.map(|r| r.into_inner()) }
    })
    .await;
    match answer {
        Ok((_, response)) => {
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            match cli.output {
                Output::Table => {
                    for kv in &response.kvs {
                        outln!("{}", String::from_utf8_lossy(&kv.key));
                        outln!("{}", String::from_utf8_lossy(&kv.value));
                    }
                }
                output => print_value(
                    output,
                    &serde_json::json!({
                        "revision": revision,
                        "count": response.count,
                        "more": response.more,
                        "kvs": response.kvs.iter().map(|kv| serde_json::json!({
                            "key": String::from_utf8_lossy(&kv.key),
                            "value": String::from_utf8_lossy(&kv.value),
                            "create_revision": kv.create_revision,
                            "mod_revision": kv.mod_revision,
                            "version": kv.version,
                            "lease": format!("{:x}", kv.lease),
                        })).collect::<Vec<_>>(),
                    }),
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn kv_del(cli: &Cli, key: &str, prefix: bool) -> ExitCode {
    let (key, range_end) = key_range(key, prefix);
    let request = DeleteRangeRequest {
        key,
        range_end,
        ..Default::default()
    };
    match first_write(cli, KvClient::new, |mut c| async move {
        c.delete_range(request).await
    })
    .await
    {
        Ok(answer) => {
            let answer = answer.into_inner();
            match cli.output {
                Output::Table => outln!("{}", answer.deleted),
                output => print_value(
                    output,
                    &serde_json::json!({
                        "deleted": answer.deleted,
                        "revision": answer.header.map_or(0, |h| h.revision),
                    }),
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn kv_watch(cli: &Cli, key: &str, prefix: bool, rev: i64, count: Option<u64>) -> ExitCode {
    use kuberaft_proto::mvccpb::event::EventType;
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key_range(key, prefix).0,
            range_end: key_range(key, prefix).1,
            start_revision: rev,
            ..Default::default()
        })),
    };
    let mut errors = Vec::new();
    let mut stream = None;
    for endpoint in &cli.endpoints {
        let conn = match channel(cli.patience(), endpoint, false).await {
            Ok(conn) => conn,
            Err(e) => {
                errors.push(format!("  {endpoint}: {e}"));
                continue;
            }
        };
        // The request stream stays open after the create: a closed one ends the watch.
        use futures::StreamExt;
        let requests = futures::stream::iter([create.clone()]).chain(futures::stream::pending());
        match WatchClient::new(conn).watch(requests).await {
            Ok(s) => {
                stream = Some(s.into_inner());
                break;
            }
            Err(status) => return fail(format!("{endpoint}: {}", describe(&status))),
        }
    }
    let Some(mut stream) = stream else {
        return fail(format!(
            "no member answered at {}\n{}",
            cli.endpoints.join(","),
            errors.join("\n")
        ));
    };
    let mut seen = 0u64;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return fail("the member ended the watch".into()),
            Err(status) => return fail(describe(&status)),
        };
        if response.canceled {
            return fail(format!(
                "watch canceled: {}{}",
                response.cancel_reason,
                if response.compact_revision > 0 {
                    format!(" (compacted at revision {})", response.compact_revision)
                } else {
                    String::new()
                }
            ));
        }
        for event in &response.events {
            let Some(kv) = &event.kv else { continue };
            let kind = if event.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            match cli.output {
                Output::Table => {
                    outln!("{kind}");
                    outln!("{}", String::from_utf8_lossy(&kv.key));
                    if kind == "PUT" {
                        outln!("{}", String::from_utf8_lossy(&kv.value));
                    }
                }
                output => print_value(
                    output,
                    &serde_json::json!({
                        "type": kind,
                        "key": String::from_utf8_lossy(&kv.key),
                        "value": String::from_utf8_lossy(&kv.value),
                        "mod_revision": kv.mod_revision,
                    }),
                ),
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return ExitCode::SUCCESS;
            }
        }
    }
}
