//! Bugs planted on purpose, so that the simulator can prove it catches them (DESIGN §8: "a
//! planted bug in the vote or the repair must make the sweep fail"). They are ordinary option
//! values rather than compile-time features so that one test binary can try each in turn; nothing
//! outside the simulator's self-test ever sets them.

/// One deliberate mistake in the replication logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlantedBug {
    /// The read vote settles on the first valid answer instead of a majority.
    VoteAcceptsOneAnswer,
    /// A read returns a winner held by fewer than a majority without writing it back first (and
    /// without repairing anything afterwards).
    SkipWriteBack,
    /// A server stores a put even when it already holds a newer version (a rollback).
    ServerAcceptsOlderVersion,
    /// The file system applies a multi-record operation's steps without storing its intent
    /// first, so a crash can leave it half done.
    SkipIntent,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 3] = [
        PlantedBug::VoteAcceptsOneAnswer,
        PlantedBug::SkipWriteBack,
        PlantedBug::ServerAcceptsOlderVersion,
    ];

    /// The bugs the file-system sweep must catch.
    pub const FILE_SYSTEM: [PlantedBug; 1] = [PlantedBug::SkipIntent];
}
