//! `cluster.toml` (DESIGN §9) and the key file.
//!
//! Reading files here is command-line glue: the core receives a parsed [`ClusterConfig`] and a
//! [`ClusterKey`], never paths.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::placement::Placement;
use crate::record::ClusterKey;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BankConfig {
    pub servers: Vec<String>,
}

/// The file as written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub key_file: String,
    #[serde(rename = "bank")]
    pub banks: Vec<BankConfig>,
}

/// A loaded, checked cluster description.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub path: PathBuf,
    pub key_file: PathBuf,
    pub placement: Placement,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a valid cluster file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClusterFile {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("cluster files always serialise")
    }
}

fn resolve_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|error| format!("cannot resolve {text:?}: {error} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

impl ClusterConfig {
    /// Load and check `path`; relative paths inside it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            reason: source.to_string(),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: ClusterFile = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.message().to_string(),
        })?;
        let mut banks = Vec::new();
        for (index, bank) in file.banks.iter().enumerate() {
            let mut addresses = Vec::new();
            for server in &bank.servers {
                addresses.push(resolve_address(server).map_err(|message| {
                    ConfigError::Invalid(format!("{}: bank {index}: {message}", path.display()))
                })?);
            }
            banks.push(addresses);
        }
        let placement = Placement::new(banks)
            .map_err(|message| ConfigError::Invalid(format!("{}: {message}", path.display())))?;
        let directory = path.parent().unwrap_or(Path::new("."));
        Ok(Self {
            path: path.to_path_buf(),
            key_file: directory.join(&file.key_file),
            placement,
        })
    }

    pub fn load_key(&self) -> Result<ClusterKey, ConfigError> {
        load_key_file(&self.key_file)
    }
}

/// Read a key file, refusing one that others can read.
pub fn load_key_file(path: &Path) -> Result<ClusterKey, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        reason: source.to_string(),
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "key file {} has mode {mode:o}: it must be readable by its owner only (run: chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        reason: source.to_string(),
    })?;
    ClusterKey::from_hex(&text).map_err(|message| {
        ConfigError::Invalid(format!(
            "key file {} is not a votefs key ({message}); make one with `votefs keygen FILE`",
            path.display()
        ))
    })
}

/// Write `key` to a new file readable by its owner only.
pub fn write_key_file(path: &Path, key: &ClusterKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", key.to_hex())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
key_file = "cluster.key"
[[bank]]
servers = ["127.0.0.1:7000", "127.0.0.1:7001"]
[[bank]]
servers = ["127.0.0.1:8000", "127.0.0.1:8001"]
[[bank]]
servers = ["127.0.0.1:9000", "127.0.0.1:9001"]
"#;

    #[test]
    fn parses_the_design_example() {
        let config = ClusterConfig::parse(Path::new("/etc/votefs/cluster.toml"), GOOD).unwrap();
        assert_eq!(config.placement.bank_count(), 3);
        assert_eq!(config.placement.servers_per_bank(), 2);
        assert_eq!(config.key_file, Path::new("/etc/votefs/cluster.key"));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let path = Path::new("c.toml");
        let error = ClusterConfig::parse(path, "key_file = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("c.toml"), "{error}");
        let uneven = GOOD.replace(", \"127.0.0.1:9001\"", "");
        let error = ClusterConfig::parse(path, &uneven).unwrap_err().to_string();
        assert!(error.contains("same number"), "{error}");
        let bad_address = GOOD.replace("127.0.0.1:7000", "not an address");
        let error = ClusterConfig::parse(path, &bad_address)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an address"), "{error}");
        let unknown = format!("{GOOD}\nbanks = 3\n");
        assert!(ClusterConfig::parse(path, &unknown).is_err());
    }

    #[test]
    fn key_file_round_trip_and_mode_check() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("k");
        let key = ClusterKey::from_bytes([9; 32]);
        write_key_file(&path, &key).unwrap();
        assert_eq!(load_key_file(&path).unwrap(), key);
        assert!(
            write_key_file(&path, &key).is_err(),
            "never overwrite a key"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_key_file(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }
}
