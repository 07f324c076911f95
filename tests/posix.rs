//! POSIX conformance and data integrity on a real mount: pjdfstest (0 failures is the bar) and
//! fsx (100 000 operations without mmap, 10 000 with), both installed by `ci/setup`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mounted::Mounted;
use common::TestCluster;
use votefs::mount::MountOptions;

/// A checker installed by `ci/setup` (`cargo install --locked ...`), from PATH or cargo's bin.
fn checker(name: &str) -> PathBuf {
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
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run `bash ci/setup` first"))
}

fn mount_for_everyone(cluster: &TestCluster) -> Mounted {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "pjdfstest needs root (it switches users and makes device nodes)"
    );
    Mounted::start(
        cluster.config_path(),
        &cluster.directory().join("mnt"),
        MountOptions {
            refresh_interval: Duration::from_secs(3600),
            allow_other: true,
            ..MountOptions::default()
        },
    )
}

#[test]
fn pjdfstest_passes_with_no_failures() {
    let cluster = TestCluster::start_default();
    let mounted = mount_for_everyone(&cluster);
    let secondary = tempfile::tempdir().unwrap();
    let config = cluster.directory().join("pjdfstest.toml");
    std::fs::write(
        &config,
        format!(
            r#"[features]
posix_fallocate = {{}}
rename_ctime = {{}}
utimensat = {{}}
utime_now = {{}}
secondary_fs = "{}"

[settings]
naptime = 0.01

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#,
            secondary.path().display()
        ),
    )
    .unwrap();
    let work = mounted.path().join("pjdfstest");
    std::fs::create_dir(&work).unwrap();
    let output = Command::new(checker("pjdfstest"))
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&work)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running pjdfstest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("Summary:"))
        .unwrap_or_else(|| {
            panic!(
                "pjdfstest printed no summary:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|line| line.trim_end().ends_with("FAILED") || line.starts_with('\t'))
        .collect();
    assert!(
        output.status.success() && summary.starts_with("Summary: 0 failed"),
        "{summary}\n{}",
        failures.join("\n")
    );
    // Everything that can run on FUSE ran: only the read-only remount cases (11) and features
    // Linux lacks are skipped.
    let passed: u32 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" passed")?.parse().ok())
        .expect("a passed count in the summary");
    assert!(passed >= 384, "{summary}");
    mounted.stop().expect("unmounting");
}

fn run_fsx(mounted: &Mounted, name: &str, operations: u32, seed: u32, config: Option<&Path>) {
    let artifacts = tempfile::tempdir().unwrap();
    let mut command = Command::new(checker("fsx"));
    command
        .arg("-N")
        .arg(operations.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-P")
        .arg(artifacts.path());
    if let Some(config) = config {
        command.arg("-f").arg(config);
    }
    let output = command
        .arg(mounted.path().join(name))
        .output()
        .expect("running fsx");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("All operations completed A-OK!"),
        "fsx {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn fsx_finds_no_corruption() {
    let cluster = TestCluster::start_default();
    let mounted = mount_for_everyone(&cluster);
    // fsx 0.3.2: once [weights] exists, unnamed weights default to 10, so mmap is turned off by
    // naming all three of its operations.
    let no_mmap = cluster.directory().join("fsx-no-mmap.toml");
    std::fs::write(
        &no_mmap,
        "[weights]\nmapread = 0\nmapwrite = 0\ninvalidate = 0\n",
    )
    .unwrap();
    run_fsx(&mounted, "fsx-plain", 100_000, 42, Some(&no_mmap));
    // fsx never unmaps after a mapped read: keep runs with mmap short.
    run_fsx(&mounted, "fsx-mmap", 10_000, 7, None);
    mounted.stop().expect("unmounting");
}
