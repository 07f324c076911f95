//! A consistency check of the file system's records (fsck): every entry names an inode of its
//! kind, link counts and entry counts match the entries, directories know their parent, and no
//! inode is unreachable (except files unlinked while open, which are listed as orphans).

use std::collections::{BTreeMap, BTreeSet};

use crate::env::Env;

use super::types::{keys, DirectoryEntry, FileKind, InodeNumber, IntentStep, ROOT_INODE};
use super::{io_error, Caller, Errno, FileSystem};

/// Where `votefs fsck --repair` links inodes no entry names.
pub const LOST_AND_FOUND: &[u8] = b"lost+found";

/// One inconsistency, with what a repair does about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The entry names an inode that does not exist: the entry is removed.
    DanglingEntry {
        directory: InodeNumber,
        name: Vec<u8>,
        ino: InodeNumber,
    },
    /// The entry's kind is not its inode's: the entry is corrected.
    WrongEntryKind {
        directory: InodeNumber,
        name: Vec<u8>,
        entry: DirectoryEntry,
    },
    /// A directory names another parent than the one holding it: the parent is corrected.
    WrongParent {
        ino: InodeNumber,
        parent: InodeNumber,
    },
    /// A link count (or a directory's entry count) differs from what the entries make: set.
    WrongCounts {
        ino: InodeNumber,
        nlink: u32,
        size: Option<u64>,
    },
    /// Stored, not orphaned, and named by no entry: linked into `/lost+found`.
    Unreachable { ino: InodeNumber },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::DanglingEntry {
                directory,
                name,
                ino,
            } => write!(
                formatter,
                "entry {:?} in directory {directory} names missing inode {ino}",
                String::from_utf8_lossy(name)
            ),
            Problem::WrongEntryKind {
                directory,
                name,
                entry,
            } => write!(
                formatter,
                "entry {:?} in directory {directory} has the wrong kind (inode {} is {:?})",
                String::from_utf8_lossy(name),
                entry.ino,
                entry.kind
            ),
            Problem::WrongParent { ino, parent } => {
                write!(
                    formatter,
                    "directory {ino} is in {parent} but names another parent"
                )
            }
            Problem::WrongCounts { ino, nlink, size } => match size {
                Some(size) => write!(
                    formatter,
                    "directory {ino} should have link count {nlink} and {size} entries"
                ),
                None => write!(formatter, "inode {ino} should have link count {nlink}"),
            },
            Problem::Unreachable { ino } => {
                write!(formatter, "inode {ino} is stored but no entry names it")
            }
        }
    }
}

/// Inodes examined at most (a bound on the walk).
const CHECK_INODES_MAX: usize = 10_000_000;

impl<E: Env> FileSystem<E> {
    /// Check the whole file system; returns the problems found (empty when consistent).
    pub async fn check(&self) -> Result<Vec<String>, Errno> {
        Ok(self
            .find_problems()
            .await?
            .iter()
            .map(|problem| problem.to_string())
            .collect())
    }

    /// Check, then repair every problem found; returns the problems that were repaired. Run it
    /// on a volume nobody else has mounted (opening it fences any mount).
    pub async fn check_and_repair(&self) -> Result<Vec<Problem>, Errno> {
        let problems = self.find_problems().await?;
        for problem in &problems {
            self.repair(problem).await?;
        }
        // Counts depend on the entries the repairs changed: settle them in a second pass.
        let remaining = self.find_problems().await?;
        for problem in &remaining {
            match problem {
                Problem::WrongCounts { .. } => self.repair(problem).await?,
                other => {
                    tracing::error!("fsck could not repair: {other}");
                    return Err(Errno::EIO);
                }
            }
        }
        let mut repaired = problems;
        repaired.extend(remaining);
        Ok(repaired)
    }

    async fn repair(&self, problem: &Problem) -> Result<(), Errno> {
        match problem {
            Problem::DanglingEntry {
                directory, name, ..
            } => {
                let mut namespace = self.shared.namespace.lock().await;
                self.commit(
                    &mut namespace,
                    "fsck",
                    vec![IntentStep::DeleteEntry {
                        directory: *directory,
                        name: name.clone(),
                    }],
                )
                .await
            }
            Problem::WrongEntryKind {
                directory,
                name,
                entry,
            } => {
                let mut namespace = self.shared.namespace.lock().await;
                self.commit(
                    &mut namespace,
                    "fsck",
                    vec![IntentStep::PutEntry {
                        directory: *directory,
                        name: name.clone(),
                        entry: *entry,
                    }],
                )
                .await
            }
            Problem::WrongParent { ino, parent } => {
                let mut inode = self.inode(*ino).await?;
                inode.parent = *parent;
                let mut namespace = self.shared.namespace.lock().await;
                self.commit(&mut namespace, "fsck", vec![IntentStep::PutInode(inode)])
                    .await
            }
            Problem::WrongCounts { ino, nlink, size } => {
                let mut inode = self.inode(*ino).await?;
                inode.nlink = *nlink;
                if let Some(size) = size {
                    inode.size = *size;
                }
                let mut namespace = self.shared.namespace.lock().await;
                self.commit(&mut namespace, "fsck", vec![IntentStep::PutInode(inode)])
                    .await
            }
            Problem::Unreachable { ino } => {
                let lost = match self.lookup(ROOT_INODE, LOST_AND_FOUND).await {
                    Ok(inode) => inode.ino,
                    Err(Errno::ENOENT) => {
                        self.make_directory(ROOT_INODE, LOST_AND_FOUND, 0o700, Caller::ROOT)
                            .await?
                            .ino
                    }
                    Err(error) => return Err(error),
                };
                let inode = self.inode(*ino).await?;
                let name = format!("#{ino}").into_bytes();
                let mut namespace = self.shared.namespace.lock().await;
                let mut linked = inode.clone();
                if linked.kind == FileKind::Directory {
                    linked.parent = lost;
                } else {
                    linked.nlink = 1;
                }
                // The counts of lost+found itself are settled by the second pass.
                self.commit(
                    &mut namespace,
                    "fsck",
                    vec![
                        IntentStep::PutInode(linked),
                        IntentStep::PutEntry {
                            directory: lost,
                            name,
                            entry: DirectoryEntry {
                                ino: *ino,
                                kind: inode.kind,
                            },
                        },
                    ],
                )
                .await
            }
        }
    }

    async fn find_problems(&self) -> Result<Vec<Problem>, Errno> {
        // The walk reads records from the servers: they must hold every step first.
        self.settle(b"").await?;
        let mut problems = Vec::new();
        let mut references: BTreeMap<InodeNumber, u32> = BTreeMap::new();
        let mut subdirectories: BTreeMap<InodeNumber, u32> = BTreeMap::new();
        let mut entry_counts: BTreeMap<InodeNumber, u64> = BTreeMap::new();
        let mut visited: BTreeSet<InodeNumber> = BTreeSet::new();
        let mut pending = vec![ROOT_INODE];
        visited.insert(ROOT_INODE);
        while let Some(directory) = pending.pop() {
            if visited.len() > CHECK_INODES_MAX {
                tracing::error!("more than {CHECK_INODES_MAX} inodes: check stopped");
                return Err(Errno::EFBIG);
            }
            let entries = self.read_directory(directory).await?;
            entry_counts.insert(directory, entries.len() as u64);
            for (name, entry) in entries {
                let inode = match self.inode(entry.ino).await {
                    Ok(inode) => inode,
                    Err(Errno::ENOENT) => {
                        problems.push(Problem::DanglingEntry {
                            directory,
                            name,
                            ino: entry.ino,
                        });
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                if inode.kind != entry.kind {
                    problems.push(Problem::WrongEntryKind {
                        directory,
                        name: name.clone(),
                        entry: DirectoryEntry {
                            ino: inode.ino,
                            kind: inode.kind,
                        },
                    });
                }
                *references.entry(inode.ino).or_default() += 1;
                if inode.kind == FileKind::Directory {
                    *subdirectories.entry(directory).or_default() += 1;
                    if inode.parent != directory {
                        problems.push(Problem::WrongParent {
                            ino: inode.ino,
                            parent: directory,
                        });
                    }
                    if visited.insert(inode.ino) {
                        pending.push(inode.ino);
                    } else {
                        // A second name for a directory: the second entry goes.
                        problems.push(Problem::DanglingEntry {
                            directory,
                            name,
                            ino: inode.ino,
                        });
                    }
                } else {
                    visited.insert(inode.ino);
                }
            }
        }
        for ino in &visited {
            let inode = self.inode(*ino).await?;
            if inode.kind == FileKind::Directory {
                let expected_links = 2 + subdirectories.get(ino).copied().unwrap_or(0);
                let entries = entry_counts.get(ino).copied().unwrap_or(0);
                if inode.nlink != expected_links || inode.size != entries {
                    problems.push(Problem::WrongCounts {
                        ino: *ino,
                        nlink: expected_links,
                        size: Some(entries),
                    });
                }
            } else {
                let expected_links = references.get(ino).copied().unwrap_or(0);
                if inode.nlink != expected_links {
                    problems.push(Problem::WrongCounts {
                        ino: *ino,
                        nlink: expected_links,
                        size: None,
                    });
                }
            }
        }
        let orphans: BTreeSet<InodeNumber> = self
            .shared
            .client
            .list(keys::ORPHAN_PREFIX)
            .await
            .map_err(io_error)?
            .iter()
            .filter_map(|key| keys::orphan_inode(key))
            .collect();
        let mut unreachable: BTreeSet<InodeNumber> = BTreeSet::new();
        let stored = self.shared.client.list(b"inode/").await.map_err(io_error)?;
        for key in stored {
            let Some(ino) = std::str::from_utf8(&key[b"inode/".len()..])
                .ok()
                .and_then(|text| InodeNumber::from_str_radix(text, 16).ok())
            else {
                tracing::warn!(
                    "ignoring a malformed inode key {}",
                    crate::record::display_key(&key)
                );
                continue;
            };
            if !visited.contains(&ino) && !orphans.contains(&ino) {
                unreachable.insert(ino);
            }
        }
        // A directory whose parent is unreachable too comes back with its parent.
        for ino in &unreachable {
            let inode = self.inode(*ino).await?;
            if inode.kind == FileKind::Directory
                && inode.parent != *ino
                && unreachable.contains(&inode.parent)
            {
                continue;
            }
            problems.push(Problem::Unreachable { ino: *ino });
        }
        Ok(problems)
    }
}
