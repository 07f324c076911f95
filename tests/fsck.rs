//! `votefs fsck` on a volume whose records were damaged behind the file system's back: it finds a
//! dangling entry, a wrong link count and an unreachable inode, repairs them, and the next mount
//! shows the repaired tree.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::mounted::Mounted;
use common::TestCluster;
use votefs::mount::MountOptions;

fn options() -> MountOptions {
    MountOptions {
        refresh_interval: Duration::from_secs(3600),
        allow_other: false,
        ..MountOptions::default()
    }
}

fn entry_key(directory: u64, name: &str) -> String {
    format!("dirent/{directory:016x}#{name}")
}

#[test]
fn fsck_finds_and_repairs_damage() {
    let cluster = TestCluster::start_default();
    let config = cluster.config_path().to_str().unwrap().to_string();
    let mountpoint = cluster.directory().join("mnt");
    let mounted = Mounted::start(cluster.config_path(), &mountpoint, options());
    let root = mounted.path().to_path_buf();
    std::fs::create_dir(root.join("a")).unwrap();
    std::fs::create_dir(root.join("b")).unwrap();
    std::fs::write(root.join("a/f1"), b"linked twice\n").unwrap();
    std::fs::hard_link(root.join("a/f1"), root.join("a/f2")).unwrap();
    std::fs::write(root.join("a/h"), b"will be lost and found\n").unwrap();
    std::fs::write(root.join("b/g"), b"its inode will vanish\n").unwrap();
    let a = std::fs::metadata(root.join("a")).unwrap().ino();
    let h = std::fs::metadata(root.join("a/h")).unwrap().ino();
    let g = std::fs::metadata(root.join("b/g")).unwrap().ino();
    mounted.stop().expect("unmounting");

    let clean = cluster.votefs(&["fsck", "--cluster", &config]);
    assert!(clean.status.success(), "{clean:?}");
    assert!(String::from_utf8_lossy(&clean.stdout).contains("consistent"));

    // Damage: a vanished inode, a vanished second link, a vanished only link.
    for key in [
        format!("inode/{g:016x}"),
        entry_key(a, "f2"),
        entry_key(a, "h"),
    ] {
        let output = cluster.votefs(&["kv", "delete", "--cluster", &config, &key]);
        assert!(output.status.success(), "deleting {key}: {output:?}");
    }
    let found = cluster.votefs(&["fsck", "--cluster", &config]);
    let report = String::from_utf8_lossy(&found.stdout).to_string();
    assert_eq!(found.status.code(), Some(1), "{found:?}");
    assert!(
        report.contains(&format!("names missing inode {g}")),
        "{report}"
    );
    assert!(report.contains("should have link count 1"), "{report}");
    assert!(
        report.contains(&format!("inode {h} is stored but no entry names it")),
        "{report}"
    );

    let repaired = cluster.votefs(&["fsck", "--cluster", &config, "--repair"]);
    assert!(repaired.status.success(), "{repaired:?}");
    let again = cluster.votefs(&["fsck", "--cluster", &config]);
    assert!(again.status.success(), "{again:?}");

    let mounted = Mounted::start(cluster.config_path(), &mountpoint, options());
    let root = mounted.path().to_path_buf();
    assert_eq!(
        std::fs::read(root.join(format!("lost+found/#{h}"))).unwrap(),
        b"will be lost and found\n"
    );
    assert_eq!(std::fs::metadata(root.join("a/f1")).unwrap().nlink(), 1);
    assert!(!root.join("a/f2").exists());
    assert!(!root.join("b/g").exists());
    let mut names: Vec<String> = std::fs::read_dir(root.join("b"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(std::fs::metadata(root.join("a")).unwrap().nlink(), 2);
    mounted.stop().expect("unmounting");
}
