//! The workloads a chaos run keeps busy on the mount, and how their throughput is measured.
//!
//! - `fsx` (crates.io `fsx` 0.3.2) checks every read against its own model of the file and exits
//!   non-zero at the first difference or error. It runs with `-v`, which logs one line per
//!   operation (that is how operations are counted), without mmap (it never unmaps after a mapped
//!   read), with `fsync`/`fdatasync` so that writes leave the mount's write-back buffer for the
//!   cluster, and with `posix_fadvise` so that some reads miss the kernel's cache and are voted.
//!   It has no time limit of its own: it runs until the deadline and is then killed; every read it
//!   made until then was checked. One that fails is kept (its artifacts too) and another starts
//!   on a new file, so that the faults keep meeting a workload.
//! - `dbench` (Debian's, with `/usr/share/dbench/client.txt`) runs for the duration itself; its
//!   progress lines give the operation count, its exit status and `ERROR` lines the failures. It
//!   checks no data.
//! - `copy` (built in, see [`super::copy`]) writes files of seeded contents and checks every
//!   read against their SHA-256.
//!
//! Throughput of the external programs is the `rchar + wchar` of their process tree
//! (`/proc/PID/io`), sampled every second, less what they wrote into our pipes (fsx's log).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::copy::{self, FileRecord};

/// The loadfile Debian's dbench package ships.
pub const DBENCH_LOADFILE: &str = "/usr/share/dbench/client.txt";
/// dbench clients (one process each).
const DBENCH_CLIENTS: u32 = 2;
/// How long dbench may take to end by itself (its cleanup) once the run is over.
const DBENCH_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Failure lines kept for the report.
const NOTES_LIMIT: usize = 20;

/// fsx's configuration: no mmap, files up to 1 MiB (eight of the file system's 128 KiB chunks, so
/// that a file spreads over each bank's servers), syncs and cache drops (see the module doc).
const FSX_CONFIG: &str = "\
flen = 1048576

[weights]
mapread = 0
mapwrite = 0
invalidate = 0
close_open = 0
read = 10
write = 10
truncate = 2
fsync = 2
fdatasync = 1
posix_fadvise = 3
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Fsx,
    Dbench,
    Copy,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Fsx => "fsx",
            WorkloadKind::Dbench => "dbench",
            WorkloadKind::Copy => "copy",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "fsx" => Ok(WorkloadKind::Fsx),
            "dbench" => Ok(WorkloadKind::Dbench),
            "copy" => Ok(WorkloadKind::Copy),
            _ => Err(format!(
                "unknown workload {text:?} (workloads: fsx, dbench, copy)"
            )),
        }
    }

    /// Whether the workload compares what it reads with what it wrote.
    pub fn checks_data(self) -> bool {
        !matches!(self, WorkloadKind::Dbench)
    }
}

/// What the workload did so far; shared between it and the sampler.
#[derive(Debug, Default)]
pub struct WorkloadCounters {
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    operations: AtomicU64,
    failed_operations: AtomicU64,
    mismatches: AtomicU64,
    verified_bytes: AtomicU64,
}

/// A snapshot of [`WorkloadCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadTotals {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub operations: u64,
    pub failed_operations: u64,
    pub mismatches: u64,
    pub verified_bytes: u64,
}

impl WorkloadCounters {
    pub fn add_read(&self, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_written(&self, bytes: u64) {
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_operation(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_failure(&self) {
        self.failed_operations.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_mismatch(&self) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_verified(&self, bytes: u64) {
        self.verified_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn totals(&self) -> WorkloadTotals {
        WorkloadTotals {
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            operations: self.operations.load(Ordering::Relaxed),
            failed_operations: self.failed_operations.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
            verified_bytes: self.verified_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where a workload's program is, checked before the run starts.
#[derive(Clone, Debug)]
pub enum WorkloadProgram {
    Fsx(PathBuf),
    Dbench(PathBuf),
    Copy,
}

/// `name` in PATH, then in cargo's bin directory (where `cargo install` puts fsx).
fn find_program(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&home).join("bin").join(name));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin").join(name));
    }
    candidates.into_iter().find(|candidate| candidate.is_file())
}

/// Find the workload's program, or say how to install it.
pub fn find_workload(kind: WorkloadKind) -> Result<WorkloadProgram> {
    match kind {
        WorkloadKind::Fsx => match find_program("fsx") {
            Some(path) => Ok(WorkloadProgram::Fsx(path)),
            None => bail!(
                "fsx is not installed: run `cargo install --locked fsx@0.3.2` (or `bash ci/setup`)"
            ),
        },
        WorkloadKind::Dbench => {
            match find_program("dbench") {
                Some(_) if !Path::new(DBENCH_LOADFILE).is_file() => {
                    bail!("dbench's loadfile {DBENCH_LOADFILE} is missing: reinstall the dbench package")
                }
                Some(path) => Ok(WorkloadProgram::Dbench(path)),
                None => bail!("dbench is not installed: run `apt-get install dbench`"),
            }
        }
        WorkloadKind::Copy => Ok(WorkloadProgram::Copy),
    }
}

/// Bytes read and written by a process and all its descendants, summed over every sample so that
/// a process that comes and goes still counts (up to its last sample).
#[derive(Debug, Default)]
pub struct ProcessTreeIo {
    last: BTreeMap<libc::pid_t, (u64, u64)>,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl ProcessTreeIo {
    pub fn sample(&mut self, root: libc::pid_t) {
        let pids = if root > 0 {
            process_tree(root)
        } else {
            Vec::new()
        };
        let mut seen = BTreeMap::new();
        for pid in pids {
            let Some((read, written)) = process_io(pid) else {
                continue;
            };
            let (last_read, last_written) = self.last.get(&pid).copied().unwrap_or((0, 0));
            self.read_bytes += read.saturating_sub(last_read);
            self.written_bytes += written.saturating_sub(last_written);
            seen.insert(pid, (read, written));
        }
        self.last = seen;
    }
}

/// `rchar` and `wchar` of `/proc/PID/io`.
fn process_io(pid: libc::pid_t) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    Some((field("rchar:")?, field("wchar:")?))
}

/// `root` and every descendant, found through the parent pids in `/proc/*/stat`.
fn process_tree(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: BTreeMap<libc::pid_t, Vec<libc::pid_t>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(|entry| entry.ok()) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the parenthesised command name: state, then the parent pid.
            let parent = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
                .and_then(|parent| parent.parse().ok());
            if let Some(parent) = parent {
                children.entry(parent).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for child in children.get(&pid).into_iter().flatten() {
            tree.push(*child);
            queue.push_back(*child);
        }
    }
    tree
}

/// What a finished workload reports.
#[derive(Debug, Default)]
pub struct WorkloadReport {
    /// Processes (fsx, dbench) started.
    pub runs: u64,
    /// Why the workload failed, when it did (a checker exiting non-zero).
    pub failure: Option<String>,
    /// Lines describing failures, at most [`NOTES_LIMIT`].
    pub notes: Vec<String>,
    /// The `copy` workload's files and what they must hold.
    pub files: BTreeMap<String, FileRecord>,
}

/// A workload running in `directory` until the deadline or [`RunningWorkload::stop`].
pub struct RunningWorkload {
    kind: WorkloadKind,
    directory: PathBuf,
    counters: Arc<WorkloadCounters>,
    stop_copy: Arc<AtomicBool>,
    stop_process: watch::Sender<bool>,
    /// The external program's current process id (0 when none runs).
    root_pid: Arc<AtomicI32>,
    /// Bytes the external program wrote into our pipes (its logs), not into the file system.
    pipe_bytes: Arc<AtomicU64>,
    tree_io: ProcessTreeIo,
    reported_written_bytes: u64,
    task: JoinHandle<Result<WorkloadReport>>,
}

impl RunningWorkload {
    /// Start `program` in `directory` (which exists). `scratch` is for the workload's own files
    /// outside the mount (fsx's configuration and its artifacts on failure).
    pub fn start(
        program: WorkloadProgram,
        directory: PathBuf,
        scratch: PathBuf,
        seed: u64,
        deadline: Instant,
    ) -> Result<Self> {
        let counters = Arc::new(WorkloadCounters::default());
        let stop_copy = Arc::new(AtomicBool::new(false));
        let (stop_process, stop_receiver) = watch::channel(false);
        let root_pid = Arc::new(AtomicI32::new(0));
        let pipe_bytes = Arc::new(AtomicU64::new(0));
        let shared = ProcessShared {
            counters: counters.clone(),
            root_pid: root_pid.clone(),
            pipe_bytes: pipe_bytes.clone(),
            notes: Arc::new(Mutex::new(Vec::new())),
        };
        let kind = match &program {
            WorkloadProgram::Fsx(_) => WorkloadKind::Fsx,
            WorkloadProgram::Dbench(_) => WorkloadKind::Dbench,
            WorkloadProgram::Copy => WorkloadKind::Copy,
        };
        let task = match program {
            WorkloadProgram::Fsx(binary) => {
                std::fs::create_dir_all(&scratch)
                    .with_context(|| format!("cannot create {}", scratch.display()))?;
                let config = scratch.join("fsx.toml");
                std::fs::write(&config, FSX_CONFIG)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let directory = directory.clone();
                tokio::spawn(async move {
                    run_fsx(
                        binary,
                        directory,
                        config,
                        scratch,
                        seed,
                        deadline,
                        stop_receiver,
                        shared,
                    )
                    .await
                })
            }
            WorkloadProgram::Dbench(binary) => {
                let directory = directory.clone();
                tokio::spawn(async move {
                    run_dbench(binary, directory, deadline, stop_receiver, shared).await
                })
            }
            WorkloadProgram::Copy => {
                let directory = directory.clone();
                let stop = stop_copy.clone();
                let counters = counters.clone();
                tokio::task::spawn_blocking(move || {
                    let outcome = copy::run(directory, seed, deadline, stop, counters);
                    Ok(WorkloadReport {
                        runs: 1,
                        failure: None,
                        notes: outcome.notes,
                        files: outcome.files,
                    })
                })
            }
        };
        Ok(Self {
            kind,
            directory,
            counters,
            stop_copy,
            stop_process,
            root_pid,
            pipe_bytes,
            tree_io: ProcessTreeIo::default(),
            reported_written_bytes: 0,
            task,
        })
    }

    pub fn kind(&self) -> WorkloadKind {
        self.kind
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn counters(&self) -> &Arc<WorkloadCounters> {
        &self.counters
    }

    /// The totals so far; for external programs the bytes come from their processes' I/O.
    pub fn sample(&mut self) -> WorkloadTotals {
        let mut totals = self.counters.totals();
        if self.kind != WorkloadKind::Copy {
            self.tree_io.sample(self.root_pid.load(Ordering::Relaxed));
            let written = self
                .tree_io
                .written_bytes
                .saturating_sub(self.pipe_bytes.load(Ordering::Relaxed));
            // The pipe count can run ahead of the last I/O sample: never go backwards.
            self.reported_written_bytes = self.reported_written_bytes.max(written);
            totals.read_bytes = self.tree_io.read_bytes;
            totals.written_bytes = self.reported_written_bytes;
        }
        totals
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop the workload (killing an external program) and return its report.
    pub async fn stop(self) -> Result<WorkloadReport> {
        self.stop_copy.store(true, Ordering::Relaxed);
        self.stop_process.send_replace(true);
        self.task.await.context("the workload task failed")?
    }
}

/// What the tasks running external programs share with [`RunningWorkload`].
#[derive(Clone)]
struct ProcessShared {
    counters: Arc<WorkloadCounters>,
    root_pid: Arc<AtomicI32>,
    pipe_bytes: Arc<AtomicU64>,
    notes: Arc<Mutex<Vec<String>>>,
}

impl ProcessShared {
    fn note(&self, text: String) {
        let mut notes = self.notes.lock().expect("notes lock poisoned");
        if notes.len() < NOTES_LIMIT {
            notes.push(text);
        }
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("notes lock poisoned"))
    }
}

/// Read a child's output line by line, counting its bytes and handing each line to `on_line`.
fn read_lines<R>(
    output: R,
    shared: ProcessShared,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            shared
                .pipe_bytes
                .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
            on_line(&line);
        }
    })
}

/// Completes once `stop` is set (or its sender is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How one fsx process ended.
#[derive(Debug, PartialEq, Eq)]
enum FsxEnding {
    /// Killed at the deadline: every read it made matched its model.
    Stopped,
    /// It found data that differs from its model.
    Mismatch,
    /// It failed otherwise (an I/O error, a panic).
    Failed,
}

/// Whether fsx's error lines describe wrong data rather than a failed call.
fn fsx_saw_wrong_data(error_lines: &[String]) -> bool {
    error_lines
        .iter()
        .any(|line| line.contains("miscompare") || line.contains("short read"))
}

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the list.
async fn run_fsx(
    binary: PathBuf,
    directory: PathBuf,
    config: PathBuf,
    artifacts: PathBuf,
    seed: u64,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
    shared: ProcessShared,
) -> Result<WorkloadReport> {
    let mut report = WorkloadReport::default();
    let deadline = tokio::time::Instant::from_std(deadline);
    while !*stop.borrow() && tokio::time::Instant::now() < deadline {
        report.runs += 1;
        let file = directory.join(format!("fsx-{}", report.runs));
        let fsx_seed = seed.wrapping_add(report.runs);
        let mut child = Command::new(&binary)
            .arg("-v")
            .arg("-S")
            .arg(fsx_seed.to_string())
            .arg("-f")
            .arg(&config)
            .arg("-P")
            .arg(&artifacts)
            .arg(&file)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        shared
            .root_pid
            .store(child.id().unwrap_or(0) as libc::pid_t, Ordering::Relaxed);
        let error_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let readers = [
            read_lines(child.stderr.take().expect("piped"), shared.clone(), {
                let counters = shared.counters.clone();
                let error_lines = error_lines.clone();
                move |line| {
                    if line.starts_with("[INFO") {
                        counters.add_operation();
                    } else if !line.trim().is_empty() {
                        let mut lines = error_lines.lock().expect("lock poisoned");
                        if lines.len() < NOTES_LIMIT {
                            lines.push(line.to_string());
                        }
                    }
                }
            }),
            read_lines(child.stdout.take().expect("piped"), shared.clone(), |_| {}),
        ];
        let ending = tokio::select! {
            status = child.wait() => {
                for reader in readers {
                    let _ = reader.await;
                }
                let status = status.context("waiting for fsx")?;
                let lines = error_lines.lock().expect("lock poisoned").clone();
                let ending = if fsx_saw_wrong_data(&lines) {
                    FsxEnding::Mismatch
                } else {
                    FsxEnding::Failed
                };
                shared.note(format!(
                    "fsx -S {fsx_seed} on {} ended by itself with {status} after {} operations \
                     in all; its log and good file are in {}; first lines: {}",
                    file.display(),
                    shared.counters.totals().operations,
                    artifacts.display(),
                    lines.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")
                ));
                ending
            }
            // Killed only when asked, after the runner's last sample of its I/O, never at the
            // deadline by itself.
            _ = stop_requested(&mut stop) => FsxEnding::Stopped,
        };
        shared.root_pid.store(0, Ordering::Relaxed);
        match ending {
            FsxEnding::Stopped => {
                let _ = child.kill().await;
                break;
            }
            FsxEnding::Mismatch => {
                shared.counters.add_mismatch();
                report.failure = Some("fsx read data that differs from its model".into());
            }
            FsxEnding::Failed => {
                shared.counters.add_failure();
                report.failure = Some("fsx failed an operation".into());
            }
        }
    }
    report.notes = shared.take_notes();
    Ok(report)
}

/// The cumulative operation count of a dbench progress line (`  2  12345  21.23 MB/sec  execute
/// 3 sec  latency 1.2 ms`).
fn dbench_operations(line: &str) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() >= 5 && fields[3] == "MB/sec" && fields[4] == "execute" {
        fields[1].parse().ok()
    } else {
        None
    }
}

async fn run_dbench(
    binary: PathBuf,
    directory: PathBuf,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
    shared: ProcessShared,
) -> Result<WorkloadReport> {
    let seconds = deadline
        .saturating_duration_since(Instant::now())
        .as_secs()
        .max(1);
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(DBENCH_LOADFILE)
        .arg("-D")
        .arg(&directory)
        .arg("-t")
        .arg(seconds.to_string())
        .arg(DBENCH_CLIENTS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    shared
        .root_pid
        .store(child.id().unwrap_or(0) as libc::pid_t, Ordering::Relaxed);
    let on_line = {
        let shared = shared.clone();
        move |line: &str| {
            if let Some(operations) = dbench_operations(line) {
                shared
                    .counters
                    .operations
                    .fetch_max(operations, Ordering::Relaxed);
            } else if line.contains("ERROR") {
                shared.counters.add_failure();
                shared.note(format!("dbench: {}", line.trim()));
            }
        }
    };
    let readers = [
        read_lines(
            child.stdout.take().expect("piped"),
            shared.clone(),
            on_line.clone(),
        ),
        read_lines(child.stderr.take().expect("piped"), shared.clone(), on_line),
    ];
    let mut report = WorkloadReport {
        runs: 1,
        ..WorkloadReport::default()
    };
    // dbench ends by itself after its time limit and its cleanup, a little after the runner's
    // deadline: once asked to stop, it gets a grace period before it is killed.
    let status = tokio::select! {
        status = child.wait() => Some(status),
        _ = async {
            stop_requested(&mut stop).await;
            tokio::time::sleep(DBENCH_EXIT_GRACE).await;
        } => None,
    };
    match status {
        Some(status) => {
            for reader in readers {
                let _ = reader.await;
            }
            let status = status.context("waiting for dbench")?;
            if !status.success() {
                shared.counters.add_failure();
                report.failure = Some(format!("dbench exited with {status}"));
            }
        }
        None => {
            let _ = child.kill().await;
            shared.note("dbench was killed: it did not end within its time limit".into());
        }
    }
    shared.root_pid.store(0, Ordering::Relaxed);
    report.notes = shared.take_notes();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_parse() {
        for kind in [WorkloadKind::Fsx, WorkloadKind::Dbench, WorkloadKind::Copy] {
            assert_eq!(WorkloadKind::parse(kind.name()), Ok(kind));
        }
        let error = WorkloadKind::parse("bonnie").unwrap_err();
        assert!(error.contains("\"bonnie\""), "{error}");
    }

    #[test]
    fn dbench_progress_lines_give_operations() {
        assert_eq!(
            dbench_operations("   2     22546   277.44 MB/sec  execute   1 sec  latency 75.900 ms"),
            Some(22546)
        );
        assert_eq!(dbench_operations("   2  cleanup   3 sec"), None);
        assert_eq!(
            dbench_operations(" NTCreateX      16324     0.026     8.221"),
            None
        );
    }

    #[test]
    fn fsx_failures_are_told_apart() {
        assert!(fsx_saw_wrong_data(&[
            "[ERROR fsx] miscompare: offset= 0x10, size = 0x20".into()
        ]));
        assert!(!fsx_saw_wrong_data(&[
            "thread 'main' panicked at src/main.rs: EIO".into()
        ]));
    }

    #[test]
    fn the_io_of_a_process_tree_is_counted() {
        let mut tree_io = ProcessTreeIo::default();
        let pid = std::process::id() as libc::pid_t;
        tree_io.sample(pid);
        let first = tree_io.read_bytes;
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("bytes");
        std::fs::write(&path, vec![1u8; 100_000]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 100_000);
        tree_io.sample(pid);
        assert!(tree_io.read_bytes >= first + 100_000, "{tree_io:?}");
        assert!(tree_io.written_bytes >= 100_000, "{tree_io:?}");
        assert!(process_tree(pid).contains(&pid));
    }
}
