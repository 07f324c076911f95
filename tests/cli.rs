//! The `votefs` command line against a real cluster (DESIGN §9, §10): keygen, kv, status and
//! inject, and the one-line errors for an unsafe key file or a broken cluster.toml.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{run_votefs, ClusterSpec};
use votefs::config::load_key_file;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

/// A failure as DESIGN §9 wants it: non-zero exit, no panic, one line on stderr that says `what`.
fn failed_cleanly(output: &Output, mentions: &[&str], what: &str) {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{what} succeeded: {stderr}");
    assert_ne!(output.status.code(), Some(101), "{what} panicked: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{what} panicked: {stderr}"
    );
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

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary paths")
}

#[test]
fn the_command_line_works_and_fails_cleanly() {
    let scratch = tempfile::tempdir().unwrap();
    let key_path = scratch.path().join("generated.key");
    let key_file = path(&key_path);

    // keygen: a private file holding a usable key; never overwrites one.
    succeeded(&run_votefs(&["keygen", key_file], None), "keygen");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keygen must write the key with mode 0600");
    let key = load_key_file(&key_path).expect("keygen writes a loadable key");
    let again = run_votefs(&["keygen", key_file], None);
    failed_cleanly(&again, &[key_file], "keygen over an existing key");
    assert_eq!(
        load_key_file(&key_path).unwrap(),
        key,
        "keygen overwrote a key"
    );

    // A cluster using the generated key, without fault injection.
    let mut cluster = ClusterSpec::default().with_key(key).start();
    let config = path(cluster.config_path()).to_string();
    let config = config.as_str();

    // kv: put from an argument and from stdin, get, list, delete.
    succeeded(
        &run_votefs(&["kv", "put", "--cluster", config, "alpha", "one"], None),
        "kv put",
    );
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    succeeded(
        &run_votefs(&["kv", "put", "--cluster", config, "beta"], Some(&binary)),
        "kv put from stdin",
    );
    succeeded(
        &run_votefs(&["kv", "put", "--cluster", config, "gamma", ""], None),
        "kv put of an empty value",
    );
    let output = run_votefs(&["kv", "get", "--cluster", config, "alpha"], None);
    assert_eq!(succeeded(&output, "kv get"), "one");
    let output = run_votefs(&["kv", "get", "--cluster", config, "beta"], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout == binary, "kv get returned different bytes");
    let output = run_votefs(&["kv", "get", "--cluster", config, "gamma"], None);
    assert_eq!(succeeded(&output, "kv get of an empty value"), "");
    let output = run_votefs(&["kv", "list", "--cluster", config], None);
    assert_eq!(succeeded(&output, "kv list"), "alpha\nbeta\ngamma\n");
    let output = run_votefs(&["kv", "list", "--cluster", config, "be"], None);
    assert_eq!(succeeded(&output, "kv list with a prefix"), "beta\n");
    succeeded(
        &run_votefs(&["kv", "delete", "--cluster", config, "alpha"], None),
        "kv delete",
    );
    let output = run_votefs(&["kv", "get", "--cluster", config, "alpha"], None);
    failed_cleanly(&output, &["alpha"], "kv get of a deleted key");
    assert!(output.stdout.is_empty());
    let output = run_votefs(&["kv", "get", "--cluster", config, "never-written"], None);
    failed_cleanly(&output, &["never-written"], "kv get of a missing key");
    let output = run_votefs(&["kv", "list", "--cluster", config], None);
    assert_eq!(succeeded(&output, "kv list after delete"), "beta\ngamma\n");

    // status: a header, one line per server, then the volume's healing (no refresh has
    // reported yet: no mount runs).
    let output = run_votefs(&["status", "--cluster", config], None);
    let status = succeeded(&output, "status");
    assert_eq!(status.lines().count(), 1 + 6 + 1, "status:\n{status}");
    assert!(
        status.lines().next().unwrap().contains("restarts"),
        "{status}"
    );
    assert!(status.contains("no refresh has reported yet"), "{status}");
    for server in 0..cluster.server_count() {
        let address = cluster.address(server).to_string();
        assert_eq!(
            status
                .lines()
                .filter(|line| line.contains(&address))
                .count(),
            1,
            "status has no line for {address}:\n{status}"
        );
    }
    // A server down shows, and the exit status says so.
    cluster.kill(5);
    let output = run_votefs(&["status", "--cluster", config], None);
    let status = text(&output.stdout);
    assert!(
        !output.status.success(),
        "status with a server down exited 0"
    );
    assert_eq!(status.lines().count(), 1 + 6 + 1, "status:\n{status}");
    let down: Vec<&str> = status
        .lines()
        .filter(|line| line.contains("DOWN"))
        .collect();
    assert_eq!(down.len(), 1, "status:\n{status}");
    assert!(down[0].contains(&cluster.address(5).to_string()));
    cluster.restart(5);

    // inject: refused by a server that does not allow fault injection.
    let address = cluster.address(0).to_string();
    let output = run_votefs(
        &[
            "inject",
            "--cluster",
            config,
            "--server",
            &address,
            "corrupt",
            "--key",
            "beta",
        ],
        None,
    );
    failed_cleanly(
        &output,
        &["--allow-fault-injection"],
        "inject without permission",
    );
    let output = run_votefs(&["kv", "get", "--cluster", config, "beta"], None);
    assert!(output.stdout == binary, "a refused injection changed data");

    // A key file others can read is refused, with the fix in the message.
    let loose = scratch.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    let loose_key = loose.join("cluster.key");
    std::fs::copy(cluster.key_file(), &loose_key).unwrap();
    std::fs::set_permissions(&loose_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::copy(cluster.config_path(), loose.join("cluster.toml")).unwrap();
    let loose_config = loose.join("cluster.toml");
    let output = run_votefs(
        &["kv", "get", "--cluster", path(&loose_config), "beta"],
        None,
    );
    failed_cleanly(&output, &["chmod 600"], "a key file with mode 0644");
    assert!(
        output.stdout.is_empty(),
        "data was read with an unsafe key file"
    );

    // A malformed cluster.toml: one line naming the file.
    let broken = scratch.path().join("broken.toml");
    std::fs::write(
        &broken,
        "key_file = \"cluster.key\"\n[[bank]\nservers = [\n",
    )
    .unwrap();
    for arguments in [
        vec!["status", "--cluster", path(&broken)],
        vec!["kv", "get", "--cluster", path(&broken), "beta"],
    ] {
        let output = run_votefs(&arguments, None);
        failed_cleanly(&output, &[path(&broken)], "a malformed cluster.toml");
    }
    // Well-formed TOML that is not a cluster description.
    let wrong = scratch.path().join("wrong.toml");
    std::fs::write(&wrong, "key_file = \"cluster.key\"\nbanks = 3\n").unwrap();
    let output = run_votefs(&["status", "--cluster", path(&wrong)], None);
    failed_cleanly(
        &output,
        &[path(&wrong)],
        "a cluster.toml of the wrong shape",
    );
    // A missing one.
    let missing = scratch.path().join("missing.toml");
    let output = run_votefs(&["status", "--cluster", path(&missing)], None);
    failed_cleanly(&output, &[path(&missing)], "a missing cluster.toml");
}
