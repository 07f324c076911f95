//! votefs-sim: the deterministic simulator (DESIGN §8).
//!
//! The real server, store and quorum client from the `votefs` crate run here unchanged, on
//! [`sim_env::SimEnv`] (madsim's network, clock, tasks and seeded randomness) and
//! [`sim_disk::SimDisk`] (an in-memory disk that can rot, tear and lose writes). Every schedule of
//! faults is drawn from one seed and replays bit for bit.

// A RUSTFLAGS variable replaces `build.rustflags` from .cargo/config.toml, which silently drops
// `--cfg madsim`; without it this crate would compile to nothing and "pass". Refuse instead.
#[cfg(not(madsim))]
compile_error!(
    "votefs-sim must be built with `--cfg madsim` (set in .cargo/config.toml). A RUSTFLAGS \
     environment variable overrides that setting: unset RUSTFLAGS, or add `--cfg madsim` to it."
);

#[cfg(madsim)]
pub mod checker;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod fs_run;
#[cfg(madsim)]
pub mod fs_target;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod schedule;
#[cfg(madsim)]
pub mod sim_disk;
#[cfg(madsim)]
pub mod sim_env;
#[cfg(madsim)]
pub mod sweep;
#[cfg(madsim)]
pub mod trace;
#[cfg(madsim)]
pub mod workload;
