//! A consistency check of the file system's records (fsck): every entry names an inode of its
//! kind, link counts and entry counts match the entries, directories know their parent, and no
//! inode is unreachable (except files unlinked while open, which are listed as orphans).

use std::collections::{BTreeMap, BTreeSet};

use crate::env::Env;

use super::types::{keys, FileKind, InodeNumber, ROOT_INODE};
use super::{io_error, Errno, FileSystem};

/// Inodes examined at most (a bound on the walk).
const CHECK_INODES_MAX: usize = 10_000_000;

impl<E: Env> FileSystem<E> {
    /// Check the whole file system; returns the problems found (empty when consistent).
    pub async fn check(&self) -> Result<Vec<String>, Errno> {
        let mut problems = Vec::new();
        let mut references: BTreeMap<InodeNumber, u32> = BTreeMap::new();
        let mut subdirectories: BTreeMap<InodeNumber, u32> = BTreeMap::new();
        let mut entry_counts: BTreeMap<InodeNumber, u64> = BTreeMap::new();
        let mut visited: BTreeSet<InodeNumber> = BTreeSet::new();
        let mut pending = vec![ROOT_INODE];
        visited.insert(ROOT_INODE);
        while let Some(directory) = pending.pop() {
            if visited.len() > CHECK_INODES_MAX {
                problems.push(format!("more than {CHECK_INODES_MAX} inodes: check stopped"));
                break;
            }
            let entries = self.read_directory(directory).await?;
            entry_counts.insert(directory, entries.len() as u64);
            for (name, entry) in entries {
                let shown = String::from_utf8_lossy(&name).to_string();
                let inode = match self.inode(entry.ino).await {
                    Ok(inode) => inode,
                    Err(Errno::ENOENT) => {
                        problems.push(format!(
                            "entry {shown:?} in directory {directory} names missing inode {}",
                            entry.ino
                        ));
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                if inode.kind != entry.kind {
                    problems.push(format!(
                        "entry {shown:?} in directory {directory} says {:?}, inode {} is {:?}",
                        entry.kind, inode.ino, inode.kind
                    ));
                }
                *references.entry(inode.ino).or_default() += 1;
                if inode.kind == FileKind::Directory {
                    *subdirectories.entry(directory).or_default() += 1;
                    if inode.parent != directory {
                        problems.push(format!(
                            "directory {} is in {directory} but names {} as its parent",
                            inode.ino, inode.parent
                        ));
                    }
                    if visited.insert(inode.ino) {
                        pending.push(inode.ino);
                    } else {
                        problems.push(format!("directory {} is linked twice", inode.ino));
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
                if inode.nlink != expected_links {
                    problems.push(format!(
                        "directory {ino} has link count {}, its entries make {expected_links}",
                        inode.nlink
                    ));
                }
                let entries = entry_counts.get(ino).copied().unwrap_or(0);
                if inode.size != entries {
                    problems.push(format!(
                        "directory {ino} counts {} entries, holds {entries}",
                        inode.size
                    ));
                }
            } else {
                let expected_links = references.get(ino).copied().unwrap_or(0);
                if inode.nlink != expected_links {
                    problems.push(format!(
                        "inode {ino} has link count {}, {expected_links} entries name it",
                        inode.nlink
                    ));
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
        let stored = self
            .shared
            .client
            .list(b"inode/")
            .await
            .map_err(io_error)?;
        for key in stored {
            let Some(ino) = std::str::from_utf8(&key[b"inode/".len()..])
                .ok()
                .and_then(|text| InodeNumber::from_str_radix(text, 16).ok())
            else {
                problems.push(format!(
                    "malformed inode key {}",
                    crate::record::display_key(&key)
                ));
                continue;
            };
            if !visited.contains(&ino) && !orphans.contains(&ino) {
                problems.push(format!("inode {ino} is stored but no entry names it"));
            }
        }
        Ok(problems)
    }
}
