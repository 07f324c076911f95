//! A cluster of 6 real `votefs server` processes (3 banks of 2) on loopback, for the benchmarks.
//! Dropping it kills every server, also during a panic.

// Each benchmark uses a different subset.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use votefs::config::{write_key_file, BankConfig, ClusterConfig, ClusterFile};
use votefs::record::ClusterKey;

const VOTEFS: &str = env!("CARGO_BIN_EXE_votefs");
pub const BANKS: usize = 3;
pub const SERVERS_PER_BANK: usize = 2;
/// How long a server may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's processes and files; dropping it kills every server, also during a panic.
pub struct Cluster {
    servers: Vec<(Child, BufReader<ChildStdout>)>,
    addresses: Vec<SocketAddr>,
    key_file: PathBuf,
    pub config_path: PathBuf,
    // Dropped after the servers are killed.
    directory: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _stdout) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for index in 0..self.servers.len() {
                let log = self.directory.path().join(format!("server-{index}.log"));
                eprintln!("--- {} ---\n{}", log.display(), tail(&log, 20));
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    pub fn start() -> Self {
        let directory = tempfile::Builder::new()
            .prefix("votefs-bench-")
            .tempdir()
            .expect("creating a temporary directory");
        let key_file = directory.path().join("cluster.key");
        write_key_file(
            &key_file,
            &ClusterKey::from_bytes(*b"votefs loopback benchmark key 32"),
        )
        .expect("writing the key file");
        let mut cluster = Cluster {
            servers: Vec::new(),
            addresses: Vec::new(),
            key_file,
            config_path: directory.path().join("cluster.toml"),
            directory,
        };
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        for index in 0..BANKS * SERVERS_PER_BANK {
            let (child, address) = cluster.launch(index, any_port);
            cluster.servers.push(child);
            cluster.addresses.push(address);
        }
        let addresses = cluster.addresses.clone();
        let file = ClusterFile {
            key_file: "cluster.key".into(),
            banks: addresses
                .chunks(SERVERS_PER_BANK)
                .map(|bank| BankConfig {
                    servers: bank.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        };
        std::fs::write(&cluster.config_path, file.to_toml()).expect("writing cluster.toml");
        cluster
    }

    /// The cluster file, loaded.
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig::load(&self.config_path).expect("loading cluster.toml")
    }

    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.directory.path().join(format!("server-{index}"))
    }

    /// A directory for the benchmark's own files, removed with the cluster.
    pub fn scratch_dir(&self) -> &Path {
        self.directory.path()
    }

    /// Kill server `index`, delete its data directory and start it again on the same address.
    pub fn restart_empty(&mut self, index: usize) {
        let (child, _stdout) = &mut self.servers[index];
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(self.data_dir(index)).expect("deleting a data directory");
        let (running, address) = self.launch(index, self.addresses[index]);
        assert_eq!(address, self.addresses[index]);
        self.servers[index] = running;
    }

    /// Start server `index` on `listen` and wait for its readiness line.
    fn launch(
        &self,
        index: usize,
        listen: SocketAddr,
    ) -> ((Child, BufReader<ChildStdout>), SocketAddr) {
        let key_file = &self.key_file;
        let data = self.directory.path().join(format!("server-{index}"));
        let log = self.directory.path().join(format!("server-{index}.log"));
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating a server log");
        let mut command = Command::new(VOTEFS);
        command
            .arg("server")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data")
            .arg(&data)
            .arg("--key-file")
            .arg(key_file)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The kernel kills
        // the server if the benchmark dies without running destructors (SIGKILL, abort).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("starting votefs server");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // Read the line on a helper thread so that a server that hangs fails the run.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            let _ = sender.send((read.map(|_| line), stdout));
        });
        let (line, stdout) = match receiver.recv_timeout(READY_TIMEOUT) {
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
                "votefs server {index} did not get ready ({line:?}, exit {status:?}); log:\n{}",
                tail(&log, 40)
            );
        };
        // The pipe is kept open so that the server never writes to a closed pipe.
        ((child, stdout), address)
    }
}
