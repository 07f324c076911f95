//! A votefs mount served in-process for tests: `mount_and_serve` on its own runtime thread, with
//! readiness and unmount observed as events (the mount point's device changing), not sleeps.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use votefs::config::ClusterConfig;
use votefs::mount::{mount_and_serve, MountOptions};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Mounted {
    mountpoint: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

fn device_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|metadata| metadata.dev())
}

impl Mounted {
    /// Mount the cluster at `mountpoint` (created if missing) and wait until the kernel shows it.
    pub fn start(config_path: &Path, mountpoint: &Path, options: MountOptions) -> Self {
        std::fs::create_dir_all(mountpoint).expect("creating the mount point");
        let parent_device = device_of(mountpoint.parent().expect("mount point has a parent"))
            .expect("reading the mount point's parent");
        let config = ClusterConfig::load(config_path).expect("loading cluster.toml");
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let target = mountpoint.to_path_buf();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("building a runtime");
            runtime.block_on(mount_and_serve(&config, &target, options, async move {
                let _ = receiver.await;
            }))
        });
        let mut mounted = Self {
            mountpoint: mountpoint.to_path_buf(),
            shutdown: Some(sender),
            thread: Some(thread),
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if device_of(mountpoint).is_some_and(|device| device != parent_device) {
                return mounted;
            }
            if mounted
                .thread
                .as_ref()
                .is_some_and(|thread| thread.is_finished())
            {
                let result = mounted.thread.take().unwrap().join();
                panic!("the mount ended before it was ready: {result:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the mount did not appear in {MOUNT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and return what `mount_and_serve` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the mount thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.thread.is_some() {
            if let Err(error) = self.stop_inner() {
                eprintln!("unmounting {}: {error:#}", self.mountpoint.display());
            }
        }
    }
}
