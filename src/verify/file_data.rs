//! The contents of a regular file in the reference model: sparse, so that a write far past the end
//! (a hole) costs memory only for the bytes written, whatever the offset.

use std::collections::BTreeMap;

/// Bytes are kept in chunks of this size; a chunk that was never written is a hole (zeros).
const CHUNK_LENGTH: u64 = 4096;

/// A file's bytes: its size and the chunks that were ever written below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileData {
    size: u64,
    /// Chunk index → chunk; every chunk is `CHUNK_LENGTH` long, bytes at or past `size` are zero.
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl FileData {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// 512-byte blocks the model would have allocated (holes cost nothing), for `st_blocks`.
    pub fn allocated_blocks(&self) -> u64 {
        self.chunks.len() as u64 * (CHUNK_LENGTH / 512)
    }

    /// Up to `length` bytes from `offset`, fewer at the end of the file; holes read as zeros.
    pub fn read(&self, offset: u64, length: u64) -> Vec<u8> {
        if offset >= self.size {
            return Vec::new();
        }
        let end = offset.saturating_add(length).min(self.size);
        // The caller bounds `length` (MAXIMUM_READ_LENGTH), so this fits in memory.
        let mut bytes = vec![0u8; (end - offset) as usize];
        let first_chunk = offset / CHUNK_LENGTH;
        let last_chunk = (end - 1) / CHUNK_LENGTH;
        for (index, chunk) in self.chunks.range(first_chunk..=last_chunk) {
            let chunk_start = index * CHUNK_LENGTH;
            let copy_start = offset.max(chunk_start);
            let copy_end = end.min(chunk_start + CHUNK_LENGTH);
            let destination = (copy_start - offset) as usize..(copy_end - offset) as usize;
            let source = (copy_start - chunk_start) as usize..(copy_end - chunk_start) as usize;
            bytes[destination].copy_from_slice(&chunk[source]);
        }
        bytes
    }

    /// Writes `data` at `offset`, growing the file if it ends past the end. The caller has checked
    /// that `offset + data.len()` fits in an `i64`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let mut position = offset;
        while position < end {
            let index = position / CHUNK_LENGTH;
            let chunk_start = index * CHUNK_LENGTH;
            let copy_end = end.min(chunk_start + CHUNK_LENGTH);
            let chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; CHUNK_LENGTH as usize]);
            let destination = (position - chunk_start) as usize..(copy_end - chunk_start) as usize;
            let source = (position - offset) as usize..(copy_end - offset) as usize;
            chunk[destination].copy_from_slice(&data[source]);
            position = copy_end;
        }
        self.size = self.size.max(end);
    }

    /// Sets the size: shrinking discards the bytes past it (so a later growth reads zeros there),
    /// growing adds a hole.
    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let first_dropped_chunk = size.div_ceil(CHUNK_LENGTH);
            self.chunks.split_off(&first_dropped_chunk);
            if !size.is_multiple_of(CHUNK_LENGTH) {
                let index = size / CHUNK_LENGTH;
                if let Some(chunk) = self.chunks.get_mut(&index) {
                    let keep = (size % CHUNK_LENGTH) as usize;
                    chunk[keep..].fill(0);
                }
            }
        }
        self.size = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Write { offset: u64, data: Vec<u8> },
        Truncate { size: u64 },
        Read { offset: u64, length: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                0u64..20_000,
                proptest::collection::vec(any::<u8>(), 0..9000)
            )
                .prop_map(|(offset, data)| Step::Write { offset, data }),
            (0u64..25_000).prop_map(|size| Step::Truncate { size }),
            (0u64..25_000, 0u64..12_000).prop_map(|(offset, length)| Step::Read { offset, length }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 200,
            // Failures found here are kept beside this file, under src/verify, and rerun first.
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]
        /// The sparse representation reads back exactly what a plain byte vector would.
        #[test]
        fn sparse_data_matches_a_plain_vector(steps in proptest::collection::vec(step(), 1..40)) {
            let mut sparse = FileData::default();
            let mut plain: Vec<u8> = Vec::new();
            for step in steps {
                match step {
                    Step::Write { offset, data } => {
                        sparse.write(offset, &data);
                        if data.is_empty() {
                            continue;
                        }
                        let end = offset as usize + data.len();
                        if plain.len() < end {
                            plain.resize(end, 0);
                        }
                        plain[offset as usize..end].copy_from_slice(&data);
                    }
                    Step::Truncate { size } => {
                        sparse.truncate(size);
                        plain.resize(size as usize, 0);
                    }
                    Step::Read { offset, length } => {
                        let start = (offset as usize).min(plain.len());
                        let end = (offset as usize + length as usize).min(plain.len());
                        prop_assert_eq!(sparse.read(offset, length), plain[start..end.max(start)].to_vec());
                    }
                }
                prop_assert_eq!(sparse.size(), plain.len() as u64);
            }
            prop_assert_eq!(sparse.read(0, u64::MAX), plain);
        }
    }

    #[test]
    fn a_far_hole_costs_no_memory() {
        let mut data = FileData::default();
        data.write(1 << 50, b"end");
        assert_eq!(data.size(), (1 << 50) + 3);
        assert_eq!(data.chunks.len(), 1);
        assert_eq!(data.read(1 << 40, 4), vec![0; 4]);
        assert_eq!(data.read((1 << 50) + 1, 100), b"nd".to_vec());
    }
}
