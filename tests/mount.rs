//! The file system through a real FUSE mount: the acceptance list as a user types it, then with a
//! whole bank down, a corrupt chunk, and a server refilled by the refresh pass.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mounted::Mounted;
use common::TestCluster;
use votefs::mount::MountOptions;

/// Run `script` with `sh -e` in `directory`; returns stdout, failing the test on a non-zero exit.
fn shell(directory: &Path, script: &str) -> String {
    let output = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(directory)
        .output()
        .expect("running sh");
    assert!(
        output.status.success(),
        "`{script}` failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn quick_refresh() -> MountOptions {
    MountOptions {
        refresh_interval: Duration::from_secs(3600),
        allow_other: false,
        ..MountOptions::default()
    }
}

#[test]
fn acceptance_list_as_a_user_types_it() {
    let cluster = TestCluster::start_default();
    let mountpoint = cluster.directory().join("mnt");
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, quick_refresh());
    let root = mounted.path();
    shell(root, r#"echo "test" > test"#);
    assert_eq!(shell(root, "cat test"), "test\n");
    assert_eq!(shell(root, "ls"), "test\n");
    shell(root, "ln -s test file");
    assert_eq!(shell(root, "readlink file"), "test\n");
    assert_eq!(shell(root, "cat file"), "test\n");
    shell(root, "unlink file");
    shell(root, "rm test");
    assert_eq!(shell(root, "ls"), "");
    shell(root, "mkdir d");
    shell(root, r#"echo "Hi" > hi"#);
    shell(root, "mv hi li");
    shell(root, "cp li ji");
    assert_eq!(shell(root, "cat ji"), "Hi\n");
    let long_listing = shell(root, "ls -ltr");
    assert!(long_listing.starts_with("total"), "{long_listing}");
    for name in ["d", "li", "ji"] {
        assert!(
            long_listing
                .lines()
                .any(|line| line.ends_with(&format!(" {name}"))),
            "{name} missing from:\n{long_listing}"
        );
    }
    assert!(!long_listing.contains(" hi\n"), "{long_listing}");
    shell(root, "touch hi");
    shell(root, "chmod 0777 hi");
    assert_eq!(shell(root, "stat -c %a hi"), "777\n");
    assert_eq!(shell(root, "stat -c %s hi"), "0\n");
    assert_eq!(shell(root, "ls"), "d\nhi\nji\nli\n");
    assert_eq!(shell(root, "stat -c %h d"), "2\n");
    assert_eq!(shell(root, "stat -c %h ."), "3\n");

    // A symlink whose target is removed dangles: readlink still works, following it fails.
    shell(root, "echo target > t && ln -s t dangling && rm t");
    assert_eq!(shell(root, "readlink dangling"), "t\n");
    let cat = Command::new("cat")
        .arg("dangling")
        .current_dir(root)
        .output()
        .expect("running cat");
    assert!(!cat.status.success());
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("No such file or directory"),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    // Extended attributes outside the user, trusted and security namespaces are refused as a
    // local file system refuses them (found by `votefs tee` against ext4).
    let path = std::ffi::CString::new(root.join("ji").as_os_str().as_encoded_bytes()).unwrap();
    let mut buffer = [0u8; 64];
    for name in [&b"nonsense.name\0"[..], b"user.absent\0"] {
        // SAFETY: valid C strings and a buffer of the length given.
        let result = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr().cast(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        let expected = if name.starts_with(b"user.") {
            libc::ENODATA
        } else {
            libc::EOPNOTSUPP
        };
        assert_eq!((result, errno), (-1, Some(expected)), "{name:?}");
    }
    mounted.stop().expect("unmounting");
}

fn admin_client(cluster: &TestCluster) -> common::Client {
    votefs::quorum::QuorumClient::for_administration(
        votefs::env::TokioEnv::new(),
        cluster.placement().clone(),
        cluster.key().clone(),
        common::test_client_options(),
    )
}

fn chunk_key(ino: u64, index: u64) -> Vec<u8> {
    format!("chunk/{ino:016x}/{index:016x}").into_bytes()
}

/// Wait (polling, with a deadline) until `check` holds.
fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn survives_a_lost_bank_a_corrupt_chunk_and_an_emptied_server() {
    use std::os::unix::fs::MetadataExt;
    let mut cluster = TestCluster::start_with_fault_injection();
    let mountpoint = cluster.directory().join("mnt");
    let options = MountOptions {
        refresh_interval: Duration::from_millis(500),
        allow_other: false,
        ..MountOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = admin_client(&cluster);
    let big = common::random_bytes(7, 300 * 1024 + 123);
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, options.clone());
    let root = mounted.path().to_path_buf();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/small"), b"small file\n").unwrap();
    let ino = std::fs::metadata(root.join("big.bin")).unwrap().ino();

    // A whole bank down: reads and writes go on.
    cluster.kill_bank(0);
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big);
    std::fs::write(root.join("during-outage"), b"written with a bank down\n").unwrap();
    std::fs::create_dir(root.join("dir/sub")).unwrap();
    std::fs::rename(root.join("dir/small"), root.join("dir/sub/moved")).unwrap();
    assert_eq!(
        shell(&root, "cat during-outage dir/sub/moved"),
        "written with a bank down\nsmall file\n"
    );
    cluster.restart_bank(0);
    mounted.stop().expect("unmounting");

    // Corrupt one copy of a chunk of big.bin; a fresh mount (no caches) still reads it right.
    let key = chunk_key(ino, 1);
    let victim = cluster.placement().owners(&key)[0];
    let address = cluster.address(victim).to_string();
    let key_text = String::from_utf8(key.clone()).unwrap();
    let config = cluster.config_path().to_str().unwrap().to_string();
    let output = cluster.votefs(&[
        "inject",
        "--cluster",
        &config,
        "--server",
        &address,
        "corrupt",
        "--key",
        &key_text,
    ]);
    assert!(output.status.success(), "{output:?}");
    let entry = runtime
        .block_on(common::dump_entry(&admin, victim, &key))
        .unwrap();
    assert!(!entry.tag_ok || !entry.checksum_ok, "{entry:?}");
    let metrics_address = common::free_loopback_address();
    let options = MountOptions {
        metrics: Some(metrics_address),
        ..options
    };
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, options);
    let root = mounted.path().to_path_buf();
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big);
    assert_eq!(
        shell(&root, "cat during-outage dir/sub/moved"),
        "written with a bank down\nsmall file\n"
    );
    wait_until("the corrupt copy repaired", Duration::from_secs(30), || {
        runtime
            .block_on(common::dump_entry(&admin, victim, &key))
            .is_some_and(|entry| entry.tag_ok && entry.checksum_ok && !entry.lost)
    });

    // An emptied server is refilled by the refresh pass, with no reads.
    let emptied = cluster.placement().owners(&chunk_key(ino, 2))[1];
    cluster.restart_empty(emptied);
    let wanted = chunk_key(ino, 2);
    wait_until(
        "the emptied server refilled",
        Duration::from_secs(60),
        || {
            runtime
                .block_on(common::dump_entry(&admin, emptied, &wanted))
                .is_some_and(|entry| entry.tag_ok && !entry.lost)
        },
    );
    wait_until(
        "the emptied server healthy",
        Duration::from_secs(60),
        || {
            matches!(
                runtime.block_on(common::identify(&admin, emptied)).state,
                votefs::proto::ServerState::Member {
                    recovering: false,
                    ..
                }
            )
        },
    );
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big);

    // The mount's metrics saw all of it: the corrupt copy repaired, complete refresh passes,
    // and the reads it served.
    let exposition = common::scrape_metrics(metrics_address);
    let value = |name: &str| common::metric_value(&exposition, name);
    assert!(value("votefs_mount_repairs_total{cause=\"corrupt\"}") >= 1.0);
    assert!(value("votefs_refresh_complete_passes_total") >= 1.0);
    assert!(value("votefs_mount_operation_duration_seconds_count{operation=\"read\"}") >= 1.0);
    assert_eq!(value("votefs_mount_heal_backlog"), 0.0);
    mounted.stop().expect("unmounting");
}

/// Run `votefs mount` and expect it to fail with a one-line message containing `expected`.
fn assert_mount_fails(cluster: &TestCluster, config: &Path, mountpoint: &Path, expected: &str) {
    let output = cluster.votefs(&[
        "mount",
        mountpoint.to_str().unwrap(),
        "--cluster",
        config.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "mount succeeded: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("votefs: ") && last.contains(expected),
        "expected a message about {expected:?}, got:\n{stderr}"
    );
}

#[test]
fn mount_refuses_a_dead_cluster_a_wrong_key_and_a_busy_mount_point() {
    let mut cluster = TestCluster::start_default();
    let mountpoint = cluster.directory().join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();

    // A key that is not the cluster's.
    let wrong_key = cluster.directory().join("wrong.key");
    votefs::config::write_key_file(
        &wrong_key,
        &votefs::record::ClusterKey::from_bytes([9; votefs::record::CLUSTER_KEY_BYTES]),
    )
    .unwrap();
    let text = std::fs::read_to_string(cluster.config_path()).unwrap();
    let wrong_config = cluster.directory().join("wrong.toml");
    std::fs::write(
        &wrong_config,
        text.replace("key_file = \"cluster.key\"", "key_file = \"wrong.key\""),
    )
    .unwrap();
    assert_mount_fails(&cluster, &wrong_config, &mountpoint, "key");

    // A busy mount point: mounted already.
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, quick_refresh());
    assert_mount_fails(
        &cluster,
        cluster.config_path(),
        &mountpoint,
        "already a mount point",
    );
    mounted.stop().expect("unmounting");

    // No server answers.
    for bank in 0..3 {
        cluster.kill_bank(bank);
    }
    assert_mount_fails(
        &cluster,
        cluster.config_path(),
        &mountpoint,
        "cannot open the volume",
    );
}

#[test]
fn a_large_directory_lists_completely_in_pages() {
    let cluster = TestCluster::start_default();
    let mountpoint = cluster.directory().join("mnt");
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, quick_refresh());
    let directory = mounted.path().join("many");
    std::fs::create_dir(&directory).unwrap();
    // More than a few pages of 512 entries, with a few names removed again so that pages end on
    // deleted keys too.
    let mut expected = std::collections::BTreeSet::new();
    for index in 0..1_700 {
        let name = format!("file-{index:05}");
        std::fs::write(directory.join(&name), b"").unwrap();
        expected.insert(name);
    }
    for index in (0..1_700).step_by(97) {
        let name = format!("file-{index:05}");
        std::fs::remove_file(directory.join(&name)).unwrap();
        expected.remove(&name);
    }
    let listed: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let listed_set: std::collections::BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a name was listed twice");
    assert_eq!(listed_set, expected);
    assert_eq!(
        shell(&directory, "ls | wc -l").trim(),
        expected.len().to_string()
    );
    mounted.stop().expect("unmounting");
}
