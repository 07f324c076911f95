//! The `votefs` command line (DESIGN §9). Every failure ends with a one-line message on stderr
//! and a non-zero exit status.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use votefs::config::{load_key_file, write_key_file, ClusterConfig};
use votefs::disk::FileDisk;
use votefs::env::tokio_env::os_random_fill;
use votefs::env::{Env, TokioEnv};
use votefs::local_cluster::{self, LocalCluster, LocalLayout, StartOptions};
use votefs::mount::{check_mount_point, mount_and_serve, MountOptions};
use votefs::proto::{InjectedFault, Request, Response};
use votefs::quorum::{ClientOptions, OpenMode, QuorumClient, QuorumError};
use votefs::record::{display_key, ClusterKey, CLUSTER_KEY_BYTES};
use votefs::server::{Server, ServerOptions, MAX_LIST_ENTRIES};
use votefs::store::StoreOptions;

#[derive(Parser)]
#[command(
    name = "votefs",
    version,
    about = "A replicated, self-healing file system whose reads vote"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster (every server a supervised child process) and mount it; Ctrl-C
    /// unmounts and stops everything.
    ///
    /// The data directory holds the cluster key (cluster.key, mode 0600), the cluster.toml every
    /// other command can be pointed at, and each server's records, log and pid file
    /// (bank-B-server-S/, bank-B-server-S.log, bank-B-server-S.pid). Server S of bank B listens on
    /// 127.0.0.1, port BASE_PORT + B*1000 + S. A later run on the same directory reuses its key
    /// and records; it must be given the same layout.
    Up {
        /// Where to mount the volume (an existing directory).
        #[arg(required_unless_present = "no_mount")]
        mountpoint: Option<PathBuf>,
        /// Data directory (created if missing).
        #[arg(long, default_value = local_cluster::DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Number of banks; every record is stored once in each.
        #[arg(long, default_value_t = LocalLayout::default().banks)]
        banks: usize,
        /// Number of servers in each bank.
        #[arg(long, default_value_t = LocalLayout::default().servers_per_bank)]
        servers_per_bank: usize,
        /// Port of bank 0's first server; bank B's ports start at BASE_PORT + B*1000.
        #[arg(long, default_value_t = LocalLayout::default().base_port)]
        base_port: u16,
        /// Interval of the background refresh (scrub) pass, e.g. 60s, 500ms, 5m, 1h.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        refresh: Duration,
        /// Let users other than the one mounting use the file system.
        #[arg(long)]
        allow_other: bool,
        /// Serve the mount's Prometheus metrics (repairs, heal backlog, refresh passes,
        /// per-operation latency) on this address, e.g. 127.0.0.1:9100.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Run only the servers and their supervisor, without mounting, until Ctrl-C or SIGTERM.
        #[arg(long, hide = true)]
        no_mount: bool,
        /// Start the servers with --allow-fault-injection (for demos, tests and chaos runs).
        #[arg(long, hide = true)]
        allow_fault_injection: bool,
    },
    /// Mount the volume of an existing cluster; Ctrl-C or SIGTERM unmounts.
    Mount {
        /// Where to mount the volume (an existing directory).
        mountpoint: PathBuf,
        /// The cluster file.
        #[arg(long)]
        cluster: PathBuf,
        /// Interval of the background refresh (scrub) pass, e.g. 60s, 500ms, 5m, 1h.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        refresh: Duration,
        /// Let users other than the one mounting use the file system.
        #[arg(long)]
        allow_other: bool,
        /// Serve the mount's Prometheus metrics (repairs, heal backlog, refresh passes,
        /// per-operation latency) on this address, e.g. 127.0.0.1:9100.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// Run one storage server.
    Server {
        /// Address to listen on (port 0 picks a free port; the chosen address is printed).
        #[arg(long)]
        listen: SocketAddr,
        /// Directory for this server's records (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// The cluster key file (mode 0600).
        #[arg(long)]
        key_file: PathBuf,
        /// Accept `votefs inject` requests (for demos and tests only).
        #[arg(long)]
        allow_fault_injection: bool,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9101).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Start a new log segment after this many bytes.
        #[arg(long, default_value_t = 64 * 1024 * 1024, hide = true)]
        segment_bytes: u64,
    },
    /// Write a new cluster key to FILE (mode 0600).
    Keygen { file: PathBuf },
    /// The quorum protocol by hand.
    Kv {
        #[command(subcommand)]
        action: KvAction,
    },
    /// One line per server (bank, address, up or down, healthy or recovering, latency, records,
    /// bytes, cpu, memory, requests per second, restarts), then the volume's heal backlog, last
    /// complete refresh pass and repairs by cause. Exits non-zero when a server is down.
    Status {
        #[arg(long)]
        cluster: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One refresh pass now, next to a running mount (it fences no one): compares digests,
    /// repairs what differs, re-reads every entry from disk, and prints what it repaired. Exits
    /// non-zero when a server could not be reached or a key could not be settled.
    Scrub {
        #[arg(long)]
        cluster: PathBuf,
        /// Skip re-reading every entry from disk (compare digests only).
        #[arg(long)]
        no_deep: bool,
    },
    /// What one server holds: keys, versions, sizes, and whether checksums and tags are good.
    Dump {
        #[arg(long)]
        cluster: PathBuf,
        #[arg(long)]
        server: SocketAddr,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Check the file system's records (entries, link counts, unreachable inodes) and with
    /// --repair fix them. Opening the volume fences any mount: unmount it first.
    Fsck {
        #[arg(long)]
        cluster: PathBuf,
        /// Fix what is found: dangling entries go, counts are set, unreachable inodes are linked
        /// into /lost+found.
        #[arg(long)]
        repair: bool,
    },
    /// The same file-system operations on a reference directory and on a target (a votefs
    /// mount); every response is compared by field class (data, sizes, names, kinds, modes, link
    /// counts, link targets and errnos exactly; times within 2 s; inode numbers, blocks and
    /// directory order not at all). Exits 1 when anything diverged, after writing the operations
    /// up to the first divergence to a replay file.
    Tee {
        /// The reference directory (for example a directory on ext4 or tmpfs).
        #[arg(long)]
        reference: PathBuf,
        /// The directory under test (for example a votefs mount point).
        #[arg(long)]
        target: PathBuf,
        /// Seed of the generated operations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many operations to generate.
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// Write the operations to this file (one JSON object per line) for --replay.
        #[arg(long, conflicts_with = "replay")]
        record: Option<PathBuf>,
        /// Apply the operations of a file written by --record instead of generating them.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// First make the target a copy of the reference: what the target holds is removed, then
        /// the reference's directories, files (contents and modes) and symbolic links are copied
        /// (not extended attributes or times).
        #[arg(long)]
        sync: bool,
        /// Where to write the operations up to the first divergence.
        #[arg(long, default_value = "tee-divergence.jsonl")]
        divergence_trace: PathBuf,
    },
    /// While a workload runs on the mount of a `votefs up` cluster, inject a fault every
    /// --every (kill a server, restart it empty, corrupt records on its disk, pause it), never
    /// more than one bank's worth at a time; measure throughput every second; then wait for the
    /// cluster to heal, check the workload's data and write chaos.csv, chaos.svg and chaos.json.
    /// Exits non-zero on any mismatch, any failed operation within the envelope, a failed
    /// workload or a cluster that did not heal.
    Chaos {
        /// The cluster.toml in the data directory of a running `votefs up`.
        #[arg(long)]
        cluster: PathBuf,
        /// The mount point; by default the one `votefs up` wrote into its data directory.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Time between two faults, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        every: Duration,
        /// How long the workload runs, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        duration: Duration,
        /// fsx (data checked on every read), dbench (load only) or copy (built in: files with
        /// recorded checksums, re-read all along and at the end).
        #[arg(long, default_value = "fsx")]
        workload: String,
        /// Seed of the fault choices (and of the workload); random and printed by default.
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for chaos.csv, chaos.svg and chaos.json.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Let faults hit a second bank before the cluster healed: failed operations (EIO) are
        /// then expected, wrong data still never.
        #[arg(long)]
        beyond_envelope: bool,
        /// The fault kinds to draw from, comma-separated.
        #[arg(long, default_value = "kill,restart-empty,corrupt,pause")]
        faults: String,
        /// How long the cluster may take to be healthy, before the run and after it.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        heal_timeout: Duration,
    },
    /// Damage one server's copy of a key (the server must allow fault injection).
    Inject {
        #[arg(long)]
        cluster: PathBuf,
        #[arg(long)]
        server: SocketAddr,
        fault: FaultArgument,
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand)]
enum KvAction {
    /// Store VALUE (or standard input) under KEY.
    Put {
        #[arg(long)]
        cluster: PathBuf,
        key: String,
        value: Option<String>,
    },
    /// Write KEY's value to standard output; non-zero exit if it is missing or unreadable.
    Get {
        #[arg(long)]
        cluster: PathBuf,
        key: String,
    },
    /// Delete KEY.
    Delete {
        #[arg(long)]
        cluster: PathBuf,
        key: String,
    },
    /// List the keys starting with PREFIX.
    List {
        #[arg(long)]
        cluster: PathBuf,
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultArgument {
    Corrupt,
    Wipe,
    Stale,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Server { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOTEFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: server logs are files, and tests read `up`'s stderr.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("votefs: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            let message = format!("{error:#}").replace('\n', " ");
            eprintln!("votefs: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up {
            mountpoint,
            data,
            banks,
            servers_per_bank,
            base_port,
            refresh,
            allow_other,
            metrics,
            no_mount,
            allow_fault_injection,
        } => {
            let layout = LocalLayout {
                banks,
                servers_per_bank,
                base_port,
            };
            let mount = match (no_mount, mountpoint) {
                (false, Some(mountpoint)) => Some((
                    mountpoint,
                    MountOptions {
                        refresh_interval: refresh,
                        allow_other,
                        metrics,
                    },
                )),
                _ => None,
            };
            up(&data, layout, mount, allow_fault_injection).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount {
            mountpoint,
            cluster,
            refresh,
            allow_other,
            metrics,
        } => {
            let config = ClusterConfig::load(&cluster)?;
            let options = MountOptions {
                refresh_interval: refresh,
                allow_other,
                metrics,
            };
            mount_and_serve(&config, &mountpoint, options, shutdown_signal()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server {
            listen,
            data,
            key_file,
            allow_fault_injection,
            metrics,
            segment_bytes,
        } => {
            run_server(
                listen,
                &data,
                &key_file,
                allow_fault_injection,
                metrics,
                segment_bytes,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { file } => {
            let mut bytes = [0u8; CLUSTER_KEY_BYTES];
            os_random_fill(&mut bytes);
            write_key_file(&file, &ClusterKey::from_bytes(bytes))
                .with_context(|| format!("cannot create key file {}", file.display()))?;
            eprintln!("wrote a new cluster key to {} (mode 0600)", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Kv { action } => run_kv(action).await,
        Command::Status { cluster, json } => status(&cluster, json).await,
        Command::Scrub { cluster, no_deep } => scrub(&cluster, !no_deep).await,
        Command::Tee {
            reference,
            target,
            seed,
            ops,
            record,
            replay,
            sync,
            divergence_trace,
        } => {
            let options = votefs::tee::TeeOptions {
                reference,
                target,
                source: match replay {
                    Some(path) => votefs::tee::Source::Replay(path),
                    None => votefs::tee::Source::Generated { seed, count: ops },
                },
                record,
                sync,
                divergence_trace,
            };
            // Blocking system calls, one after another: off the async workers.
            let outcome = tokio::task::spawn_blocking(move || votefs::tee::tee(&options))
                .await
                .context("the tee task failed")??;
            print!("{}", votefs::tee::render(&outcome));
            Ok(if outcome.report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Dump {
            cluster,
            server,
            key,
        } => dump(&cluster, server, key).await,
        Command::Fsck { cluster, repair } => fsck(&cluster, repair).await,
        Command::Chaos {
            cluster,
            mount,
            every,
            duration,
            workload,
            seed,
            out,
            beyond_envelope,
            faults,
            heal_timeout,
        } => {
            // Parsed here rather than by clap, so that a bad name gets the usual one-line error.
            let workload = votefs::chaos::workload::WorkloadKind::parse(&workload)
                .map_err(|message| anyhow!(message))?;
            let faults = votefs::chaos::faults::FaultKind::parse_list(&faults)
                .map_err(|message| anyhow!(message))?;
            let options = votefs::chaos::ChaosOptions {
                cluster_file: cluster,
                mountpoint: mount,
                every,
                duration,
                workload,
                seed,
                out_dir: out,
                beyond_envelope,
                fault_kinds: faults,
                heal_timeout,
            };
            let summary = votefs::chaos::run(options).await?;
            print!("{}", votefs::chaos::summary::render(&summary));
            Ok(if summary.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Inject {
            cluster,
            server,
            fault,
            key,
        } => {
            let fault = match fault {
                FaultArgument::Corrupt => InjectedFault::Corrupt,
                FaultArgument::Wipe => InjectedFault::Wipe,
                FaultArgument::Stale => InjectedFault::Stale,
            };
            let (client, index) = admin_client(&cluster, server)?;
            let request = Request::Inject {
                key: key.clone().into_bytes(),
                fault,
            };
            match client.call_server(index, request).await? {
                Response::Done => {
                    eprintln!("injected {fault:?} into {server}'s copy of {key}");
                    Ok(ExitCode::SUCCESS)
                }
                Response::Refused(why) => bail!("{server} refused: {why}"),
                other => bail!("{server} answered {other:?}"),
            }
        }
    }
}

/// `votefs up`: start the local cluster in `data`, then mount it (or, without `mount`, just wait)
/// until SIGINT or SIGTERM, and stop every server whatever the mount returned.
async fn up(
    data: &Path,
    layout: LocalLayout,
    mount: Option<(PathBuf, MountOptions)>,
    allow_fault_injection: bool,
) -> Result<()> {
    layout.validate()?;
    if let Some((mountpoint, _)) = &mount {
        // `votefs up ./mnt` is the one command a newcomer types: make the mount point when its
        // parent exists (never a whole path, which is more likely a typo).
        if !mountpoint.exists()
            && mountpoint
                .parent()
                .is_none_or(|parent| parent.as_os_str().is_empty() || parent.is_dir())
        {
            std::fs::create_dir(mountpoint)
                .with_context(|| format!("cannot create mount point {}", mountpoint.display()))?;
            eprintln!("created mount point {}", mountpoint.display());
        }
        // Fail before starting any server (the mount checks again).
        check_mount_point(mountpoint)?;
    }
    // Installed before any server starts, so that a signal during startup is not lost.
    let shutdown = shutdown_signal()?;
    let prepared = local_cluster::prepare(data, layout)?;
    let executable =
        std::env::current_exe().context("cannot find the votefs executable to run servers")?;
    let mut options = StartOptions::new(executable);
    options.allow_fault_injection = allow_fault_injection;
    let cluster = LocalCluster::start(prepared, options).await?;
    let result = match mount {
        Some((mountpoint, options)) => {
            // Where `votefs chaos` finds the mount without being told.
            let record = cluster.data_dir().join(votefs::chaos::MOUNTPOINT_FILE_NAME);
            let absolute = mountpoint.canonicalize().unwrap_or(mountpoint.clone());
            let text = absolute.as_os_str().as_encoded_bytes();
            if let Err(error) = std::fs::write(&record, [text, b"\n"].concat()) {
                tracing::warn!("cannot write {}: {error}", record.display());
            }
            let served = mount_and_serve(cluster.config(), &mountpoint, options, shutdown).await;
            let _ = std::fs::remove_file(&record);
            served
        }
        None => {
            eprintln!("cluster file: {}", cluster.cluster_file().display());
            eprintln!("servers running; press Ctrl-C to stop");
            shutdown.await;
            Ok(())
        }
    };
    cluster.stop().await;
    result
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed now, so a signal that
/// arrives before the future is polled still ends it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Parse a duration such as `60s`, `500ms`, `5m` or `1h` (a whole number and a unit).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a duration: expected a whole number and a unit, e.g. 60s, 500ms, 5m, 1h"
        ));
    }
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: {number} is too large"))?;
    let milliseconds_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write e.g. {number}s (units: ms, s, m, h)"
            ))
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (units: ms, s, m, h)"
            ))
        }
    };
    let milliseconds = count
        .checked_mul(milliseconds_per_unit)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if milliseconds == 0 {
        return Err(format!("{text:?}: the duration must be greater than zero"));
    }
    Ok(Duration::from_millis(milliseconds))
}

async fn run_server(
    listen: SocketAddr,
    data: &Path,
    key_file: &Path,
    allow_fault_injection: bool,
    metrics: Option<SocketAddr>,
    segment_bytes: u64,
) -> Result<()> {
    let key = load_key_file(key_file)?;
    let metrics_listener =
        match metrics {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(
                || format!("cannot serve metrics on {address} (is the port taken?)"),
            )?),
            None => None,
        };
    let disk = FileDisk::open(data)
        .with_context(|| format!("cannot use data directory {}", data.display()))?;
    let env = TokioEnv::new();
    let listener = env.bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (is another server using that port?)")
    })?;
    let address = env.local_address(&listener)?;
    let options = ServerOptions {
        allow_fault_injection,
        store: StoreOptions { segment_bytes },
        restarts: supervisor_restart_count(),
        ..ServerOptions::default()
    };
    let (server, report) = Server::open(env.clone(), disk, key, options)
        .await
        .context("cannot open the record store")?;
    tracing::info!(
        entries = report.entries,
        segments = report.segments,
        "recovered the record store"
    );
    if let Some(listener) = metrics_listener {
        let metrics_address = listener.local_addr()?;
        tracing::info!("serving metrics on http://{metrics_address}/metrics");
        let server = server.clone();
        let render: votefs::metrics::RenderMetrics = std::sync::Arc::new(move || {
            let server = server.clone();
            Box::pin(async move { votefs::exported_metrics::render_server(&server.stats().await) })
        });
        tokio::spawn(votefs::metrics::serve_metrics(listener, render));
    }
    // Install the handler before announcing readiness, so that a SIGTERM right after the line
    // below still stops the server cleanly.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    // Tests and launchers wait for this line instead of sleeping.
    println!("votefs server listening on {address}");
    std::io::stdout().flush()?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// `votefs fsck`: exit 0 when the file system is consistent (or was repaired), 1 when problems
/// remain.
async fn fsck(cluster: &Path, repair: bool) -> Result<ExitCode> {
    let client = open_client(cluster, OpenMode::Writer).await?;
    let (file_system, recovery) = votefs::fs::FileSystem::mount(TokioEnv::new(), client)
        .await
        .map_err(|errno| anyhow!("cannot open the file system: {errno}"))?;
    if let Some((operation, redone)) = recovery.intent_redone {
        println!("finished an interrupted {operation} ({redone} records redone)");
    }
    if recovery.orphans_removed > 0 {
        println!(
            "removed {} files unlinked while open",
            recovery.orphans_removed
        );
    }
    if repair {
        let repaired = file_system
            .check_and_repair()
            .await
            .map_err(|errno| anyhow!("the repair failed: {errno}"))?;
        for problem in &repaired {
            println!("repaired: {problem}");
        }
        println!(
            "{} problems repaired; the file system is consistent",
            repaired.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let problems = file_system
        .check()
        .await
        .map_err(|errno| anyhow!("the check failed: {errno}"))?;
    for problem in &problems {
        println!("problem: {problem}");
    }
    if problems.is_empty() {
        println!("the file system is consistent");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} problems found; run with --repair to fix them",
            problems.len()
        );
        Ok(ExitCode::from(1))
    }
}

fn load_cluster(path: &Path) -> Result<(ClusterConfig, ClusterKey)> {
    let config = ClusterConfig::load(path)?;
    let key = config.load_key()?;
    Ok((config, key))
}

async fn open_client(path: &Path, mode: OpenMode) -> Result<QuorumClient<TokioEnv>> {
    let (config, key) = load_cluster(path)?;
    QuorumClient::open(
        TokioEnv::new(),
        config.placement,
        key,
        ClientOptions::default(),
        mode,
    )
    .await
    .map_err(|error| anyhow!(error))
}

fn admin_client(path: &Path, server: SocketAddr) -> Result<(QuorumClient<TokioEnv>, usize)> {
    let (config, key) = load_cluster(path)?;
    let index = (0..config.placement.server_count())
        .find(|index| config.placement.address(*index) == server)
        .ok_or_else(|| anyhow!("{server} is not a server of {}", path.display()))?;
    let client = QuorumClient::for_administration(
        TokioEnv::new(),
        config.placement,
        key,
        ClientOptions::default(),
    );
    Ok((client, index))
}

fn quorum_failure(error: QuorumError) -> anyhow::Error {
    match error {
        QuorumError::Unavailable(_) | QuorumError::Conflict(_) => {
            anyhow!("input/output error (EIO): {error}")
        }
        other => anyhow!(other),
    }
}

async fn run_kv(action: KvAction) -> Result<ExitCode> {
    match action {
        KvAction::Put {
            cluster,
            key,
            value,
        } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => {
                    let mut bytes = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("reading the value from standard input")?;
                    bytes
                }
            };
            let client = open_client(&cluster, OpenMode::Writer).await?;
            let version = client
                .put(key.as_bytes(), &value)
                .await
                .map_err(quorum_failure)?;
            eprintln!("stored {key} at version {version}");
            Ok(ExitCode::SUCCESS)
        }
        KvAction::Get { cluster, key } => {
            let client = open_client(&cluster, OpenMode::ReadOnly).await?;
            match client.get(key.as_bytes()).await.map_err(quorum_failure)? {
                Some(value) => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&value)?;
                    stdout.flush()?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("votefs: {key}: not found");
                    Ok(ExitCode::from(1))
                }
            }
        }
        KvAction::Delete { cluster, key } => {
            let client = open_client(&cluster, OpenMode::Writer).await?;
            client
                .delete(key.as_bytes())
                .await
                .map_err(quorum_failure)?;
            eprintln!("deleted {key}");
            Ok(ExitCode::SUCCESS)
        }
        KvAction::List { cluster, prefix } => {
            let client = open_client(&cluster, OpenMode::ReadOnly).await?;
            let keys = client
                .list(prefix.as_bytes())
                .await
                .map_err(quorum_failure)?;
            let mut stdout = std::io::stdout().lock();
            for key in keys {
                writeln!(stdout, "{}", display_key(&key))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn status(path: &Path, json: bool) -> Result<ExitCode> {
    let (config, key) = load_cluster(path)?;
    let status = votefs::admin::cluster_status(&config.placement, key).await;
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string(&status)?)?;
    } else {
        write!(stdout, "{}", votefs::admin::render_status(&status))?;
    }
    Ok(if status.all_up() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn scrub(path: &Path, deep: bool) -> Result<ExitCode> {
    let client = open_client(path, OpenMode::Repairer).await?;
    let (report, text) = votefs::admin::scrub_once(client, deep).await?;
    print!("{text}");
    Ok(if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn dump(path: &Path, server: SocketAddr, key: Option<String>) -> Result<ExitCode> {
    let (client, index) = admin_client(path, server)?;
    let prefix = key.clone().unwrap_or_default().into_bytes();
    let mut start_after = None;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "key\tversion\tbytes\tchecksum\ttag\tstate")?;
    loop {
        let request = Request::Dump {
            prefix: prefix.clone(),
            start_after: start_after.clone(),
            limit: MAX_LIST_ENTRIES,
        };
        let (entries, complete) = match client.call_server(index, request).await? {
            Response::Dump { entries, complete } => (entries, complete),
            other => bail!("{server} answered {other:?}"),
        };
        for entry in &entries {
            if key
                .as_ref()
                .is_some_and(|key| key.as_bytes() != entry.key.as_slice())
            {
                continue;
            }
            let state = if entry.lost {
                "lost"
            } else if entry.tombstone {
                "deleted"
            } else {
                "present"
            };
            writeln!(
                stdout,
                "{}\t{}\t{}\t{}\t{}\t{state}",
                display_key(&entry.key),
                entry.version,
                entry.value_bytes,
                if entry.checksum_ok { "ok" } else { "BAD" },
                if entry.tag_ok { "ok" } else { "BAD" },
            )?;
        }
        match entries.last() {
            Some(last) if !complete => start_after = Some(last.key.clone()),
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The restart count a supervisor (`votefs up`) hands its server through `VOTEFS_RESTARTS`.
fn supervisor_restart_count() -> u64 {
    std::env::var(votefs::local_cluster::RESTARTS_ENVIRONMENT_VARIABLE)
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}
