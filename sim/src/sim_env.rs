//! [`Env`] over madsim: simulated TCP, virtual time, node-local tasks, seeded randomness.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use madsim::net::{TcpListener, TcpStream};
use madsim::rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use votefs::env::{Env, ProcessUsage};

use crate::trace::Trace;

/// The simulated world as the core sees it. Clones share the trace.
#[derive(Clone, Default)]
pub struct SimEnv {
    pub trace: Trace,
}

/// A madsim stream whose written bytes go into the trace.
pub struct TracedStream {
    inner: TcpStream,
    trace: Trace,
}

impl AsyncRead for TracedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(context, buffer)
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
