//! The wire protocol (DESIGN §10): postcard messages in length-prefixed, authenticated frames.
//!
//! A connection opens with one hello frame in each direction carrying a fresh random nonce. Every
//! later frame carries a version byte, a per-direction sequence number, a 128-bit request id, the
//! postcard payload and an HMAC-SHA256 over all of that plus both nonces, so a frame cannot be
//! forged without the cluster key, replayed on another connection, or replayed, dropped or
//! reordered within one without detection.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::env::ProcessUsage;
use crate::record::{macs_equal, ClusterKey, Record, Tag, Version, MAX_VALUE_BYTES, TAG_BYTES};

/// The protocol version this build speaks. A frame with another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// The largest frame accepted, in bytes (length prefix excluded): one record at its largest size
/// plus room for the key and the envelope.
pub const MAX_FRAME_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_MESSAGE: u8 = 2;
/// Sent unauthenticated by a server just before it drops a connection whose frames failed
/// authentication, so that a client with the wrong key gets a clear error instead of silence.
const KIND_REJECTED: u8 = 3;

const HELLO_MAGIC: &[u8; 8] = b"votefs\0\x01";
const NONCE_BYTES: usize = 16;
const HELLO_BYTES: usize = 2 + HELLO_MAGIC.len() + NONCE_BYTES;
/// version + kind + sequence + request id
const MESSAGE_HEADER_BYTES: usize = 2 + 8 + 16;
const FRAME_DOMAIN: &[u8] = b"votefs frame v1\0";

pub type VolumeId = u128;
pub type RequestId = u128;

/// Which slot of the cluster a server occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId {
    pub bank: u32,
    pub slot: u32,
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "bank {} server {}", self.bank, self.slot)
    }
}

/// A fault an operator can inject into one server's copy of a key (for demos and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InjectedFault {
    /// Flip bits in the stored value and re-checksum the entry: only the end-to-end tag can tell.
    Corrupt,
    /// Lose this copy. The server knows it lost it and answers `Recovering` for the key until the
    /// copy is repaired (a lost copy must never vote "absent").
    Wipe,
    /// Roll this copy back to an older, well-formed version (properly tagged, so only the version
    /// vote can tell).
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Who are you, and in what state?
    Identify,
    /// Become member `member` of a new volume `volume` (only a blank server accepts). The volume
    /// is unfinished until `CommitFormat`: a client that finds an unfinished format may complete
    /// it instead of treating a still-blank server as one that lost data.
    Format {
        volume: VolumeId,
        member: MemberId,
        /// Like a Paxos ballot: a server takes a format only with a higher ballot than any it has
        /// seen, and commits only the format of the last ballot it took, so two clients formatting
        /// at once can never both commit.
        ballot: u64,
    },
    /// Every member of a new volume is formatted: the volume exists from now on.
    CommitFormat {
        volume: VolumeId,
        ballot: u64,
    },
    /// Join an existing volume as `member`, recovering until a complete scrub pass has filled it.
    Join {
        volume: VolumeId,
        member: MemberId,
        epoch: u64,
    },
    /// Promise to refuse writes from epochs older than `epoch`, granted to `writer` only.
    GrantEpoch {
        volume: VolumeId,
        epoch: u64,
        writer: u64,
    },
    Get {
        volume: VolumeId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Put {
        volume: VolumeId,
        writer_epoch: u64,
        record: Record,
        /// A repair: replace a copy of the same version too (the client saw it fail its tag, which
        /// the server cannot see from its own checksum).
        repair: bool,
    },
    /// Keys starting with `prefix`, in key order, after `start_after`.
    List {
        volume: VolumeId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    },
    Stats,
    /// A complete scrub pass refilled this server since it became recovering in generation
    /// `recovery_generation`: it may vote on absence again.
    MarkHealthy {
        volume: VolumeId,
        recovery_generation: u64,
    },
    /// Everything this server holds, in key order, for operators.
    Dump {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    },
    Inject {
        key: Vec<u8>,
        fault: InjectedFault,
    },
    /// One digest per bucket of `(key, version, tag)` over everything this server holds
    /// (DESIGN §6): a scrub pass compares banks bucket by bucket and lists only buckets that
    /// differ.
    Digests {
        volume: VolumeId,
    },
    /// Every entry (damaged and lost copies included) whose key falls in one of `buckets`, in key
    /// order, after `start_after`. A damaged or lost copy is listed with a zero version and tag,
    /// so it differs from every good copy.
    BucketEntries {
        volume: VolumeId,
        buckets: Vec<u32>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    },
    /// Re-read stored entries from disk, in key order after `start_after`, until `max_bytes` have
    /// been read, and mark every entry whose checksum fails as damaged (the deep scrub).
    DeepScrub {
        volume: VolumeId,
        start_after: Option<Vec<u8>>,
        max_bytes: u64,
    },
    /// Forget these tombstones: every copy of each holds it. The server drops one only if it
    /// still holds exactly that tombstone and its epoch is older than the promised epoch, so no
    /// write that could still arrive (writes of older epochs are fenced) can resurrect the key.
    DropTombstones {
        volume: VolumeId,
        tombstones: Vec<(ByteBuf, Version)>,
    },
    /// Forget this server's copy of `key` if it is still unusable (damaged or lost): every owner
    /// that can vote found the key absent, so there is nothing to repair it with, and the copy
    /// would otherwise keep its bucket's digest different forever.
    ForgetUnusable {
        volume: VolumeId,
        key: ByteBuf,
    },
    /// What the volume's refresh knows (heal backlog, passes, repairs), kept in memory so that
    /// `votefs status` can show it from any server. A server keeps the latest report.
    ReportVolume {
        volume: VolumeId,
        report: VolumeReport,
    },
}

/// Repaired copies, by why they needed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairsByCause {
    /// The copy held an older version.
    pub lagging: u64,
    /// The server had no copy.
    pub missing: u64,
    /// The copy failed its checksum or tag.
    pub corrupt: u64,
    /// The server was recovering and could not vote.
    pub recovering: u64,
}

impl RepairsByCause {
    pub fn total(&self) -> u64 {
        self.lagging + self.missing + self.corrupt + self.recovering
    }
}

/// The volume's self-healing, as its mount (or a `votefs scrub`) last reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    /// Wall-clock time of the report, in milliseconds since the Unix epoch.
    pub reported_at_unix_ms: u64,
    /// Who reported: "mount" or "scrub".
    pub reporter: String,
    /// Copies known to have missed a write, waiting for the healer.
    pub heal_backlog: u64,
    /// When the last pass that reached every server and settled every key ended.
    pub last_complete_pass_unix_ms: Option<u64>,
    pub last_pass_duration_ms: u64,
    pub passes: u64,
    pub complete_passes: u64,
    /// Since the reporter started.
    pub repairs: RepairsByCause,
}

impl Request {
    /// Requests whose effect must not be applied twice when a client retries them.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Request::Format { .. }
                | Request::CommitFormat { .. }
                | Request::Join { .. }
                | Request::GrantEpoch { .. }
                | Request::Put { .. }
                | Request::Inject { .. }
                | Request::MarkHealthy { .. }
                | Request::DropTombstones { .. }
        )
    }
}

/// What a server knows about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    /// Empty data directory, no volume yet.
    Blank,
    Member {
        volume: VolumeId,
        member: MemberId,
        recovering: bool,
        /// Formatted, but the format was not yet committed on every member.
        formatting: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub state: ServerState,
    /// The highest epoch promised so far.
    pub promised_epoch: u64,
    /// Grows each time the server becomes recovering, so that a scrub pass that started before
    /// the latest loss cannot declare the server healthy.
    pub recovery_generation: u64,
    /// The highest format ballot this server has taken.
    pub format_ballot: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    pub records: u64,
    pub tombstones: u64,
    pub live_bytes: u64,
    pub log_bytes: u64,
    pub requests: u64,
    pub duplicate_requests: u64,
    pub rejected_frames: u64,
    pub corrupt_entries_seen: u64,
    pub torn_tail_bytes_truncated: u64,
    pub compacted_entries: u64,
    pub usage: ProcessUsage,
    pub uptime_ms: u64,
    pub recovering: bool,
    pub promised_epoch: u64,
    /// How many times the supervisor restarted this server (0 when it runs unsupervised).
    pub restarts: u64,
    /// Requests per second over the last few seconds, in thousandths.
    pub request_rate_milli: u64,
    /// Value bytes of records this server sent (reads, listings carry none) and stored.
    pub record_bytes_sent: u64,
    pub record_bytes_stored: u64,
    /// Entries the deep scrub re-read from disk, and how many of them failed their checksum.
    pub deep_scrubbed_entries: u64,
    pub deep_scrub_damage_found: u64,
    pub tombstones_dropped: u64,
    /// Reads refused because too many requests were in flight.
    pub overloaded_answers: u64,
    /// The latest report of the volume's refresh this server received.
    pub volume_report: Option<VolumeReport>,
    /// No volume yet (an empty data directory): a client will format it or make it join.
    pub blank: bool,
    /// Bytes of frames received and sent after the handshake, length prefixes included.
    pub frame_bytes_received: u64,
    pub frame_bytes_sent: u64,
}

/// One bucket of a server's digests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// XOR of the digests of every entry in the bucket: equal sets give equal digests.
    pub digest: [u8; 16],
    pub entries: u32,
    /// The oldest epoch of any tombstone in the bucket (`u64::MAX` when there is none).
    pub oldest_tombstone_epoch: u64,
}

/// What a deep-scrub step read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepScrubProgress {
    pub entries_checked: u64,
    pub bytes_checked: u64,
    pub damaged_found: u64,
    /// Where the next step starts; `None` when the pass over the store is complete.
    pub resume_after: Option<ByteBuf>,
}

/// One key in a listing: enough to vote without moving values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: Version,
    pub tombstone: bool,
    pub tag: Tag,
}

/// One key in a dump, for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: Version,
    pub tombstone: bool,
    pub value_bytes: u64,
    /// The entry's checksum on disk matched.
    pub checksum_ok: bool,
    /// The end-to-end tag matched under this server's key.
    pub tag_ok: bool,
    /// The server knows it lost this copy (answers `Recovering` for it).
    pub lost: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Identity(Identity),
    Done,
    EpochGranted,
    /// A newer (or equal, other writer) epoch was already promised.
    EpochRefused {
        promised_epoch: u64,
    },
    Found(Record),
    /// Authoritative absence: this server never lost data it acknowledged.
    NotFound,
    /// This server's copy failed its checksum.
    Corrupt,
    /// This server cannot vote on this key: it may have lost the copy.
    Recovering,
    /// A recovering server's copy: proof that this version was written, but no proof that it is
    /// the newest (the server may have lost newer ones).
    Unvouched(Record),
    /// This server has no volume yet.
    Blank,
    /// The record is durably stored (or an identical one already was).
    Stored,
    /// A newer version is already stored; the write is superseded, not lost.
    HaveNewer {
        version: Version,
    },
    /// The same version with different content is already stored.
    Conflict,
    /// The writer's epoch is older than the one promised: a newer mount fenced it.
    Fenced {
        promised_epoch: u64,
    },
    Listing {
        entries: Vec<ListEntry>,
        complete: bool,
    },
    Stats(Box<ServerStats>),
    Dump {
        entries: Vec<DumpEntry>,
        complete: bool,
    },
    /// The request is well-formed but not allowed; the message says why.
    Refused(String),
    /// The server could not serve the request (for example its disk failed).
    Failed(String),
    Digests(Vec<BucketDigest>),
    DeepScrubbed(DeepScrubProgress),
    Dropped {
        tombstones: u64,
    },
    /// Too many requests are in flight here: ask another server, and avoid this one for a while.
    Overloaded,
}

/// Failure to read or check a frame. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("frame authentication failed (wrong cluster key, tampering or replay)")]
    Authentication,
    #[error("the peer refused our frames: it does not share our cluster key")]
    RejectedByPeer,
}

/// Read one length-prefixed frame, refusing lengths over [`MAX_FRAME_BYTES`] before allocating.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut length_bytes = [0u8; 4];
    match reader.read_exact(&mut length_bytes).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed)
        }
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length_bytes) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(length));
    }
    let mut frame = vec![0u8; length];
    reader.read_exact(&mut frame).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Malformed(format!(
                "connection closed inside a frame of {length} bytes"
            ))
        } else {
            error.into()
        }
    })?;
    Ok(frame)
}

/// Append the length prefix and `frame` to `output`.
pub fn push_frame(output: &mut Vec<u8>, frame: &[u8]) {
    debug_assert!(frame.len() <= MAX_FRAME_BYTES);
    output.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    output.extend_from_slice(frame);
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    let mut output = Vec::with_capacity(frame.len() + 4);
    push_frame(&mut output, frame);
    writer.write_all(&output).await?;
    writer.flush().await
}

pub type Nonce = [u8; NONCE_BYTES];

pub fn encode_hello(nonce: &Nonce) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HELLO_BYTES);
    frame.push(PROTOCOL_VERSION);
    frame.push(KIND_HELLO);
    frame.extend_from_slice(HELLO_MAGIC);
    frame.extend_from_slice(nonce);
    frame
}

pub fn decode_hello(frame: &[u8]) -> Result<Nonce, FrameError> {
    check_rejection(frame)?;
    if frame.len() != HELLO_BYTES {
        return Err(FrameError::Malformed(format!(
            "hello of {} bytes, expected {HELLO_BYTES}",
            frame.len()
        )));
    }
    if frame[0] != PROTOCOL_VERSION {
        return Err(FrameError::Version(frame[0]));
    }
    if frame[1] != KIND_HELLO || &frame[2..2 + HELLO_MAGIC.len()] != HELLO_MAGIC {
        return Err(FrameError::Malformed("not a votefs hello".into()));
    }
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&frame[2 + HELLO_MAGIC.len()..]);
    Ok(nonce)
}

/// The frame a server sends before dropping a connection that failed authentication.
pub fn encode_rejection() -> Vec<u8> {
    vec![PROTOCOL_VERSION, KIND_REJECTED]
}

fn check_rejection(frame: &[u8]) -> Result<(), FrameError> {
    if frame.len() == 2 && frame[1] == KIND_REJECTED {
        return Err(FrameError::RejectedByPeer);
    }
    Ok(())
}

/// Which way a frame travels; part of the MAC so that a server's frame cannot be reflected back
/// to it as a client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The authenticated state of one direction of a connection.
pub struct FrameCodec {
    cluster_key: ClusterKey,
    direction: Direction,
    client_nonce: Nonce,
    server_nonce: Nonce,
    next_sequence: u64,
}

impl FrameCodec {
    pub fn new(
        cluster_key: ClusterKey,
        direction: Direction,
        client_nonce: Nonce,
        server_nonce: Nonce,
    ) -> Self {
        Self {
            cluster_key,
            direction,
            client_nonce,
            server_nonce,
            next_sequence: 0,
        }
    }

    fn mac(&self, header: &[u8], payload: &[u8]) -> Tag {
        let direction = [match self.direction {
            Direction::ClientToServer => 0u8,
            Direction::ServerToClient => 1u8,
        }];
        self.cluster_key.mac(
            FRAME_DOMAIN,
            &[
                &direction,
                &self.client_nonce,
                &self.server_nonce,
                header,
                payload,
            ],
        )
    }

    /// Seal a message into a frame (without the length prefix) and advance the sequence.
    pub fn seal<T: Serialize>(&mut self, request_id: RequestId, message: &T) -> Vec<u8> {
        let payload = postcard::to_allocvec(message).expect("messages always serialise");
        let mut frame = Vec::with_capacity(MESSAGE_HEADER_BYTES + payload.len() + TAG_BYTES);
        frame.push(PROTOCOL_VERSION);
        frame.push(KIND_MESSAGE);
        frame.extend_from_slice(&self.next_sequence.to_le_bytes());
        frame.extend_from_slice(&request_id.to_le_bytes());
        let mac = self.mac(&frame, &payload);
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&mac);
        self.next_sequence += 1;
        frame
    }

    /// Check a frame's version, sequence and MAC, then decode its message.
    pub fn open<T: for<'de> Deserialize<'de>>(
        &mut self,
        frame: &[u8],
    ) -> Result<(RequestId, T), FrameError> {
        check_rejection(frame)?;
        if frame.len() < MESSAGE_HEADER_BYTES + TAG_BYTES {
            return Err(FrameError::Malformed(format!(
                "frame of {} bytes is shorter than a header",
                frame.len()
            )));
        }
        if frame[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(frame[0]));
        }
        if frame[1] != KIND_MESSAGE {
            return Err(FrameError::Malformed(format!(
                "unexpected frame kind {}",
                frame[1]
            )));
        }
        let (header, rest) = frame.split_at(MESSAGE_HEADER_BYTES);
        let (payload, mac) = rest.split_at(rest.len() - TAG_BYTES);
        if !macs_equal(&self.mac(header, payload), mac) {
            return Err(FrameError::Authentication);
        }
        let sequence = u64::from_le_bytes(header[2..10].try_into().expect("8 bytes"));
        if sequence != self.next_sequence {
            // Authentic but out of place: a replay or reordering inside this connection.
            return Err(FrameError::Authentication);
        }
        let request_id = u128::from_le_bytes(header[10..26].try_into().expect("16 bytes"));
        let message = postcard::from_bytes(payload)
            .map_err(|error| FrameError::Malformed(format!("undecodable message: {error}")))?;
        self.next_sequence += 1;
        Ok((request_id, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::CLUSTER_KEY_BYTES;

    fn codecs() -> (FrameCodec, FrameCodec) {
        let key = ClusterKey::from_bytes([3; CLUSTER_KEY_BYTES]);
        let sender = FrameCodec::new(key.clone(), Direction::ClientToServer, [1; 16], [2; 16]);
        let receiver = FrameCodec::new(key, Direction::ClientToServer, [1; 16], [2; 16]);
        (sender, receiver)
    }

    #[test]
    fn round_trip() {
        let (mut sender, mut receiver) = codecs();
        for id in 0..3u128 {
            let frame = sender.seal(id, &Request::Identify);
            let (request_id, request): (RequestId, Request) = receiver.open(&frame).unwrap();
            assert_eq!(request_id, id);
            assert_eq!(request, Request::Identify);
        }
    }

    #[test]
    fn replay_reorder_and_tamper_are_refused() {
        let (mut sender, mut receiver) = codecs();
        let first = sender.seal(1, &Request::Stats);
        let second = sender.seal(2, &Request::Stats);
        assert!(matches!(
            receiver.open::<Request>(&second),
            Err(FrameError::Authentication)
        ));
        receiver.open::<Request>(&first).unwrap();
        assert!(matches!(
            receiver.open::<Request>(&first),
            Err(FrameError::Authentication)
        ));
        let mut tampered = second.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x10;
        assert!(receiver.open::<Request>(&tampered).is_err());
        receiver.open::<Request>(&second).unwrap();
    }

    #[test]
    fn other_connection_or_key_or_direction_is_refused() {
        let key = ClusterKey::from_bytes([3; CLUSTER_KEY_BYTES]);
        let mut sender = FrameCodec::new(key.clone(), Direction::ClientToServer, [1; 16], [2; 16]);
        let frame = sender.seal(1, &Request::Stats);
        for mut receiver in [
            FrameCodec::new(key.clone(), Direction::ClientToServer, [1; 16], [9; 16]),
            FrameCodec::new(key.clone(), Direction::ServerToClient, [1; 16], [2; 16]),
            FrameCodec::new(
                ClusterKey::from_bytes([4; CLUSTER_KEY_BYTES]),
                Direction::ClientToServer,
                [1; 16],
                [2; 16],
            ),
        ] {
            assert!(matches!(
                receiver.open::<Request>(&frame),
                Err(FrameError::Authentication)
            ));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let (_, mut receiver) = codecs();
        let mut rng = crate::rng::SeededRng::new(5);
        for length in 0..200 {
            let mut bytes = vec![0u8; length];
            rng.fill(&mut bytes);
            assert!(receiver.open::<Request>(&bytes).is_err());
            assert!(decode_hello(&bytes).is_err() || length == HELLO_BYTES);
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let mut input: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_frame(&mut input).await,
            Err(FrameError::TooLarge(_))
        ));
        let mut truncated: &[u8] = &[0, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_frame(&mut truncated).await,
            Err(FrameError::Malformed(_))
        ));
    }
}
