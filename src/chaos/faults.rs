//! The four faults a chaos run injects into the servers of a `votefs up` cluster, which of them
//! comes next (seeded), and how each is done to a real process and its data directory.
//!
//! | kind | what happens | who repairs it |
//! | --- | --- | --- |
//! | `kill` | SIGKILL | the supervisor restarts the server; the mount's heal backlog and the digest comparison of a pass refill what it missed |
//! | `restart-empty` | SIGSTOP, the data directory is renamed aside, SIGKILL; the supervisor restarts the server into a fresh empty directory and the old one is deleted | a pass makes the blank server join as recovering and refills it |
//! | `corrupt` | one byte flipped inside the value of a few live log entries, behind the server's back | reads outvote the copy; the deep scrub of a pass finds it and the digest comparison rewrites it |
//! | `pause` | SIGSTOP for [`PAUSE_MS`], then SIGCONT | writes it missed go to the heal backlog |
//!
//! Signals only ever go to a process whose command line says it is `votefs server` on the data
//! directory the pid file belongs to: a stale pid file never gets a recycled pid killed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::ClusterConfig;
use crate::local_cluster::{local_servers, LocalLayout, LocalServer};
use crate::rng::SeededRng;

/// How long a `pause` keeps a server stopped. The supervisor of `votefs up` probes every 2 s and
/// kills a server after three failed probes of up to 3 s each (about 10 s without an answer): a
/// 3 s pause costs at most one or two failed probes, so a pause stays a pause and never turns
/// into a kill.
pub const PAUSE_MS: u64 = 3_000;
/// How long a killed server may take to be running again before the fault counts as failed.
const RESTART_WAIT_MS: u64 = 30_000;
/// How long SIGSTOP may take to stop every thread of a server.
const STOP_WAIT_MS: u64 = 5_000;
/// Live log entries a `corrupt` fault damages.
pub const CORRUPTED_ENTRIES_PER_FAULT: usize = 3;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Kill,
    RestartEmpty,
    Corrupt,
    Pause,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::RestartEmpty,
        FaultKind::Corrupt,
        FaultKind::Pause,
    ];

    /// The name used on the command line, in the CSV and on the chart.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::RestartEmpty => "restart-empty",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Pause => "pause",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text.trim())
            .ok_or_else(|| {
                format!("unknown fault {text:?} (faults: kill, restart-empty, corrupt, pause)")
            })
    }

    /// A comma-separated list such as `kill,corrupt`; each kind once, in the order given.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let mut kinds = Vec::new();
        for part in text.split(',').filter(|part| !part.trim().is_empty()) {
            let kind = FaultKind::parse(part)?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(
                "--faults needs at least one of kill, restart-empty, corrupt, pause".into(),
            );
        }
        Ok(kinds)
    }
}

/// Which fault comes next and which server it hits, from one seed.
///
/// Kinds are drawn in rounds: every round is a seeded shuffle of all the kinds allowed, so a run
/// of `n` rounds injects each kind `n` times, in an order only the seed decides. A short run
/// therefore still sees every kind, which independent draws would not promise.
pub struct FaultPlanner {
    random: SeededRng,
    kinds: Vec<FaultKind>,
    round: Vec<FaultKind>,
}

impl FaultPlanner {
    /// `kinds` must not be empty.
    pub fn new(seed: u64, kinds: &[FaultKind]) -> Self {
        assert!(!kinds.is_empty(), "a fault planner needs at least one kind");
        Self {
            random: SeededRng::new(seed),
            kinds: kinds.to_vec(),
            round: Vec::new(),
        }
    }

    pub fn next_kind(&mut self) -> FaultKind {
        if self.round.is_empty() {
            let mut round = self.kinds.clone();
            self.shuffle(&mut round);
            // Drawn from the back: reverse so that a round is used in its shuffled order.
            round.reverse();
            self.round = round;
        }
        self.round.pop().expect("a refilled round is not empty")
    }

    /// A uniformly chosen position in `0..count` (`count` > 0).
    pub fn pick(&mut self, count: usize) -> usize {
        self.random.below(count as u64) as usize
    }

    /// Fisher–Yates, seeded.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let other = self.random.below(last as u64 + 1) as usize;
            items.swap(last, other);
        }
    }

    /// A seed for work a fault does with randomness of its own (which entries to damage).
    pub fn next_seed(&mut self) -> u64 {
        self.random.next_u64()
    }
}

/// The server processes of a `votefs up` data directory, found through its pid files.
#[derive(Clone, Debug)]
pub struct ServerProcesses {
    data_dir: PathBuf,
    servers: Vec<LocalServer>,
}

impl ServerProcesses {
    /// The servers of the `votefs up` cluster whose `cluster.toml` is `cluster`: its directory is
    /// the data directory, and its addresses must follow `up`'s layout.
    pub fn discover(cluster: &ClusterConfig) -> Result<Self> {
        let directory = cluster.path.parent().unwrap_or(Path::new("."));
        let directory = if directory.as_os_str().is_empty() {
            Path::new(".")
        } else {
            directory
        };
        let data_dir = directory
            .canonicalize()
            .with_context(|| format!("cannot use directory {}", directory.display()))?;
        let placement = &cluster.placement;
        let layout = LocalLayout {
            banks: placement.bank_count(),
            servers_per_bank: placement.servers_per_bank(),
            base_port: placement.address(0).port(),
        };
        let servers = local_servers(&data_dir, &layout);
        let follows_layout = layout.validate().is_ok()
            && servers
                .iter()
                .enumerate()
                .all(|(index, server)| server.address == placement.address(index));
        if !follows_layout {
            bail!(
                "{} does not list the servers `votefs up` would start (127.0.0.1, one port per \
                 server from the first): chaos needs a cluster that `votefs up` runs",
                cluster.path.display()
            );
        }
        if !servers.iter().any(|server| server.pid_file.exists()) {
            bail!(
                "no server pid files (bank-0-server-0.pid, ...) in {}: chaos needs the data \
                 directory of a running `votefs up`",
                data_dir.display()
            );
        }
        Ok(Self { data_dir, servers })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Every server, bank-major (the order of placement indexes).
    pub fn servers(&self) -> &[LocalServer] {
        &self.servers
    }

    pub fn server(&self, index: usize) -> &LocalServer {
        &self.servers[index]
    }

    /// The process id of server `index` if its pid file names a live `votefs server` of its data
    /// directory.
    pub fn running_pid(&self, index: usize) -> Option<libc::pid_t> {
        let server = &self.servers[index];
        let pid: libc::pid_t = std::fs::read_to_string(&server.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_server_process(pid, &server.data_dir).then_some(pid)
    }
}

/// Whether `pid` is a live (not zombie) `votefs server` whose data directory is `data_dir`.
pub fn is_server_process(pid: libc::pid_t, data_dir: &Path) -> bool {
    if pid <= 0 || process_state(pid).is_none_or(|state| state == 'Z' || state == 'X') {
        return false;
    }
    let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let arguments: Vec<&[u8]> = command_line.split(|byte| *byte == 0).collect();
    let data_dir = data_dir.as_os_str().as_encoded_bytes();
    arguments.contains(&b"server".as_slice()) && arguments.contains(&data_dir)
}

/// The state letter of `/proc/PID/stat` (R, S, D, T, t, Z, ...).
pub fn process_state(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.trim_start().chars().next()
}

fn send_signal(pid: libc::pid_t, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; the caller checked that `pid` is a
    // server process of the cluster.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Wait until every thread of `pid` is stopped (kill(2) returns before they all obeyed).
async fn wait_until_stopped(pid: libc::pid_t) -> Result<()> {
    let give_up_at = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
    loop {
        match process_state(pid) {
            Some('T') | Some('t') => return Ok(()),
            None | Some('Z') => bail!("process {pid} died instead of stopping"),
            _ if Instant::now() >= give_up_at => bail!("process {pid} did not stop"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Wait until the supervisor runs server `index` again under a pid other than `old_pid`.
async fn wait_for_restart(
    processes: &ServerProcesses,
    index: usize,
    old_pid: libc::pid_t,
) -> Result<(libc::pid_t, u64)> {
    let started = Instant::now();
    let give_up_at = started + Duration::from_millis(RESTART_WAIT_MS);
    loop {
        if let Some(pid) = processes.running_pid(index) {
            if pid != old_pid {
                return Ok((pid, started.elapsed().as_millis() as u64));
            }
        }
        if Instant::now() >= give_up_at {
            bail!("the supervisor did not restart it within {RESTART_WAIT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn running_pid_or_error(processes: &ServerProcesses, index: usize) -> Result<libc::pid_t> {
    processes.running_pid(index).with_context(|| {
        format!(
            "{} has no running server process",
            processes.server(index).pid_file.display()
        )
    })
}

/// SIGKILL server `index` and wait until the supervisor has started it again.
pub async fn kill(processes: &ServerProcesses, index: usize) -> Result<String> {
    let pid = running_pid_or_error(processes, index)?;
    send_signal(pid, libc::SIGKILL)?;
    let (new_pid, restart_ms) = wait_for_restart(processes, index, pid).await?;
    Ok(format!(
        "killed pid {pid}; running again as pid {new_pid} after {restart_ms} ms"
    ))
}

/// Restart server `index` on an empty data directory.
///
/// The server is stopped first so that it writes nothing more, its directory is renamed aside
/// (the supervisor's restart then creates a fresh empty one under the old name: the old records
/// can never be reopened), and only then is it killed. The renamed directory is deleted once the
/// new process runs.
pub async fn restart_empty(processes: &ServerProcesses, index: usize) -> Result<String> {
    let server = processes.server(index).clone();
    let pid = running_pid_or_error(processes, index)?;
    send_signal(pid, libc::SIGSTOP)?;
    if let Err(error) = wait_until_stopped(pid).await {
        let _ = send_signal(pid, libc::SIGCONT);
        return Err(error);
    }
    let aside = discarded_directory_name(&server.data_dir);
    if let Err(error) = std::fs::rename(&server.data_dir, &aside) {
        let _ = send_signal(pid, libc::SIGCONT);
        bail!("cannot move {} aside: {error}", server.data_dir.display());
    }
    // A stopped process still dies of SIGKILL.
    send_signal(pid, libc::SIGKILL)?;
    let restarted = wait_for_restart(processes, index, pid).await;
    let discarded_bytes = tokio::task::spawn_blocking(move || {
        let bytes = directory_bytes(&aside);
        std::fs::remove_dir_all(&aside).map(|()| bytes)
    })
    .await
    .context("the task deleting the old data directory failed")?
    .context("cannot delete the old data directory")?;
    let (new_pid, restart_ms) = restarted?;
    Ok(format!(
        "stopped pid {pid}, discarded its {discarded_bytes} bytes of records, killed it; running \
         again empty as pid {new_pid} after {restart_ms} ms"
    ))
}

/// A name next to `data_dir` that no server uses: `bank-B-server-S.chaos-discarded-<ns>`.
fn discarded_directory_name(data_dir: &Path) -> PathBuf {
    let nanoseconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut name = data_dir.as_os_str().to_owned();
    name.push(format!(".chaos-discarded-{nanoseconds}"));
    PathBuf::from(name)
}

fn directory_bytes(directory: &Path) -> u64 {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// SIGSTOP server `index` for [`PAUSE_MS`], then SIGCONT.
pub async fn pause(processes: &ServerProcesses, index: usize) -> Result<String> {
    let pid = running_pid_or_error(processes, index)?;
    send_signal(pid, libc::SIGSTOP)?;
    tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
    // Continue it only if it is still the same server: the supervisor may have killed it.
    if !is_server_process(pid, &processes.server(index).data_dir) {
        bail!("pid {pid} was gone before it could be continued (the supervisor killed it?)");
    }
    send_signal(pid, libc::SIGCONT)?;
    Ok(format!(
        "stopped pid {pid} for {PAUSE_MS} ms, then continued it"
    ))
}

/// Flip one byte inside the value of a few live entries of server `index`'s log.
pub async fn corrupt(processes: &ServerProcesses, index: usize, seed: u64) -> Result<String> {
    let data_dir = processes.server(index).data_dir.clone();
    let damaged = tokio::task::spawn_blocking(move || {
        super::corrupt::damage_live_values(&data_dir, CORRUPTED_ENTRIES_PER_FAULT, seed)
    })
    .await
    .context("the corrupting task failed")??;
    if damaged.is_empty() {
        bail!("found no live entry with a value to damage");
    }
    let keys: Vec<String> = damaged.iter().map(|entry| entry.key.clone()).collect();
    Ok(format!(
        "flipped a value byte in {} entries: {}",
        damaged.len(),
        keys.join(", ")
    ))
}

/// Whether server `index` has log entries a `corrupt` fault could damage.
pub fn has_records(processes: &ServerProcesses, index: usize) -> bool {
    std::fs::read_dir(&processes.server(index).data_dir).is_ok_and(|entries| {
        entries.filter_map(|entry| entry.ok()).any(|entry| {
            entry.file_name().to_string_lossy().starts_with("segment-")
                && entry.metadata().is_ok_and(|metadata| metadata.len() > 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_drawn(seed: u64, kinds: &[FaultKind], count: usize) -> Vec<FaultKind> {
        let mut planner = FaultPlanner::new(seed, kinds);
        (0..count).map(|_| planner.next_kind()).collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_faults_and_servers() {
        let first = kinds_drawn(42, &FaultKind::ALL, 40);
        assert_eq!(first, kinds_drawn(42, &FaultKind::ALL, 40));
        assert_ne!(first, kinds_drawn(43, &FaultKind::ALL, 40));

        let servers = |seed| {
            let mut planner = FaultPlanner::new(seed, &FaultKind::ALL);
            (0..40).map(|_| planner.pick(6)).collect::<Vec<_>>()
        };
        assert_eq!(servers(7), servers(7));
        assert_ne!(servers(7), servers(8));
        assert!(servers(7).iter().all(|server| *server < 6));
    }

    #[test]
    fn every_round_injects_each_kind_once() {
        for seed in 0..50 {
            let drawn = kinds_drawn(seed, &FaultKind::ALL, 12);
            for round in drawn.chunks(4) {
                let mut sorted = round.to_vec();
                sorted.sort();
                assert_eq!(sorted, FaultKind::ALL, "seed {seed}: {drawn:?}");
            }
        }
        // Not always the same order.
        let orders: std::collections::BTreeSet<Vec<FaultKind>> = (0..50)
            .map(|seed| kinds_drawn(seed, &FaultKind::ALL, 4))
            .collect();
        assert!(orders.len() > 5, "{orders:?}");
        assert_eq!(
            kinds_drawn(1, &[FaultKind::Pause], 3),
            [FaultKind::Pause; 3]
        );
    }

    #[test]
    fn fault_lists_parse_and_unknown_names_are_refused() {
        assert_eq!(
            FaultKind::parse_list("kill, corrupt,kill").unwrap(),
            [FaultKind::Kill, FaultKind::Corrupt]
        );
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
        let error = FaultKind::parse_list("kill,explode").unwrap_err();
        assert!(error.contains("\"explode\""), "{error}");
        assert!(FaultKind::parse_list(",").is_err());
    }

    #[test]
    fn process_state_reads_this_process() {
        let pid = std::process::id() as libc::pid_t;
        assert!(matches!(process_state(pid), Some('R') | Some('S')));
        // This test binary is not a votefs server of any directory.
        assert!(!is_server_process(pid, Path::new("/")));
        assert!(!is_server_process(0, Path::new("/")));
    }
}
