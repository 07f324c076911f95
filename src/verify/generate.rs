//! A seeded workload: a stream of operations over a small namespace (directories up to depth 3,
//! twenty names), chosen so that most succeed and some fail the ways programs fail (missing
//! names, existing names, non-empty directories, loops). Same seed, same operations.
//!
//! The generator keeps its own reference model and applies every operation it emits, so it always
//! knows what exists and mostly picks paths that do. Symlink targets are always relative (an
//! absolute target would be resolved against the machine's root by a tool that does not confine
//! resolution the way [`super::real_directory`] does).

use crate::rng::SeededRng;

use super::model::{AccessTimeUpdates, Model, ModelOptions};
use super::operation::{FileKind, FsPath, Operation, RenameMode, Timestamp};

/// The names the namespace is built from.
const NAMES: [&str; 20] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t",
];
/// Directories are created at most this deep (the root is depth 0).
const MAXIMUM_DIRECTORY_DEPTH: usize = 3;
/// Beyond this many directories, mkdir mostly targets existing names.
const MAXIMUM_DIRECTORIES: usize = 8;
/// Beyond this many files, creating becomes rare and unlinking common.
const MAXIMUM_FILES: usize = 20;
/// Writes and truncates keep files below about this size.
const MAXIMUM_FILE_LENGTH: u64 = 300 * 1024;
const XATTR_NAMES: [&str; 4] = ["user.alpha", "user.beta", "user.gamma", "user.delta"];
const FILE_MODES: [u32; 5] = [0o644, 0o600, 0o755, 0o666, 0o640];
const DIRECTORY_MODES: [u32; 4] = [0o755, 0o700, 0o777, 0o750];
const CHMOD_MODES: [u32; 11] = [
    0o644, 0o600, 0o755, 0o700, 0o444, 0o400, 0o000, 0o777, 0o640, 0o750, 0o711,
];

#[derive(Clone, Copy, Debug)]
enum Choice {
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Symlink,
    Readlink,
    Write,
    Read,
    Truncate,
    Chmod,
    Stat,
    ReadDir,
    Fsync,
    SetXattr,
    GetXattr,
    ListXattr,
    RemoveXattr,
    Utimens,
}

/// What exists right now, by kind, from the generator's model.
struct Namespace {
    /// Directories with their depth, the root first.
    directories: Vec<(FsPath, usize)>,
    files: Vec<FsPath>,
    symlinks: Vec<FsPath>,
    everything: Vec<FsPath>,
}

impl Namespace {
    fn is_empty_directory(&self, directory: &FsPath) -> bool {
        !self.everything.iter().any(|path| {
            path.parent_and_name()
                .is_some_and(|(parent, _)| parent == *directory)
        })
    }

    /// How many levels of entries lie below `directory` (0 for an empty one).
    fn subtree_height(&self, directory: &FsPath) -> usize {
        let depth = directory.depth();
        self.everything
            .iter()
            .filter(|path| *path != directory && path.starts_with(directory))
            .map(|path| path.depth() - depth)
            .max()
            .unwrap_or(0)
    }
}

/// The seeded operation generator; an endless iterator.
pub struct Generator {
    rng: SeededRng,
    model: Model,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let options = ModelOptions {
            access_time_updates: AccessTimeUpdates::Never,
            ..ModelOptions::default()
        };
        Generator {
            rng: SeededRng::new(seed),
            model: Model::new(options, Timestamp::default()),
        }
    }

    /// The generator's model: what exists after the operations generated so far, if every one
    /// was answered as the model answers it.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The next operation (already applied to the generator's own model).
    pub fn next_operation(&mut self) -> Operation {
        let namespace = self.namespace();
        let choice = self.choose(&namespace);
        let operation = self.make(choice, &namespace);
        // The generator's model only tracks what exists; its times do not matter.
        let _ = self.model.apply(&operation, Timestamp::default());
        operation
    }

    fn namespace(&self) -> Namespace {
        let mut namespace = Namespace {
            directories: vec![(FsPath::root(), 0)],
            files: Vec::new(),
            symlinks: Vec::new(),
            everything: Vec::new(),
        };
        for (path, kind) in self.model.entries() {
            match kind {
                FileKind::Directory => {
                    let depth = path.depth();
                    namespace.directories.push((path.clone(), depth));
                }
                FileKind::RegularFile => namespace.files.push(path.clone()),
                FileKind::Symlink => namespace.symlinks.push(path.clone()),
                FileKind::Other => {}
            }
            namespace.everything.push(path);
        }
        namespace
    }

    fn choose(&mut self, namespace: &Namespace) -> Choice {
        let crowded = namespace.files.len() >= MAXIMUM_FILES;
        let weights = [
            (Choice::Create, if crowded { 2 } else { 10 }),
            (
                Choice::Mkdir,
                if namespace.directories.len() < MAXIMUM_DIRECTORIES {
                    4
                } else {
                    1
                },
            ),
            (Choice::Unlink, if crowded { 10 } else { 4 }),
            (Choice::Rmdir, 2),
            (Choice::Rename, 7),
            (Choice::Link, 3),
            (Choice::Symlink, 3),
            (Choice::Readlink, 2),
            (Choice::Write, 18),
            (Choice::Read, 12),
            (Choice::Truncate, 5),
            (Choice::Chmod, 3),
            (Choice::Stat, 9),
            (Choice::ReadDir, 4),
            (Choice::Fsync, 2),
            (Choice::SetXattr, 3),
            (Choice::GetXattr, 3),
            (Choice::ListXattr, 2),
            (Choice::RemoveXattr, 2),
            (Choice::Utimens, 3),
        ];
        let total: u64 = weights.iter().map(|(_, weight)| weight).sum();
        let mut roll = self.rng.below(total);
        for (choice, weight) in weights {
            if roll < weight {
                return choice;
            }
            roll -= weight;
        }
        Choice::Stat
    }

    fn make(&mut self, choice: Choice, namespace: &Namespace) -> Operation {
        match choice {
            Choice::Create => {
                let path = if self.percent(85) {
                    self.new_path(namespace, usize::MAX)
                } else {
                    self.any_path(namespace)
                };
                Operation::Create {
                    path,
                    mode: self.pick(&FILE_MODES),
                }
            }
            Choice::Mkdir => {
                let path = if namespace.directories.len() < MAXIMUM_DIRECTORIES {
                    self.new_path(namespace, MAXIMUM_DIRECTORY_DEPTH - 1)
                } else if !namespace.everything.is_empty() && self.percent(90) {
                    // Full: an existing name (EEXIST) keeps the tree small.
                    self.pick(&namespace.everything)
                } else {
                    self.random_path(namespace, MAXIMUM_DIRECTORY_DEPTH - 1)
                };
                Operation::Mkdir {
                    path,
                    mode: self.pick(&DIRECTORY_MODES),
                }
            }
            Choice::Unlink => {
                let non_directories: Vec<FsPath> = namespace
                    .files
                    .iter()
                    .chain(&namespace.symlinks)
                    .cloned()
                    .collect();
                let path = self.one_of_or_any(&non_directories, 85, namespace);
                Operation::Unlink { path }
            }
            Choice::Rmdir => {
                let empty: Vec<FsPath> = namespace.directories[1..]
                    .iter()
                    .map(|(path, _)| path.clone())
                    .filter(|directory| namespace.is_empty_directory(directory))
                    .collect();
                let path = if self.percent(60) {
                    self.one_of_or_any(&empty, 100, namespace)
                } else {
                    let directories = self.directories_below_root(namespace);
                    self.one_of_or_any(&directories, 80, namespace)
                };
                Operation::Rmdir { path }
            }
            Choice::Rename => self.rename(namespace),
            Choice::Link => {
                let from = if self.percent(80) {
                    self.one_of_or_any(&namespace.files, 100, namespace)
                } else {
                    self.any_path(namespace)
                };
                let to = if self.percent(85) {
                    self.new_path(namespace, usize::MAX)
                } else {
                    self.any_path(namespace)
                };
                Operation::Link { from, to }
            }
            Choice::Symlink => {
                let path = self.new_path(namespace, usize::MAX);
                let target = self.symlink_target(&path, namespace);
                Operation::Symlink { target, path }
            }
            Choice::Readlink => {
                let path = self.one_of_or_any(&namespace.symlinks, 75, namespace);
                Operation::Readlink { path }
            }
            Choice::Write => {
                let path = self.file_path(namespace);
                let size = self.size_of(&path);
                let offset = self.write_offset(size);
                let length = self
                    .write_length()
                    .min(MAXIMUM_FILE_LENGTH + 20_000 - offset);
                let mut data = vec![0u8; length as usize];
                self.rng.fill(&mut data);
                Operation::Write { path, offset, data }
            }
            Choice::Read => {
                let path = self.file_path(namespace);
                let size = self.size_of(&path);
                let (offset, length) = if self.percent(40) {
                    (0, size + 100)
                } else {
                    let offset = self.rng.below(size + 2048);
                    (offset, 1 + self.rng.below(64 * 1024))
                };
                Operation::Read {
                    path,
                    offset,
                    length,
                }
            }
            Choice::Truncate => {
                let path = self.file_path(namespace);
                let size = self.size_of(&path);
                let new_size = match self.rng.below(10) {
                    0..=3 => self.rng.below(size + 1),
                    4..=7 => (size + self.rng.below(64 * 1024)).min(MAXIMUM_FILE_LENGTH),
                    _ => 0,
                };
                Operation::Truncate {
                    path,
                    size: new_size,
                }
            }
            Choice::Chmod => Operation::Chmod {
                path: self.one_of_or_any(&namespace.everything, 90, namespace),
                mode: self.pick(&CHMOD_MODES),
            },
            Choice::Stat => {
                let path = if self.percent(5) {
                    FsPath::root()
                } else {
                    self.one_of_or_any(&namespace.everything, 85, namespace)
                };
                Operation::Stat { path }
            }
            Choice::ReadDir => {
                let path = if self.percent(85) {
                    self.pick(&namespace.directories).0
                } else {
                    self.one_of_or_any(&namespace.symlinks, 60, namespace)
                };
                Operation::ReadDir { path }
            }
            Choice::Fsync => Operation::Fsync {
                path: self.one_of_or_any(&namespace.everything, 90, namespace),
            },
            Choice::SetXattr => {
                let path = self.xattr_path(namespace);
                let name = self.xattr_name();
                let mut value = vec![0u8; self.rng.below(49) as usize];
                self.rng.fill(&mut value);
                Operation::SetXattr { path, name, value }
            }
            Choice::GetXattr => {
                let path = self.xattr_path(namespace);
                let name = self.existing_xattr_name(&path);
                Operation::GetXattr { path, name }
            }
            Choice::ListXattr => Operation::ListXattr {
                path: self.xattr_path(namespace),
            },
            Choice::RemoveXattr => {
                let path = self.xattr_path(namespace);
                let name = self.existing_xattr_name(&path);
                Operation::RemoveXattr { path, name }
            }
            Choice::Utimens => {
                let path = self.one_of_or_any(&namespace.everything, 90, namespace);
                let atime = self.timestamp();
                let mtime = self.timestamp();
                Operation::Utimens { path, atime, mtime }
            }
        }
    }

    fn rename(&mut self, namespace: &Namespace) -> Operation {
        let from = self.one_of_or_any(&namespace.everything, 90, namespace);
        let mode = match self.rng.below(10) {
            0 => RenameMode::NoReplace,
            1 => RenameMode::Exchange,
            _ => RenameMode::Replace,
        };
        let from_is_directory = namespace
            .directories
            .iter()
            .any(|(directory, _)| *directory == from);
        // A directory may only land where its subtree stays within the depth limit (roughly:
        // exchanges and failed moves aside), so the tree stays small.
        let deepest_target = if from_is_directory {
            MAXIMUM_DIRECTORY_DEPTH.saturating_sub(namespace.subtree_height(&from))
        } else {
            MAXIMUM_DIRECTORY_DEPTH + 1
        };
        let existing: Vec<FsPath> = namespace
            .everything
            .iter()
            .filter(|path| path.depth() <= deepest_target.max(1))
            .cloned()
            .collect();
        let existing_percent = if mode == RenameMode::Exchange { 80 } else { 45 };
        let roll = self.rng.below(100);
        let to = if roll < 3 {
            // Into its own subtree: EINVAL for a directory.
            from.join(self.name().as_bytes())
        } else if roll < 3 + existing_percent {
            // Onto an existing name: replaces it, or fails for a kind mismatch or a non-empty
            // directory.
            self.one_of_or_any(&existing, 100, namespace)
        } else if roll < 95 {
            self.new_path(namespace, deepest_target.max(1) - 1)
        } else {
            self.random_path(namespace, usize::MAX)
        };
        Operation::Rename { from, to, mode }
    }

    /// A relative target: usually an existing entry (so that following works), sometimes a
    /// missing name (dangling), the link itself (a loop) or a walk up with `..`.
    fn symlink_target(&mut self, link: &FsPath, namespace: &Namespace) -> Vec<u8> {
        let link_directory = link
            .parent_and_name()
            .map(|(parent, _)| parent)
            .unwrap_or_else(FsPath::root);
        match self.rng.below(100) {
            0..=59 if !namespace.everything.is_empty() => {
                let destination = self.pick(&namespace.everything);
                relative_path(&link_directory, &destination)
            }
            60..=79 => format!("missing-{}", self.name()).into_bytes(),
            80..=84 => link
                .parent_and_name()
                .map(|(_, name)| name.to_vec())
                .unwrap_or_else(|| b"loop".to_vec()),
            85..=92 => {
                let mut target = b"../".to_vec();
                target.extend_from_slice(self.name().as_bytes());
                target
            }
            _ => self.name().as_bytes().to_vec(),
        }
    }

    /// A path for a data operation: mostly a file, sometimes a symlink (followed) or anything.
    fn file_path(&mut self, namespace: &Namespace) -> FsPath {
        match self.rng.below(100) {
            0..=86 if !namespace.files.is_empty() => self.pick(&namespace.files),
            87..=93 if !namespace.symlinks.is_empty() => self.pick(&namespace.symlinks),
            _ => self.any_path(namespace),
        }
    }

    fn xattr_path(&mut self, namespace: &Namespace) -> FsPath {
        if self.percent(25) {
            self.pick(&namespace.directories).0
        } else {
            self.file_path(namespace)
        }
    }

    /// Usually a name the file has, so that gets and removes mostly succeed.
    fn existing_xattr_name(&mut self, path: &FsPath) -> Vec<u8> {
        let names = self.model.peek_xattr_names(path);
        if !names.is_empty() && self.percent(75) {
            self.pick(&names)
        } else {
            self.xattr_name()
        }
    }

    fn xattr_name(&mut self) -> Vec<u8> {
        if self.percent(2) {
            // Not a namespace any file system stores: EOPNOTSUPP.
            return b"nonsense.name".to_vec();
        }
        self.pick(&XATTR_NAMES).as_bytes().to_vec()
    }

    fn size_of(&self, path: &FsPath) -> u64 {
        self.model
            .peek(path)
            .map_or(0, |attributes| attributes.size)
    }

    fn write_offset(&mut self, size: u64) -> u64 {
        let offset = match self.rng.below(100) {
            0..=39 => self.rng.below(size + 1),
            40..=54 => size,
            // Past the end: the gap becomes a hole.
            55..=69 => size + 1 + self.rng.below(64 * 1024),
            _ => self.rng.below(MAXIMUM_FILE_LENGTH),
        };
        offset.min(MAXIMUM_FILE_LENGTH)
    }

    fn write_length(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=5 => 1 + self.rng.below(512),
            6..=8 => 513 + self.rng.below(8 * 1024),
            _ => 8 * 1024 + self.rng.below(56 * 1024),
        }
    }

    fn timestamp(&mut self) -> Timestamp {
        Timestamp::new(
            self.rng.below(2_000_000_000) as i64,
            self.rng.below(1_000_000_000) as u32,
        )
    }

    fn directories_below_root(&self, namespace: &Namespace) -> Vec<FsPath> {
        namespace.directories[1..]
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// With `percent` chance (and if there is one) one of `candidates`, else any path.
    fn one_of_or_any(
        &mut self,
        candidates: &[FsPath],
        percent: u64,
        namespace: &Namespace,
    ) -> FsPath {
        if !candidates.is_empty() && self.percent(percent) {
            self.pick(candidates)
        } else {
            self.any_path(namespace)
        }
    }

    /// An existing entry most of the time, else a random name in a random directory.
    fn any_path(&mut self, namespace: &Namespace) -> FsPath {
        if !namespace.everything.is_empty() && self.percent(70) {
            self.pick(&namespace.everything)
        } else {
            self.random_path(namespace, usize::MAX)
        }
    }

    /// A name that does not exist yet in a directory at most `deepest_parent` deep, if a few
    /// tries find one.
    fn new_path(&mut self, namespace: &Namespace, deepest_parent: usize) -> FsPath {
        let mut path = self.random_path(namespace, deepest_parent);
        for _ in 0..8 {
            if self.model.peek(&path).is_none() {
                break;
            }
            path = self.random_path(namespace, deepest_parent);
        }
        path
    }

    fn random_path(&mut self, namespace: &Namespace, deepest_parent: usize) -> FsPath {
        let parents: Vec<&FsPath> = namespace
            .directories
            .iter()
            .filter(|(_, depth)| *depth <= deepest_parent)
            .map(|(path, _)| path)
            .collect();
        let parent = if !namespace.symlinks.is_empty() && self.percent(4) {
            // Through a symlink: to a directory it works, otherwise ENOTDIR, ENOENT or ELOOP.
            self.pick(&namespace.symlinks)
        } else {
            match parents.len() {
                0 => FsPath::root(),
                count => parents[self.rng.below(count as u64) as usize].clone(),
            }
        };
        let name = match self.rng.below(200) {
            // One byte over NAME_MAX: ENAMETOOLONG.
            0 => vec![b'x'; 256],
            // Exactly NAME_MAX: valid everywhere.
            1 => vec![b'y'; 255],
            _ => self.name().as_bytes().to_vec(),
        };
        parent.join(&name)
    }

    fn name(&mut self) -> &'static str {
        self.pick(&NAMES)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    /// A random element; `items` must not be empty (every caller passes a non-empty list: the
    /// constants, the directories, which always hold the root, or a checked list).
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len() as u64) as usize].clone()
    }
}

impl Iterator for Generator {
    type Item = Operation;

    fn next(&mut self) -> Option<Operation> {
        Some(self.next_operation())
    }
}

/// The relative path from directory `from` to `to`, with `..` to climb.
fn relative_path(from: &FsPath, to: &FsPath) -> Vec<u8> {
    let from_components: Vec<&[u8]> = from.components().collect();
    let to_components: Vec<&[u8]> = to.components().collect();
    let common = from_components
        .iter()
        .zip(&to_components)
        .take_while(|(left, right)| left == right)
        .count();
    let mut pieces: Vec<&[u8]> = vec![b".."; from_components.len() - common];
    pieces.extend_from_slice(&to_components[common..]);
    if pieces.is_empty() {
        return b".".to_vec();
    }
    pieces.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_operations() {
        let first: Vec<Operation> = Generator::new(11).take(500).collect();
        let second: Vec<Operation> = Generator::new(11).take(500).collect();
        assert_eq!(first, second);
        let other: Vec<Operation> = Generator::new(12).take(500).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn relative_paths_climb_and_descend() {
        assert_eq!(
            relative_path(&FsPath::new("a/b"), &FsPath::new("a/c/d")),
            b"../c/d".to_vec()
        );
        assert_eq!(
            relative_path(&FsPath::root(), &FsPath::new("x")),
            b"x".to_vec()
        );
        assert_eq!(
            relative_path(&FsPath::new("a"), &FsPath::new("a")),
            b".".to_vec()
        );
    }
}
