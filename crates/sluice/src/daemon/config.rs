//! Daemon configuration: the built-in defaults, an optional TOML file
//! (`--config FILE`, unknown keys are an error), and command-line overrides,
//! applied in that order. [`Config::validate`] checks everything before the
//! daemon touches the kernel.

use std::path::{Path, PathBuf};

use crate::sys::paths::{check_path, check_pin_dir};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sluice";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("interface glob {glob:?}: {source}")]
    Glob { glob: String, source: globset::Error },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interface name globs to manage. Default: container veths only.
    pub interfaces: Vec<String>,
    /// Unix socket of the API (mode 0600).
    pub socket: PathBuf,
    /// Directory of the rule database.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Capacity of each firewall table and of the rule counter array.
    pub max_rules: u32,
    /// Capacity of the per-source rate-limit bucket LRU (all per-source
    /// rules share it; the least recently seen source is evicted).
    pub limit_sources: u32,
    /// Capacity of the forwarding translation-state LRU: two entries per
    /// forwarded flow (one per direction).
    pub max_flows: u32,
    /// One sampled packet event per this many packets, per CPU (0 = off).
    pub packet_sample_every: u32,
    /// Most drop events per second, per CPU; the rest are counted as lost.
    pub drop_events_per_sec: u32,
    /// Size of the kernel's event ring buffer (a power of 2).
    pub events_ring_bytes: u32,
    /// JSON Lines file every event is appended to (off when unset).
    pub events_jsonl: Option<PathBuf>,
    /// Rotate the JSONL file when it grows past this many bytes.
    pub events_jsonl_max_bytes: u64,
    /// Rotated files kept (file.1 ... file.N).
    pub events_jsonl_keep: u32,
    /// Recent events kept in memory for `sluice conns` / `sluice events`.
    pub event_history: usize,
    /// TCP payload bytes captured per packet for L7 parsing (0 turns L7
    /// capture off; at most 1024).
    pub l7_capture_bytes: u32,
    /// Also recognise HTTP, Redis and MySQL on other ports by their first
    /// bytes.
    pub l7_detect: bool,
    pub l7_http_ports: Vec<u16>,
    pub l7_redis_ports: Vec<u16>,
    pub l7_mysql_ports: Vec<u16>,
    /// Audit records older than this are deleted (e.g. "7d").
    pub l7_retention: String,
    /// At most this many audit records are kept (the oldest go first).
    pub l7_max_records: u64,
    /// Also serve the API on this TCP address (off when unset); needs
    /// `token_file`, loopback included.
    pub listen: Option<String>,
    /// File holding the bearer token the TCP listener requires (mode 0600).
    pub token_file: Option<PathBuf>,
    /// API requests per second over all listeners (excess: 429).
    pub api_rate_per_sec: u32,
    /// Requests allowed in a burst above that rate.
    pub api_burst: u32,
    /// The Docker Engine API socket containers are read from (empty: do
    /// not ask Docker; containers of every runtime are still found from
    /// their cgroups).
    pub docker_socket: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: vec!["veth*".into()],
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            max_rules: sluice_abi::DEFAULT_MAX_RULES,
            limit_sources: sluice_abi::DEFAULT_LIMIT_SOURCES,
            max_flows: sluice_abi::tc::DEFAULT_MAX_FLOWS,
            packet_sample_every: sluice_abi::ev::DEFAULT_SAMPLE_EVERY,
            drop_events_per_sec: sluice_abi::ev::DEFAULT_DROP_EVENTS,
            events_ring_bytes: sluice_abi::ev::DEFAULT_RING_BYTES,
            events_jsonl: None,
            events_jsonl_max_bytes: 64 << 20,
            events_jsonl_keep: 3,
            event_history: 10_000,
            l7_capture_bytes: 1024,
            l7_detect: true,
            l7_http_ports: vec![80, 8080],
            l7_redis_ports: vec![6379],
            l7_mysql_ports: vec![3306],
            l7_retention: "7d".into(),
            l7_max_records: 1_000_000,
            listen: None,
            token_file: None,
            api_rate_per_sec: 500,
            api_burst: 1000,
            docker_socket: DEFAULT_DOCKER_SOCKET.into(),
        }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(ConfigError::Invalid(
                "no interface globs: give at least one (default veth*)".into(),
            ));
        }
        self.matcher()?;
        if !(1..=1 << 24).contains(&self.max_rules) {
            return Err(ConfigError::Invalid(format!(
                "max_rules {} is out of range 1..=16777216",
                self.max_rules
            )));
        }
        if !(16..=1 << 24).contains(&self.limit_sources) {
            return Err(ConfigError::Invalid(format!(
                "limit_sources {} is out of range 16..=16777216",
                self.limit_sources
            )));
        }
        if !(64..=1 << 24).contains(&self.max_flows) {
            return Err(ConfigError::Invalid(format!(
                "max_flows {} is out of range 64..=16777216",
                self.max_flows
            )));
        }
        if !self.events_ring_bytes.is_power_of_two() || !(4096..=1 << 30).contains(&self.events_ring_bytes) {
            return Err(ConfigError::Invalid(format!(
                "events_ring_bytes {} must be a power of two between 4096 and 1073741824",
                self.events_ring_bytes
            )));
        }
        if self.events_jsonl_max_bytes < 4096 || self.event_history > 1_000_000 {
            return Err(ConfigError::Invalid(
                "events_jsonl_max_bytes must be >= 4096 and event_history <= 1000000".into(),
            ));
        }
        if self.l7_capture_bytes > sluice_abi::l7::CAP as u32 {
            return Err(ConfigError::Invalid(format!(
                "l7_capture_bytes {} is above the kernel's cap of {} bytes per packet",
                self.l7_capture_bytes,
                sluice_abi::l7::CAP
            )));
        }
        self.l7_ports()?;
        self.l7_retention()?;
        self.listen_addr()?;
        if self.api_rate_per_sec == 0 || self.api_burst == 0 {
            return Err(ConfigError::Invalid(
                "api_rate_per_sec and api_burst must be positive".into(),
            ));
        }
        if self.l7_max_records < 100 {
            return Err(ConfigError::Invalid("l7_max_records must be at least 100".into()));
        }
        check_pin_dir(&self.pin_dir).map_err(ConfigError::Invalid)?;
        for (what, p) in [("state_dir", &self.state_dir), ("socket", &self.socket)] {
            check_path(what, p).map_err(ConfigError::Invalid)?;
        }
        if let Some(p) = &self.events_jsonl {
            check_path("events_jsonl", p).map_err(ConfigError::Invalid)?;
        }
        if !self.docker_socket.as_os_str().is_empty() {
            check_path("docker_socket", &self.docker_socket).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The L7 ports as (port, protocol number of `sluice_abi::l7`).
    pub fn l7_ports(&self) -> Result<Vec<(u16, u8)>, ConfigError> {
        let mut out: Vec<(u16, u8)> = Vec::new();
        for (ports, proto, name) in [
            (&self.l7_http_ports, sluice_abi::l7::HTTP, "l7_http_ports"),
            (&self.l7_redis_ports, sluice_abi::l7::REDIS, "l7_redis_ports"),
            (&self.l7_mysql_ports, sluice_abi::l7::MYSQL, "l7_mysql_ports"),
        ] {
            for p in ports {
                if *p == 0 {
                    return Err(ConfigError::Invalid(format!("{name}: port 0 is not a port")));
                }
                if out.iter().any(|(q, _)| q == p) {
                    return Err(ConfigError::Invalid(format!("{name}: port {p} is listed twice")));
                }
                out.push((*p, proto));
            }
        }
        if out.len() > sluice_abi::l7::PORTS as usize {
            return Err(ConfigError::Invalid(format!(
                "{} L7 ports; at most {}",
                out.len(),
                sluice_abi::l7::PORTS
            )));
        }
        Ok(out)
    }

    /// The TCP listen address, checked: it needs a token file.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(l) = &self.listen else { return Ok(None) };
        let addr: std::net::SocketAddr = l
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("listen {l:?} is not IP:PORT (IPv6 as [ADDR]:PORT)")))?;
        // Loopback too: any local user could otherwise drive the daemon.
        if self.token_file.is_none() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {addr} without a bearer token: set token_file (--token-file); loopback needs one too"
            )));
        }
        Ok(Some(addr))
    }

    pub fn l7_retention(&self) -> Result<std::time::Duration, ConfigError> {
        let d = humantime::parse_duration(&self.l7_retention)
            .map_err(|e| ConfigError::Invalid(format!("l7_retention {:?}: {e}", self.l7_retention)))?;
        if d < std::time::Duration::from_secs(60) {
            return Err(ConfigError::Invalid("l7_retention must be at least 1m".into()));
        }
        Ok(d)
    }

    pub fn capacity(&self) -> crate::dataplane::Capacity {
        crate::dataplane::Capacity {
            max_rules: self.max_rules,
            limit_sources: self.limit_sources,
            ring_bytes: self.events_ring_bytes,
            max_flows: self.max_flows,
        }
    }

    /// The compiled interface globs.
    pub fn matcher(&self) -> Result<GlobSet, ConfigError> {
        let mut b = GlobSetBuilder::new();
        for g in &self.interfaces {
            if g.is_empty() || g.len() > 64 || g.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "interface glob {g:?} is not a valid interface pattern"
                )));
            }
            b.add(Glob::new(g).map_err(|source| ConfigError::Glob {
                glob: g.clone(),
                source,
            })?);
        }
        b.build().map_err(|source| ConfigError::Glob {
            glob: self.interfaces.join(","),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_manage_only_veths() {
        let c = Config::default();
        c.validate().unwrap();
        let m = c.matcher().unwrap();
        assert!(m.is_match("veth1a2b3c"));
        assert!(!m.is_match("eth0"));
        assert!(!m.is_match("lo"));
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "interfaces = [\"lab-*\"]\nmax_rules = 100\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.interfaces, vec!["lab-*"]);
        assert_eq!(c.max_rules, 100);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        std::fs::write(&p, "interface = [\"x\"]\n").unwrap();
        assert!(matches!(Config::load(Some(&p)), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn validation_errors() {
        let mut c = Config {
            max_rules: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        c.max_rules = 10;
        c.interfaces = vec!["[".into()];
        assert!(c.validate().is_err());
        c.interfaces = vec!["veth*".into()];
        c.pin_dir = "/sys/fs/bpf/a.b".into();
        assert!(c.validate().is_err());
    }
}
