//! [`Env`] over madsim: simulated TCP, virtual time, node-local tasks, seeded randomness.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use madsim::net::{TcpListener, TcpStream};
use madsim::rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use votefs::env::{Env, ProcessUsage};

use crate::trace::Trace;

/// The simulated world as the core sees it. Clones share the trace and the injected latency.
#[derive(Clone, Default)]
pub struct SimEnv {
    pub trace: Trace,
    pub latency: InjectedLatency,
}

/// Extra latency per server address: a slowed server. madsim's network has one latency range for
/// every link, so the delay is added here, on the connecting side: bytes a server sends on a
/// connection opened to it are handed to the reader that much later than they arrived. Changes
/// apply to bytes arriving from then on, on existing connections too.
#[derive(Clone, Default)]
pub struct InjectedLatency {
    by_address: Arc<Mutex<BTreeMap<IpAddr, Duration>>>,
}

impl InjectedLatency {
    /// Delay everything read from `server` by `delay` (zero removes the delay).
    pub fn set(&self, server: IpAddr, delay: Duration) {
        let mut by_address = self.by_address.lock().expect("latency lock poisoned");
        if delay.is_zero() {
            by_address.remove(&server);
        } else {
            by_address.insert(server, delay);
        }
    }

    pub fn of(&self, server: IpAddr) -> Duration {
        self.by_address
            .lock()
            .expect("latency lock poisoned")
            .get(&server)
            .copied()
            .unwrap_or_default()
    }
}

/// Bytes read from the network but held back until their injected delay has passed.
struct DelayedReads {
    server: IpAddr,
    latency: InjectedLatency,
    /// Chunks in arrival order, each with the simulated time it may be handed over. Bounded by
    /// what the peer sends ahead of the reader, which the RPC layer bounds.
    held: VecDeque<(Duration, Vec<u8>)>,
    /// End of stream (or its error) and when it may be reported, once the network reported it.
    end: Option<(Duration, Option<io::Error>)>,
    ended: bool,
    /// Where bytes are read before they are queued (kept to avoid an allocation per poll).
    scratch: Vec<u8>,
    timer: Option<(Duration, Pin<Box<madsim::time::Sleep>>)>,
}

/// A madsim stream whose written bytes go into the trace, and whose reads may be delayed.
pub struct TracedStream {
    inner: TcpStream,
    trace: Trace,
    delayed: Option<DelayedReads>,
}

impl AsyncRead for TracedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(delayed) = this.delayed.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(context, buffer);
        };
        let delay = delayed.latency.of(delayed.server);
        if delay.is_zero() && delayed.held.is_empty() && delayed.end.is_none() && !delayed.ended {
            return Pin::new(&mut this.inner).poll_read(context, buffer);
        }
        poll_delayed(&mut this.inner, delayed, delay, context, buffer)
    }
}

fn simulated_now() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

/// Read what has arrived into `delayed` stamped with its release time, then hand over what is
/// due, or wait for the earliest release.
fn poll_delayed(
    inner: &mut TcpStream,
    delayed: &mut DelayedReads,
    delay: Duration,
    context: &mut Context<'_>,
    buffer: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if delayed.ended {
        return Poll::Ready(Ok(()));
    }
    let arrived_at = simulated_now();
    // Bounded: each turn takes bytes the network already delivered, until it has none.
    while delayed.end.is_none() {
        let mut chunk_buffer = ReadBuf::new(&mut delayed.scratch);
        match Pin::new(&mut *inner).poll_read(context, &mut chunk_buffer) {
            Poll::Ready(Ok(())) if chunk_buffer.filled().is_empty() => {
                delayed.end = Some((arrived_at + delay, None));
            }
            Poll::Ready(Ok(())) => {
                let chunk = chunk_buffer.filled().to_vec();
                delayed.held.push_back((arrived_at + delay, chunk));
            }
            Poll::Ready(Err(error)) => delayed.end = Some((arrived_at + delay, Some(error))),
            Poll::Pending => break,
        }
    }
    // Bounded: at most one turn after the timer fires.
    loop {
        let now = simulated_now();
        let due_at = match (delayed.held.front(), &delayed.end) {
            (Some((due_at, _)), _) | (None, Some((due_at, _))) => *due_at,
            (None, None) => return Poll::Pending,
        };
        if due_at <= now {
            delayed.timer = None;
            if let Some((_, bytes)) = delayed.held.front_mut() {
                let length = bytes.len().min(buffer.remaining());
                buffer.put_slice(&bytes[..length]);
                bytes.drain(..length);
                if bytes.is_empty() {
                    delayed.held.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            let (_, error) = delayed.end.take().expect("the end is due");
            delayed.ended = true;
            return Poll::Ready(error.map_or(Ok(()), Err));
        }
        if delayed.timer.as_ref().is_none_or(|(at, _)| *at != due_at) {
            delayed.timer = Some((due_at, Box::pin(madsim::time::sleep(due_at - now))));
        }
        let (_, timer) = delayed.timer.as_mut().expect("set above");
        if timer.as_mut().poll(context).is_pending() {
            return Poll::Pending;
        }
    }
}

impl AsyncWrite for TracedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(context, bytes);
        if let Poll::Ready(Ok(written)) = &result {
            self.trace.record(&[b"net", &bytes[..*written]]);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

impl Env for SimEnv {
    type Stream = TracedStream;
    type Listener = TcpListener;

    async fn connect(&self, address: SocketAddr) -> io::Result<TracedStream> {
        let inner = TcpStream::connect(address).await?;
        Ok(TracedStream {
            inner,
            trace: self.trace.clone(),
            delayed: Some(DelayedReads {
                server: address.ip(),
                latency: self.latency.clone(),
                held: VecDeque::new(),
                end: None,
                ended: false,
                scratch: vec![0; 16 * 1024],
                timer: None,
            }),
        })
    }

    async fn bind(&self, address: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(address).await
    }

    async fn accept(&self, listener: &TcpListener) -> io::Result<(TracedStream, SocketAddr)> {
        let (inner, peer) = listener.accept().await?;
        Ok((
            TracedStream {
                inner,
                trace: self.trace.clone(),
                // Latency is injected once, on the connecting side.
                delayed: None,
            },
            peer,
        ))
    }

    fn local_address(&self, listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn now(&self) -> Duration {
        madsim::time::TimeHandle::current().elapsed()
    }

    fn wall_clock_ns(&self) -> u64 {
        madsim::time::TimeHandle::current()
            .now_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        madsim::time::sleep(duration)
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Dropping madsim's join handle detaches the task; it dies with its node.
        drop(madsim::task::spawn(future));
    }

    fn random_u64(&self) -> u64 {
        madsim::rand::thread_rng().gen()
    }

    fn process_usage(&self) -> ProcessUsage {
        ProcessUsage::default()
    }
}
