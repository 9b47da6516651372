//! The events sluice reports: TCP connection changes, sampled and dropped
//! packets, limit drops and L7 records, as the API streams them and the
//! JSONL log writes them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::l7::L7Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Conn,
    Packet,
    Drop,
    Limit,
    L7,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Conn, Kind::Packet, Kind::Drop, Kind::Limit, Kind::L7];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Conn => "conn",
            Kind::Packet => "packet",
            Kind::Drop => "drop",
            Kind::Limit => "limit",
            Kind::L7 => "l7",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}: expected conn, packet, drop, limit or l7"))
    }
}

/// Parses a comma-separated kind list; empty means every kind.
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::parse)
        .collect()
}

/// A TCP connection state change, attributed to its owning process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnEvent {
    pub time: String,
    pub comm: String,
    pub pid: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The new TCP state (ESTABLISHED, CLOSE, ...).
    pub state: String,
    pub old_state: String,
    /// out: a local process connected; in: a local listener accepted.
    pub direction: String,
    pub netns: u32,
    /// On close: time since the first state change seen, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The container of the local process (its cgroup, else its address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container at the other end, when it is one on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_container: Option<String>,
    /// The kernel's socket address, to follow one socket: a kernel
    /// pointer, so never in any output.
    #[serde(skip)]
    pub sock: u64,
    /// Kernel time stamp (CLOCK_MONOTONIC ns); not part of the JSON.
    #[serde(skip)]
    pub ts_ns: u64,
}

/// What a rule did to a packet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleRef {
    /// deny, allow or limit.
    pub kind: String,
    /// Rule id (None if the rule was deleted since).
    pub id: Option<i64>,
    pub what: Option<String>,
}

/// A sampled packet, or a dropped one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PacketEvent {
    pub time: String,
    pub interface: String,
    pub ifindex: u32,
    pub len: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: String,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The container behind the interface (or holding the source address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container holding the destination address, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_container: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    Conn(ConnEvent),
    Packet(PacketEvent),
    Drop(PacketEvent),
    Limit(PacketEvent),
    L7(Box<L7Record>),
}

impl Event {
    /// True if the event names container `name` (at either end).
    pub fn names_container(&self, name: &str) -> bool {
        let is = |c: &Option<String>| c.as_deref() == Some(name);
        match self {
            Event::Conn(c) => is(&c.container) || is(&c.peer_container),
            Event::Packet(p) | Event::Drop(p) | Event::Limit(p) => is(&p.container) || is(&p.peer_container),
            Event::L7(r) => is(&r.client_container) || is(&r.server_container),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Event::Conn(_) => Kind::Conn,
            Event::Packet(_) => Kind::Packet,
            Event::Drop(_) => Kind::Drop,
            Event::Limit(_) => Kind::Limit,
            Event::L7(_) => Kind::L7,
        }
    }
}

/// The kernel's `TCP_CLOSE`: the last state change of a socket.
pub const TCP_CLOSE: u8 = 7;

/// The kernel's TCP state numbers, by name (`include/net/tcp_states.h`).
pub const TCP_STATES: [&str; 13] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(parse_kinds("conn, drop").unwrap(), vec![Kind::Conn, Kind::Drop]);
        assert_eq!(parse_kinds("").unwrap(), vec![]);
        assert!(parse_kinds("conn,bogus").is_err());
    }
}
