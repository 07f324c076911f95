//! The client side of the wire: pooled, pipelined, authenticated connections to one server.
//!
//! Each connection has a writer task that seals requests in order (batching whatever is queued
//! into one write) and a reader task that matches responses to waiting callers by request id, so
//! many requests share one connection without waiting for each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::env::{random_u128, timeout, Env};
use crate::proto::{
    decode_hello, encode_hello, push_frame, read_frame, write_frame, Direction, FrameCodec,
    FrameError, Request, RequestId, Response,
};
use crate::record::ClusterKey;

#[derive(Clone, Debug)]
pub struct RpcOptions {
    /// Connecting plus the hello exchange.
    pub connect_timeout: Duration,
    /// One request, from sending to the answer.
    pub request_timeout: Duration,
    pub connections_per_server: usize,
    /// Requests queued on one connection before callers wait.
    pub queue_depth: usize,
    /// After a failed connect, calls fail at once for this long instead of piling up.
    pub reconnect_backoff: Duration,
}

impl Default for RpcOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            connections_per_server: 2,
            queue_depth: 256,
            reconnect_backoff: Duration::from_millis(250),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer in time")]
    Timeout,
    #[error("the server refused our frames: check that key_file holds this cluster's key")]
    Rejected,
    #[error("protocol error: {0}")]
    Protocol(String),
}

type Waiter = oneshot::Sender<Result<Response, RpcError>>;

struct Pending {
    waiters: BTreeMap<RequestId, Waiter>,
    /// Set once the connection failed; new requests fail at once with it.
    failure: Option<RpcError>,
}

struct Connection {
    outgoing: mpsc::Sender<(RequestId, Request)>,
    pending: Arc<StdMutex<Pending>>,
    closed: Arc<AtomicBool>,
}

fn fail_all(pending: &StdMutex<Pending>, closed: &AtomicBool, error: RpcError) {
    closed.store(true, Ordering::Release);
    let waiters = {
        let mut pending = pending.lock().expect("pending lock poisoned");
        pending.failure.get_or_insert(error.clone());
        std::mem::take(&mut pending.waiters)
    };
    for (_, waiter) in waiters {
        let _ = waiter.send(Err(error.clone()));
    }
}

fn frame_error_to_rpc(error: FrameError) -> RpcError {
    match error {
        FrameError::RejectedByPeer => RpcError::Rejected,
        FrameError::Closed => RpcError::Unreachable("connection closed".into()),
        FrameError::Io(error) => RpcError::Unreachable(error.to_string()),
        other => RpcError::Protocol(other.to_string()),
    }
}

impl Connection {
    async fn open<E: Env>(
        env: &E,
        address: SocketAddr,
        cluster_key: &ClusterKey,
        queue_depth: usize,
    ) -> Result<Self, RpcError> {
        let stream = env
            .connect(address)
            .await
            .map_err(|error| RpcError::Unreachable(format!("{address}: {error}")))?;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let client_nonce = random_u128(env).to_le_bytes();
        write_frame(&mut writer, &encode_hello(&client_nonce))
            .await
            .map_err(|error| RpcError::Unreachable(format!("{address}: {error}")))?;
        let hello = read_frame(&mut reader).await.map_err(frame_error_to_rpc)?;
        let server_nonce = decode_hello(&hello).map_err(frame_error_to_rpc)?;
        let mut outbound = FrameCodec::new(
            cluster_key.clone(),
            Direction::ClientToServer,
            client_nonce,
            server_nonce,
        );
        let mut inbound = FrameCodec::new(
            cluster_key.clone(),
            Direction::ServerToClient,
            client_nonce,
            server_nonce,
        );
        let pending = Arc::new(StdMutex::new(Pending {
            waiters: BTreeMap::new(),
            failure: None,
        }));
        let closed = Arc::new(AtomicBool::new(false));
        let (outgoing, mut queue) = mpsc::channel::<(RequestId, Request)>(queue_depth);

        let writer_pending = pending.clone();
        let writer_closed = closed.clone();
        // Told when every handle is gone, so that the reader lets go of the stream too: dropping
        // both halves is what closes a connection (a shutdown alone does not, in every world).
        let (abandoned, mut reader_abandoned) = oneshot::channel::<()>();
        env.spawn(async move {
            let mut buffer = Vec::new();
            while let Some(first) = queue.recv().await {
                buffer.clear();
                let mut next = Some(first);
                while let Some((request_id, request)) = next.take() {
                    push_frame(&mut buffer, &outbound.seal(request_id, &request));
                    if buffer.len() < 1 << 20 {
                        next = queue.try_recv().ok();
                    }
                }
                let written = async {
                    writer.write_all(&buffer).await?;
                    writer.flush().await
                };
                if let Err(error) = written.await {
                    fail_all(
                        &writer_pending,
                        &writer_closed,
                        RpcError::Unreachable(error.to_string()),
                    );
                    return;
                }
                if writer_closed.load(Ordering::Acquire) {
                    return;
                }
            }
            // Every handle to this connection is gone: close it now rather than at the server's
            // idle timeout. Without this, a client that keeps reopening leaks connections until
            // the server refuses new ones.
            let _ = writer.shutdown().await;
            drop(abandoned);
        });

        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        env.spawn(async move {
            loop {
                let read = tokio::select! {
                    biased;
                    _ = &mut reader_abandoned => {
                        fail_all(
                            &reader_pending,
                            &reader_closed,
                            RpcError::Unreachable("connection closed".into()),
                        );
                        return;
                    }
                    read = read_frame(&mut reader) => read,
                };
                let frame = match read {
                    Ok(frame) => frame,
                    Err(error) => {
                        fail_all(&reader_pending, &reader_closed, frame_error_to_rpc(error));
                        return;
                    }
                };
                match inbound.open::<Response>(&frame) {
                    Ok((request_id, response)) => {
                        let waiter = reader_pending
                            .lock()
                            .expect("pending lock poisoned")
                            .waiters
                            .remove(&request_id);
                        // A missing waiter timed out already: drop the late answer.
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Ok(response));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%address, %error, "dropping a connection to a server");
                        fail_all(&reader_pending, &reader_closed, frame_error_to_rpc(error));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            outgoing,
            pending,
            closed,
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    async fn call(
        &self,
        request_id: RequestId,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<Response, RpcError>>, RpcError> {
        let (waiter, answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            if let Some(failure) = &pending.failure {
                return Err(failure.clone());
            }
            pending.waiters.insert(request_id, waiter);
        }
        if self.outgoing.send((request_id, request)).await.is_err() {
            self.forget(request_id);
            return Err(RpcError::Unreachable("connection closed".into()));
        }
        Ok(answer)
    }

    fn forget(&self, request_id: RequestId) {
        self.pending
            .lock()
            .expect("pending lock poisoned")
            .waiters
            .remove(&request_id);
    }
}

struct Slot {
    connection: Option<Arc<Connection>>,
    /// Env time before which a new connect is not attempted.
    retry_after: Duration,
}

/// All connections to one server.
pub struct ServerLink<E: Env> {
    env: E,
    address: SocketAddr,
    cluster_key: ClusterKey,
    options: RpcOptions,
    slots: Vec<Mutex<Slot>>,
    next_slot: AtomicUsize,
}

impl<E: Env> ServerLink<E> {
    pub fn new(env: E, address: SocketAddr, cluster_key: ClusterKey, options: RpcOptions) -> Self {
        let slots = (0..options.connections_per_server.max(1))
            .map(|_| {
                Mutex::new(Slot {
                    connection: None,
                    retry_after: Duration::ZERO,
                })
            })
            .collect();
        Self {
            env,
            address,
            cluster_key,
            options,
            slots,
            next_slot: AtomicUsize::new(0),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    async fn connection(&self) -> Result<Arc<Connection>, RpcError> {
        let index = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        if let Some(connection) = &slot.connection {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        slot.connection = None;
        if self.env.now() < slot.retry_after {
            return Err(RpcError::Unreachable(format!(
                "{}: recently unreachable",
                self.address
            )));
        }
        let opened = timeout(
            &self.env,
            self.options.connect_timeout,
            Connection::open(
                &self.env,
                self.address,
                &self.cluster_key,
                self.options.queue_depth,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::Unreachable(format!(
                "{}: connect timed out",
                self.address
            )))
        });
        match opened {
            Ok(connection) => {
                let connection = Arc::new(connection);
                slot.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                slot.retry_after = self.env.now() + self.options.reconnect_backoff;
                Err(error)
            }
        }
    }

    /// Send one request and wait for its answer, at most the request timeout.
    pub async fn call(
        &self,
        request_id: RequestId,
        request: Request,
    ) -> Result<Response, RpcError> {
        let connection = self.connection().await?;
        let answer = connection.call(request_id, request).await?;
        match timeout(&self.env, self.options.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RpcError::Unreachable("connection closed".into())),
            Err(_) => {
                connection.forget(request_id);
                Err(RpcError::Timeout)
            }
        }
    }
}
