//! The real-world [`Env`]: tokio sockets, the monotonic OS clock, tokio tasks and a generator
//! seeded from the operating system.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};

use super::{Env, ProcessUsage};
use crate::rng::SeededRng;

/// Real sockets, clock and tasks. Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct TokioEnv {
    origin: Instant,
    rng: Arc<Mutex<SeededRng>>,
}

impl TokioEnv {
    /// An environment whose generator is seeded from the operating system.
    pub fn new() -> Self {
        Self::with_seed(os_random_u64())
    }

    /// An environment with a fixed seed (useful for reproducible benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            origin: Instant::now(),
            rng: Arc::new(Mutex::new(SeededRng::new(seed))),
        }
    }
}

impl Default for TokioEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// 64 bits from the operating system's random source.
pub fn os_random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    os_random_fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Fill `bytes` from the operating system's random source (for keys and seeds).
pub fn os_random_fill(bytes: &mut [u8]) {
    // getrandom(2) never returns short reads for requests of at most 256 bytes once the pool is
    // initialised; loop anyway for larger requests.
    let mut filled = 0;
    while filled < bytes.len() {
        let remaining = &mut bytes[filled..];
        // SAFETY: the pointer and length describe a valid, writable slice.
        let result = unsafe { libc::getrandom(remaining.as_mut_ptr().cast(), remaining.len(), 0) };
        if result > 0 {
            filled += result as usize;
        } else {
            let error = io::Error::last_os_error();
            assert_eq!(
                error.kind(),
                io::ErrorKind::Interrupted,
                "getrandom failed: {error}"
            );
        }
    }
}

impl Env for TokioEnv {
    type Stream = TcpStream;
    type Listener = TcpListener;

    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn bind(&self, address: SocketAddr) -> impl Future<Output = io::Result<TcpListener>> + Send {
        TcpListener::bind(address)
    }

    async fn accept(&self, listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    fn local_address(&self, listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_clock_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(future);
    }

    fn random_u64(&self) -> u64 {
        self.rng.lock().expect("rng lock poisoned").next_u64()
    }

    fn process_usage(&self) -> ProcessUsage {
        read_process_usage().unwrap_or_default()
    }
}

fn read_process_usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: indices 11 and 12 here.
    let user_ticks: u64 = fields.get(11)?.parse().ok()?;
    let system_ticks: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let physical_pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) }.max(0) as u64;
    Some(ProcessUsage {
        cpu_time_ms: (user_ticks + system_ticks) * 1000 / ticks_per_second,
        resident_bytes: resident_pages * page_bytes,
        machine_memory_bytes: physical_pages * page_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeout_fires_and_passes() {
        let env = TokioEnv::with_seed(1);
        let slow = crate::env::timeout(
            &env,
            Duration::from_millis(10),
            std::future::pending::<()>(),
        );
        assert_eq!(slow.await, Err(crate::env::TimedOut));
        let quick = crate::env::timeout(&env, Duration::from_secs(10), async { 5 });
        assert_eq!(quick.await, Ok(5));
    }

    #[test]
    fn process_usage_reads_proc() {
        let usage = read_process_usage().expect("/proc/self is readable on Linux");
        assert!(usage.resident_bytes > 0);
        assert!(usage.machine_memory_bytes >= usage.resident_bytes);
    }
}
