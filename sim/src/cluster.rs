//! A simulated cluster: one madsim node per server (the real `votefs` server inside), each with a
//! [`SimDisk`] that outlives the node, and client nodes for workloads.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};

use votefs::placement::Placement;
use votefs::record::ClusterKey;
use votefs::server::{Server, ServerOptions};

use crate::sim_disk::SimDisk;
use crate::sim_env::SimEnv;

pub const SERVER_PORT: u16 = 7000;

pub struct SimServer {
    pub node: NodeHandle,
    pub disk: SimDisk,
    pub address: SocketAddr,
    pub bank: usize,
    pub down: bool,
    pub paused: bool,
}

pub struct SimCluster {
    pub placement: Placement,
    pub cluster_key: ClusterKey,
    pub env: SimEnv,
    pub servers: Vec<SimServer>,
}

fn server_address(bank: usize, slot: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, bank as u8, slot as u8 + 1)),
        SERVER_PORT,
    )
}

impl SimCluster {
    /// Start `banks × servers_per_bank` servers on blank disks.
    pub fn start(
        env: &SimEnv,
        banks: usize,
        servers_per_bank: usize,
        cluster_key: &ClusterKey,
        options: &ServerOptions,
        disk_seed: u64,
    ) -> Self {
        let handle = Handle::current();
        let mut addresses = Vec::new();
        let mut servers = Vec::new();
        for bank in 0..banks {
            let mut bank_addresses = Vec::new();
            for slot in 0..servers_per_bank {
                let address = server_address(bank, slot);
                bank_addresses.push(address);
                let name = format!("server-{bank}-{slot}");
                let disk = SimDisk::new(
                    &name,
                    disk_seed.wrapping_add((bank * 64 + slot) as u64),
                    env.trace.clone(),
                );
                let node_disk = disk.clone();
                let node_env = env.clone();
                let node_key = cluster_key.clone();
                let node_options = Arc::new(options.clone());
                let node = handle
                    .create_node()
                    .name(name)
                    .ip(address.ip())
                    .init(move || {
                        let disk = node_disk.clone();
                        let env = node_env.clone();
                        let key = node_key.clone();
                        let options = (*node_options).clone();
                        async move { run_server(env, disk, key, options, address).await }
                    })
                    .build();
                servers.push(SimServer {
                    node,
                    disk,
                    address,
                    bank,
                    down: false,
                    paused: false,
                });
            }
            addresses.push(bank_addresses);
        }
        Self {
            placement: Placement::new(addresses).expect("the simulated layout is valid"),
            cluster_key: cluster_key.clone(),
            env: env.clone(),
            servers,
        }
    }

    /// Stop a server's process (its unsynced writes stay in the disk until `crash_disk`).
    pub fn kill(&mut self, server: usize) {
        Handle::current().kill(self.servers[server].node.id());
        self.servers[server].down = true;
        self.servers[server].paused = false;
    }

    pub fn restart(&mut self, server: usize) {
        let handle = Handle::current();
        let id = self.servers[server].node.id();
        // A running node keeps its sockets across restart(): kill first (FIELD-NOTES).
        handle.kill(id);
        handle.restart(id);
        self.servers[server].down = false;
        self.servers[server].paused = false;
    }

    pub fn pause(&mut self, server: usize) {
        Handle::current().pause(self.servers[server].node.id());
        self.servers[server].paused = true;
    }

    pub fn resume(&mut self, server: usize) {
        Handle::current().resume(self.servers[server].node.id());
        self.servers[server].paused = false;
    }

    pub fn net(&self) -> Arc<NetSim> {
        NetSim::current()
    }

    /// Undo every server-side fault: resume, restart what is down, reconnect everything.
    pub fn heal(&mut self) {
        for server in 0..self.servers.len() {
            if self.servers[server].paused {
                self.resume(server);
            }
            if self.servers[server].down {
                self.restart(server);
            }
            self.servers[server].disk.set_plan(Default::default());
            let id = self.servers[server].node.id();
            self.net().unclog_node(id);
        }
    }
}

/// A server process under its supervisor: whenever the server cannot open its store or stops on a
/// fatal error, it is started again after a pause, as `votefs up` restarts a crashed server.
async fn run_server(
    env: SimEnv,
    disk: SimDisk,
    key: ClusterKey,
    options: ServerOptions,
    address: SocketAddr,
) {
    let restart_delay = Duration::from_millis(200);
    // Bounded only by the node's life: a killed node ends this loop.
    loop {
        match Server::open(env.clone(), disk.clone(), key.clone(), options.clone()).await {
            Ok((server, report)) => match votefs::env::Env::bind(&env, address).await {
                Ok(listener) => {
                    disk.note_recovery(&report);
                    if let Err(error) = server.serve(listener, std::future::pending()).await {
                        tracing::error!(%error, "simulated server stopped; restarting it");
                    }
                }
                Err(error) => tracing::error!(%error, "simulated server cannot bind"),
            },
            Err(error) => {
                tracing::error!(%error, "simulated server failed to open its store; restarting it")
            }
        }
        madsim::time::sleep(restart_delay).await;
    }
}
