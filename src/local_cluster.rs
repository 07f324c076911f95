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
use crate::env::tokio_env::os_random_fill;
use crate::record::{ClusterKey, CLUSTER_KEY_BYTES};

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
}

impl StartOptions {
    pub fn new(executable: PathBuf) -> Self {
        Self {
            executable,
            allow_fault_injection: false,
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(5),
            restart: RestartPolicy::default(),
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
        let options = Arc::new(options);
        let servers: Vec<Arc<ServerShared>> = local_servers(&data_dir, &layout)
            .into_iter()
            .map(|server| {
                Arc::new(ServerShared {
                    server,
                    restart_count: AtomicU64::new(0),
                    pid: AtomicU32::new(0),
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

    /// How many times the supervisor started each server again after its process exited,
    /// bank-major.
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

/// Watch one server: when its process exits, log it and start it again after a backoff, until
/// the cluster stops. Stopping wins over restarting: it is checked after every exit and during
/// every backoff.
async fn supervise(
    shared: Arc<ServerShared>,
    child: Child,
    options: Arc<StartOptions>,
    key_file: PathBuf,
    mut stopping: watch::Receiver<bool>,
) {
    let policy = &options.restart;
    let mut backoff = policy.initial_backoff;
    let mut running = Some((child, Instant::now()));
    loop {
        if let Some((mut child, started_at)) = running.take() {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stop_requested(&mut stopping) => {
                    terminate(&mut child, options.stop_timeout).await;
                    shared.clear_pid();
                    return;
                }
            };
            shared.clear_pid();
            if *stopping.borrow() {
                return;
            }
            if started_at.elapsed() >= policy.stable_after {
                backoff = policy.initial_backoff;
            }
            let status = match status {
                Ok(status) => status.to_string(),
                Err(error) => format!("an unknown status ({error})"),
            };
            tracing::warn!(
                "{} exited with {status}; restarting it in {} ms (see {})",
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

    #[test]
    fn prepare_reuses_the_key_and_refuses_another_layout() {
        use std::os::unix::fs::PermissionsExt;
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
}
