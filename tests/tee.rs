//! `votefs tee` (issue 6): 5 000 generated operations on a plain directory and on a votefs mount
//! agree field by field; a deliberately divergent target is reported at the right operation, with
//! both responses and a replay file that reproduces it; a recorded trace replays exactly.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mounted::Mounted;
use common::{run_votefs, TestCluster};
use votefs::mount::MountOptions;
use votefs::verify::operation::{FsPath, Operation};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn write_trace(path: &Path, operations: &[Operation]) {
    let lines: Vec<String> = operations
        .iter()
        .map(|operation| serde_json::to_string(operation).unwrap())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The indices of the operations `votefs tee` reported as divergent, in order.
fn divergent_indices(stdout: &str) -> Vec<usize> {
    stdout
        .lines()
        .filter_map(|line| {
            line.strip_prefix("operation ")?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_divergent_target_is_reported_at_the_right_operation() {
    let scratch = tempfile::tempdir().unwrap();
    let reference = scratch.path().join("reference");
    let target = scratch.path().join("target");
    std::fs::create_dir(&reference).unwrap();
    std::fs::create_dir(&target).unwrap();
    // One file differs (same length, other bytes): only reading it can tell.
    std::fs::write(reference.join("victim"), b"original").unwrap();
    std::fs::write(target.join("victim"), b"altered!").unwrap();
    let operations = vec![
        Operation::Mkdir {
            path: FsPath::new("d"),
            mode: 0o755,
        },
        Operation::Create {
            path: FsPath::new("d/x"),
            mode: 0o644,
        },
        Operation::Write {
            path: FsPath::new("d/x"),
            offset: 0,
            data: b"same on both".to_vec(),
        },
        Operation::Stat {
            path: FsPath::new("victim"),
        },
        Operation::Read {
            path: FsPath::new("victim"),
            offset: 0,
            length: 100,
        },
        Operation::Read {
            path: FsPath::new("d/x"),
            offset: 0,
            length: 100,
        },
    ];
    let trace = scratch.path().join("trace.jsonl");
    write_trace(&trace, &operations);
    let replay_file = scratch.path().join("first-divergence.jsonl");
    let arguments = |trace: &Path| {
        vec![
            "tee".to_string(),
            "--reference".into(),
            reference.to_str().unwrap().into(),
            "--target".into(),
            target.to_str().unwrap().into(),
            "--replay".into(),
            trace.to_str().unwrap().into(),
            "--divergence-trace".into(),
            replay_file.to_str().unwrap().into(),
        ]
    };
    let run = |trace: &Path| {
        let arguments = arguments(trace);
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        run_votefs(&arguments, None)
    };
    let output = run(&trace);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert_eq!(divergent_indices(&stdout), vec![4], "{stdout}");
    assert!(stdout.contains("6 operations"), "{stdout}");
    assert!(
        stdout.contains("original") && stdout.contains("altered!"),
        "{stdout}"
    );
    // The replay file holds the operations up to the divergence, and reproduces it.
    let replay = std::fs::read_to_string(&replay_file).unwrap();
    assert_eq!(replay.lines().count(), 5, "{replay}");
    std::fs::remove_dir_all(reference.join("d")).unwrap();
    std::fs::remove_dir_all(target.join("d")).unwrap();
    let replayed_trace = scratch.path().join("replayed.jsonl");
    std::fs::copy(&replay_file, &replayed_trace).unwrap();
    let output = run(&replayed_trace);
    assert_eq!(divergent_indices(&text(&output.stdout)), vec![4]);
}

#[test]
fn a_recorded_run_replays_and_identical_trees_agree() {
    let scratch = tempfile::tempdir().unwrap();
    let [reference, target] = ["reference", "target"].map(|name| scratch.path().join(name));
    std::fs::create_dir(&reference).unwrap();
    std::fs::create_dir(&target).unwrap();
    // The target starts different; --sync makes it a copy of the reference first.
    std::fs::write(reference.join("seeded"), b"from the reference").unwrap();
    std::fs::write(target.join("stray"), b"only on the target").unwrap();
    let trace = scratch.path().join("trace.jsonl");
    let run = |extra: &[&str]| {
        let mut arguments = vec![
            "tee",
            "--reference",
            reference.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ];
        arguments.extend_from_slice(extra);
        run_votefs(&arguments, None)
    };
    let output = run(&[
        "--sync",
        "--seed",
        "3",
        "--ops",
        "2000",
        "--record",
        trace.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with("2000 operations"), "{stdout}");
    assert!(stdout.contains(" 0 diverged"), "{stdout}");
    assert!(!target.join("stray").exists());
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap().lines().count(),
        2000
    );
    // The same trace again, from the same starting trees: same count, still no divergence.
    std::fs::remove_dir_all(&reference).unwrap();
    std::fs::create_dir(&reference).unwrap();
    std::fs::write(reference.join("seeded"), b"from the reference").unwrap();
    let output = run(&["--sync", "--replay", trace.to_str().unwrap()]);
    let replayed = text(&output.stdout);
    assert!(output.status.success(), "{replayed}");
    assert!(replayed.starts_with("2000 operations"), "{replayed}");
    // A missing reference is a one-line error.
    let output = run_votefs(
        &[
            "tee",
            "--reference",
            scratch.path().join("missing").to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
        None,
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not a directory"), "{stderr}");
}

#[test]
fn five_thousand_operations_agree_between_a_directory_and_a_mount() {
    let cluster = TestCluster::start_default();
    let mountpoint = cluster.directory().join("mnt");
    let mounted = Mounted::start(
        cluster.config_path(),
        &mountpoint,
        MountOptions {
            refresh_interval: Duration::from_secs(5),
            ..MountOptions::default()
        },
    );
    let reference = cluster.directory().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let trace = cluster.directory().join("trace.jsonl");
    let output = run_votefs(
        &[
            "tee",
            "--reference",
            reference.to_str().unwrap(),
            "--target",
            mounted.path().to_str().unwrap(),
            "--seed",
            "6",
            "--ops",
            "5000",
            "--record",
            trace.to_str().unwrap(),
        ],
        None,
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with("5000 operations"), "{stdout}");
    assert!(stdout.contains(" 0 diverged"), "{stdout}");
    // The mount is noatime (reads never update access times), so those are not compared.
    assert!(stdout.contains("access times not compared"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap().lines().count(),
        5000
    );
    mounted.stop().expect("unmounting");
}
