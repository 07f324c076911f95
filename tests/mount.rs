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
            long_listing.lines().any(|line| line.ends_with(&format!(" {name}"))),
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
    mounted.stop().expect("unmounting");
}
