//! Mounting a volume: open the quorum client as the volume's writer, recover half-done operations,
//! serve the file system through FUSE, and run the periodic refresh pass until unmounted.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::config::ClusterConfig;
use crate::env::tokio_env::TokioEnv;
use crate::exported_metrics::{render_mount, OperationLatencies};
use crate::fs::FileSystem;
use crate::fuse_adapter::FuseAdapter;
use crate::metrics::{serve_metrics, RenderMetrics};
use crate::quorum::{ClientOptions, OpenMode, QuorumClient};
use crate::scrub::{ScrubOptions, Scrubber};

/// How `votefs mount` and `votefs up` mount a volume.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Interval of the background refresh (scrub) pass.
    pub refresh_interval: Duration,
    /// Let users other than the one mounting use the file system (FUSE `allow_other`).
    pub allow_other: bool,
    /// Serve Prometheus metrics (repairs, backlog, passes, per-operation latency) here.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(60),
            allow_other: false,
            metrics: None,
        }
    }
}

/// Refuse a mount point that does not exist, is not a directory, or is already mounted on.
pub fn check_mount_point(mountpoint: &Path) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(mountpoint).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "mount point {} does not exist (create it with: mkdir -p {})",
                mountpoint.display(),
                mountpoint.display()
            )
        } else if error.raw_os_error() == Some(libc::ENOTCONN) {
            anyhow!(
                "mount point {} is a dead FUSE mount (unmount it with: fusermount3 -u {})",
                mountpoint.display(),
                mountpoint.display()
            )
        } else {
            anyhow!("cannot use mount point {}: {error}", mountpoint.display())
        }
    })?;
    if !metadata.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let canonical = mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve mount point {}", mountpoint.display()))?;
    if let Some(parent) = canonical.parent() {
        let parent_metadata = std::fs::metadata(parent)
            .with_context(|| format!("cannot read {}", parent.display()))?;
        if parent_metadata.dev() != metadata.dev() {
            bail!(
                "{} is already a mount point (unmount it first: fusermount3 -u {})",
                mountpoint.display(),
                mountpoint.display()
            );
        }
    }
    Ok(())
}

/// Mount the volume described by `cluster` at `mountpoint` and serve it until `shutdown`
/// completes or the file system is unmounted from outside (`umount`, `fusermount3 -u`).
/// Unmounts before returning. Errors (missing mount point, unreachable cluster, wrong key) are
/// returned with a message a user can act on.
pub async fn mount_and_serve(
    cluster: &ClusterConfig,
    mountpoint: &Path,
    options: MountOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    check_mount_point(mountpoint)?;
    let key = cluster.load_key()?;
    // Bound before anything is mounted, so that a taken port is a clean error.
    let metrics_listener =
        match options.metrics {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(
                || format!("cannot serve metrics on {address} (is the port taken?)"),
            )?),
            None => None,
        };
    let env = TokioEnv::new();
    let client = QuorumClient::open(
        env.clone(),
        cluster.placement.clone(),
        key,
        ClientOptions::default(),
        OpenMode::Writer,
    )
    .await
    .map_err(|error| {
        anyhow!(
            "cannot open the volume of {}: {error}",
            cluster.path.display()
        )
    })?;
    let (file_system, report) = FileSystem::mount(env, client.clone())
        .await
        .map_err(|errno| anyhow!("cannot open the file system: {errno}"))?;
    if report.formatted {
        tracing::info!("formatted a new file system");
    }
    if let Some((operation, redone)) = &report.intent_redone {
        tracing::warn!("finished a {operation} interrupted by a crash ({redone} records redone)");
    }
    if report.orphans_removed > 0 {
        tracing::info!(
            "removed {} files unlinked while open before a crash",
            report.orphans_removed
        );
    }
    let (ended_sender, ended) = tokio::sync::oneshot::channel();
    let latencies = Arc::new(OperationLatencies::default());
    let adapter = FuseAdapter::new(
        file_system.clone(),
        tokio::runtime::Handle::current(),
        ended_sender,
        latencies.clone(),
    );
    let mut mount_options = vec![
        fuser::MountOption::FSName("votefs".into()),
        fuser::MountOption::Subtype("votefs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
        fuser::MountOption::Suid,
        fuser::MountOption::Dev,
        fuser::MountOption::Exec,
        // Reads never update access times here (a replicated write per read would cost more than
        // it is worth); saying so lets the kernel and tools such as `votefs tee` know.
        fuser::MountOption::NoAtime,
    ];
    let acl = if options.allow_other {
        mount_options.push(fuser::MountOption::CUSTOM("allow_other".into()));
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let mut config = fuser::Config::default();
    config.mount_options = mount_options;
    config.acl = acl;
    config.n_threads = Some(2);
    let mountpoint_owned = mountpoint.to_path_buf();
    let session = tokio::task::spawn_blocking(move || {
        fuser::spawn_mount(adapter, &mountpoint_owned, &config)
    })
    .await
    .context("the mount task failed")?
    .map_err(|error| {
        anyhow!(
            "cannot mount on {}: {error} (as a non-root user this needs the fuse3 package's fusermount3)",
            mountpoint.display()
        )
    })?;
    eprintln!("votefs mounted at {}", mountpoint.display());
    let scrubber = Scrubber::new(client.clone(), ScrubOptions::default());
    let refresh_status = scrubber.status();
    let refresher = {
        let interval = options.refresh_interval;
        tokio::spawn(async move { refresh_loop(scrubber, interval).await })
    };
    let metrics_server = metrics_listener.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            eprintln!("votefs mount metrics on http://{address}/metrics");
        }
        let client = client.clone();
        let render: RenderMetrics = Arc::new(move || {
            let text = render_mount(
                &client.stats(),
                client.placement(),
                &refresh_status
                    .lock()
                    .expect("refresh status lock poisoned")
                    .clone(),
                &latencies,
            );
            Box::pin(async move { text })
        });
        tokio::spawn(serve_metrics(listener, render))
    });
    tokio::select! {
        _ = shutdown => {
            tracing::info!("unmounting {}", mountpoint.display());
        }
        _ = ended => {
            tracing::info!("{} was unmounted", mountpoint.display());
        }
    }
    refresher.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    let unmounted = tokio::task::spawn_blocking(move || session.umount_and_join())
        .await
        .context("the unmount task failed")?;
    let stored = file_system.shut_down().await;
    if let Err(error) = unmounted {
        // Already gone (unmounted from outside) is fine.
        if error.raw_os_error() != Some(libc::EINVAL) {
            tracing::warn!("unmounting {}: {error}", mountpoint.display());
        }
    }
    stored.map_err(|errno| anyhow!("could not store every buffered write: {errno}"))?;
    Ok(())
}

/// Run a full refresh pass every `interval` (repairing copies nobody reads and refilling servers
/// that came back empty), and report the volume's healing to the servers for `votefs status`.
async fn refresh_loop(scrubber: Scrubber<TokioEnv>, interval: Duration) {
    let error = crate::scrub::refresh_loop(scrubber, interval, Duration::from_secs(5)).await;
    tracing::warn!("the refresh stopped: {error}");
}
