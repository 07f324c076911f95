//! [`Disk`] on a directory of the real file system.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Disk;

/// A directory of files. Appends go to the page cache; `sync` is `fdatasync` (plus a directory
/// sync the first time, so that a new file's name is durable too).
pub struct FileDisk {
    directory: PathBuf,
    open_files: Mutex<BTreeMap<String, OpenFile>>,
}

#[derive(Clone)]
struct OpenFile {
    file: Arc<File>,
    /// Created by this process and its directory entry not yet synced.
    name_unsynced: bool,
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid file name {name:?}"),
        ));
    }
    Ok(())
}

fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

impl FileDisk {
    /// Use `directory` (created if missing) for all files.
    pub fn open(directory: impl Into<PathBuf>) -> io::Result<Self> {
        let directory = directory.into();
        std::fs::create_dir_all(&directory)?;
        // Left-over temporary files of an interrupted write_atomic are garbage.
        for entry in std::fs::read_dir(&directory)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Self {
            directory,
            open_files: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn open_file(&self, name: &str, create: bool) -> io::Result<OpenFile> {
        check_name(name)?;
        let mut open_files = self.open_files.lock().expect("file table lock poisoned");
        if let Some(open) = open_files.get(name) {
            return Ok(open.clone());
        }
        let path = self.directory.join(name);
        let existed = path.exists();
        if !existed && !create {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(&path)?;
        let open = OpenFile {
            file: Arc::new(file),
            name_unsynced: !existed,
        };
        open_files.insert(name.to_string(), open.clone());
        Ok(open)
    }

    fn forget(&self, name: &str) {
        self.open_files
            .lock()
            .expect("file table lock poisoned")
            .remove(name);
    }

    fn mark_name_synced(&self, name: &str) {
        if let Some(open) = self
            .open_files
            .lock()
            .expect("file table lock poisoned")
            .get_mut(name)
        {
            open.name_unsynced = false;
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| io::Error::other(format!("disk worker failed: {join_error}")))?
}

impl Disk for FileDisk {
    fn list(&self) -> impl Future<Output = io::Result<Vec<String>>> + Send {
        let directory = self.directory.clone();
        async move {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&directory)? {
                let entry = entry?;
                if let Some(name) = entry.file_name().to_str() {
                    if !name.starts_with('.') && entry.file_type()?.is_file() {
                        names.push(name.to_string());
                    }
                }
            }
            Ok(names)
        }
    }

    fn read_at(
        &self,
        name: &str,
        offset: u64,
        length: usize,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send {
        let opened = self.open_file(name, false);
        async move {
            let file = opened?.file;
            let mut buffer = vec![0u8; length];
            let mut filled = 0;
            while filled < length {
                let read = file.read_at(&mut buffer[filled..], offset + filled as u64)?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            buffer.truncate(filled);
            Ok(buffer)
        }
    }

    fn size(&self, name: &str) -> impl Future<Output = io::Result<u64>> + Send {
        let checked = check_name(name).map(|()| self.directory.join(name));
        async move { Ok(std::fs::metadata(checked?)?.len()) }
    }

    fn append(&self, name: &str, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        let result = self
            .open_file(name, true)
            .and_then(|open| (&*open.file).write_all(bytes));
        async move { result }
    }

    fn sync(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send {
        let opened = self.open_file(name, false);
        let directory = self.directory.clone();
        let name = name.to_string();
        async move {
            let open = opened?;
            let file = open.file.clone();
            let name_unsynced = open.name_unsynced;
            blocking(move || {
                file.sync_data()?;
                if name_unsynced {
                    sync_directory(&directory)?;
                }
                Ok(())
            })
            .await?;
            if name_unsynced {
                self.mark_name_synced(&name);
            }
            Ok(())
        }
    }

    fn truncate(&self, name: &str, length: u64) -> impl Future<Output = io::Result<()>> + Send {
        let opened = self.open_file(name, false);
        async move {
            let file = opened?.file;
            blocking(move || {
                file.set_len(length)?;
                file.sync_all()
            })
            .await
        }
    }

    fn remove(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send {
        let checked = check_name(name).map(|()| self.directory.join(name));
        self.forget(name);
        let directory = self.directory.clone();
        async move {
            let path = checked?;
            blocking(move || {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(error) => return Err(error),
                }
                sync_directory(&directory)
            })
            .await
        }
    }

    fn write_atomic(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> impl Future<Output = io::Result<()>> + Send {
        let checked = check_name(name).map(|()| self.directory.join(name));
        self.forget(name);
        let directory = self.directory.clone();
        let temporary = directory.join(format!(".tmp-{name}"));
        let bytes = bytes.to_vec();
        async move {
            let path = checked?;
            blocking(move || {
                let mut file = File::create(&temporary)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                drop(file);
                std::fs::rename(&temporary, &path)?;
                sync_directory(&directory)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn append_read_truncate_replace() {
        let directory = tempfile::tempdir().unwrap();
        let disk = FileDisk::open(directory.path()).unwrap();
        disk.append("log", b"hello ").await.unwrap();
        disk.append("log", b"world").await.unwrap();
        disk.sync("log").await.unwrap();
        assert_eq!(disk.read_at("log", 0, 100).await.unwrap(), b"hello world");
        assert_eq!(disk.read_at("log", 6, 3).await.unwrap(), b"wor");
        assert_eq!(disk.size("log").await.unwrap(), 11);
        disk.truncate("log", 5).await.unwrap();
        assert_eq!(disk.read_at("log", 0, 100).await.unwrap(), b"hello");
        disk.write_atomic("meta", b"one").await.unwrap();
        disk.write_atomic("meta", b"two").await.unwrap();
        assert_eq!(
            super::super::read_whole(&disk, "meta")
                .await
                .unwrap()
                .unwrap(),
            b"two"
        );
        let mut names = disk.list().await.unwrap();
        names.sort();
        assert_eq!(names, vec!["log".to_string(), "meta".to_string()]);
        disk.remove("log").await.unwrap();
        disk.remove("log").await.unwrap();
        assert_eq!(
            disk.read_at("log", 0, 1).await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(disk.append("../escape", b"x").await.is_err());
    }
}
