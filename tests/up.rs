//! `votefs up` (DESIGN §9) with real processes: the data directory it writes and reuses, the
//! supervisor that restarts a killed server, a clean stop on SIGTERM, and the one-line errors for
//! bad input. These tests run `up --no-mount`, which starts the servers without mounting.
//!
//! Each test uses its own temporary data directory and a random base port below the kernel's
//! ephemeral range (ports `base + bank*1000 + server`), trying another base if one is busy. The
//! tests find a server's process id in the `DIR/bank-B-server-S.pid` file `up` keeps while the
//! server runs. Synchronisation is by events polled against a deadline: `up`'s "servers running"
//! line, a port accepting or refusing, a pid file changing, a process exiting. Every `up` started
//! here is stopped by a drop guard, which also kills any server left behind, so nothing leaks when
//! an assertion fails.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use votefs::config::{write_key_file, BankConfig, ClusterConfig, ClusterFile};
use votefs::record::ClusterKey;

const VOTEFS: &str = env!("CARGO_BIN_EXE_votefs");

/// How long `up` may take to start six servers on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `votefs` command (kv, a failing `up`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a supervised restart or a clean stop may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

const BANKS: usize = 3;
const SERVERS_PER_BANK: usize = 2;

fn port(base_port: u16, bank: usize, server: usize) -> u16 {
    base_port + (bank * 1000 + server) as u16
}

fn all_ports(base_port: u16) -> Vec<u16> {
    (0..BANKS)
        .flat_map(|bank| (0..SERVERS_PER_BANK).map(move |server| port(base_port, bank, server)))
        .collect()
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A random base port whose ports all stay below 32768, where Linux starts handing out
/// ephemeral ports (the other tests' servers and every client connection use those).
fn random_base_port() -> u16 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    10_000 + (hasher.finish() % 20_000) as u16
}

/// A base port whose ports are free right now (checked by binding each).
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let base_port = random_base_port();
        let free = all_ports(base_port)
            .iter()
            .all(|port| TcpListener::bind(localhost(*port)).is_ok());
        if free {
            return base_port;
        }
    }
    panic!("found no free range of ports");
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&localhost(port), Duration::from_secs(1)).is_ok()
}

/// Poll `check` until it holds; panic naming `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: still not true after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary paths")
}

/// A `votefs` command for a test: no colours, no inherited log settings.
fn votefs_command(arguments: &[&str]) -> Command {
    let mut command = Command::new(VOTEFS);
    command
        .args(arguments)
        .env("NO_COLOR", "1")
        .env("VOTEFS_LOG", "info")
        .env("RUST_BACKTRACE", "1");
    command
}

/// Run `votefs` to completion (killed after [`COMMAND_TIMEOUT`]).
fn run_votefs(arguments: &[&str]) -> Output {
    let mut child = votefs_command(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running votefs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stdout_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for votefs") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("votefs {arguments:?} did not finish in {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    }
}

fn succeeded(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// A failure as DESIGN §9 wants it: non-zero exit, no panic, one line on stderr that mentions
/// each of `mentions`.
fn failed_cleanly(output: &Output, mentions: &[&str], what: &str) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{what} succeeded: {stderr}");
    assert_ne!(output.status.code(), Some(101), "{what} panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: expected a one-line message, got:\n{stderr}"
    );
    for needle in mentions {
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} does not mention {needle:?}"
        );
    }
}

fn kv_put(cluster: &Path, key: &str, value: &str) {
    let output = run_votefs(&["kv", "put", "--cluster", path_text(cluster), key, value]);
    succeeded(&output, &format!("kv put {key}"));
}

fn kv_get(cluster: &Path, key: &str) -> String {
    let output = run_votefs(&["kv", "get", "--cluster", path_text(cluster), key]);
    succeeded(&output, &format!("kv get {key}"))
}

fn pid_file(data_dir: &Path, bank: usize, server: usize) -> PathBuf {
    data_dir.join(format!("bank-{bank}-server-{server}.pid"))
}

fn read_pid(data_dir: &Path, bank: usize, server: usize) -> Option<libc::pid_t> {
    std::fs::read_to_string(pid_file(data_dir, bank, server))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live `votefs server` of `data_dir` (not a zombie, not a recycled pid).
fn is_server_of(pid: libc::pid_t, data_dir: &Path) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    if status
        .lines()
        .any(|line| line.starts_with("State:") && line.contains('Z'))
    {
        return false;
    }
    let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let arguments: Vec<String> = command_line.split(|byte| *byte == 0).map(text).collect();
    // `up` passes the servers absolute paths.
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    arguments.iter().any(|argument| argument == "server")
        && arguments
            .iter()
            .any(|argument| argument.starts_with(path_text(&data_dir)))
}

/// Every live server process of `data_dir` (scanning /proc, so it finds servers whose pid file
/// is gone).
fn servers_of(data_dir: &Path) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| is_server_of(*pid, data_dir))
        .collect()
}

fn send_signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Kills every server of a data directory when dropped: the last line of defence for a test whose
/// `up` failed in a way that left servers behind.
struct ServerReaper {
    data_dir: PathBuf,
}

impl Drop for ServerReaper {
    fn drop(&mut self) {
        for pid in servers_of(&self.data_dir) {
            send_signal(pid, libc::SIGKILL);
        }
    }
}

/// A running `votefs up --no-mount`. Dropping it stops `up` (SIGTERM, then SIGKILL) and kills any
/// server left behind.
struct Up {
    child: Option<Child>,
    data_dir: PathBuf,
    base_port: u16,
    /// Everything `up` wrote to stderr so far (read by a helper thread).
    stderr: Arc<Mutex<String>>,
    mountpoint: Option<PathBuf>,
    _reaper: ServerReaper,
}

/// Whether a file system is mounted at `path`: its device differs from its parent's.
fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let device_of = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev());
    match (path.parent(), device_of(path)) {
        (Some(parent), Ok(device)) => device_of(parent).is_ok_and(|parent| parent != device),
        // A dead FUSE mount answers ENOTCONN: still mounted.
        (_, Err(error)) => error.raw_os_error() == Some(libc::ENOTCONN),
        (None, Ok(_)) => false,
    }
}

/// Why `up` did not start.
#[derive(Debug)]
enum StartFailure {
    /// A port was taken by someone else: try another base port.
    PortBusy(String),
    Other(String),
}

impl Up {
    /// `up --no-mount` on a data directory without a cluster yet, on a free random base port.
    fn start_fresh(data_dir: &Path) -> Up {
        Up::start_fresh_mounted(data_dir, None)
    }

    /// `up` (mounting at `mountpoint`, or `--no-mount` without one) on a data directory without a
    /// cluster yet, on a free random base port.
    fn start_fresh_mounted(data_dir: &Path, mountpoint: Option<&Path>) -> Up {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Up::start_mounted(data_dir, free_base_port(), mountpoint) {
                Ok(up) => return up,
                Err(StartFailure::PortBusy(stderr)) => {
                    // The failed run wrote a cluster file for those ports; start afresh.
                    let _ = std::fs::remove_dir_all(data_dir);
                    failures.push(stderr);
                }
                Err(StartFailure::Other(why)) => panic!("votefs up did not start: {why}"),
            }
        }
        panic!("votefs up found a busy port five times: {failures:#?}");
    }

    /// `up --no-mount` on `data_dir` with `base_port`; waits until it says its servers run.
    fn start(data_dir: &Path, base_port: u16) -> Result<Up, StartFailure> {
        Up::start_mounted(data_dir, base_port, None)
    }

    /// `up` on `data_dir` with `base_port`, mounting at `mountpoint` (or `--no-mount`); waits until
    /// the mount appears (or `up` says its servers run).
    fn start_mounted(
        data_dir: &Path,
        base_port: u16,
        mountpoint: Option<&Path>,
    ) -> Result<Up, StartFailure> {
        let base_port_text = base_port.to_string();
        let mut arguments = vec!["up"];
        match mountpoint {
            Some(mountpoint) => arguments.push(path_text(mountpoint)),
            None => arguments.push("--no-mount"),
        }
        arguments.extend([
            "--data",
            path_text(data_dir),
            "--base-port",
            &base_port_text,
        ]);
        let mut command = votefs_command(&arguments);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent. If the test
        // process dies without running destructors, `up` gets SIGTERM and stops its servers.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("starting votefs up");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(pipe);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|read| read > 0) {
                if let Ok(mut all) = sink.lock() {
                    all.push_str(&line);
                }
                line.clear();
            }
        });
        let mut up = Up {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            base_port,
            stderr,
            mountpoint: mountpoint.map(Path::to_path_buf),
            _reaper: ServerReaper {
                data_dir: data_dir.to_path_buf(),
            },
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = match mountpoint {
                Some(mountpoint) => is_mounted(mountpoint),
                None => up.stderr_text().contains("servers running"),
            };
            if ready {
                return Ok(up);
            }
            let exited = up.child_mut().try_wait().expect("waiting for votefs up");
            if exited.is_some() || Instant::now() >= deadline {
                let status = up.stop();
                let stderr = up.stderr_text();
                let why = format!("votefs up ended with {status}: {stderr}");
                return Err(if stderr.contains("Address already in use") {
                    StartFailure::PortBusy(why)
                } else {
                    StartFailure::Other(why)
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("votefs up was already stopped")
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    fn cluster_file(&self) -> PathBuf {
        self.data_dir.join("cluster.toml")
    }

    fn port(&self, bank: usize, server: usize) -> u16 {
        port(self.base_port, bank, server)
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (SIGKILL after [`EVENT_TIMEOUT`]); returns how `up` exited.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("votefs up was already stopped");
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        send_signal(child.id() as libc::pid_t, libc::SIGTERM);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().unwrap_or_else(|_| ExitStatus::from_raw(-1));
                }
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // An `up` that had to be killed leaves its mount behind.
        if let Some(mountpoint) = &self.mountpoint {
            if is_mounted(mountpoint) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(mountpoint)
                    .status();
            }
        }
        // `_reaper` then kills any server still running.
    }
}

/// After `up` exited: no server of its data directory runs, none of its ports accepts, and no pid
/// file is left.
fn assert_everything_stopped(data_dir: &Path, base_port: u16) {
    let left = servers_of(data_dir);
    assert!(left.is_empty(), "servers still running: {left:?}");
    for port in all_ports(base_port) {
        assert!(
            !accepts(port),
            "port {port} still accepts after votefs up exited"
        );
    }
    for bank in 0..BANKS {
        for server in 0..SERVERS_PER_BANK {
            let path = pid_file(data_dir, bank, server);
            assert!(!path.exists(), "{} is left behind", path.display());
        }
    }
}

#[test]
fn up_writes_its_cluster_serves_it_and_stops_on_sigterm() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = scratch.path().join("data");
    let mut up = Up::start_fresh(&data_dir);

    // The key: private, loadable.
    let key_file = data_dir.join("cluster.key");
    let mode = std::fs::metadata(&key_file)
        .expect("up writes cluster.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "cluster.key must have mode 0600");
    votefs::config::load_key_file(&key_file).expect("up writes a loadable key");

    // The cluster file: the key next to it, the documented addresses.
    let cluster_file = up.cluster_file();
    let cluster_text = std::fs::read_to_string(&cluster_file).expect("up writes cluster.toml");
    assert!(
        cluster_text.contains("key_file = \"cluster.key\""),
        "{cluster_text}"
    );
    let config = ClusterConfig::load(&cluster_file).expect("a loadable cluster.toml");
    assert_eq!(
        config.key_file.canonicalize().unwrap(),
        key_file.canonicalize().unwrap()
    );
    assert_eq!(config.placement.bank_count(), BANKS);
    assert_eq!(config.placement.servers_per_bank(), SERVERS_PER_BANK);
    for bank in 0..BANKS {
        for server in 0..SERVERS_PER_BANK {
            let index = bank * SERVERS_PER_BANK + server;
            assert_eq!(
                config.placement.address(index),
                localhost(up.port(bank, server)),
                "{cluster_text}"
            );
            assert!(accepts(up.port(bank, server)));
            let pid = read_pid(&data_dir, bank, server).expect("a pid file per server");
            assert!(
                is_server_of(pid, &data_dir),
                "pid {pid} is not bank {bank} server {server}"
            );
            assert!(data_dir
                .join(format!("bank-{bank}-server-{server}"))
                .is_dir());
            assert!(data_dir
                .join(format!("bank-{bank}-server-{server}.log"))
                .is_file());
        }
    }
    assert!(
        up.stderr_text()
            .contains(path_text(&cluster_file.canonicalize().unwrap())),
        "up names its cluster file: {}",
        up.stderr_text()
    );

    // The cluster works.
    kv_put(&cluster_file, "greeting", "hello");
    assert_eq!(kv_get(&cluster_file, "greeting"), "hello");

    // SIGTERM stops every server, and up exits 0.
    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        up.stderr_text()
    );
    assert_everything_stopped(&data_dir, up.base_port);
}

#[test]
fn the_supervisor_restarts_a_killed_server() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = scratch.path().join("data");
    let mut up = Up::start_fresh(&data_dir);
    let cluster_file = up.cluster_file();
    kv_put(&cluster_file, "survivor", "still here");

    // Kill the key's owners in two of the three banks: until one of them is back, the key has no
    // read quorum, so reading it afterwards shows the restart really happened.
    let config = ClusterConfig::load(&cluster_file).expect("a loadable cluster.toml");
    let owners = config.placement.owners(b"survivor");
    let victims: Vec<(usize, usize)> = owners[..2]
        .iter()
        .map(|index| (index / SERVERS_PER_BANK, index % SERVERS_PER_BANK))
        .collect();
    let mut old_pids = Vec::new();
    for (bank, server) in &victims {
        let pid = read_pid(&data_dir, *bank, *server).expect("a pid file");
        assert!(is_server_of(pid, &data_dir));
        send_signal(pid, libc::SIGKILL);
        old_pids.push(pid);
    }
    for ((bank, server), old_pid) in victims.iter().zip(&old_pids) {
        let port = up.port(*bank, *server);
        wait_until(
            &format!("bank {bank} server {server} restarted on port {port}"),
            EVENT_TIMEOUT,
            || {
                read_pid(&data_dir, *bank, *server)
                    .is_some_and(|pid| pid != *old_pid && is_server_of(pid, &data_dir))
                    && accepts(port)
            },
        );
        assert!(
            !is_server_of(*old_pid, &data_dir),
            "the killed server lives"
        );
        let warning =
            format!("bank {bank} server {server} (127.0.0.1:{port}) exited with signal: 9");
        wait_until(&format!("up logs {warning:?}"), EVENT_TIMEOUT, || {
            up.stderr_text().contains(&warning)
        });
    }
    assert!(
        up.stderr_text().contains("restarting it"),
        "{}",
        up.stderr_text()
    );
    assert_eq!(kv_get(&cluster_file, "survivor"), "still here");
    assert!(up.is_running(), "up died: {}", up.stderr_text());

    // `votefs status` shows each restart count: one for the victims, none for the others.
    let output = run_votefs(&["status", "--cluster", path_text(&cluster_file), "--json"]);
    let status: serde_json::Value =
        serde_json::from_str(succeeded(&output, "status --json").trim()).expect("status JSON");
    for (index, server) in status["servers"].as_array().unwrap().iter().enumerate() {
        let victim = victims.contains(&(index / SERVERS_PER_BANK, index % SERVERS_PER_BANK));
        assert_eq!(
            server["restarts"],
            u64::from(victim),
            "server {index}: {status}"
        );
        assert_eq!(server["state"], "healthy", "server {index}: {status}");
    }

    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        up.stderr_text()
    );
    assert!(
        !up.stderr_text().contains("exited with signal: 15"),
        "the supervisor reported its own shutdown as a crash: {}",
        up.stderr_text()
    );
    assert_everything_stopped(&data_dir, up.base_port);
}

#[test]
fn a_second_up_reuses_the_key_and_the_data() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = scratch.path().join("data");
    let mut first = Up::start_fresh(&data_dir);
    let base_port = first.base_port;
    let cluster_file = first.cluster_file();
    kv_put(&cluster_file, "kept", "across runs");
    let key = std::fs::read(data_dir.join("cluster.key")).expect("the key");
    let cluster_text = std::fs::read(&cluster_file).expect("the cluster file");

    // One up per data directory.
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        path_text(&data_dir),
        "--base-port",
        &base_port.to_string(),
    ]);
    failed_cleanly(
        &output,
        &["already running"],
        "a second up on the same data",
    );
    assert!(first.is_running());

    let status = first.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        first.stderr_text()
    );
    drop(first);

    let mut second = match Up::start(&data_dir, base_port) {
        Ok(up) => up,
        Err(failure) => panic!("the second up did not start: {failure:?}"),
    };
    assert_eq!(
        std::fs::read(data_dir.join("cluster.key")).expect("the key"),
        key,
        "the second up changed the key"
    );
    assert_eq!(
        std::fs::read(&cluster_file).expect("the cluster file"),
        cluster_text,
        "the second up rewrote cluster.toml"
    );
    assert_eq!(kv_get(&cluster_file, "kept"), "across runs");
    let status = second.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        second.stderr_text()
    );
}

#[test]
fn bad_input_fails_with_one_line() {
    let scratch = tempfile::tempdir().expect("a temporary directory");

    // An existing cluster.toml for another layout is refused, not rewritten.
    let data_dir = scratch.path().join("existing");
    let _reaper = ServerReaper {
        data_dir: data_dir.clone(),
    };
    std::fs::create_dir(&data_dir).unwrap();
    let base_port = free_base_port();
    let file = ClusterFile {
        key_file: "cluster.key".into(),
        banks: (0..BANKS)
            .map(|bank| BankConfig {
                servers: (0..SERVERS_PER_BANK)
                    .map(|server| localhost(port(base_port, bank, server)).to_string())
                    .collect(),
            })
            .collect(),
    };
    let cluster_file = data_dir.join("cluster.toml");
    std::fs::write(&cluster_file, file.to_toml()).unwrap();
    write_key_file(
        &data_dir.join("cluster.key"),
        &ClusterKey::from_bytes([7; 32]),
    )
    .unwrap();
    let base = base_port.to_string();
    let data = path_text(&data_dir);
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        data,
        "--base-port",
        &base,
        "--banks",
        "4",
    ]);
    failed_cleanly(
        &output,
        &["--banks 4", "3 banks", "cluster.toml"],
        "up with other --banks",
    );
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        data,
        "--base-port",
        &base,
        "--servers-per-bank",
        "3",
    ]);
    failed_cleanly(
        &output,
        &["--servers-per-bank 3", "2 servers per bank"],
        "up with other --servers-per-bank",
    );
    let other_base = (base_port + 1).to_string();
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        data,
        "--base-port",
        &other_base,
    ]);
    failed_cleanly(
        &output,
        &[&format!("--base-port {other_base}"), &base],
        "up with another --base-port",
    );
    assert_eq!(
        std::fs::read_to_string(&cluster_file).unwrap(),
        file.to_toml(),
        "a refused up rewrote cluster.toml"
    );
    assert!(
        !data_dir.join("bank-0-server-0.log").exists(),
        "a refused up started servers"
    );

    // Arguments that give no valid layout.
    let fresh = scratch.path().join("fresh");
    let fresh_text = path_text(&fresh);
    let output = run_votefs(&["up", "--no-mount", "--data", fresh_text, "--banks", "0"]);
    failed_cleanly(&output, &["--banks"], "up --banks 0");
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        fresh_text,
        "--servers-per-bank",
        "0",
    ]);
    failed_cleanly(&output, &["--servers-per-bank"], "up --servers-per-bank 0");
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        fresh_text,
        "--base-port",
        "64000",
    ]);
    failed_cleanly(&output, &["65535"], "up --base-port 64000 with three banks");
    assert!(!fresh.exists(), "a refused up created its data directory");

    // A mount point whose parent is missing is refused before any server starts (one whose
    // parent exists is made).
    let missing_mountpoint = scratch.path().join("no-such-parent/mountpoint");
    let output = run_votefs(&["up", path_text(&missing_mountpoint), "--data", fresh_text]);
    failed_cleanly(
        &output,
        &[path_text(&missing_mountpoint), "does not exist"],
        "up on a missing mount point",
    );
    assert!(!fresh.exists(), "a refused up created its data directory");

    // A busy port: up names the server, its port and its log, and stops the servers it started.
    let busy_dir = scratch.path().join("busy");
    let _busy_reaper = ServerReaper {
        data_dir: busy_dir.clone(),
    };
    let busy_base = free_base_port();
    let busy_port = port(busy_base, 1, 1);
    let _holder = TcpListener::bind(localhost(busy_port)).expect("binding the port to block");
    let output = run_votefs(&[
        "up",
        "--no-mount",
        "--data",
        path_text(&busy_dir),
        "--base-port",
        &busy_base.to_string(),
    ]);
    failed_cleanly(
        &output,
        &[
            &format!("127.0.0.1:{busy_port}"),
            "bank-1-server-1.log",
            "Address already in use",
        ],
        "up with a busy port",
    );
    let left = servers_of(&busy_dir);
    assert!(left.is_empty(), "servers left running: {left:?}");
    for port in all_ports(busy_base) {
        if port != busy_port {
            assert!(!accepts(port), "port {port} still accepts after up failed");
        }
    }

    // mount: a missing cluster file, bad durations.
    let missing = scratch.path().join("missing.toml");
    let missing_text = path_text(&missing);
    let output = run_votefs(&["mount", "/nonexistent", "--cluster", missing_text]);
    failed_cleanly(
        &output,
        &["missing.toml"],
        "mount with a missing cluster file",
    );
    // A good duration passes the parser: the error is about the cluster file.
    let output = run_votefs(&[
        "mount",
        "/nonexistent",
        "--cluster",
        missing_text,
        "--refresh",
        "500ms",
    ]);
    failed_cleanly(&output, &["missing.toml"], "mount --refresh 500ms");
    for bad in ["5x", "5", "0s", "s", "99999999999999999999h"] {
        let output = run_votefs(&[
            "mount",
            "/nonexistent",
            "--cluster",
            missing_text,
            "--refresh",
            bad,
        ]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "--refresh {bad} accepted");
        assert_ne!(output.status.code(), Some(101), "--refresh {bad} panicked");
        assert!(stderr.contains("--refresh"), "--refresh {bad}: {stderr}");
        assert!(
            !stderr.contains("missing.toml"),
            "--refresh {bad} was accepted: {stderr}"
        );
    }
    // An existing cluster file but a missing mount point.
    let output = run_votefs(&[
        "mount",
        "/nonexistent-votefs-mountpoint",
        "--cluster",
        path_text(&cluster_file),
    ]);
    failed_cleanly(
        &output,
        &["/nonexistent-votefs-mountpoint"],
        "mount on a missing mount point",
    );
}

#[test]
fn up_mounts_the_volume_and_unmounts_on_sigterm() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = scratch.path().join("data");
    // Not made beforehand: `votefs up ./mnt` makes its mount point, as the README promises.
    let mountpoint = scratch.path().join("mnt");
    let mut up = Up::start_fresh_mounted(&data_dir, Some(&mountpoint));
    let base_port = up.base_port;
    assert!(
        data_dir.join("cluster.toml").is_file(),
        "up writes cluster.toml"
    );
    std::fs::write(mountpoint.join("note.txt"), b"written through up").expect("writing a file");
    assert_eq!(
        std::fs::read(mountpoint.join("note.txt")).expect("reading it back"),
        b"written through up"
    );
    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        up.stderr_text()
    );
    assert!(!is_mounted(&mountpoint), "up left its mount behind");
    assert_everything_stopped(&data_dir, base_port);
    drop(up);

    // The file is still there after another up on the same data directory.
    let mut again = match Up::start_mounted(&data_dir, base_port, Some(&mountpoint)) {
        Ok(up) => up,
        Err(failure) => panic!("the second up did not start: {failure:?}"),
    };
    assert_eq!(
        std::fs::read(mountpoint.join("note.txt")).expect("reading the file again"),
        b"written through up"
    );
    let status = again.stop();
    assert!(
        status.success(),
        "up exited with {status}: {}",
        again.stderr_text()
    );
    assert!(!is_mounted(&mountpoint), "up left its mount behind");
}
