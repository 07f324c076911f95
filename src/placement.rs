//! Which server of each bank owns a key (DESIGN §1, §7): rendezvous hashing on the key's
//! partition, so that keys sharing a partition (a directory's entries) share an owner and can be
//! listed with one range scan per bank.

use std::net::SocketAddr;

use crate::proto::MemberId;
use crate::record::partition_of;
use crate::rng::stable_hash;

/// The cluster's shape: banks of server addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    banks: Vec<Vec<SocketAddr>>,
}

/// Index of a server in [`Placement::servers`] order (bank-major).
pub type ServerIndex = usize;

impl Placement {
    /// Every bank must have at least one server and all banks the same number of servers.
    pub fn new(banks: Vec<Vec<SocketAddr>>) -> Result<Self, String> {
        if banks.is_empty() {
            return Err("a cluster needs at least one bank".into());
        }
        let servers_per_bank = banks[0].len();
        for (index, bank) in banks.iter().enumerate() {
            if bank.is_empty() {
                return Err(format!("bank {index} has no servers"));
            }
            if bank.len() != servers_per_bank {
                return Err(format!(
                    "bank {index} has {} servers but bank 0 has {servers_per_bank}: every bank needs the same number",
                    bank.len()
                ));
            }
        }
        let mut all: Vec<SocketAddr> = banks.iter().flatten().copied().collect();
        all.sort();
        if let Some(pair) = all.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("server {} appears twice", pair[0]));
        }
        Ok(Self { banks })
    }

    pub fn bank_count(&self) -> usize {
        self.banks.len()
    }

    pub fn servers_per_bank(&self) -> usize {
        self.banks[0].len()
    }

    pub fn server_count(&self) -> usize {
        self.bank_count() * self.servers_per_bank()
    }

    /// Copies needed for a write or a read to count: a majority of banks.
    pub fn quorum(&self) -> usize {
        self.bank_count() / 2 + 1
    }

    pub fn address(&self, server: ServerIndex) -> SocketAddr {
        let member = self.member(server);
        self.banks[member.bank as usize][member.slot as usize]
    }

    pub fn member(&self, server: ServerIndex) -> MemberId {
        MemberId {
            bank: (server / self.servers_per_bank()) as u32,
            slot: (server % self.servers_per_bank()) as u32,
        }
    }

    pub fn index_of(&self, member: MemberId) -> ServerIndex {
        member.bank as usize * self.servers_per_bank() + member.slot as usize
    }

    /// The servers of `bank`.
    pub fn bank_servers(&self, bank: usize) -> impl Iterator<Item = ServerIndex> + '_ {
        let width = self.servers_per_bank();
        (0..width).map(move |slot| bank * width + slot)
    }

    /// The owner of `key` in every bank, bank order.
    pub fn owners(&self, key: &[u8]) -> Vec<ServerIndex> {
        self.partition_owners(partition_of(key))
    }

    /// The owner of a partition in every bank. Rendezvous hashing: the slot with the highest
    /// score wins, so adding a slot to a bank moves only the keys the new slot wins.
    pub fn partition_owners(&self, partition: &[u8]) -> Vec<ServerIndex> {
        (0..self.bank_count())
            .map(|bank| {
                let best_slot = (0..self.servers_per_bank())
                    .max_by_key(|slot| {
                        stable_hash(&[
                            partition,
                            &(bank as u32).to_le_bytes(),
                            &(*slot as u32).to_le_bytes(),
                        ])
                    })
                    .expect("banks are never empty");
                bank * self.servers_per_bank() + best_slot
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(banks: usize, width: usize) -> Placement {
        Placement::new(
            (0..banks)
                .map(|bank| {
                    (0..width)
                        .map(|slot| {
                            SocketAddr::from(([127, 0, 0, 1], (7000 + bank * 1000 + slot) as u16))
                        })
                        .collect()
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn one_owner_per_bank_and_spread() {
        let placement = placement(3, 2);
        assert_eq!(placement.quorum(), 2);
        let mut per_server = vec![0usize; 6];
        for index in 0..3000 {
            let owners = placement.owners(format!("chunk/{index}").as_bytes());
            assert_eq!(owners.len(), 3);
            for (bank, owner) in owners.iter().enumerate() {
                assert_eq!(placement.member(*owner).bank as usize, bank);
                per_server[*owner] += 1;
            }
        }
        for count in per_server {
            assert!((1200..1800).contains(&count), "uneven spread: {count}");
        }
    }

    #[test]
    fn partition_shares_owner() {
        let placement = placement(3, 4);
        let first = placement.owners(b"dirent/9#alpha");
        for name in ["beta", "gamma", "a#b"] {
            assert_eq!(
                placement.owners(format!("dirent/9#{name}").as_bytes()),
                first
            );
        }
        assert_eq!(placement.partition_owners(b"dirent/9"), first);
    }

    #[test]
    fn rejects_bad_shapes() {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let other = SocketAddr::from(([127, 0, 0, 1], 2));
        assert!(Placement::new(vec![]).is_err());
        assert!(Placement::new(vec![vec![]]).is_err());
        assert!(Placement::new(vec![vec![address], vec![address]]).is_err());
        assert!(Placement::new(vec![vec![address], vec![other, address]]).is_err());
    }
}
