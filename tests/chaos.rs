//! `votefs chaos` (DESIGN §9) against a real `votefs up` cluster with a FUSE mount: a short run
//! with fsx as the workload and a fault every few seconds must inject every kind of fault, keep
//! every byte fsx reads equal to its model, fail no operation, heal, and write a CSV with one row
//! per second and an SVG chart that marks the faults. Bad input must fail with one line.
//!
//! Needs root, /dev/fuse and fsx (`bash ci/setup` installs it), like the other mount tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use votefs::chaos::faults::is_server_process;
use votefs::config::{write_key_file, BankConfig, ClusterFile};
use votefs::record::ClusterKey;

const VOTEFS: &str = env!("CARGO_BIN_EXE_votefs");
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const BANKS: usize = 3;
const SERVERS_PER_BANK: usize = 2;

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary paths")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A base port below the ephemeral range whose six ports are free right now.
fn free_base_port() -> u16 {
    let mut seed = [0u8; 2];
    for _ in 0..100 {
        votefs::env::tokio_env::os_random_fill(&mut seed);
        let base_port = 10_000 + u16::from_le_bytes(seed) % 20_000;
        let free = (0..BANKS).all(|bank| {
            (0..SERVERS_PER_BANK).all(|server| {
                let port = base_port + (bank * 1000 + server) as u16;
                TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
            })
        });
        if free {
            return base_port;
        }
    }
    panic!("found no free range of ports");
}

fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let device = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev());
    match (path.parent(), device(path)) {
        (Some(parent), Ok(own)) => device(parent).is_ok_and(|parent| parent != own),
        (_, Err(error)) => error.raw_os_error() == Some(libc::ENOTCONN),
        (None, Ok(_)) => false,
    }
}

/// A running `votefs up MOUNTPOINT`; dropping it stops it (SIGTERM, then SIGKILL), unmounts what
/// is left and kills any server still running.
struct Up {
    child: Option<Child>,
    data_dir: PathBuf,
    mountpoint: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    fn start(data_dir: &Path, mountpoint: &Path, refresh: &str) -> Up {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let base_port = free_base_port().to_string();
            let mut command = Command::new(VOTEFS);
            command
                .args(["up", path_text(mountpoint), "--data", path_text(data_dir)])
                .args(["--base-port", &base_port, "--refresh", refresh])
                .env("NO_COLOR", "1")
                .env("VOTEFS_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // SAFETY: prctl(2) is async-signal-safe. If the test dies, `up` stops its servers.
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
                mountpoint: mountpoint.to_path_buf(),
                stderr,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if is_mounted(mountpoint) {
                    return up;
                }
                let exited = up.child.as_mut().unwrap().try_wait().unwrap().is_some();
                if exited || Instant::now() >= deadline {
                    up.stop();
                    let stderr = up.stderr_text();
                    if stderr.contains("Address already in use") {
                        failures.push(stderr);
                        drop(up);
                        let _ = std::fs::remove_dir_all(data_dir);
                        break;
                    }
                    panic!("votefs up did not mount: {stderr}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("votefs up found a busy port five times: {failures:#?}");
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mountpoint)
                .status();
        }
        let data_dir = self
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| self.data_dir.clone());
        for bank in 0..BANKS {
            for server in 0..SERVERS_PER_BANK {
                let name = format!("bank-{bank}-server-{server}");
                let Ok(pid) = std::fs::read_to_string(data_dir.join(format!("{name}.pid"))) else {
                    continue;
                };
                let Ok(pid) = pid.trim().parse::<libc::pid_t>() else {
                    continue;
                };
                if is_server_process(pid, &data_dir.join(&name)) {
                    // SAFETY: kill(2) on a server process of this test's cluster.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn run_votefs(arguments: &[&str], environment: &[(&str, &str)]) -> Output {
    Command::new(VOTEFS)
        .args(arguments)
        .envs(environment.iter().copied())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("running votefs")
}

fn fsx_installed() -> bool {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin").join("fsx"));
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|directory| directory.join("fsx").is_file())
    });
    on_path || cargo_bin.is_some_and(|path| path.is_file())
}

/// The CSV's rows as maps from column name to value.
fn csv_rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), header.len(), "{line}");
            header
                .iter()
                .zip(fields)
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn a_chaos_run_with_fsx_injects_every_fault_and_loses_nothing() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test mounts votefs and needs /dev/fuse"
    );
    assert!(
        fsx_installed(),
        "fsx is not installed: run `bash ci/setup` first"
    );
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = scratch.path().join("data");
    let mountpoint = scratch.path().join("mnt");
    let out = scratch.path().join("out");
    // A short refresh, so that the mount's own passes drain the heal backlog within the run.
    let up = Up::start(&data_dir, &mountpoint, "3s");
    let cluster = data_dir.join("cluster.toml");

    // No --mount: chaos finds the mount point `up` recorded in its data directory. Faults at 4,
    // 8, 12, 16 and 20 s: the first four are one of each kind, in an order the seed decides.
    let started = Instant::now();
    let output = run_votefs(
        &[
            "chaos",
            "--cluster",
            path_text(&cluster),
            "--every",
            "4s",
            "--duration",
            "22s",
            "--workload",
            "fsx",
            "--seed",
            "11",
            "--out",
            path_text(&out),
            "--heal-timeout",
            "60s",
        ],
        &[],
    );
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    let context = format!(
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}\nup:\n{}",
        output.status,
        up.stderr_text()
    );
    assert!(output.status.success(), "chaos failed: {context}");
    assert!(
        stderr.contains("chaos: seed 11"),
        "the seed is printed: {context}"
    );
    for line in [
        "operations: ",
        " done, 0 failed",
        "mismatches: 0",
        "result: PASS",
    ] {
        assert!(stdout.contains(line), "{line:?} missing: {context}");
    }

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chaos.json")).expect("chaos.json"))
            .expect("chaos.json is JSON");
    assert_eq!(summary["mismatches"], 0, "{summary:#}");
    assert_eq!(summary["failed_operations"], 0, "{summary:#}");
    assert_eq!(summary["healed"], true, "{summary:#}");
    assert!(summary["workload_failure"].is_null(), "{summary:#}");
    assert!(summary["operations"].as_u64().unwrap() > 100, "{summary:#}");
    assert!(
        summary["verified_bytes_during_run"].as_u64().unwrap() > 0,
        "{summary:#}"
    );
    for kind in ["kill", "restart-empty", "corrupt", "pause"] {
        assert!(
            summary["faults_by_kind"][kind].as_u64().unwrap_or(0) >= 1,
            "no {kind} fault was injected: {summary:#}"
        );
    }
    let faults = summary["faults"].as_array().unwrap();
    assert!(faults.len() >= 4, "{summary:#}");
    for fault in faults {
        assert_eq!(fault["within_envelope"], true, "{fault}");
        assert_eq!(fault["succeeded"], true, "{fault}");
    }
    // Kills and restarts-empty are restarts by the supervisor; a pause never turned into one.
    let restarts_expected = faults
        .iter()
        .filter(|fault| fault["kind"] == "kill" || fault["kind"] == "restart-empty")
        .count() as u64;
    assert_eq!(
        summary["supervisor_restarts"].as_u64().unwrap(),
        restarts_expected,
        "{summary:#}"
    );

    // One row per second of the workload, in order, and each fault on the row of its second.
    let rows = csv_rows(&std::fs::read_to_string(out.join("chaos.csv")).expect("chaos.csv"));
    assert!((21..=23).contains(&rows.len()), "{} rows", rows.len());
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["second"], index.to_string(), "{row:?}");
    }
    let busy_rows = rows
        .iter()
        .filter(|row| row["throughput_bytes_per_second"] != "0")
        .count();
    assert!(busy_rows * 2 > rows.len(), "mostly idle: {rows:?}");
    for fault in faults {
        let second = (fault["at_ms"].as_u64().unwrap() / 1000) as usize;
        let kind = fault["kind"].as_str().unwrap();
        let row = &rows[second.min(rows.len() - 1)];
        assert!(
            row["fault_kind"].split(';').any(|listed| listed == kind),
            "{kind} at {second} s is not on its row {row:?}"
        );
    }

    let svg = std::fs::read_to_string(out.join("chaos.svg")).expect("chaos.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<g class=\"fault ").count(),
        faults.len(),
        "one marker per fault"
    );
    for kind in ["kill", "restart-empty", "corrupt", "pause"] {
        assert!(
            svg.contains(&format!("<g class=\"fault {kind}\">")),
            "no {kind} marker"
        );
    }
    assert!(svg.contains("throughput (MiB/s"), "the y axis is labelled");
    assert!(svg.contains("time since the workload started (s)"));

    // A passed run removes its workload directory from the volume.
    let left: Vec<_> = std::fs::read_dir(&mountpoint)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "left on the volume: {left:?}; notes: {}",
        summary["notes"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run took {:?}",
        started.elapsed()
    );
    drop(up);
}

/// A cluster.toml and key in `directory` (no servers), for the bad-input cases.
fn write_cluster(directory: &Path) -> PathBuf {
    std::fs::create_dir_all(directory).unwrap();
    write_key_file(
        &directory.join("cluster.key"),
        &ClusterKey::from_bytes([3; 32]),
    )
    .unwrap();
    let file = ClusterFile {
        key_file: "cluster.key".into(),
        banks: (0..BANKS)
            .map(|bank| BankConfig {
                servers: (0..SERVERS_PER_BANK)
                    .map(|server| format!("127.0.0.1:{}", 39_000 + bank * 1000 + server))
                    .collect(),
            })
            .collect(),
    };
    let path = directory.join("cluster.toml");
    std::fs::write(&path, file.to_toml()).unwrap();
    path
}

fn fails_with_one_line(output: &Output, mentions: &[&str], what: &str) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{what} succeeded: {stderr}");
    assert_ne!(output.status.code(), Some(101), "{what} panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: expected one line, got:\n{stderr}"
    );
    for needle in mentions {
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn bad_input_fails_with_one_line() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = write_cluster(&scratch.path().join("data"));
    let cluster_text = path_text(&cluster);
    let chaos = |extra: &[&str]| {
        let mut arguments = vec!["chaos", "--cluster", cluster_text];
        arguments.extend_from_slice(extra);
        if !extra.contains(&"--workload") {
            arguments.extend(["--workload", "copy"]);
        }
        run_votefs(&arguments, &[])
    };

    let output = run_votefs(&["chaos", "--cluster", "/nonexistent/cluster.toml"], &[]);
    fails_with_one_line(
        &output,
        &["/nonexistent/cluster.toml"],
        "a missing cluster file",
    );

    fails_with_one_line(
        &chaos(&[]),
        &["no server pid files", "votefs up"],
        "a cluster without pid files",
    );

    fails_with_one_line(
        &chaos(&["--workload", "bonnie"]),
        &["unknown workload \"bonnie\""],
        "an unknown workload",
    );
    fails_with_one_line(
        &chaos(&["--faults", "kill,explode"]),
        &["unknown fault \"explode\""],
        "an unknown fault",
    );

    // fsx missing from PATH and cargo's bin directory.
    let nowhere = scratch.path().join("nowhere");
    let nowhere = path_text(&nowhere);
    let output = run_votefs(
        &["chaos", "--cluster", cluster_text, "--workload", "fsx"],
        &[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", nowhere),
            ("CARGO_HOME", nowhere),
        ],
    );
    fails_with_one_line(&output, &["fsx is not installed"], "fsx not installed");

    // Pid files, but no mount recorded and none given; then a mount point that is no mount.
    for bank in 0..BANKS {
        for server in 0..SERVERS_PER_BANK {
            let pid_file = format!("bank-{bank}-server-{server}.pid");
            std::fs::write(scratch.path().join("data").join(pid_file), "999999\n").unwrap();
        }
    }
    fails_with_one_line(
        &chaos(&[]),
        &["no --mount given", "mountpoint"],
        "no mount point",
    );
    let plain = scratch.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    fails_with_one_line(
        &chaos(&["--mount", path_text(&plain)]),
        &["is not a votefs mount"],
        "a mount point that is not mounted",
    );
}
