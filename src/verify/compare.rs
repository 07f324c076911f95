//! Comparing two responses to one operation by field class (DESIGN §8): bitwise-comparable fields
//! must be equal, loosely-comparable ones (timestamps) within a tolerance, and non-comparable ones
//! (inode numbers, block counts, directory sizes, directory order) are never compared.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::operation::{
    describe_bytes, Attributes, DirectoryEntry, FileKind, Operation, Reply, Response, Timestamp,
};

/// How a field may be compared between two file systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldClass {
    /// Must be identical.
    Bitwise,
    /// Must agree within a tolerance.
    Loose,
    /// Each file system chooses its own value; never compared.
    NonComparable,
}

/// A field of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// Success on one side, failure on the other.
    Outcome,
    Errno,
    /// Both succeeded but with different kinds of reply (or not the kind the operation makes).
    ReplyShape,
    Data,
    WrittenCount,
    Kind,
    Mode,
    /// Of regular files and symlinks.
    Size,
    LinkCount,
    Uid,
    Gid,
    AccessTime,
    ModificationTime,
    ChangeTime,
    /// The set of names in a listing.
    EntryNames,
    /// The kind a listing gives one name.
    EntryKind,
    LinkTarget,
    XattrValue,
    XattrNames,
    InodeNumber,
    Blocks,
    DirectorySize,
    DirectoryOrder,
}

impl Field {
    pub fn class(self) -> FieldClass {
        match self {
            Field::AccessTime | Field::ModificationTime | Field::ChangeTime => FieldClass::Loose,
            Field::InodeNumber | Field::Blocks | Field::DirectorySize | Field::DirectoryOrder => {
                FieldClass::NonComparable
            }
            _ => FieldClass::Bitwise,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Field::Outcome => "outcome",
            Field::Errno => "errno",
            Field::ReplyShape => "reply shape",
            Field::Data => "data",
            Field::WrittenCount => "written count",
            Field::Kind => "kind",
            Field::Mode => "mode",
            Field::Size => "size",
            Field::LinkCount => "link count",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::AccessTime => "atime",
            Field::ModificationTime => "mtime",
            Field::ChangeTime => "ctime",
            Field::EntryNames => "entry names",
            Field::EntryKind => "entry kind",
            Field::LinkTarget => "link target",
            Field::XattrValue => "xattr value",
            Field::XattrNames => "xattr names",
            Field::InodeNumber => "inode number",
            Field::Blocks => "blocks",
            Field::DirectorySize => "directory size",
            Field::DirectoryOrder => "directory order",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What counts as agreement where the file systems may legitimately differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComparisonOptions {
    /// How far apart two timestamps may be and still agree.
    pub timestamp_tolerance_nanoseconds: u64,
    /// Whether access times are compared at all (a `noatime` target, or a FUSE file system whose
    /// atime is its own business, cannot agree with a relatime reference).
    pub compare_access_times: bool,
    /// Whether directory link counts are compared (`2 + subdirectories` on most file systems;
    /// btrfs reports 1).
    pub compare_directory_link_counts: bool,
}

impl Default for ComparisonOptions {
    fn default() -> Self {
        ComparisonOptions {
            timestamp_tolerance_nanoseconds: 2_000_000_000,
            compare_access_times: true,
            compare_directory_link_counts: true,
        }
    }
}

/// One field on which the two responses disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    pub field: Field,
    pub class: FieldClass,
    /// The reference's value, described for a human.
    pub expected: String,
    /// The target's value, described the same way.
    pub actual: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} ({:?}): expected {}, got {}",
            self.field, self.class, self.expected, self.actual
        )
    }
}

/// Every comparable field on which `actual` (the target's response to `operation`) disagrees with
/// `expected` (the reference's).
pub fn compare(
    operation: &Operation,
    expected: &Response,
    actual: &Response,
    options: &ComparisonOptions,
) -> Vec<Divergence> {
    let mut divergences = Vec::new();
    match (expected, actual) {
        (Err(expected_errno), Err(actual_errno)) => {
            if expected_errno != actual_errno {
                push(
                    &mut divergences,
                    Field::Errno,
                    expected_errno.to_string(),
                    actual_errno.to_string(),
                );
            }
        }
        (Ok(reply), Err(errno)) => push(
            &mut divergences,
            Field::Outcome,
            format!("success {reply:?}"),
            format!("error {errno}"),
        ),
        (Err(errno), Ok(reply)) => push(
            &mut divergences,
            Field::Outcome,
            format!("error {errno}"),
            format!("success {reply:?}"),
        ),
        (Ok(expected_reply), Ok(actual_reply)) => {
            let wanted_shape = operation.reply_shape();
            if actual_reply.shape() != wanted_shape || expected_reply.shape() != wanted_shape {
                push(
                    &mut divergences,
                    Field::ReplyShape,
                    format!("{:?}", expected_reply.shape()),
                    format!("{:?}", actual_reply.shape()),
                );
            } else {
                compare_replies(expected_reply, actual_reply, options, &mut divergences);
            }
        }
    }
    divergences
}

fn compare_replies(
    expected: &Reply,
    actual: &Reply,
    options: &ComparisonOptions,
    divergences: &mut Vec<Divergence>,
) {
    match (expected, actual) {
        (Reply::Done, Reply::Done) => {}
        (Reply::Written { count: expected }, Reply::Written { count: actual }) => {
            if expected != actual {
                push(
                    divergences,
                    Field::WrittenCount,
                    expected.to_string(),
                    actual.to_string(),
                );
            }
        }
        (Reply::Data(expected), Reply::Data(actual)) => {
            compare_bytes(Field::Data, expected, actual, divergences)
        }
        (Reply::Target(expected), Reply::Target(actual)) => {
            compare_bytes(Field::LinkTarget, expected, actual, divergences)
        }
        (Reply::Value(expected), Reply::Value(actual)) => {
            compare_bytes(Field::XattrValue, expected, actual, divergences)
        }
        (Reply::Attributes(expected), Reply::Attributes(actual)) => {
            compare_attributes(expected, actual, options, divergences)
        }
        (Reply::Entries(expected), Reply::Entries(actual)) => {
            compare_entries(expected, actual, divergences)
        }
        (Reply::Names(expected), Reply::Names(actual)) => {
            // The order of names is the file system's business.
            let mut expected = expected.clone();
            let mut actual = actual.clone();
            expected.sort();
            actual.sort();
            if expected != actual {
                push(
                    divergences,
                    Field::XattrNames,
                    describe_names(expected.iter()),
                    describe_names(actual.iter()),
                );
            }
        }
        // compare() checked that both replies have the operation's shape.
        _ => push(
            divergences,
            Field::ReplyShape,
            format!("{:?}", expected.shape()),
            format!("{:?}", actual.shape()),
        ),
    }
}

fn compare_attributes(
    expected: &Attributes,
    actual: &Attributes,
    options: &ComparisonOptions,
    divergences: &mut Vec<Divergence>,
) {
    let mut bitwise = |field: Field, expected_value: String, actual_value: String| {
        if expected_value != actual_value {
            push(divergences, field, expected_value, actual_value);
        }
    };
    bitwise(
        Field::Kind,
        format!("{:?}", expected.kind),
        format!("{:?}", actual.kind),
    );
    bitwise(
        Field::Mode,
        format!("{:#o}", expected.mode),
        format!("{:#o}", actual.mode),
    );
    let either_directory =
        expected.kind == FileKind::Directory || actual.kind == FileKind::Directory;
    if !either_directory {
        bitwise(
            Field::Size,
            expected.size.to_string(),
            actual.size.to_string(),
        );
    }
    if !either_directory || options.compare_directory_link_counts {
        bitwise(
            Field::LinkCount,
            expected.nlink.to_string(),
            actual.nlink.to_string(),
        );
    }
    bitwise(Field::Uid, expected.uid.to_string(), actual.uid.to_string());
    bitwise(Field::Gid, expected.gid.to_string(), actual.gid.to_string());
    if options.compare_access_times {
        compare_time(
            Field::AccessTime,
            expected.atime,
            actual.atime,
            options,
            divergences,
        );
    }
    compare_time(
        Field::ModificationTime,
        expected.mtime,
        actual.mtime,
        options,
        divergences,
    );
    compare_time(
        Field::ChangeTime,
        expected.ctime,
        actual.ctime,
        options,
        divergences,
    );
}

fn compare_time(
    field: Field,
    expected: Timestamp,
    actual: Timestamp,
    options: &ComparisonOptions,
    divergences: &mut Vec<Divergence>,
) {
    let difference = (expected.total_nanoseconds() - actual.total_nanoseconds()).unsigned_abs();
    if difference > u128::from(options.timestamp_tolerance_nanoseconds) {
        push(divergences, field, expected.to_string(), actual.to_string());
    }
}

/// Listings are compared as sorted lists of names (so a duplicated name is caught) and then
/// name by name for the kind.
fn compare_entries(
    expected: &[DirectoryEntry],
    actual: &[DirectoryEntry],
    divergences: &mut Vec<Divergence>,
) {
    let mut expected = expected.to_vec();
    let mut actual = actual.to_vec();
    expected.sort();
    actual.sort();
    let expected_names: Vec<&Vec<u8>> = expected.iter().map(|entry| &entry.name).collect();
    let actual_names: Vec<&Vec<u8>> = actual.iter().map(|entry| &entry.name).collect();
    if expected_names != actual_names {
        push(
            divergences,
            Field::EntryNames,
            describe_names(expected_names.into_iter()),
            describe_names(actual_names.into_iter()),
        );
        return;
    }
    for (expected_entry, actual_entry) in expected.iter().zip(&actual) {
        if expected_entry.kind != actual_entry.kind {
            let name = String::from_utf8_lossy(&expected_entry.name);
            push(
                divergences,
                Field::EntryKind,
                format!("{name}: {:?}", expected_entry.kind),
                format!("{name}: {:?}", actual_entry.kind),
            );
        }
    }
}

/// Equal or not, described by length and the first byte that differs.
fn compare_bytes(field: Field, expected: &[u8], actual: &[u8], divergences: &mut Vec<Divergence>) {
    if expected == actual {
        return;
    }
    let first_difference = expected
        .iter()
        .zip(actual)
        .position(|(left, right)| left != right)
        .unwrap_or(expected.len().min(actual.len()));
    let describe = |bytes: &[u8]| {
        let at_difference = match bytes.get(first_difference) {
            Some(byte) => format!("{byte:#04x}"),
            None => "the end".to_string(),
        };
        format!(
            "{}, at offset {first_difference}: {at_difference}",
            describe_bytes(bytes)
        )
    };
    push(divergences, field, describe(expected), describe(actual));
}

fn describe_names<'names>(names: impl Iterator<Item = &'names Vec<u8>>) -> String {
    let names: Vec<String> = names
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    format!("{names:?}")
}

fn push(divergences: &mut Vec<Divergence>, field: Field, expected: String, actual: String) {
    divergences.push(Divergence {
        field,
        class: field.class(),
        expected,
        actual,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::operation::{Errno, FsPath};

    fn attributes() -> Attributes {
        Attributes {
            kind: FileKind::RegularFile,
            mode: 0o644,
            size: 10,
            nlink: 1,
            uid: 0,
            gid: 0,
            atime: Timestamp::new(100, 0),
            mtime: Timestamp::new(100, 0),
            ctime: Timestamp::new(100, 0),
            ino: 5,
            blocks: 8,
        }
    }

    fn stat() -> Operation {
        Operation::Stat {
            path: FsPath::new("f"),
        }
    }

    #[test]
    fn non_comparable_fields_are_ignored_and_times_are_loose() {
        let expected = attributes();
        let mut actual = attributes();
        actual.ino = 99;
        actual.blocks = 0;
        actual.mtime = Timestamp::new(101, 999_999_999);
        let options = ComparisonOptions::default();
        let result = compare(
            &stat(),
            &Ok(Reply::Attributes(expected.clone())),
            &Ok(Reply::Attributes(actual.clone())),
            &options,
        );
        assert!(result.is_empty(), "{result:?}");
        actual.mtime = Timestamp::new(102, 1);
        actual.nlink = 2;
        let result = compare(
            &stat(),
            &Ok(Reply::Attributes(expected)),
            &Ok(Reply::Attributes(actual)),
            &options,
        );
        let fields: Vec<(Field, FieldClass)> = result
            .iter()
            .map(|divergence| (divergence.field, divergence.class))
            .collect();
        assert_eq!(
            fields,
            vec![
                (Field::LinkCount, FieldClass::Bitwise),
                (Field::ModificationTime, FieldClass::Loose)
            ]
        );
    }

    #[test]
    fn directory_sizes_and_order_are_not_compared() {
        let mut expected = attributes();
        expected.kind = FileKind::Directory;
        let mut actual = expected.clone();
        actual.size = 4096;
        assert!(compare(
            &stat(),
            &Ok(Reply::Attributes(expected)),
            &Ok(Reply::Attributes(actual)),
            &ComparisonOptions::default()
        )
        .is_empty());
        let entry = |name: &str, kind| DirectoryEntry {
            name: name.as_bytes().to_vec(),
            kind,
        };
        let listing = Operation::ReadDir {
            path: FsPath::root(),
        };
        let expected = Ok(Reply::Entries(vec![
            entry("a", FileKind::RegularFile),
            entry("b", FileKind::Directory),
        ]));
        let reordered = Ok(Reply::Entries(vec![
            entry("b", FileKind::Directory),
            entry("a", FileKind::RegularFile),
        ]));
        let options = ComparisonOptions::default();
        assert!(compare(&listing, &expected, &reordered, &options).is_empty());
        let duplicated = Ok(Reply::Entries(vec![
            entry("a", FileKind::RegularFile),
            entry("a", FileKind::RegularFile),
            entry("b", FileKind::Directory),
        ]));
        assert_eq!(
            compare(&listing, &expected, &duplicated, &options)[0].field,
            Field::EntryNames
        );
        let wrong_kind = Ok(Reply::Entries(vec![
            entry("a", FileKind::Symlink),
            entry("b", FileKind::Directory),
        ]));
        assert_eq!(
            compare(&listing, &expected, &wrong_kind, &options)[0].field,
            Field::EntryKind
        );
    }

    #[test]
    fn errnos_outcomes_and_data_are_bitwise() {
        let read = Operation::Read {
            path: FsPath::new("f"),
            offset: 0,
            length: 10,
        };
        let options = ComparisonOptions::default();
        let divergences = compare(&read, &Err(Errno::ENOENT), &Err(Errno::ENOTDIR), &options);
        assert_eq!(divergences[0].field, Field::Errno);
        assert_eq!(divergences[0].expected, "ENOENT");
        let divergences = compare(
            &read,
            &Ok(Reply::Data(vec![1, 2, 3])),
            &Err(Errno::EIO),
            &options,
        );
        assert_eq!(divergences[0].field, Field::Outcome);
        let divergences = compare(
            &read,
            &Ok(Reply::Data(vec![1, 2, 3])),
            &Ok(Reply::Data(vec![1, 9, 3])),
            &options,
        );
        assert_eq!(divergences[0].field, Field::Data);
        assert!(divergences[0].actual.contains("at offset 1: 0x09"));
        let divergences = compare(&read, &Ok(Reply::Data(vec![])), &Ok(Reply::Done), &options);
        assert_eq!(divergences[0].field, Field::ReplyShape);
    }
}
