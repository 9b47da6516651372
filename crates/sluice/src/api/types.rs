//! Request and response bodies of the REST API. The CLI sends and prints
//! these same types, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::{
    containers::Container,
    control::hooks::{FailedIface as FailedIfaceView, IfaceState as IfaceView, Program as ProgramView},
    control::policy::{Policy, PolicyDiff},
    firewall::RuleRequest,
    forward::{ForwardRequest, RedirectRequest},
    limits::LimitRequest,
};
use crate::{
    containers::{Source, SourceState},
    dataplane::Probe,
    firewall::Rule,
    forward::{Forward, Redirect},
    limits::{Limit, LimitStats},
    model::{json::Obj, Proto},
};

/// A limit rule as listed: match, rate, and counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitView {
    pub id: i64,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub dst_port: Option<u16>,
    pub proto: Option<String>,
    /// pps, bps or conns.
    pub kind: String,
    pub rate: u64,
    pub burst: u64,
    pub per_source: bool,
    pub warmup_ms: u64,
    pub comment: Option<String>,
    pub created: i64,
    #[serde(flatten)]
    pub stats: LimitStats,
}

impl LimitView {
    pub fn new(l: &Limit, stats: LimitStats) -> Self {
        let s = &l.spec;
        LimitView {
            id: l.id,
            src: s.m.src.map(|c| c.to_string()),
            dst: s.m.dst.map(|c| c.to_string()),
            dst_port: s.m.dst_port,
            proto: s.m.proto.map(|p| p.to_string()),
            kind: s.kind.as_str().into(),
            rate: s.rate,
            burst: s.burst,
            per_source: s.per_source,
            warmup_ms: s.warmup_ms,
            comment: s.comment.clone(),
            created: l.created,
            stats,
        }
    }
}

/// Limit totals in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitSummary {
    pub rules: usize,
    pub max_rules: u32,
    pub passed: u64,
    pub dropped: u64,
    /// Per-source buckets tracked, over all rules, and the LRU's capacity.
    pub sources: u64,
    pub source_capacity: u32,
    pub evictions: u64,
}

/// One object or an array of them. Dispatches on the JSON shape, so an
/// error names the offending field instead of "no variant matched".
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_path_to_error::deserialize(v)
                        .map(|o: Obj<T>| o.0)
                        .map_err(|e| D::Error::custom(format!("rule {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<T>, _>>()
                .map(OneOrMany::Many),
            v => serde_path_to_error::deserialize(v)
                .map(|o: Obj<T>| OneOrMany::One(o.0))
                .map_err(D::Error::custom),
        }
    }
}

/// Query of `DELETE /v1/deny?cidr=...&dst=...`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    pub cidr: String,
    #[serde(default)]
    pub dst: bool,
}

/// Query of `POST /v1/deny/import` and `POST /v1/allow/import`; the body
/// is text: one CIDR per line, `#` comments.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Match the destination address instead of the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dst: bool,
    /// A comment for every imported rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Answer of an import: every rule is in force, or (an error) none is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImportView {
    pub action: String,
    pub imported: usize,
    /// Ids of the new rules, which are consecutive.
    pub first_id: i64,
    pub last_id: i64,
    /// Time the daemon took, from the whole body received to in force.
    pub duration_ms: f64,
}

/// A rule as listed: identity, match, and hit counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleView {
    pub id: i64,
    pub action: String,
    /// The CIDR, or the selector (`container:NAME`, `label:KEY=VALUE`).
    pub cidr: String,
    pub direction: String,
    pub comment: Option<String>,
    /// Unix seconds.
    pub created: i64,
    pub packets: u64,
    pub bytes: u64,
    /// A selector rule: the containers it matches now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<String>>,
    /// A selector rule: the addresses in force for it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<std::net::IpAddr>>,
    /// A selector rule that matches no running container: nothing in force.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inactive: bool,
}

impl RuleView {
    /// `res`: what a selector rule resolves to now (None for a CIDR rule).
    pub fn new(r: &Rule, packets: u64, bytes: u64, res: Option<&crate::model::Resolution>) -> Self {
        let sel = r.spec.target.is_selector();
        RuleView {
            id: r.id,
            action: r.spec.action.as_str().into(),
            cidr: r.spec.target.to_string(),
            direction: r.spec.dir.as_str().into(),
            comment: r.spec.comment.clone(),
            created: r.created,
            packets,
            bytes,
            containers: sel.then(|| res.map(|x| x.containers.clone()).unwrap_or_default()),
            addrs: sel.then(|| res.map(|x| x.addrs.clone()).unwrap_or_default()),
            inactive: sel && res.is_none_or(|x| x.is_empty()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleCounts {
    pub deny: usize,
    pub allow: usize,
    pub max_rules: u32,
}

/// Body of `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub abi_version: u32,
    pub pid: u32,
    pub uptime_secs: u64,
    pub interface_globs: Vec<String>,
    pub pin_dir: String,
    pub state_dir: String,
    pub interfaces: Vec<IfaceView>,
    /// Matching interfaces sluice could not attach to (e.g. another owner's
    /// XDP program is there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_attached: Vec<FailedIfaceView>,
    /// The container sources and what they found.
    #[serde(default)]
    pub containers: ContainerSummary,
    /// Every probe the operator disabled (`sluice probes disable`).
    #[serde(default)]
    pub disabled_probes: Vec<String>,
    pub programs: Vec<ProgramView>,
    pub rules: RuleCounts,
    pub limits: LimitSummary,
    #[serde(default)]
    pub forwarding: ForwardSummary,
    pub events: EventSummary,
    /// Packets by verdict: pass, allow, deny, limit, unparsed, non_ip,
    /// too_many_tags. Each packet is counted once here.
    pub verdicts: BTreeMap<String, CounterView>,
    /// Extra notes: fragment, l4_unparsed (also counted in a verdict).
    pub notes: BTreeMap<String, CounterView>,
}

/// Body of `GET /v1/containers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainersView {
    pub sources: BTreeMap<Source, SourceState>,
    pub containers: Vec<Container>,
}

/// Containers in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Docker (Engine API) and cgroups (every other runtime): connected,
    /// unreachable, absent or off, and what they are connected to.
    pub sources: BTreeMap<Source, SourceState>,
    pub running: usize,
    pub total: usize,
}

/// Forward and redirect totals in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardSummary {
    pub forwards: usize,
    pub redirects: usize,
    /// Redirects whose interface does not exist right now.
    pub inactive_redirects: usize,
    /// Live flows over all forwards.
    pub flows: u64,
    /// TC program outcomes: dnat, snat, new_flows, redirected, skipped, errors.
    pub tc: BTreeMap<String, CounterView>,
}

/// Event pipeline counters in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventSummary {
    /// Events read from the kernel, by kind.
    pub received: BTreeMap<String, u64>,
    /// Events the kernel could not deliver: ring full (conn, packet, drop)
    /// or over the drop-event rate (drop_rate_limited), and L7 captures
    /// (l7: ring full).
    pub lost_kernel: BTreeMap<String, u64>,
    /// Events subscribers (SSE clients, the JSONL sink) fell behind on.
    pub lost_subscribers: u64,
    /// Ring records that could not be decoded.
    pub malformed: u64,
    /// TCP connections open now, as the connection table knows them.
    #[serde(default)]
    pub connections_open: usize,
}

/// Every error body: `{"error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A forward rule as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardView {
    pub id: i64,
    pub proto: Proto,
    /// The service, `IP:PORT` (`[IPv6]:PORT`).
    #[serde(rename = "match")]
    pub service: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created: i64,
    /// Packets and bytes translated, both directions.
    pub packets: u64,
    pub bytes: u64,
    /// Live flows (client -> service directions in the translation state).
    pub flows: u64,
}

impl ForwardView {
    pub fn new(f: &Forward, c: sluice_abi::Counter, flows: u64) -> Self {
        ForwardView {
            id: f.id,
            proto: f.spec.proto,
            service: f.spec.service.to_string(),
            to: f.spec.targets.iter().map(|t| t.to_string()).collect(),
            comment: f.spec.comment.clone(),
            created: f.created,
            packets: c.packets,
            bytes: c.bytes,
            flows,
        }
    }
}

/// A redirect rule as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedirectView {
    pub id: i64,
    pub cidr: String,
    pub iface: String,
    /// The interface's index now; absent while it does not exist (the rule
    /// is kept and applies again when the interface comes back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// "peer" (bpf_redirect_peer into a veth's namespace), "egress"
    /// (out of the interface) or "inactive".
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created: i64,
    pub packets: u64,
    pub bytes: u64,
}

impl RedirectView {
    pub fn new(r: &Redirect, c: sluice_abi::Counter) -> Self {
        let mode = match r.target {
            Some(t) if t.peer => "peer",
            Some(_) => "egress",
            None => "inactive",
        };
        RedirectView {
            id: r.id,
            cidr: r.spec.cidr.to_string(),
            iface: r.spec.iface.clone(),
            ifindex: r.target.map(|t| t.ifindex),
            mode: mode.into(),
            comment: r.spec.comment.clone(),
            created: r.created,
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Answer of `GET /v1/probes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeList {
    /// True while kernel BPF run statistics are being collected.
    pub stats: bool,
    pub probes: Vec<Probe>,
}

/// Body of `PUT /v1/probes/{kind}/{attach}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStateRequest {
    pub enabled: bool,
}

/// Answer of `PUT /v1/probes/{kind}/{attach}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeStateView {
    pub id: String,
    pub enabled: bool,
    /// False if the state was already so.
    pub changed: bool,
    /// False if the attach point does not exist now: the state applies
    /// when it appears.
    pub present: bool,
}

/// Body and answer of `PUT /v1/probes/stats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsRequest {
    pub enabled: bool,
}
