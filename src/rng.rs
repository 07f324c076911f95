//! A small seeded pseudo-random generator (xoshiro256**), so that everything random in the core is
//! reproducible from one seed. Not for keys: key material comes from the operating system in the
//! command-line tools only.

/// xoshiro256** seeded through splitmix64. Deterministic for a given seed on every platform.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut mixed = *state;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        let mut splitmix_state = seed;
        let state = [
            splitmix64(&mut splitmix_state),
            splitmix64(&mut splitmix_state),
            splitmix64(&mut splitmix_state),
            splitmix64(&mut splitmix_state),
        ];
        Self { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// A value in `0..bound` (bound > 0), without modulo bias worth caring about at 64 bits.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no valid answer");
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// A stable 64-bit hash (FNV-1a with a final avalanche). Placement depends on it, so it must never
/// change between releases: data would move.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut state = fnv1a_extend(FNV_OFFSET_BASIS, parts);
    splitmix64(&mut state)
}

/// The FNV-1a starting state.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// Continue an FNV-1a hash over `parts`, each followed by a separator so that ("ab", "c") and
/// ("a", "bc") differ.
pub fn fnv1a_extend(mut hash: u64, parts: &[&[u8]]) -> u64 {
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
        hash ^= 0xFF;
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut first = SeededRng::new(42);
        let mut second = SeededRng::new(42);
        for _ in 0..100 {
            assert_eq!(first.next_u64(), second.next_u64());
        }
        assert_ne!(SeededRng::new(1).next_u64(), SeededRng::new(2).next_u64());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SeededRng::new(7);
        for bound in [1u64, 2, 3, 10, 1000] {
            for _ in 0..1000 {
                assert!(rng.below(bound) < bound);
            }
        }
    }

    #[test]
    fn stable_hash_is_stable() {
        // Pinned values: if these change, every existing volume's placement changes.
        assert_eq!(stable_hash(&[b"a", b"bc"]), 14_364_735_163_151_853_761);
        assert_eq!(stable_hash(&[b"inode/1"]), 17_703_384_855_800_562_237);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }
}
