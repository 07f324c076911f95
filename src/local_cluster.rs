//! The embedded local cluster behind `votefs up` (DESIGN §9): one data directory holding the
//! cluster key, the `cluster.toml` every other command can be pointed at, and one directory and
//! log per server; every server runs as a child process of `votefs up` and a supervisor restarts
//! any that exits.
//!
//! Layout of a data directory `DIR` (bank `b`, server `s`, both from 0):
//!
//! | path | what |
//! | --- | --- |
//! | `DIR/cluster.key` | the cluster key (mode 0600), made on the first run and reused after |
//! | `DIR/cluster.toml` | the cluster file; addresses `127.0.0.1:(base_port + b*1000 + s)` |
//! | `DIR/bank-b-server-s/` | server `s` of bank `b`'s records |
//! | `DIR/bank-b-server-s.log` | its standard output and error, appended across restarts |
//! | `DIR/bank-b-server-s.pid` | its process id while it runs (for tests, chaos and scripts) |
//! | `DIR/up.lock` | held (`flock`) by the one `votefs up` using the directory |
//!
//! Reading files and starting processes here is command-line glue, like [`crate::config`]: the
//! replicated core never sees any of it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{write_key_file, BankConfig, ClusterConfig, ClusterFile};
use crate::env::random_u128;
use crate::env::tokio_env::{os_random_fill, TokioEnv};
use crate::proto::Request;
use crate::record::{ClusterKey, CLUSTER_KEY_BYTES};
use crate::rpc::{RpcOptions, ServerLink};

/// The environment variable through which a supervisor tells its server how often it restarted
/// it, so that `votefs status` can show the count.
pub const RESTARTS_ENVIRONMENT_VARIABLE: &str = "VOTEFS_RESTARTS";

/// The data directory `votefs up` uses when given none (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./votefs-data";
/// The cluster file inside a data directory.
pub const CLUSTER_FILE_NAME: &str = "cluster.toml";
/// The key file inside a data directory.
pub const KEY_FILE_NAME: &str = "cluster.key";
/// The lock file inside a data directory.
pub const LOCK_FILE_NAME: &str = "up.lock";
/// Bank `b`'s ports start at `base_port + b * BANK_PORT_STRIDE`, following the original layout
/// (banks at 7000.., 8000.., 9000..); it also caps the servers per bank.
pub const BANK_PORT_STRIDE: u32 = 1000;
/// The line a server prints on standard output once it accepts connections.
pub const READY_LINE_PREFIX: &str = "votefs server listening on ";

/// The shape of a local cluster: how many banks, how many servers in each, and where the ports
/// start. Every server listens on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalLayout {
    pub banks: usize,
    pub servers_per_bank: usize,
    pub base_port: u16,
}

impl Default for LocalLayout {
    fn default() -> Self {
        Self {
            banks: 3,
            servers_per_bank: 2,
            base_port: 7000,
        }
    }
}

impl LocalLayout {
    /// Check that every server gets its own port in 1..=65535. The message names the option to
    /// change.
    pub fn validate(&self) -> Result<()> {
        if self.banks == 0 {
            bail!("--banks must be at least 1");
        }
        if self.servers_per_bank == 0 {
            bail!("--servers-per-bank must be at least 1");
        }
        if self.servers_per_bank as u64 > u64::from(BANK_PORT_STRIDE) {
            bail!(
                "--servers-per-bank {} is too many: each bank has {BANK_PORT_STRIDE} ports",
                self.servers_per_bank
            );
        }
        if self.base_port == 0 {
            bail!("--base-port must be between 1 and 65535");
        }
        let last_port = (self.banks as u64 - 1)
            .checked_mul(u64::from(BANK_PORT_STRIDE))
            .and_then(|offset| offset.checked_add(self.servers_per_bank as u64 - 1))
            .and_then(|offset| offset.checked_add(u64::from(self.base_port)));
        match last_port {
            Some(port) if port <= u64::from(u16::MAX) => Ok(()),
            _ => bail!(
                "--banks {} --servers-per-bank {} from --base-port {} needs ports beyond 65535; \
                 choose a lower --base-port or fewer banks",
                self.banks,
                self.servers_per_bank,
                self.base_port
            ),
        }
    }

    /// The port of server `server` of bank `bank`; the layout must be valid.
    pub fn port(&self, bank: usize, server: usize) -> u16 {
        let port = u32::from(self.base_port) + bank as u32 * BANK_PORT_STRIDE + server as u32;
        port as u16
    }

    pub fn address(&self, bank: usize, server: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port(bank, server)))
    }

    /// Every server's address, bank by bank (the order of `cluster.toml`).
    pub fn addresses(&self) -> Vec<Vec<SocketAddr>> {
        (0..self.banks)
            .map(|bank| {
                (0..self.servers_per_bank)
                    .map(|server| self.address(bank, server))
                    .collect()
            })
            .collect()
    }
}

/// One server of a local cluster: where it listens and where its files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalServer {
    pub bank: usize,
    /// The server's position in its bank.
    pub slot: usize,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub pid_file: PathBuf,
}

/// The servers of `layout` in `data_dir`, bank-major (the order of placement indexes).
pub fn local_servers(data_dir: &Path, layout: &LocalLayout) -> Vec<LocalServer> {
    let mut servers = Vec::with_capacity(layout.banks * layout.servers_per_bank);
    for bank in 0..layout.banks {
        for slot in 0..layout.servers_per_bank {
            let name = format!("bank-{bank}-server-{slot}");
            servers.push(LocalServer {
                bank,
                slot,
                address: layout.address(bank, slot),
                data_dir: data_dir.join(&name),
                log_file: data_dir.join(format!("{name}.log")),
                pid_file: data_dir.join(format!("{name}.pid")),
            });
        }
    }
    servers
}

/// A data directory ready to start servers from: its key and cluster file exist and agree with
/// the layout, and this process holds its lock.
#[derive(Debug)]
pub struct PreparedCluster {
    data_dir: PathBuf,
    layout: LocalLayout,
    config: ClusterConfig,
    created_key: bool,
    /// Holds the `flock` on `up.lock` for as long as the cluster runs. Opened close-on-exec, so
    /// the servers do not inherit (and keep) it.
    lock: File,
}

impl PreparedCluster {
    /// The data directory, made absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn layout(&self) -> &LocalLayout {
        &self.layout
    }

    /// The loaded `cluster.toml`.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether this run made the cluster key (a first run) rather than reusing one.
    pub fn created_key(&self) -> bool {
        self.created_key
    }
}

/// Make `data_dir` ready for `layout`: create it, take its lock, then reuse its key and
/// `cluster.toml` or, on a first run, write new ones.
///
/// An existing `cluster.toml` that describes another layout is an error rather than rewritten:
/// the servers' data directories belong to the addresses it lists, and moving records to other
/// addresses without telling anyone would look like a changed cluster to every client.
pub fn prepare(data_dir: &Path, layout: LocalLayout) -> Result<PreparedCluster> {
    layout.validate()?;
    if data_dir.exists() && !data_dir.is_dir() {
        bail!("data directory {} is not a directory", data_dir.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot use data directory {}", data_dir.display()))?;
    let lock = lock_data_dir(&data_dir)?;
    let cluster_file = data_dir.join(CLUSTER_FILE_NAME);
    let key_file = data_dir.join(KEY_FILE_NAME);
    let mut created_key = false;
    if cluster_file.exists() {
        let config = ClusterConfig::load(&cluster_file)?;
        check_layout(&config, &layout)?;
        if !config.key_file.exists() {
            bail!(
                "{} exists but its key file {} is missing: without it the servers' records cannot \
                 be checked; restore the key or use another --data directory",
                cluster_file.display(),
                config.key_file.display()
            );
        }
        config.load_key()?;
    } else {
        if key_file.exists() {
            // A first run that stopped between writing the key and the cluster file.
            crate::config::load_key_file(&key_file)?;
        } else {
            let mut bytes = [0u8; CLUSTER_KEY_BYTES];
            os_random_fill(&mut bytes);
            write_key_file(&key_file, &ClusterKey::from_bytes(bytes))
                .with_context(|| format!("cannot create key file {}", key_file.display()))?;
            created_key = true;
        }
        let file = ClusterFile {
            key_file: KEY_FILE_NAME.into(),
            banks: layout
                .addresses()
                .into_iter()
                .map(|bank| BankConfig {
                    servers: bank.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        };
        write_atomically(&cluster_file, file.to_toml().as_bytes())?;
    }
    let config = ClusterConfig::load(&cluster_file)?;
    Ok(PreparedCluster {
        data_dir,
        layout,
        config,
        created_key,
        lock,
    })
}

/// One `votefs up` per data directory: a second one would start servers on the same records.
fn lock_data_dir(data_dir: &Path) -> Result<File> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    // SAFETY: flock(2) on a file descriptor we own and keep open.
    let result = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another votefs up is already running on data directory {}",
                data_dir.display()
            );
        }
        return Err(anyhow!(error).context(format!("cannot lock {}", path.display())));
    }
    Ok(lock)
}

/// Compare an existing cluster file with the layout asked for and name every difference.
fn check_layout(config: &ClusterConfig, layout: &LocalLayout) -> Result<()> {
    let placement = &config.placement;
    let mut differences = Vec::new();
    if placement.bank_count() != layout.banks {
        differences.push(format!(
            "--banks {} but it has {} banks",
            layout.banks,
            placement.bank_count()
        ));
    }
    if placement.servers_per_bank() != layout.servers_per_bank {
        differences.push(format!(
            "--servers-per-bank {} but it has {} servers per bank",
            layout.servers_per_bank,
            placement.servers_per_bank()
        ));
    }
    let existing_base_port = placement.address(0).port();
    if existing_base_port != layout.base_port {
        differences.push(format!(
            "--base-port {} but its first server is on port {existing_base_port}",
            layout.base_port
        ));
    }
    if differences.is_empty() {
        let expected: Vec<SocketAddr> = layout.addresses().into_iter().flatten().collect();
        let existing: Vec<SocketAddr> = (0..placement.server_count())
            .map(|index| placement.address(index))
            .collect();
        if expected != existing {
            differences.push(format!(
                "it lists other addresses than the ones --base-port {} gives",
                layout.base_port
            ));
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    bail!(
        "{} was written for another layout: {}; pass the options it was made with, or use another \
         --data directory",
        config.path.display(),
        differences.join("; ")
    )
}

/// Write `path` through a temporary file and a rename, so that a crash never leaves half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temporary_name = path.as_os_str().to_owned();
    temporary_name.push(".new");
    let temporary = PathBuf::from(temporary_name);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// When the supervisor starts a server again after its process exited.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Wait before the first restart.
    pub initial_backoff: Duration,
    /// The wait doubles after each quick failure, up to this.
    pub max_backoff: Duration,
    /// A server that stayed up this long before exiting restarts after `initial_backoff` again.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// How the supervisor tells a hung server from a live one: a process can be alive yet never
/// answer (deadlocked, stopped, stuck on a dead disk), and only exits are seen otherwise.
///
/// Every `interval` the supervisor sends the server an authenticated `Identify` request. A server
/// that answered at least once and then fails `failures_before_kill` probes in a row is killed
/// (SIGKILL) and restarted like one that exited. A server that has not answered yet may still be
/// recovering a large log, so it is only killed once `startup_grace` passes without any answer.
#[derive(Clone, Debug)]
pub struct HealthProbePolicy {
    /// Time between two probes of one server.
    pub interval: Duration,
    /// How long one probe (connecting included) may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failed probes after which a server that answered before counts as hung; 0
    /// counts as 1.
    pub failures_before_kill: u32,
    /// How long a server that never answered a probe may take before it counts as hung.
    pub startup_grace: Duration,
}

impl Default for HealthProbePolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(3),
            // With the interval and timeout above: about 10 s without an answer. A full
            // stop-the-world moment (a slow fsync, swapping) should not cost a restart.
            failures_before_kill: 3,
            // Recovering a log scans it all; give a big one far more than the usual seconds.
            startup_grace: Duration::from_secs(300),
        }
    }
}

/// How [`LocalCluster::start`] runs the servers.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// The `votefs` executable to run as `votefs server ...`.
    pub executable: PathBuf,
    /// Pass `--allow-fault-injection` to every server (for demos, tests and the chaos runner).
    pub allow_fault_injection: bool,
    /// How long a server may take to print its readiness line (recovering a large log included).
    pub ready_timeout: Duration,
    /// How long a server may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    pub restart: RestartPolicy,
    /// How running servers are checked for a hang; `None` watches only for exits.
    pub health_probe: Option<HealthProbePolicy>,
}

impl StartOptions {
    pub fn new(executable: PathBuf) -> Self {
        Self {
            executable,
            allow_fault_injection: false,
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(5),
            restart: RestartPolicy::default(),
            health_probe: Some(HealthProbePolicy::default()),
        }
    }
}

/// What the supervisor of one server shares with [`LocalCluster`].
#[derive(Debug)]
struct ServerShared {
    server: LocalServer,
    restart_count: AtomicU64,
    /// The running process's id; 0 while none runs.
    pid: AtomicU32,
    /// Health probes answered, over every run of the server (tests wait on it).
    probes_answered: AtomicU64,
}

/// A running local cluster: every server a child process, each watched by a supervisor task that
/// restarts it when it exits.
///
/// Call [`LocalCluster::stop`] to end it. Dropping it without `stop` only asks the supervisors to
/// stop their servers, without waiting for them.
pub struct LocalCluster {
    data_dir: PathBuf,
    layout: LocalLayout,
    config: ClusterConfig,
    servers: Vec<Arc<ServerShared>>,
    supervisors: Vec<JoinHandle<()>>,
    stopping: watch::Sender<bool>,
    _lock: File,
}

impl LocalCluster {
    /// Start every server of `prepared` and wait until each accepts connections (it prints its
    /// readiness line). If one fails to start, stop the others and return an error naming the
    /// server, its last log line and its log file.
    pub async fn start(prepared: PreparedCluster, options: StartOptions) -> Result<Self> {
        let PreparedCluster {
            data_dir,
            layout,
            config,
            created_key: _,
            lock,
        } = prepared;
        // Loaded before any server starts: the health probes speak the authenticated protocol.
        let cluster_key = config
            .load_key()
            .context("cannot load the cluster key for the health probes")?;
        let options = Arc::new(options);
        let servers: Vec<Arc<ServerShared>> = local_servers(&data_dir, &layout)
            .into_iter()
            .map(|server| {
                Arc::new(ServerShared {
                    server,
                    restart_count: AtomicU64::new(0),
                    pid: AtomicU32::new(0),
                    probes_answered: AtomicU64::new(0),
                })
            })
            .collect();
        let deadline = Instant::now() + options.ready_timeout;
        let mut launched = Vec::with_capacity(servers.len());
        let mut failure = None;
        // Start them all first, then wait: startup takes as long as the slowest server.
        for shared in &servers {
            match launch(shared, &options, &config.key_file) {
                Ok(launch) => launched.push(launch),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if failure.is_none() {
            for (shared, launch) in servers.iter().zip(launched.iter_mut()) {
                if let Err(error) = wait_until_ready(shared, launch, deadline).await {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failure {
            for (shared, launch) in servers.iter().zip(launched.iter_mut()) {
                terminate(&mut launch.child, options.stop_timeout).await;
                shared.clear_pid();
            }
            return Err(error);
        }
        let (stopping, _) = watch::channel(false);
        let supervisors = servers
            .iter()
            .zip(launched)
            .map(|(shared, launch)| {
                tokio::spawn(supervise(
                    Arc::clone(shared),
                    launch.child,
                    Arc::clone(&options),
                    config.key_file.clone(),
                    cluster_key.clone(),
                    stopping.subscribe(),
                ))
            })
            .collect();
        Ok(Self {
            data_dir,
            layout,
            config,
            servers,
            supervisors,
            stopping,
            _lock: lock,
        })
    }

    /// The loaded `cluster.toml` of this cluster.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The path of `cluster.toml`.
    pub fn cluster_file(&self) -> &Path {
        &self.config.path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn layout(&self) -> &LocalLayout {
        &self.layout
    }

    /// Every server, bank-major (the order of placement indexes).
    pub fn servers(&self) -> Vec<LocalServer> {
        self.servers
            .iter()
            .map(|shared| shared.server.clone())
            .collect()
    }

    /// How many times the supervisor started each server again after its process exited or was
    /// killed as hung, bank-major.
    pub fn restart_counts(&self) -> Vec<u64> {
        self.servers
            .iter()
            .map(|shared| shared.restart_count.load(Ordering::Relaxed))
            .collect()
    }

    /// The process id of each server, bank-major; `None` while one is between exit and restart.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.servers
            .iter()
            .map(|shared| match shared.pid.load(Ordering::Relaxed) {
                0 => None,
                pid => Some(pid),
            })
            .collect()
    }

    /// Stop every server (SIGTERM, then SIGKILL after the stop timeout) and wait until all have
    /// exited. The supervisors restart nothing once this has begun.
    pub async fn stop(mut self) {
        self.stopping.send_replace(true);
        for supervisor in std::mem::take(&mut self.supervisors) {
            if let Err(error) = supervisor.await {
                tracing::warn!("a server supervisor failed: {error}");
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stopping.send_replace(true);
    }
}

impl ServerShared {
    fn describe(&self) -> String {
        format!(
            "bank {} server {} ({})",
            self.server.bank, self.server.slot, self.server.address
        )
    }

    fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
        if let Err(error) = write_atomically(&self.server.pid_file, format!("{pid}\n").as_bytes()) {
            tracing::warn!("{error:#}");
        }
    }

    fn clear_pid(&self) {
        self.pid.store(0, Ordering::Relaxed);
        match std::fs::remove_file(&self.server.pid_file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!("cannot remove {}: {error}", self.server.pid_file.display())
            }
        }
    }
}

/// A server process just started.
struct Launch {
    child: Child,
    /// Answers once the server printed its readiness line; dropped if its output ended first.
    ready: Option<oneshot::Receiver<()>>,
    /// Where this run's output starts in the log file.
    log_offset: u64,
}

/// Start one server process. Its standard error goes straight to its log; its standard output
/// passes through this process (into the same log) so that the readiness line can be seen.
fn launch(shared: &ServerShared, options: &StartOptions, key_file: &Path) -> Result<Launch> {
    let server = &shared.server;
    std::fs::create_dir_all(&server.data_dir).with_context(|| {
        format!(
            "cannot create server directory {}",
            server.data_dir.display()
        )
    })?;
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log_file)
            .with_context(|| format!("cannot open log file {}", server.log_file.display()))
    };
    let mut log = open_log()?;
    let write_header = writeln!(
        log,
        "--- votefs up: starting {} (restart {}) ---",
        shared.describe(),
        shared.restart_count.load(Ordering::Relaxed)
    );
    write_header
        .and_then(|()| log.flush())
        .with_context(|| format!("cannot write log file {}", server.log_file.display()))?;
    let log_offset = log
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot read log file {}", server.log_file.display()))?;
    let mut command = Command::new(&options.executable);
    command
        .arg("server")
        .arg("--listen")
        .arg(server.address.to_string())
        .arg("--data")
        .arg(&server.data_dir)
        .arg("--key-file")
        .arg(key_file)
        .env("NO_COLOR", "1")
        // Read by `votefs server` and reported in its stats, for `votefs status`.
        .env(
            RESTARTS_ENVIRONMENT_VARIABLE,
            shared.restart_count.load(Ordering::Relaxed).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(open_log()?))
        // Terminal Ctrl-C reaches the whole foreground process group: in a group of their own the
        // servers hear of it only from `votefs up`, which stops them after unmounting, instead
        // of exiting under the supervisor, which would start them again.
        .process_group(0)
        // A safety net if this process dies before it can stop them (see `stop`).
        .kill_on_drop(true);
    if options.allow_fault_injection {
        command.arg("--allow-fault-injection");
    }
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent. The kernel then
    // sends the server SIGTERM when the thread that started it ends: the runtime's threads (and
    // the main thread, which starts the first servers) live as long as `votefs up`, so a
    // `votefs up` killed without running its shutdown does not leave servers holding its ports.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| {
        format!(
            "cannot start {} for {}",
            options.executable.display(),
            shared.describe()
        )
    })?;
    if let Some(pid) = child.id() {
        shared.set_pid(pid);
    }
    let (ready_sender, ready) = oneshot::channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_output(stdout, log, ready_sender));
    }
    Ok(Launch {
        child,
        ready: Some(ready),
        log_offset,
    })
}

/// Copy a server's standard output into its log until it closes, and report its readiness line.
/// Reading to the end also keeps the server from writing into a closed pipe.
async fn forward_output(
    stdout: tokio::process::ChildStdout,
    mut log: File,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A log that cannot be written loses the line; the server's own stderr log still works.
        let _ = writeln!(log, "{line}");
        if line.starts_with(READY_LINE_PREFIX) {
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        }
    }
}

async fn wait_until_ready(
    shared: &ServerShared,
    launch: &mut Launch,
    deadline: Instant,
) -> Result<()> {
    let log_file = &shared.server.log_file;
    let Some(ready) = launch.ready.take() else {
        return Ok(());
    };
    let failure = tokio::select! {
        biased;
        answer = ready => match answer {
            Ok(()) => return Ok(()),
            // Its output ended without the line: the process is exiting.
            Err(_) => match tokio::time::timeout_at(deadline, launch.child.wait()).await {
                Ok(Ok(status)) => format!("it exited with {status}"),
                Ok(Err(error)) => format!("waiting for it failed: {error}"),
                Err(_) => "it closed its output without printing its readiness line".to_string(),
            },
        },
        status = launch.child.wait() => match status {
            Ok(status) => format!("it exited with {status}"),
            Err(error) => format!("waiting for it failed: {error}"),
        },
        _ = tokio::time::sleep_until(deadline) => {
            "it did not print its readiness line in time".to_string()
        }
    };
    let last_line = match last_log_line(log_file, launch.log_offset) {
        Some(line) => format!(" ({line})"),
        None => String::new(),
    };
    bail!(
        "{} did not start: {failure}{last_line}; see {}",
        shared.describe(),
        log_file.display()
    )
}

/// The most telling line a server wrote to its log since `offset`: its error message (`votefs:
/// ...`) if it printed one, else its last line. At most 300 characters.
fn last_log_line(log_file: &Path, offset: u64) -> Option<String> {
    let mut file = File::open(log_file).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(1 << 20).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|line| line.starts_with("votefs:"))
        .or(lines.last())?;
    Some(line.chars().take(300).collect())
}

/// Ask a server to stop (SIGTERM), give it `stop_timeout`, then kill it; reap it either way.
async fn terminate(child: &mut Child, stop_timeout: Duration) -> Option<ExitStatus> {
    // `id` is `None` once the process has been reaped, so the signal never reaches a recycled pid.
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(stop_timeout, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// Completes once the cluster is stopping (or its [`LocalCluster`] is gone).
async fn stop_requested(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here: it must not live across an await.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Why a supervised server process ended.
enum Ended {
    /// It exited by itself (or was killed by someone else).
    Exited(std::io::Result<ExitStatus>),
    /// The supervisor killed it because it stopped answering; the reason says for how long.
    Hung(String),
}

/// Watch one server: when its process exits, or stops answering health probes and is killed,
/// log why and start it again after a backoff, until the cluster stops. Stopping wins over
/// restarting: it is checked after every exit and during every backoff, so a server stopped on
/// purpose is never started again.
async fn supervise(
    shared: Arc<ServerShared>,
    child: Child,
    options: Arc<StartOptions>,
    key_file: PathBuf,
    cluster_key: ClusterKey,
    mut stopping: watch::Receiver<bool>,
) {
    let policy = &options.restart;
    let mut backoff = policy.initial_backoff;
    let mut running = Some((child, Instant::now()));
    loop {
        if let Some((mut child, started_at)) = running.take() {
            let health = async {
                match &options.health_probe {
                    Some(probe) => watch_health(&shared, probe, &cluster_key, started_at).await,
                    None => std::future::pending().await,
                }
            };
            let ended = tokio::select! {
                status = child.wait() => Ended::Exited(status),
                reason = health => Ended::Hung(reason),
                _ = stop_requested(&mut stopping) => {
                    terminate(&mut child, options.stop_timeout).await;
                    shared.clear_pid();
                    return;
                }
            };
            let reason = match ended {
                Ended::Exited(Ok(status)) => format!("exited with {status}"),
                Ended::Exited(Err(error)) => format!("exited with an unknown status ({error})"),
                Ended::Hung(reason) => {
                    // Its own log should say why it ended, next to its last words.
                    append_log_line(
                        &shared.server.log_file,
                        &format!("--- votefs up: killing {}: {reason} ---", shared.describe()),
                    );
                    // SIGKILL: a hung process may not handle SIGTERM, and waiting for it to would
                    // only keep the server unavailable longer.
                    let _ = child.start_kill();
                    let status = tokio::select! {
                        status = child.wait() => status,
                        _ = stop_requested(&mut stopping) => {
                            // Dropping the child reaps it in the background (kill_on_drop).
                            shared.clear_pid();
                            return;
                        }
                    };
                    match status {
                        Ok(status) => format!("{reason}; killed it with SIGKILL ({status})"),
                        Err(error) => format!("{reason}; killed it with SIGKILL ({error})"),
                    }
                }
            };
            shared.clear_pid();
            if *stopping.borrow() {
                return;
            }
            if started_at.elapsed() >= policy.stable_after {
                backoff = policy.initial_backoff;
            }
            tracing::warn!(
                "{} {reason}; restarting it in {} ms (see {})",
                shared.describe(),
                backoff.as_millis(),
                shared.server.log_file.display()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&mut stopping) => return,
        }
        backoff = (backoff * 2).min(policy.max_backoff);
        let restarts = shared.restart_count.fetch_add(1, Ordering::Relaxed) + 1;
        match launch(&shared, &options, &key_file) {
            Ok(launch) => {
                tracing::info!("restarted {} (restart {restarts})", shared.describe());
                running = Some((launch.child, Instant::now()));
            }
            Err(error) => tracing::warn!(
                "cannot restart {}: {error:#}; trying again in {} ms",
                shared.describe(),
                backoff.as_millis()
            ),
        }
    }
}

/// Append one line to a server's log, best effort: the same line also goes to `votefs up`'s own
/// log, so losing it here loses little.
fn append_log_line(log_file: &Path, line: &str) {
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .and_then(|mut log| writeln!(log, "{line}"));
    if let Err(error) = appended {
        tracing::warn!("cannot write log file {}: {error}", log_file.display());
    }
}

/// Probe the server of `shared` (a process started at `started_at`) with `Identify` every
/// `policy.interval` until it counts as hung, and return why. Never returns while it answers.
async fn watch_health(
    shared: &ServerShared,
    policy: &HealthProbePolicy,
    cluster_key: &ClusterKey,
    started_at: Instant,
) -> String {
    let env = TokioEnv::new();
    let link = ServerLink::new(
        env.clone(),
        shared.server.address,
        cluster_key.clone(),
        RpcOptions {
            connect_timeout: policy.timeout,
            request_timeout: policy.timeout,
            connections_per_server: 1,
            // One probe at a time.
            queue_depth: 1,
            // Every probe may connect afresh: a refused connect is a failed probe of its own.
            reconnect_backoff: Duration::ZERO,
        },
    );
    // Request ids are remembered by the server for duplicate detection: start at a random one
    // rather than at 0 on every run.
    let mut request_id = random_u128(&env);
    let mut tracker = HealthTracker::new(started_at);
    let mut ticks = tokio::time::interval(policy.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        request_id = request_id.wrapping_add(1);
        // Connect and answer are each bounded by the link; this bounds their sum as well.
        let answer = tokio::time::timeout(
            policy.timeout.saturating_mul(2),
            link.call(request_id, Request::Identify),
        )
        .await;
        let outcome = match answer {
            // Any answer will do: it shows the server reads, decides and writes.
            Ok(Ok(_)) => {
                shared.probes_answered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in time".to_string()),
        };
        if let Some(reason) = tracker.record(outcome, Instant::now(), policy) {
            return reason;
        }
    }
}

/// The probe history of one server process, which decides when it counts as hung.
#[derive(Debug)]
struct HealthTracker {
    started_at: Instant,
    /// When the process last answered; `None` while it never has (it may still be starting).
    last_answer_at: Option<Instant>,
    consecutive_failures: u32,
}

impl HealthTracker {
    fn new(started_at: Instant) -> Self {
        Self {
            started_at,
            last_answer_at: None,
            consecutive_failures: 0,
        }
    }

    /// Count the outcome of one probe finished at `now`; `Some(reason)` once the server counts
    /// as hung.
    fn record(
        &mut self,
        outcome: Result<(), String>,
        now: Instant,
        policy: &HealthProbePolicy,
    ) -> Option<String> {
        let error = match outcome {
            Ok(()) => {
                self.last_answer_at = Some(now);
                self.consecutive_failures = 0;
                return None;
            }
            Err(error) => error,
        };
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.last_answer_at {
            Some(last_answer_at) if self.consecutive_failures >= policy.failures_before_kill => {
                Some(format!(
                    "did not answer a health probe for {:.1} s ({} probes in a row failed, the \
                     last with: {error})",
                    now.saturating_duration_since(last_answer_at).as_secs_f64(),
                    self.consecutive_failures
                ))
            }
            None if now.saturating_duration_since(self.started_at) >= policy.startup_grace => {
                Some(format!(
                    "did not answer a health probe for {:.1} s since it started (the last \
                     probe failed with: {error})",
                    now.saturating_duration_since(self.started_at).as_secs_f64()
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layout_is_the_original_one() {
        let layout = LocalLayout::default();
        layout.validate().unwrap();
        let ports: Vec<Vec<u16>> = layout
            .addresses()
            .iter()
            .map(|bank| bank.iter().map(SocketAddr::port).collect())
            .collect();
        assert_eq!(
            ports,
            vec![vec![7000, 7001], vec![8000, 8001], vec![9000, 9001]]
        );
        let servers = local_servers(Path::new("/d"), &layout);
        assert_eq!(servers.len(), 6);
        assert_eq!(servers[3].bank, 1);
        assert_eq!(servers[3].slot, 1);
        assert_eq!(servers[3].address.port(), 8001);
        assert_eq!(servers[3].data_dir, Path::new("/d/bank-1-server-1"));
        assert_eq!(servers[3].log_file, Path::new("/d/bank-1-server-1.log"));
        assert_eq!(servers[3].pid_file, Path::new("/d/bank-1-server-1.pid"));
    }

    #[test]
    fn bad_layouts_name_the_option() {
        let check = |banks, servers_per_bank, base_port, needle: &str| {
            let layout = LocalLayout {
                banks,
                servers_per_bank,
                base_port,
            };
            let error = layout.validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{layout:?}: {error}");
        };
        check(0, 2, 7000, "--banks");
        check(3, 0, 7000, "--servers-per-bank");
        check(3, 1001, 7000, "--servers-per-bank");
        check(3, 2, 0, "--base-port");
        check(3, 2, 64000, "65535");
        check(usize::MAX, 2, 7000, "65535");
        let last = LocalLayout {
            banks: 1,
            servers_per_bank: 1,
            base_port: u16::MAX,
        };
        last.validate().unwrap();
        assert_eq!(last.port(0, 0), u16::MAX);
    }

    /// Held by tests that start processes and by tests that need a dropped `up.lock` to be free
    /// at once. A process forked by another thread shares every open file (the lock file too)
    /// until it reaches exec, which closes them: the `flock` then outlives the [`PreparedCluster`]
    /// that was dropped, and a new `prepare` of the same directory fails.
    ///
    /// A tokio mutex, so that the asynchronous tests can hold it across awaits.
    static FORKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[test]
    fn prepare_reuses_the_key_and_refuses_another_layout() {
        use std::os::unix::fs::PermissionsExt;
        let _no_forks = FORKING.blocking_lock();
        let scratch = tempfile::tempdir().unwrap();
        let data_dir = scratch.path().join("nested").join("data");
        let layout = LocalLayout {
            base_port: 17000,
            ..LocalLayout::default()
        };
        let prepared = prepare(&data_dir, layout).unwrap();
        assert!(prepared.created_key());
        let key_file = data_dir.join(KEY_FILE_NAME);
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(prepared.config().placement.address(5).port(), 19001);
        let error = prepare(&data_dir, layout).unwrap_err().to_string();
        assert!(error.contains("already running"), "{error}");
        drop(prepared);

        let key = std::fs::read(&key_file).unwrap();
        let cluster = std::fs::read(data_dir.join(CLUSTER_FILE_NAME)).unwrap();
        let again = prepare(&data_dir, layout).unwrap();
        assert!(!again.created_key());
        drop(again);
        assert_eq!(std::fs::read(&key_file).unwrap(), key);
        assert_eq!(
            std::fs::read(data_dir.join(CLUSTER_FILE_NAME)).unwrap(),
            cluster
        );

        let other = LocalLayout {
            banks: 4,
            servers_per_bank: 1,
            base_port: 17000,
        };
        let error = prepare(&data_dir, other).unwrap_err().to_string();
        assert!(error.contains("--banks 4 but it has 3 banks"), "{error}");
        assert!(error.contains("--servers-per-bank 1"), "{error}");
        assert!(!error.contains("--base-port"), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
        assert_eq!(
            std::fs::read(data_dir.join(CLUSTER_FILE_NAME)).unwrap(),
            cluster
        );

        std::fs::remove_file(&key_file).unwrap();
        let error = prepare(&data_dir, layout).unwrap_err().to_string();
        assert!(error.contains("key file"), "{error}");
    }

    fn probe_policy() -> HealthProbePolicy {
        HealthProbePolicy {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures_before_kill: 3,
            startup_grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_server_that_answered_is_hung_after_consecutive_failures() {
        let policy = probe_policy();
        let started_at = Instant::now();
        let at = |seconds: u64| started_at + Duration::from_secs(seconds);
        let mut tracker = HealthTracker::new(started_at);
        assert_eq!(tracker.record(Ok(()), at(1), &policy), None);
        assert_eq!(tracker.record(Err("a".into()), at(2), &policy), None);
        assert_eq!(tracker.record(Err("b".into()), at(3), &policy), None);
        // An answer in between starts the count again.
        assert_eq!(tracker.record(Ok(()), at(4), &policy), None);
        assert_eq!(tracker.record(Err("c".into()), at(5), &policy), None);
        assert_eq!(tracker.record(Err("d".into()), at(6), &policy), None);
        let reason = tracker
            .record(Err("no answer in time".into()), at(7), &policy)
            .expect("three failures in a row after an answer");
        assert_eq!(
            reason,
            "did not answer a health probe for 3.0 s (3 probes in a row failed, the last with: \
             no answer in time)"
        );
    }

    #[test]
    fn a_starting_server_gets_the_startup_grace() {
        let policy = probe_policy();
        let started_at = Instant::now();
        let at = |seconds: u64| started_at + Duration::from_secs(seconds);
        let mut tracker = HealthTracker::new(started_at);
        // Still recovering its log: many failures, but within the grace.
        for second in 1..60 {
            assert_eq!(
                tracker.record(Err("refused".into()), at(second), &policy),
                None
            );
        }
        let reason = tracker
            .record(Err("refused".into()), at(60), &policy)
            .expect("no answer within the startup grace");
        assert!(reason.contains("for 60.0 s since it started"), "{reason}");

        // Once it answered, the grace no longer matters, only consecutive failures do.
        let mut tracker = HealthTracker::new(started_at);
        assert_eq!(tracker.record(Ok(()), at(100), &policy), None);
        assert_eq!(tracker.record(Err("x".into()), at(101), &policy), None);
        assert_eq!(tracker.record(Err("x".into()), at(102), &policy), None);
        assert!(tracker.record(Err("x".into()), at(103), &policy).is_some());

        let never_twice = HealthProbePolicy {
            failures_before_kill: 0,
            ..policy
        };
        let mut tracker = HealthTracker::new(started_at);
        assert_eq!(tracker.record(Ok(()), at(1), &never_twice), None);
        assert!(tracker
            .record(Err("x".into()), at(2), &never_twice)
            .is_some());
    }

    /// Environment variables the supervisor tests' stand-in server reads its arguments from.
    const STAND_IN_LISTEN: &str = "VOTEFS_STAND_IN_LISTEN";
    const STAND_IN_DATA: &str = "VOTEFS_STAND_IN_DATA";
    const STAND_IN_KEY_FILE: &str = "VOTEFS_STAND_IN_KEY_FILE";

    /// Not a test on its own (it returns at once in a normal run): the body of the server process
    /// the supervisor tests start. The `votefs` executable is not built for the library's unit
    /// tests, so [`stand_in_executable`] runs this test binary instead, filtered to this test,
    /// and this serves the real [`crate::server::Server`] just as `votefs server` does.
    #[test]
    fn stand_in_server() {
        use crate::env::Env;
        let (Ok(listen), Ok(data), Ok(key_file)) = (
            std::env::var(STAND_IN_LISTEN),
            std::env::var(STAND_IN_DATA),
            std::env::var(STAND_IN_KEY_FILE),
        ) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let key = crate::config::load_key_file(Path::new(&key_file)).unwrap();
            let disk = crate::disk::file_disk::FileDisk::open(&data).unwrap();
            let env = TokioEnv::new();
            let listener = env.bind(listen.parse().unwrap()).await.unwrap();
            let address = env.local_address(&listener).unwrap();
            let (server, _report) = crate::server::Server::open(
                env,
                disk,
                key,
                crate::server::ServerOptions::default(),
            )
            .await
            .unwrap();
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            // The test harness may have started a line ("test ... "): begin a fresh one.
            println!("\n{READY_LINE_PREFIX}{address}");
            std::io::stdout().flush().unwrap();
            let shutdown = async move {
                terminate.recv().await;
            };
            server.serve(listener, shutdown).await.unwrap();
        });
    }

    /// A script in `directory` that takes `votefs server`'s arguments and runs
    /// [`stand_in_server`] in this test binary (`exec`, so the process id stays the same).
    fn stand_in_executable(directory: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let test_binary = std::env::current_exe().unwrap();
        let test_binary = test_binary.to_str().unwrap();
        assert!(!test_binary.contains('\''), "{test_binary}");
        let script = format!(
            "#!/bin/sh\n\
             # Arguments: server --listen ADDRESS --data DIRECTORY --key-file FILE\n\
             exec env {STAND_IN_LISTEN}=\"$3\" {STAND_IN_DATA}=\"$5\" {STAND_IN_KEY_FILE}=\"$7\" \
             '{test_binary}' --exact local_cluster::tests::stand_in_server --nocapture \
             --test-threads=1\n"
        );
        // Written by a `cp` child rather than by this process: a process forked by another test
        // thread while this one held the file open for writing would keep it open until its exec,
        // and executing the script then fails with "text file busy".
        let text = directory.join("stand-in-votefs.txt");
        std::fs::write(&text, script).unwrap();
        let path = directory.join("stand-in-votefs");
        let copied = std::process::Command::new("cp")
            .arg(&text)
            .arg(&path)
            .status()
            .unwrap();
        assert!(copied.success(), "cp failed: {copied}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A port below the kernel's ephemeral range that is free right now.
    fn free_port() -> u16 {
        let mut seed = [0u8; 2];
        for _attempt in 0..100 {
            os_random_fill(&mut seed);
            let port = 10_000 + u16::from_le_bytes(seed) % 20_000;
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
        panic!("found no free port");
    }

    /// Poll `condition` until it holds; fail the test naming `what` after `limit`.
    async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
        let give_up_at = Instant::now() + limit;
        while !condition() {
            assert!(
                Instant::now() < give_up_at,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of `name` in the environment process `pid` started with.
    fn process_environment_variable(pid: u32, name: &str) -> Option<String> {
        let environment = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let prefix = format!("{name}=");
        environment
            .split(|byte| *byte == 0)
            .filter_map(|entry| std::str::from_utf8(entry).ok())
            .find_map(|entry| entry.strip_prefix(&prefix).map(str::to_string))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_server_is_killed_and_restarted_with_its_restart_count() {
        const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
        let _forks = FORKING.lock().await;
        let scratch = tempfile::tempdir().unwrap();
        let layout = LocalLayout {
            banks: 1,
            servers_per_bank: 1,
            base_port: free_port(),
        };
        let prepared = prepare(&scratch.path().join("data"), layout).unwrap();
        let key = prepared.config().load_key().unwrap();
        let mut options = StartOptions::new(stand_in_executable(scratch.path()));
        options.restart.initial_backoff = Duration::from_millis(10);
        options.health_probe = Some(HealthProbePolicy {
            interval: Duration::from_millis(100),
            // Short enough for a quick test, long enough that a loaded machine does not make the
            // restarted server look hung too.
            timeout: Duration::from_secs(1),
            failures_before_kill: 3,
            startup_grace: Duration::from_secs(60),
        });
        let cluster = LocalCluster::start(prepared, options).await.unwrap();
        let shared = Arc::clone(&cluster.servers[0]);
        let first_pid = cluster.pids()[0].expect("a running server");
        assert_eq!(
            process_environment_variable(first_pid, RESTARTS_ENVIRONMENT_VARIABLE).as_deref(),
            Some("0")
        );

        // Hang it only once the supervisor has seen it answer, so that the consecutive-failure
        // rule (not the startup grace) is what finds it.
        wait_until("the first server answers a probe", EVENT_TIMEOUT, || {
            shared.probes_answered.load(Ordering::Relaxed) > 0
        })
        .await;
        // SAFETY: kill(2) on the server process this test started; it is alive (its supervisor
        // has not seen it exit, since it just answered).
        assert_eq!(
            unsafe { libc::kill(first_pid as libc::pid_t, libc::SIGSTOP) },
            0
        );

        wait_until("the hung server is restarted", EVENT_TIMEOUT, || {
            cluster.restart_counts() == [1] && cluster.pids()[0].is_some_and(|pid| pid != first_pid)
        })
        .await;
        let second_pid = cluster.pids()[0].unwrap();
        let log = std::fs::read_to_string(&cluster.servers()[0].log_file).unwrap();
        assert!(
            log.contains("--- votefs up: killing bank 0 server 0 ")
                && log.contains("did not answer a health probe for"),
            "the server's log says why it was killed: {log}"
        );

        // The new process answers: the supervisor's probes and a client of our own.
        let answered_before = shared.probes_answered.load(Ordering::Relaxed);
        wait_until(
            "the restarted server answers a probe",
            EVENT_TIMEOUT,
            || shared.probes_answered.load(Ordering::Relaxed) > answered_before,
        )
        .await;
        let env = TokioEnv::new();
        let link = ServerLink::new(
            env.clone(),
            layout.address(0, 0),
            key,
            RpcOptions::default(),
        );
        let answer = link.call(random_u128(&env), Request::Identify).await;
        assert!(
            matches!(answer, Ok(crate::proto::Response::Identity(_))),
            "{answer:?}"
        );
        assert_eq!(cluster.restart_counts(), [1], "one restart, no more");
        assert_eq!(cluster.pids(), [Some(second_pid)]);
        // Read only now: until the new process has executed its program (it answered, so it has),
        // /proc shows the environment of the supervisor it was forked from.
        assert_eq!(
            process_environment_variable(second_pid, RESTARTS_ENVIRONMENT_VARIABLE).as_deref(),
            Some("1")
        );

        // Stopping on purpose restarts nothing.
        cluster.stop().await;
        assert!(!shared.server.pid_file.exists());
        assert_eq!(shared.pid.load(Ordering::Relaxed), 0);
        assert_eq!(shared.restart_count.load(Ordering::Relaxed), 1);
    }
}
