//! The model's trickier semantics, each checked twice: against the answer Linux documents, and
//! against the kernel itself on a temporary directory (every step goes to both; see
//! [`Both::apply`]). These tests run as root in CI; the model assumes root's capabilities.

use super::compare::ComparisonOptions;
use super::operation::{Errno, FileKind, FsPath, Operation, RenameMode, Reply, Timestamp};
use super::test_support::{create, mkdir, symlink, wall_clock, write, Both};

fn rename(from: &str, to: &str, mode: RenameMode) -> Operation {
    Operation::Rename {
        from: FsPath::new(from),
        to: FsPath::new(to),
        mode,
    }
}

fn path(text: &str) -> FsPath {
    FsPath::new(text)
}

const OLD: Timestamp = Timestamp::new(1_000_000_000, 123_456_789);

#[test]
fn rename_over_existing_targets() {
    let mut both = Both::new();
    both.succeeds(create("file"));
    both.succeeds(write("file", 0, b"source"));
    both.succeeds(create("other"));
    both.succeeds(write("other", 0, b"replaced"));
    both.succeeds(rename("file", "other", RenameMode::Replace));
    assert_eq!(both.read("other", 0, 100), b"source");
    both.fails(Operation::Stat { path: path("file") }, Errno::ENOENT);

    both.succeeds(mkdir("dir"));
    both.succeeds(mkdir("empty"));
    both.succeeds(mkdir("full"));
    both.succeeds(create("full/inside"));
    // A directory may replace an empty directory, not a non-empty one.
    both.succeeds(rename("dir", "empty", RenameMode::Replace));
    both.fails(
        rename("empty", "full", RenameMode::Replace),
        Errno::ENOTEMPTY,
    );
    // Kinds must match.
    both.fails(rename("other", "empty", RenameMode::Replace), Errno::EISDIR);
    both.fails(
        rename("empty", "other", RenameMode::Replace),
        Errno::ENOTDIR,
    );
    both.fails(
        rename("other", "full/inside", RenameMode::NoReplace),
        Errno::EEXIST,
    );
    both.fails(rename("missing", "x", RenameMode::Replace), Errno::ENOENT);
    both.fails(rename("x/y", "other", RenameMode::Replace), Errno::ENOENT);
    both.fails(rename("other/y", "x", RenameMode::Replace), Errno::ENOTDIR);
    assert_eq!(both.stat("").nlink, 4);
}

#[test]
fn rename_into_own_subtree_and_onto_an_ancestor() {
    let mut both = Both::new();
    both.succeeds(mkdir("top"));
    both.succeeds(mkdir("top/middle"));
    both.succeeds(mkdir("top/middle/bottom"));
    both.fails(
        rename("top", "top/middle/new", RenameMode::Replace),
        Errno::EINVAL,
    );
    both.fails(rename("top", "top/new", RenameMode::Replace), Errno::EINVAL);
    both.fails(
        rename("top/middle", "top/middle/bottom/new", RenameMode::NoReplace),
        Errno::EINVAL,
    );
    // The target holds the source, so it is not empty.
    both.fails(
        rename("top/middle/bottom", "top", RenameMode::Replace),
        Errno::ENOTEMPTY,
    );
    both.fails(
        rename("top/middle/bottom", "top", RenameMode::Exchange),
        Errno::EINVAL,
    );
    // Renaming onto itself is a no-op.
    both.succeeds(rename("top", "top", RenameMode::Replace));
    both.fails(rename("top", "top", RenameMode::NoReplace), Errno::EEXIST);
}

#[test]
fn rename_exchange_swaps_and_needs_both() {
    let mut both = Both::new();
    both.succeeds(mkdir("left"));
    both.succeeds(mkdir("right"));
    both.succeeds(mkdir("left/sub"));
    both.succeeds(create("right/file"));
    both.succeeds(write("right/file", 0, b"data"));
    // A directory and a file in different directories swap; the link counts follow.
    both.succeeds(rename("left/sub", "right/file", RenameMode::Exchange));
    assert_eq!(both.stat("left/sub").kind, FileKind::RegularFile);
    assert_eq!(both.read("left/sub", 0, 10), b"data");
    assert_eq!(both.stat("right/file").kind, FileKind::Directory);
    assert_eq!(both.stat("left").nlink, 2);
    assert_eq!(both.stat("right").nlink, 3);
    both.fails(
        rename("left/sub", "left/missing", RenameMode::Exchange),
        Errno::ENOENT,
    );
    both.fails(
        rename("left/missing", "left/sub", RenameMode::Exchange),
        Errno::ENOENT,
    );
}

#[test]
fn hard_links_share_an_inode() {
    let mut both = Both::new();
    both.succeeds(mkdir("dir"));
    both.succeeds(create("first"));
    both.succeeds(Operation::Link {
        from: path("first"),
        to: path("dir/second"),
    });
    both.succeeds(write("dir/second", 0, b"shared"));
    assert_eq!(both.read("first", 0, 100), b"shared");
    assert_eq!(both.stat("first").nlink, 2);
    // Two names of one inode: rename is a no-op and both names stay.
    both.succeeds(rename("first", "dir/second", RenameMode::Replace));
    assert_eq!(both.stat("first").nlink, 2);
    both.succeeds(Operation::Unlink {
        path: path("first"),
    });
    assert_eq!(both.stat("dir/second").nlink, 1);
    both.fails(
        Operation::Link {
            from: path("dir"),
            to: path("dir2"),
        },
        Errno::EPERM,
    );
    both.fails(
        Operation::Link {
            from: path("missing"),
            to: path("nowhere/x"),
        },
        Errno::ENOENT,
    );
    both.fails(
        Operation::Link {
            from: path("dir/second"),
            to: path("dir"),
        },
        Errno::EEXIST,
    );
    // A link to a symlink links the symlink itself.
    both.succeeds(symlink("dangling", "link"));
    both.succeeds(Operation::Link {
        from: path("link"),
        to: path("link2"),
    });
    assert_eq!(both.stat("link2").kind, FileKind::Symlink);
    assert_eq!(both.stat("link").nlink, 2);
}

#[test]
fn holes_read_as_zeros_and_truncate_moves_the_end() {
    let mut both = Both::new();
    both.succeeds(create("file"));
    both.succeeds(write("file", 10_000, b"tail"));
    assert_eq!(both.stat("file").size, 10_004);
    let data = both.read("file", 0, 20_000);
    assert_eq!(data.len(), 10_004);
    assert!(data[..10_000].iter().all(|byte| *byte == 0));
    both.succeeds(Operation::Truncate {
        path: path("file"),
        size: 10_002,
    });
    assert_eq!(both.read("file", 9_999, 100), b"\0ta");
    // Growing again must not bring back the cut bytes.
    both.succeeds(Operation::Truncate {
        path: path("file"),
        size: 20_000,
    });
    assert_eq!(both.read("file", 10_000, 4), b"ta\0\0");
    assert_eq!(both.read("file", 25_000, 10), b"");
    both.fails(
        Operation::Truncate {
            path: path(""),
            size: 0,
        },
        Errno::EISDIR,
    );
    both.fails(write("", 0, b"x"), Errno::EISDIR);
    both.fails(
        Operation::Read {
            path: path("file"),
            offset: u64::MAX,
            length: 1,
        },
        Errno::EINVAL,
    );
    both.fails(write("file", u64::MAX, b"x"), Errno::EINVAL);
    both.fails(
        Operation::Truncate {
            path: path("file"),
            size: u64::MAX,
        },
        Errno::EINVAL,
    );
}

#[test]
fn directory_link_counts_and_removal() {
    let mut both = Both::new();
    assert_eq!(both.stat("").nlink, 2);
    both.succeeds(mkdir("a"));
    both.succeeds(mkdir("b"));
    both.succeeds(mkdir("a/c"));
    both.succeeds(create("a/file"));
    assert_eq!(both.stat("").nlink, 4);
    assert_eq!(both.stat("a").nlink, 3);
    both.succeeds(rename("a/c", "b/c", RenameMode::Replace));
    assert_eq!(both.stat("a").nlink, 2);
    assert_eq!(both.stat("b").nlink, 3);
    both.fails(Operation::Rmdir { path: path("b") }, Errno::ENOTEMPTY);
    both.fails(
        Operation::Rmdir {
            path: path("a/file"),
        },
        Errno::ENOTDIR,
    );
    both.fails(Operation::Unlink { path: path("a") }, Errno::EISDIR);
    both.fails(Operation::Rmdir { path: path("") }, Errno::EBUSY);
    both.succeeds(Operation::Rmdir { path: path("b/c") });
    assert_eq!(both.stat("b").nlink, 2);
    both.fails(mkdir("a"), Errno::EEXIST);
    both.fails(create("a/file"), Errno::EEXIST);
    both.fails(create("a/file/x"), Errno::ENOTDIR);
    both.fails(create("missing/x"), Errno::ENOENT);
    let long_name = "x".repeat(256);
    both.fails(create(&long_name), Errno::ENAMETOOLONG);
    both.fails(create(&format!("missing/{long_name}")), Errno::ENOENT);
    both.succeeds(create(&"y".repeat(255)));
    let Reply::Entries(entries) = both.succeeds(Operation::ReadDir { path: path("a") }) else {
        panic!("readdir replied something else");
    };
    assert_eq!(entries.len(), 1);
}

#[test]
fn symlinks_are_followed_where_open_follows_them() {
    let mut both = Both::new();
    both.succeeds(mkdir("dir"));
    both.succeeds(create("dir/file"));
    both.succeeds(symlink("dir", "to_dir"));
    both.succeeds(symlink("../dir/file", "dir/up_and_back"));
    both.succeeds(symlink("nowhere", "dangling"));
    both.succeeds(symlink("loop", "loop"));
    both.succeeds(symlink("file/", "dir/slash"));
    // Through a symlink in the middle of a path, and at the end for data operations.
    both.succeeds(write("to_dir/file", 0, b"via link"));
    assert_eq!(both.read("dir/up_and_back", 0, 100), b"via link");
    both.succeeds(create("to_dir/new"));
    assert_eq!(both.stat("dir/new").kind, FileKind::RegularFile);
    // Stat does not follow the last name; readlink reads it.
    assert_eq!(both.stat("to_dir").kind, FileKind::Symlink);
    assert_eq!(both.stat("to_dir").size, 3);
    assert_eq!(
        both.succeeds(Operation::Readlink {
            path: path("dir/up_and_back")
        }),
        Reply::Target(b"../dir/file".to_vec())
    );
    both.fails(
        Operation::Readlink {
            path: path("dir/file"),
        },
        Errno::EINVAL,
    );
    both.fails(write("dangling", 0, b"x"), Errno::ENOENT);
    both.fails(write("loop", 0, b"x"), Errno::ELOOP);
    both.fails(create("loop/x"), Errno::ELOOP);
    both.fails(write("dir/slash", 0, b"x"), Errno::ENOTDIR);
    both.fails(create("dangling"), Errno::EEXIST);
    both.fails(
        Operation::ReadDir {
            path: path("dir/file"),
        },
        Errno::ENOTDIR,
    );
    let Reply::Entries(entries) = both.succeeds(Operation::ReadDir {
        path: path("to_dir"),
    }) else {
        panic!("readdir replied something else");
    };
    assert_eq!(entries.len(), 4);
    // Chmod follows; unlink removes the link itself.
    both.succeeds(Operation::Chmod {
        path: path("to_dir"),
        mode: 0o700,
    });
    assert_eq!(both.stat("dir").mode, 0o700);
    assert_eq!(both.stat("to_dir").mode, 0o777);
    both.succeeds(Operation::Unlink {
        path: path("to_dir"),
    });
    assert_eq!(both.stat("dir").kind, FileKind::Directory);
    both.fails(
        Operation::Symlink {
            target: Vec::new(),
            path: path("empty"),
        },
        Errno::ENOENT,
    );
}

#[test]
fn resolution_stays_inside_the_root() {
    let mut both = Both::new();
    // On the host these would reach /etc; inside the root they name nothing.
    both.succeeds(symlink("/etc", "absolute"));
    both.succeeds(symlink("../../../../../../etc/hostname", "climbing"));
    both.fails(
        Operation::ReadDir {
            path: path("absolute"),
        },
        Errno::ENOENT,
    );
    both.fails(
        Operation::Read {
            path: path("climbing"),
            offset: 0,
            length: 10,
        },
        Errno::ENOENT,
    );
    both.succeeds(create("inside"));
    both.succeeds(symlink("/inside", "rooted"));
    both.succeeds(write("rooted", 0, b"ok"));
    assert_eq!(both.read("inside", 0, 10), b"ok");
    // Malformed paths are refused before anything is touched.
    for bad in ["../escape", "/absolute", "a//b", "."] {
        both.fails(create(bad), Errno::EINVAL);
    }
}

#[test]
fn extended_attributes() {
    let mut both = Both::new();
    both.succeeds(create("file"));
    both.succeeds(symlink("file", "link"));
    let set = |name: &str, value: &[u8]| Operation::SetXattr {
        path: path("link"),
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    };
    both.succeeds(set("user.one", b"1"));
    both.succeeds(set("user.two", b""));
    both.succeeds(set("user.one", b"one"));
    assert_eq!(
        both.succeeds(Operation::GetXattr {
            path: path("file"),
            name: b"user.one".to_vec()
        }),
        Reply::Value(b"one".to_vec())
    );
    assert_eq!(
        both.succeeds(Operation::ListXattr { path: path("file") }),
        Reply::Names(vec![b"user.one".to_vec(), b"user.two".to_vec()])
    );
    both.succeeds(Operation::RemoveXattr {
        path: path("file"),
        name: b"user.two".to_vec(),
    });
    both.fails(
        Operation::GetXattr {
            path: path("file"),
            name: b"user.two".to_vec(),
        },
        Errno::ENODATA,
    );
    both.fails(
        Operation::RemoveXattr {
            path: path("file"),
            name: b"user.two".to_vec(),
        },
        Errno::ENODATA,
    );
    both.fails(set("nonsense.name", b"x"), Errno::EOPNOTSUPP);
    both.fails(set("user.", b"x"), Errno::EINVAL);
    both.fails(set("", b"x"), Errno::ERANGE);
    both.fails(
        Operation::ListXattr {
            path: path("missing"),
        },
        Errno::ENOENT,
    );
    both.succeeds(Operation::SetXattr {
        path: path(""),
        name: b"user.on_root".to_vec(),
        value: b"r".to_vec(),
    });
}

#[test]
fn times_change_as_linux_changes_them() {
    let mut both = Both::new();
    both.succeeds(mkdir("dir"));
    both.succeeds(create("dir/file"));
    let age = |both: &mut Both, target: &str| {
        both.succeeds(Operation::Utimens {
            path: path(target),
            atime: OLD,
            mtime: OLD,
        });
    };
    age(&mut both, "dir");
    age(&mut both, "dir/file");
    assert_eq!(both.stat("dir/file").mtime, OLD);
    // Writing changes the file's mtime, not its directory's.
    both.succeeds(write("dir/file", 0, b"x"));
    assert!(both.stat("dir/file").mtime > OLD);
    assert_eq!(both.stat("dir").mtime, OLD);
    // A write of nothing changes nothing.
    age(&mut both, "dir/file");
    both.succeeds(write("dir/file", 5, b""));
    assert_eq!(both.stat("dir/file").mtime, OLD);
    assert_eq!(both.stat("dir/file").size, 1);
    // Truncating to the same size still sets mtime.
    both.succeeds(Operation::Truncate {
        path: path("dir/file"),
        size: 1,
    });
    assert!(both.stat("dir/file").mtime > OLD);
    // Chmod and xattrs change ctime only.
    age(&mut both, "dir/file");
    both.succeeds(Operation::Chmod {
        path: path("dir/file"),
        mode: 0o600,
    });
    assert_eq!(both.stat("dir/file").mtime, OLD);
    // Entries changing change the directory's mtime; a moved directory keeps its own.
    both.succeeds(mkdir("dir/sub"));
    assert!(both.stat("dir").mtime > OLD);
    age(&mut both, "dir");
    age(&mut both, "dir/sub");
    both.succeeds(rename("dir/sub", "moved", RenameMode::Replace));
    assert!(both.stat("dir").mtime > OLD);
    assert_eq!(both.stat("moved").mtime, OLD);
    // Relatime: a read updates an atime older than mtime or ctime...
    age(&mut both, "dir/file");
    both.read("dir/file", 0, 1);
    assert!(both.stat("dir/file").atime > OLD);
    // ...but not an atime newer than both (set in the future here).
    let future = Timestamp::new(4_000_000_000, 0);
    both.succeeds(Operation::Utimens {
        path: path("dir/file"),
        atime: future,
        mtime: OLD,
    });
    both.read("dir/file", 0, 1);
    assert_eq!(both.stat("dir/file").atime, future);
    // A listing touches the directory's atime the same way.
    age(&mut both, "dir");
    both.succeeds(Operation::ReadDir { path: path("dir") });
    assert!(both.stat("dir").atime > OLD);
    // Unlinking one of two names changes the inode's ctime (compared with the kernel's).
    both.succeeds(Operation::Link {
        from: path("dir/file"),
        to: path("second"),
    });
    both.succeeds(Operation::Unlink {
        path: path("dir/file"),
    });
    both.stat("second");
}

/// Change times cannot be set, so the only way to see that an operation sets one is to let time
/// pass: everything is made, a second passes, every operation under test runs once, and each
/// inode is compared with a tolerance well below that second.
#[test]
fn change_and_access_times_move_when_linux_moves_them() {
    let mut both = Both::with_options(ComparisonOptions {
        timestamp_tolerance_nanoseconds: 400_000_000,
        ..ComparisonOptions::default()
    });
    for name in [
        "renamed",
        "exchange_left",
        "exchange_right",
        "over",
        "overwritten",
        "linked",
        "chmodded",
        "truncated",
        "written",
        "read",
        "xattr_set",
        "xattr_removed",
        "timed",
        "two_names",
    ] {
        both.succeeds(create(name));
    }
    both.succeeds(write("read", 0, b"some data"));
    for (from, to) in [
        ("two_names", "two_names_again"),
        ("overwritten", "overwritten_again"),
    ] {
        both.succeeds(Operation::Link {
            from: path(from),
            to: path(to),
        });
    }
    both.succeeds(Operation::SetXattr {
        path: path("xattr_removed"),
        name: b"user.x".to_vec(),
        value: b"1".to_vec(),
    });
    both.succeeds(mkdir("parent"));
    both.succeeds(mkdir("listed"));
    both.succeeds(mkdir("link_directory"));
    both.succeeds(symlink("read", "link_directory/read_link"));
    both.succeeds(symlink("../written", "link_directory/followed"));
    // An atime a little ahead of mtime and ctime makes relatime leave later reads alone. (Set
    // explicitly: the kernel's coarse clock could stamp a read within the same tick as the write
    // before it, and relatime updates again on such a tie.)
    let ahead = wall_clock().midpoint(Timestamp::new(wall_clock().seconds + 1, 0));
    both.succeeds(Operation::Utimens {
        path: path("read"),
        atime: ahead,
        mtime: OLD,
    });

    std::thread::sleep(std::time::Duration::from_millis(1100));

    both.succeeds(rename("renamed", "renamed_now", RenameMode::Replace));
    both.succeeds(rename(
        "exchange_left",
        "exchange_right",
        RenameMode::Exchange,
    ));
    both.succeeds(rename("over", "overwritten_again", RenameMode::Replace));
    both.succeeds(Operation::Link {
        from: path("linked"),
        to: path("parent/linked_too"),
    });
    both.succeeds(Operation::Unlink {
        path: path("two_names_again"),
    });
    both.succeeds(Operation::Chmod {
        path: path("chmodded"),
        mode: 0o600,
    });
    both.succeeds(Operation::Truncate {
        path: path("truncated"),
        size: 5,
    });
    both.succeeds(write("link_directory/followed", 0, b"x"));
    both.read("read", 0, 1);
    both.succeeds(Operation::SetXattr {
        path: path("xattr_set"),
        name: b"user.x".to_vec(),
        value: b"1".to_vec(),
    });
    both.succeeds(Operation::RemoveXattr {
        path: path("xattr_removed"),
        name: b"user.x".to_vec(),
    });
    both.succeeds(Operation::Utimens {
        path: path("timed"),
        atime: OLD,
        mtime: OLD,
    });
    both.succeeds(Operation::ReadDir {
        path: path("listed"),
    });
    both.succeeds(Operation::Readlink {
        path: path("link_directory/read_link"),
    });

    for name in [
        "",
        "renamed_now",
        "exchange_left",
        "exchange_right",
        "overwritten",
        "linked",
        "parent",
        "two_names",
        "chmodded",
        "truncated",
        "written",
        "read",
        "xattr_set",
        "xattr_removed",
        "timed",
        "listed",
        "link_directory",
        "link_directory/read_link",
        "link_directory/followed",
    ] {
        both.stat(name);
    }
}
