//! votefs: a replicated, self-healing file system whose reads vote.
//!
//! The crate is split along the seams of DESIGN §3: everything that touches the operating system
//! (sockets, clocks, threads, randomness, files) goes through [`env::Env`] and [`disk::Disk`], so
//! the replication, voting and repair code in [`store`], [`server`] and [`quorum`] runs unchanged
//! under the deterministic simulator (`sim/`) and under tokio with real TCP.
//!
//! Only [`env::tokio_env`], [`disk::file_disk`] and the binary's command-line glue talk to the
//! operating system directly.

pub mod admin;
pub mod chaos;
pub mod config;
pub mod digest;
pub mod disk;
pub mod env;
pub mod exported_metrics;
pub mod fs;
pub mod fuse_adapter;
pub mod local_cluster;
pub mod metrics;
pub mod mount;
pub mod placement;
pub mod planted;
pub mod proto;
pub mod quorum;
pub mod record;
pub mod rng;
pub mod rpc;
pub mod scrub;
pub mod server;
pub mod server_choice;
pub mod store;
pub mod tee;
pub mod verify;
