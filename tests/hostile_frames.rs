//! Hostile input on a real server's port (DESIGN §10): garbage, frames under the wrong key,
//! oversized length prefixes, truncated frames and replays are refused, the connection is
//! closed, the refusal is counted, and the server keeps serving everyone else.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{direct_get, eventually, key_owned_where, random_bytes, stats, Client, TestCluster};
use votefs::proto::{
    decode_hello, encode_hello, read_frame, write_frame, Direction, FrameCodec, FrameError, Nonce,
    Request, Response, MAX_FRAME_BYTES,
};
use votefs::record::ClusterKey;

/// The server every hostile connection goes to.
const TARGET: usize = 0;
/// How long a refused connection may take to be closed by the server.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn connect(cluster: &TestCluster) -> TcpStream {
    TcpStream::connect(cluster.address(TARGET))
        .await
        .expect("connecting to the server")
}

/// Read the server's hello and answer with ours; returns (client nonce, server nonce).
async fn handshake(stream: &mut TcpStream) -> (Nonce, Nonce) {
    let hello = read_frame(stream).await.expect("the server's hello");
    let server_nonce = decode_hello(&hello).expect("a well-formed hello");
    let client_nonce: Nonce = *b"hostile  nonce!!";
    write_frame(stream, &encode_hello(&client_nonce))
        .await
        .expect("sending our hello");
    (client_nonce, server_nonce)
}

/// The server closes the connection: reading reaches the end of the stream (or a reset) in time.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut sink = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a hostile connection open");
}

/// A normal client still gets full service from the target, and the target counted more
/// rejected frames than `rejected_before`.
async fn assert_still_serving(
    cluster: &TestCluster,
    client: &Client,
    probe: &mut u64,
    rejected_before: u64,
    count_required: bool,
) -> u64 {
    let key = key_owned_where(cluster.placement(), "probe/", probe, |owners| {
        owners.contains(&TARGET)
    });
    let value = random_bytes(*probe, 3000);
    client
        .put(key.as_bytes(), &value)
        .await
        .expect("put after hostile input");
    assert_eq!(
        client.get(key.as_bytes()).await.unwrap(),
        Some(value.clone())
    );
    // A write returns once a majority has it: the target's copy may land a moment later.
    eventually(
        "the target stores the probe",
        Duration::from_secs(5),
        || async {
            match direct_get(client, TARGET, key.as_bytes()).await {
                Response::Found(record) if record.value == value => Ok(()),
                other => Err(format!("the target answers {other:?}")),
            }
        },
    )
    .await;
    let rejected = stats(client, TARGET).await.rejected_frames;
    if count_required {
        assert!(
            rejected > rejected_before,
            "the refusal was not counted: rejected_frames stayed at {rejected}"
        );
    }
    rejected
}

/// The hostile inputs, each on its own connection.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Garbage where the hello belongs (framed, so that the server has all of it at once).
    RandomBytes,
    /// A frame of garbage after a proper handshake.
    RandomFrame,
    WrongKey,
    OversizedLength,
    TruncatedFrame,
    Replay,
}

async fn attack(cluster: &TestCluster, kind: Attack) {
    let mut stream = connect(cluster).await;
    match kind {
        Attack::RandomBytes => {
            // The server speaks first; garbage instead of our hello.
            let hello = read_frame(&mut stream).await.expect("the server's hello");
            decode_hello(&hello).expect("a well-formed hello");
            let mut garbage = random_bytes(0xbad, 8192);
            garbage[..4].copy_from_slice(&(8192u32 - 4).to_be_bytes());
            // The server may hang up before reading everything.
            let _ = stream.write_all(&garbage).await;
            assert_closed_by_server(&mut stream).await;
        }
        Attack::RandomFrame => {
            handshake(&mut stream).await;
            for length in [0, 1, 57, 300] {
                let garbage = random_bytes(length as u64, length);
                // The server may hang up after the first.
                let _ = write_frame(&mut stream, &garbage).await;
            }
            assert_closed_by_server(&mut stream).await;
        }
        Attack::WrongKey => {
            let (client_nonce, server_nonce) = handshake(&mut stream).await;
            let wrong = ClusterKey::from_bytes([0x66; 32]);
            let mut codec =
                FrameCodec::new(wrong, Direction::ClientToServer, client_nonce, server_nonce);
            let frame = codec.seal(1, &Request::Stats);
            write_frame(&mut stream, &frame).await.unwrap();
            let answer = tokio::time::timeout(CLOSE_WAIT, read_frame(&mut stream))
                .await
                .expect("an answer in time")
                .expect("a rejection frame");
            // Whatever key the reader holds, the frame says "rejected".
            let mut reader = FrameCodec::new(
                cluster.key().clone(),
                Direction::ServerToClient,
                client_nonce,
                server_nonce,
            );
            assert!(
                matches!(
                    reader.open::<Response>(&answer),
                    Err(FrameError::RejectedByPeer)
                ),
                "expected a rejection frame, got {} bytes",
                answer.len()
            );
            assert_closed_by_server(&mut stream).await;
        }
        Attack::OversizedLength => {
            handshake(&mut stream).await;
            let length = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
            stream.write_all(&length).await.unwrap();
            // Whatever follows must not be waited for, let alone allocated.
            let _ = stream.write_all(&[0u8; 1024]).await;
            assert_closed_by_server(&mut stream).await;
        }
        Attack::TruncatedFrame => {
            handshake(&mut stream).await;
            stream.write_all(&1000u32.to_be_bytes()).await.unwrap();
            stream.write_all(&[7u8; 10]).await.unwrap();
            stream.shutdown().await.unwrap();
            assert_closed_by_server(&mut stream).await;
        }
        Attack::Replay => {
            let (client_nonce, server_nonce) = handshake(&mut stream).await;
            let mut sender = FrameCodec::new(
                cluster.key().clone(),
                Direction::ClientToServer,
                client_nonce,
                server_nonce,
            );
            let mut reader = FrameCodec::new(
                cluster.key().clone(),
                Direction::ServerToClient,
                client_nonce,
                server_nonce,
            );
            let frame = sender.seal(42, &Request::Stats);
            write_frame(&mut stream, &frame).await.unwrap();
            let answer = read_frame(&mut stream).await.expect("an answer");
            let (request_id, response) = reader.open::<Response>(&answer).expect("authentic");
            assert_eq!(request_id, 42);
            assert!(matches!(response, Response::Stats(_)), "{response:?}");
            // The very same bytes again.
            write_frame(&mut stream, &frame).await.unwrap();
            let answer = tokio::time::timeout(CLOSE_WAIT, read_frame(&mut stream))
                .await
                .expect("an answer in time")
                .expect("a rejection frame");
            assert!(
                matches!(
                    reader.open::<Response>(&answer),
                    Err(FrameError::RejectedByPeer)
                ),
                "a replayed frame was answered"
            );
            assert_closed_by_server(&mut stream).await;
        }
    }
}

async fn refused_and_counted(kind: Attack) {
    let cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let mut probe = 0;
    let before = assert_still_serving(&cluster, &client, &mut probe, 0, false).await;
    attack(&cluster, kind).await;
    assert_still_serving(&cluster, &client, &mut probe, before, true).await;
}

#[tokio::test]
async fn frames_under_the_wrong_key_are_rejected_and_counted() {
    refused_and_counted(Attack::WrongKey).await;
}

#[tokio::test]
async fn replayed_frames_are_rejected_and_counted() {
    refused_and_counted(Attack::Replay).await;
}

#[tokio::test]
async fn garbage_frames_are_refused_and_counted() {
    refused_and_counted(Attack::RandomFrame).await;
}

#[tokio::test]
async fn random_bytes_are_refused_and_counted() {
    refused_and_counted(Attack::RandomBytes).await;
}

#[tokio::test]
async fn oversized_frames_are_refused_and_counted() {
    refused_and_counted(Attack::OversizedLength).await;
}

#[tokio::test]
async fn truncated_frames_are_refused_and_counted() {
    refused_and_counted(Attack::TruncatedFrame).await;
}

/// Every kind of hostile input, one after the other and then all at once: each connection is
/// closed and the server keeps serving.
#[tokio::test]
async fn the_server_survives_every_hostile_input() {
    let cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let mut probe = 0;
    let all = [
        Attack::RandomBytes,
        Attack::RandomFrame,
        Attack::WrongKey,
        Attack::OversizedLength,
        Attack::TruncatedFrame,
        Attack::Replay,
    ];
    let mut rejected = assert_still_serving(&cluster, &client, &mut probe, 0, false).await;
    for kind in all {
        attack(&cluster, kind).await;
        rejected = assert_still_serving(&cluster, &client, &mut probe, rejected, false).await;
    }
    let concurrent = all.map(|kind| attack(&cluster, kind));
    let [first, second, third, fourth, fifth, sixth] = concurrent;
    tokio::join!(first, second, third, fourth, fifth, sixth);
    assert_still_serving(&cluster, &client, &mut probe, rejected, false).await;
    // At least the frames refused after a handshake (garbage, wrong key, replay) were counted.
    assert!(stats(&client, TARGET).await.rejected_frames >= 6);
}
