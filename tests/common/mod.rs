//! Shared helpers for the real-runtime integration tests: a cluster of real `votefs server`
//! processes on loopback, a quorum client tuned for tests, direct per-server requests and small
//! polling and data-generation utilities.
//!
//! Every test builds its own cluster in its own temporary directory. Servers listen on ephemeral
//! ports; readiness is the `votefs server listening on ADDR` line (no sleeps). Dropping a
//! [`TestCluster`] kills every server it started, so nothing leaks when a test panics; the tail of
//! each server's log is printed then, to help read the failure.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod mounted;

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use votefs::config::{write_key_file, BankConfig, ClusterConfig, ClusterFile};
use votefs::env::TokioEnv;
use votefs::placement::{Placement, ServerIndex};
use votefs::proto::{DumpEntry, Identity, Request, Response, ServerState, ServerStats};
use votefs::quorum::{ClientOptions, OpenMode, QuorumClient};
use votefs::record::{ClusterKey, Record};
use votefs::rng::SeededRng;
use votefs::rpc::RpcError;

/// The `votefs` binary built for these tests.
pub const VOTEFS: &str = env!("CARGO_BIN_EXE_votefs");

pub type Client = QuorumClient<TokioEnv>;

/// How long a server may take to print its readiness line (recovering a large log included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub banks: usize,
    pub servers_per_bank: usize,
    pub allow_fault_injection: bool,
    /// `--segment-bytes` for every server (the server's default when `None`).
    pub segment_bytes: Option<u64>,
    /// The cluster key; a fixed test key when `None`.
    pub key: Option<ClusterKey>,
    /// Give every server a Prometheus endpoint (`--metrics`).
    pub metrics: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            banks: 3,
            servers_per_bank: 2,
            allow_fault_injection: false,
            segment_bytes: None,
            key: None,
            metrics: false,
        }
    }
}

impl ClusterSpec {
    pub fn with_fault_injection(mut self) -> Self {
        self.allow_fault_injection = true;
        self
    }

    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = Some(bytes);
        self
    }

    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    pub fn with_key(mut self, key: ClusterKey) -> Self {
        self.key = Some(key);
        self
    }

    pub fn start(self) -> TestCluster {
        TestCluster::start(self)
    }
}

struct Running {
    child: Child,
    /// Kept open so that the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    paused: bool,
}

struct ServerProcess {
    address: SocketAddr,
    /// Where its metrics endpoint listens, with `ClusterSpec::metrics`.
    metrics: Option<SocketAddr>,
    data: PathBuf,
    log: PathBuf,
    running: Option<Running>,
}

/// A cluster of real `votefs server` processes.
pub struct TestCluster {
    spec: ClusterSpec,
    key: ClusterKey,
    key_file: PathBuf,
    config_path: PathBuf,
    placement: Placement,
    servers: Vec<ServerProcess>,
    // Dropped last: the servers are killed in `Drop::drop` before their directories go.
    directory: tempfile::TempDir,
}

/// The key every test cluster uses unless told otherwise.
pub fn test_key() -> ClusterKey {
    ClusterKey::from_bytes(*b"votefs integration tests key 32b")
}

/// Client options for tests: a short reconnect backoff so that a restarted server is reached
/// again at once, and no background healing, so that every repair a test sees was caused by what
/// the test did. A killed server is refused in microseconds; only a paused one costs the request
/// timeout, which stays generous enough for a loaded two-core machine.
pub fn test_client_options() -> ClientOptions {
    let mut options = ClientOptions::default();
    options.rpc.connect_timeout = Duration::from_secs(2);
    options.rpc.request_timeout = Duration::from_secs(5);
    options.rpc.reconnect_backoff = Duration::from_millis(50);
    options.retry_delay = Duration::from_millis(20);
    options.heal_interval = Duration::from_secs(3600);
    options
}

impl TestCluster {
    /// The standard test cluster: 3 banks of 2 servers.
    pub fn start_default() -> Self {
        ClusterSpec::default().start()
    }

    /// 3 banks of 2 servers that accept `votefs inject`.
    pub fn start_with_fault_injection() -> Self {
        ClusterSpec::default().with_fault_injection().start()
    }

    pub fn start(spec: ClusterSpec) -> Self {
        let directory = tempfile::Builder::new()
            .prefix("votefs-test-")
            .tempdir()
            .expect("creating a temporary directory");
        let key = spec.key.clone().unwrap_or_else(test_key);
        let key_file = directory.path().join("cluster.key");
        write_key_file(&key_file, &key).expect("writing the key file");
        let count = spec.banks * spec.servers_per_bank;
        let mut cluster = TestCluster {
            key,
            key_file,
            config_path: directory.path().join("cluster.toml"),
            // Replaced below, once the servers have their ports; the cluster exists before that
            // so that its `Drop` kills whatever was started if a later start fails.
            placement: Placement::new(vec![vec![SocketAddr::from(([127, 0, 0, 1], 1))]])
                .expect("a placeholder placement"),
            servers: Vec::with_capacity(count),
            spec,
            directory,
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        for index in 0..count {
            let data = cluster.directory.path().join(format!("server-{index}"));
            let log = cluster.directory.path().join(format!("server-{index}.log"));
            let metrics = cluster.spec.metrics.then(free_loopback_address);
            let (running, address) = cluster.launch(listen, metrics, &data, &log);
            cluster.servers.push(ServerProcess {
                address,
                metrics,
                data,
                log,
                running: Some(running),
            });
        }
        let file = ClusterFile {
            key_file: "cluster.key".into(),
            banks: cluster
                .servers
                .chunks(cluster.spec.servers_per_bank)
                .map(|bank| BankConfig {
                    servers: bank
                        .iter()
                        .map(|server| server.address.to_string())
                        .collect(),
                })
                .collect(),
        };
        std::fs::write(&cluster.config_path, file.to_toml()).expect("writing cluster.toml");
        let config = ClusterConfig::load(&cluster.config_path).expect("loading cluster.toml");
        assert_eq!(config.key_file, cluster.key_file);
        cluster.placement = config.placement;
        for index in 0..count {
            assert_eq!(
                cluster.placement.address(index),
                cluster.servers[index].address
            );
        }
        cluster
    }

    /// Start one server process and wait for its readiness line.
    fn launch(
        &self,
        listen: SocketAddr,
        metrics: Option<SocketAddr>,
        data: &Path,
        log: &Path,
    ) -> (Running, SocketAddr) {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening a server log");
        let mut command = Command::new(VOTEFS);
        command
            .arg("server")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data")
            .arg(data)
            .arg("--key-file")
            .arg(&self.key_file)
            .env("VOTEFS_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if self.spec.allow_fault_injection {
            command.arg("--allow-fault-injection");
        }
        if let Some(bytes) = self.spec.segment_bytes {
            command.arg("--segment-bytes").arg(bytes.to_string());
        }
        if let Some(address) = metrics {
            command.arg("--metrics").arg(address.to_string());
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the
        // kernel kill the server if the test process dies without running destructors (for
        // example when a test run is killed for taking too long).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("starting votefs server");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // The readiness line, read on a helper thread so that a server that hangs before
        // printing it fails the test instead of blocking it forever.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = sender.send((read.map(|_| line), stdout));
        });
        let ready = receiver.recv_timeout(READY_TIMEOUT);
        let (line, stdout) = match ready {
            Ok((Ok(line), stdout)) => (line, Some(stdout)),
            Ok((Err(error), _)) => (format!("<{error}>"), None),
            Err(_) => (format!("<nothing in {READY_TIMEOUT:?}>"), None),
        };
        let address = line
            .trim_end()
            .strip_prefix("votefs server listening on ")
            .and_then(|address| address.parse::<SocketAddr>().ok());
        let (Some(address), Some(stdout)) = (address, stdout) else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "votefs server on {listen} did not get ready ({line:?}, exit {status:?}); log:\n{}",
                tail(log, 40)
            );
        };
        if listen.port() != 0 {
            assert_eq!(address, listen, "a restarted server must keep its address");
        }
        (
            Running {
                child,
                _stdout: stdout,
                paused: false,
            },
            address,
        )
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// One scrape of `server`'s metrics endpoint (the cluster must be started `with_metrics`).
    pub fn metrics(&self, server: ServerIndex) -> String {
        let address = self.servers[server]
            .metrics
            .expect("start the cluster with_metrics()");
        scrape_metrics(address)
    }

    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The `cluster.toml` describing this cluster (DESIGN §9).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding everything of this cluster.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    pub fn address(&self, server: ServerIndex) -> SocketAddr {
        self.servers[server].address
    }

    pub fn data_dir(&self, server: ServerIndex) -> &Path {
        &self.servers[server].data
    }

    pub fn log_path(&self, server: ServerIndex) -> &Path {
        &self.servers[server].log
    }

    pub fn is_running(&self, server: ServerIndex) -> bool {
        self.servers[server].running.is_some()
    }

    pub fn pid(&self, server: ServerIndex) -> libc::pid_t {
        let running = self.servers[server]
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("server {server} is not running"));
        running.child.id() as libc::pid_t
    }

    /// The servers of `bank`.
    pub fn bank(&self, bank: usize) -> Vec<ServerIndex> {
        self.placement.bank_servers(bank).collect()
    }

    fn signal(&self, server: ServerIndex, signal: libc::c_int) {
        let pid = self.pid(server);
        // SAFETY: kill(2) with a pid of a child we have not reaped yet.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "signal {signal} to server {server}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn take_running(&mut self, server: ServerIndex) -> Running {
        self.servers[server]
            .running
            .take()
            .unwrap_or_else(|| panic!("server {server} is not running"))
    }

    /// Crash server `server` (SIGKILL) and wait until it is gone.
    pub fn kill(&mut self, server: ServerIndex) {
        let mut running = self.take_running(server);
        running.child.kill().expect("SIGKILL a server");
        running.child.wait().expect("reaping a killed server");
    }

    /// Stop server `server` cleanly (SIGTERM) and wait for it; it must exit successfully.
    pub fn stop(&mut self, server: ServerIndex) {
        if self.servers[server]
            .running
            .as_ref()
            .is_some_and(|running| running.paused)
        {
            self.resume(server);
        }
        self.signal(server, libc::SIGTERM);
        let mut running = self.take_running(server);
        let status = running.child.wait().expect("reaping a stopped server");
        self.check_clean_exit(server, status);
    }

    fn check_clean_exit(&self, server: ServerIndex, status: ExitStatus) {
        assert!(
            status.success(),
            "server {server} did not stop cleanly on SIGTERM: {status}; log:\n{}",
            tail(&self.servers[server].log, 40)
        );
    }

    /// Start a stopped or killed server again, on the same address and data directory.
    pub fn restart(&mut self, server: ServerIndex) {
        assert!(
            !self.is_running(server),
            "server {server} is still running: kill or stop it first"
        );
        let process = &self.servers[server];
        let (running, _) = self.launch(
            process.address,
            process.metrics,
            &process.data,
            &process.log,
        );
        self.servers[server].running = Some(running);
    }

    /// Crash `server` if it runs, delete its data directory and start it again on the same address.
    pub fn restart_empty(&mut self, server: ServerIndex) {
        if self.is_running(server) {
            self.kill(server);
        }
        std::fs::remove_dir_all(&self.servers[server].data).expect("deleting a data directory");
        self.restart(server);
    }

    /// Wait until the kernel reports `server`'s process as stopped (`WUNTRACED`) or continued
    /// (`WCONTINUED`): kill(2) returns before every thread of the process has obeyed.
    fn wait_for_state(&self, server: ServerIndex, options: libc::c_int) {
        let pid = self.pid(server);
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child; stop and continue reports do not reap it.
            let result = unsafe { libc::waitpid(pid, &mut status, options) };
            if result == -1 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("waitpid on server {server}: {error}");
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                panic!(
                    "server {server} died instead of stopping or continuing; log:\n{}",
                    tail(&self.servers[server].log, 40)
                );
            }
            let done = if options & libc::WUNTRACED != 0 {
                libc::WIFSTOPPED(status)
            } else {
                libc::WIFCONTINUED(status)
            };
            if done {
                return;
            }
        }
    }

    /// Freeze `server` (SIGSTOP): it keeps its connections but answers nothing. Returns once
    /// every thread of the process is stopped.
    pub fn pause(&mut self, server: ServerIndex) {
        self.signal(server, libc::SIGSTOP);
        self.wait_for_state(server, libc::WUNTRACED);
        self.servers[server]
            .running
            .as_mut()
            .expect("running")
            .paused = true;
    }

    /// Let a paused server run again (SIGCONT).
    pub fn resume(&mut self, server: ServerIndex) {
        self.signal(server, libc::SIGCONT);
        self.wait_for_state(server, libc::WCONTINUED);
        self.servers[server]
            .running
            .as_mut()
            .expect("running")
            .paused = false;
    }

    pub fn kill_bank(&mut self, bank: usize) {
        for server in self.bank(bank) {
            self.kill(server);
        }
    }

    pub fn restart_bank(&mut self, bank: usize) {
        for server in self.bank(bank) {
            self.restart(server);
        }
    }

    /// The log segment files of `server`, lowest number first.
    pub fn segment_files(&self, server: ServerIndex) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.data_dir(server))
            .expect("listing a data directory")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("segment-"))
            })
            .collect();
        files.sort();
        files
    }

    /// A writer client of this cluster (formats the volume on first use).
    pub async fn client(&self) -> Client {
        self.client_with(test_client_options()).await
    }

    /// A read-only client: it votes but never writes back or repairs, so it changes nothing.
    pub async fn reader(&self) -> Client {
        QuorumClient::open(
            TokioEnv::new(),
            self.placement.clone(),
            self.key.clone(),
            test_client_options(),
            OpenMode::ReadOnly,
        )
        .await
        .expect("opening a read-only client")
    }

    pub async fn client_with(&self, options: ClientOptions) -> Client {
        QuorumClient::open(
            TokioEnv::new(),
            self.placement.clone(),
            self.key.clone(),
            options,
            OpenMode::Writer,
        )
        .await
        .expect("opening a writer client")
    }

    /// Run the `votefs` command line with `arguments`; returns its output.
    pub fn votefs(&self, arguments: &[&str]) -> std::process::Output {
        run_votefs(arguments, None)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for process in &mut self.servers {
            if let Some(mut running) = process.running.take() {
                let _ = running.child.kill();
                let _ = running.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("test cluster in {}", self.directory.path().display());
            for (index, process) in self.servers.iter().enumerate() {
                eprintln!(
                    "---- server {index} ({}) log tail ----\n{}",
                    process.address,
                    tail(&process.log, 30)
                );
            }
        }
    }
}

/// The last `lines` lines of a file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run the `votefs` binary; `stdin` is piped in when given.
pub fn run_votefs(arguments: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut command = Command::new(VOTEFS);
    command
        .args(arguments)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().expect("running votefs");
    if let Some(bytes) = stdin {
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(bytes).expect("writing to votefs");
    }
    child.wait_with_output().expect("waiting for votefs")
}

/// Poll `check` until it succeeds or `limit` passes; panics with the last failure. For conditions
/// that become true asynchronously (background read-repair), never as a replacement for an event.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: still not true after {limit:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Send `request` to `server` alone. A server that was just restarted may still be inside the
/// client's reconnect backoff: unreachable answers are retried for a short, bounded time.
pub async fn call(client: &Client, server: ServerIndex, request: Request) -> Response {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match client.call_server(server, request.clone()).await {
            Ok(response) => return response,
            Err(RpcError::Unreachable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("{request:?} to server {server}: {error}"),
        }
    }
}

/// Wait until `client`'s heal backlog holds `expected` entries. A write that succeeded on a
/// majority keeps retrying the missing copy in the background; each such straggler ends by adding
/// its copy to the backlog, so this is the event that no straggler is left to land later.
pub async fn settle_backlog(client: &Client, expected: u64) {
    eventually(
        "the heal backlog settles",
        Duration::from_secs(10),
        || async {
            let backlog = client.stats().backlog;
            if backlog == expected {
                Ok(())
            } else {
                Err(format!("backlog {backlog}, expected {expected}"))
            }
        },
    )
    .await;
}

/// Wait until every owner of every key in `keys` holds a copy. A write returns once a majority
/// has it; the last copy lands a moment later, and a test that is about to take servers down
/// must not race it.
pub async fn await_all_copies<K: AsRef<[u8]>>(client: &Client, keys: &[K]) {
    eventually("every copy is written", Duration::from_secs(10), || async {
        for key in keys {
            let key = key.as_ref();
            for owner in client.placement().owners(key) {
                if direct_record(client, owner, key).await.is_none() {
                    return Err(format!(
                        "{} not yet on server {owner}",
                        String::from_utf8_lossy(key)
                    ));
                }
            }
        }
        Ok(())
    })
    .await;
}

/// Wait until `client` reaches each of `servers` again (after a restart, the client's links may
/// still be inside their reconnect backoff).
pub async fn reach(client: &Client, servers: &[ServerIndex]) {
    for server in servers {
        identify(client, *server).await;
    }
}

/// A server that cannot vouch for its contents (blank, recovering) must not vote: any answer but
/// an authoritative copy (`Found`) or an authoritative absence (`NotFound`) is acceptable.
pub fn assert_no_vote(response: &Response, what: &str) {
    assert!(
        !matches!(response, Response::Found(_) | Response::NotFound),
        "{what}: answered {response:?}, a vote it cannot vouch for"
    );
}

/// `server`'s own answer to a read of `key`, without any vote.
pub async fn direct_get(client: &Client, server: ServerIndex, key: &[u8]) -> Response {
    let request = Request::Get {
        volume: client.volume(),
        key: key.to_vec(),
    };
    call(client, server, request).await
}

/// The record `server` holds for `key`, if it answers `Found`.
pub async fn direct_record(client: &Client, server: ServerIndex, key: &[u8]) -> Option<Record> {
    match direct_get(client, server, key).await {
        Response::Found(record) => Some(record),
        _ => None,
    }
}

pub async fn stats(client: &Client, server: ServerIndex) -> ServerStats {
    match call(client, server, Request::Stats).await {
        Response::Stats(stats) => *stats,
        other => panic!("Stats of server {server}: {other:?}"),
    }
}

pub async fn identify(client: &Client, server: ServerIndex) -> Identity {
    match call(client, server, Request::Identify).await {
        Response::Identity(identity) => identity,
        other => panic!("Identify of server {server}: {other:?}"),
    }
}

/// Whether `server` says it is a member that is recovering; panics if it is blank.
pub async fn is_recovering(client: &Client, server: ServerIndex) -> bool {
    match identify(client, server).await.state {
        ServerState::Member { recovering, .. } => recovering,
        ServerState::Blank => panic!("server {server} is blank"),
    }
}

/// `server`'s dump entry for exactly `key`.
pub async fn dump_entry(client: &Client, server: ServerIndex, key: &[u8]) -> Option<DumpEntry> {
    let request = Request::Dump {
        prefix: key.to_vec(),
        start_after: None,
        limit: 64,
    };
    match client.call_server(server, request).await {
        Ok(Response::Dump { entries, .. }) => entries
            .into_iter()
            .find(|entry| entry.key.as_slice() == key),
        other => panic!("Dump of server {server}: {other:?}"),
    }
}

/// A size in `0..=max` drawn log-uniformly: every order of magnitude is as likely as any other,
/// so small and large values both show up often while the total stays moderate.
pub fn log_uniform_size(rng: &mut SeededRng, max: usize) -> usize {
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let size = ((max as f64 + 1.0).powf(unit) - 1.0).floor() as usize;
    size.min(max)
}

/// `length` pseudo-random bytes determined by `seed`.
pub fn random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    SeededRng::new(seed).fill(&mut bytes);
    bytes
}

/// Where two byte strings first differ, for failure messages.
pub fn first_difference(left: &[u8], right: &[u8]) -> String {
    match left.iter().zip(right).position(|(a, b)| a != b) {
        Some(offset) => format!(
            "lengths {} and {}, first difference at byte {offset}",
            left.len(),
            right.len()
        ),
        None => format!("lengths {} and {}", left.len(), right.len()),
    }
}

/// Find `needle` in `haystack`; every position where it occurs.
pub fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    assert!(!needle.is_empty());
    let mut found = Vec::new();
    let mut start = 0;
    while start + needle.len() <= haystack.len() {
        match haystack[start..=haystack.len() - needle.len()]
            .iter()
            .position(|byte| *byte == needle[0])
        {
            None => break,
            Some(offset) => {
                let position = start + offset;
                if &haystack[position..position + needle.len()] == needle {
                    found.push(position);
                }
                start = position + 1;
            }
        }
    }
    found
}

/// A key (built from `prefix` and a counter) whose owners satisfy `wanted`.
pub fn key_owned_where(
    placement: &Placement,
    prefix: &str,
    start: &mut u64,
    wanted: impl Fn(&[ServerIndex]) -> bool,
) -> String {
    loop {
        let key = format!("{prefix}{start}");
        *start += 1;
        if wanted(&placement.owners(key.as_bytes())) {
            return key;
        }
    }
}

/// A loopback address with a port free right now (for endpoints that must be known in advance).
pub fn free_loopback_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("a bound address")
}

/// `GET /metrics` from a Prometheus endpoint; the body of a 200 answer.
pub fn scrape_metrics(address: SocketAddr) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("connecting to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: votefs\r\n\r\n")
        .expect("sending a scrape");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading a scrape");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the unlabelled sample `name` in a Prometheus exposition.
pub fn metric_value(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{exposition}"))
        .trim()
        .parse()
        .expect("a number")
}
