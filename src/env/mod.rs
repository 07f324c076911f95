//! The `Env` seam: network, clock, task spawning and randomness (DESIGN §3).
//!
//! Core code is generic over [`Env`]; [`tokio_env::TokioEnv`] is the real world and the simulator
//! provides its own implementation over madsim. Streams are tokio `AsyncRead + AsyncWrite`, so the
//! framing and serving code is byte-for-byte the same in both worlds.

mod fan_out;
pub mod tokio_env;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use fan_out::fan_out;
pub use tokio_env::TokioEnv;

/// Resource use of the current process, for server statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessUsage {
    /// User plus system CPU time consumed so far, in milliseconds.
    pub cpu_time_ms: u64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Physical memory of the machine, in bytes (0 when unknown).
    pub machine_memory_bytes: u64,
}

/// Everything the core needs from the outside world except the disk.
///
/// To be correct, an implementation must:
/// - deliver the bytes written to a stream in order and without alteration, or fail the stream
///   (an error or end of file); it may drop a connection at any time;
/// - make `now` monotonic (never decreasing) within one process lifetime;
/// - complete `sleep(d)` no earlier than `d` after it was called, as measured by `now`;
/// - run every future given to `spawn` to completion (or until the process/node dies) without
///   blocking the caller, and never run it on a thread the caller does not expect to be
///   `Send`-safe;
/// - derive `random_u64` from a seed it controls, so that a simulated run is reproducible; the real
///   implementation may seed from the operating system.
///
/// Implementations must not be assumed to delay rather than drop: a simulated clogged link drops
/// messages, so every network wait in the core carries a timeout (see [`timeout`]).
pub trait Env: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Listener: Send + Sync + 'static;

    /// Open a stream to `address`. Must fail rather than hang forever when nothing answers.
    fn connect(&self, address: SocketAddr)
        -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Listen on `address` (port 0 picks a free port; see [`Env::local_address`]).
    fn bind(&self, address: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    /// Wait for the next incoming connection.
    fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send + 'a;
    /// The address a listener is bound to.
    fn local_address(&self, listener: &Self::Listener) -> io::Result<SocketAddr>;
    /// Monotonic time since an arbitrary origin fixed for the process.
    fn now(&self) -> Duration;
    /// Wall-clock time as nanoseconds since the Unix epoch (for file times; never for ordering).
    fn wall_clock_ns(&self) -> u64;
    /// Complete after `duration` has passed.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
    /// Run `future` concurrently with the caller.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;
    /// The next value of the environment's seeded generator.
    fn random_u64(&self) -> u64;
    /// CPU and memory use of this process, as far as the environment can tell.
    fn process_usage(&self) -> ProcessUsage;
}

/// The error of [`timeout`]: the deadline passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;

/// Run `future` until it completes or `duration` passes on `env`'s clock, whichever is first.
///
/// Polls the future before the timer so that a future that is already complete wins ties; this
/// keeps the order of events the same in both worlds.
pub async fn timeout<E: Env, F: Future>(
    env: &E,
    duration: Duration,
    future: F,
) -> Result<F::Output, TimedOut> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(env.sleep(duration));
    std::future::poll_fn(|context| {
        if let Poll::Ready(output) = future.as_mut().poll(context) {
            return Poll::Ready(Ok(output));
        }
        if sleep.as_mut().poll(context).is_ready() {
            return Poll::Ready(Err(TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// A 128-bit random identifier from the environment's generator.
pub fn random_u128<E: Env>(env: &E) -> u128 {
    (u128::from(env.random_u64()) << 64) | u128::from(env.random_u64())
}
