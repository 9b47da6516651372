//! Forward (port forwarding / service DNAT) and redirect rules: parsing,
//! validation, persistence, and the kernel maps of the TC programs.
//!
//! A forward rule sends a client's flows for `SERVICE_IP:PORT/PROTO` to one of
//! its targets (chosen per flow by a hash in the kernel); a redirect rule
//! sends packets for a CIDR straight to an interface. Like the firewall, the
//! controller validates a whole request first, writes SQLite in a
//! transaction and the kernel maps, and undoes the kernel write if the
//! commit fails, so nothing is half-applied. [`Nat::gc`] expires
//! translation state by TCP state and age ([`timeout`]); deleting a forward
//! forgets its flows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sluice_abi::{tc, Counter, CtKey, CtVal, FwdKey, FwdRule, FwdTarget, RedirVal};

use crate::{
    dataplane::{DataplaneError, NatTables},
    rules::{Cidr, LpmKey},
    store::{Store, StoreError, StoreTx},
};

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} already exists (id {id})")]
    Conflict { what: String, id: i64 },
    #[error("no {0}")]
    NotFound(String),
    #[error("all {0} {1} slots are in use")]
    Full(u32, &'static str),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(s: impl Into<String>) -> NatError {
    NatError::Invalid(s.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// Parses `IP:PORT` (IPv6 as `[ADDR]:PORT`), optionally followed by
/// `/tcp` or `/udp` when `proto_ok`.
pub fn parse_endpoint(input: &str, what: &str, proto_ok: bool) -> Result<(SocketAddr, Option<Proto>), NatError> {
    let s = input.trim();
    let (s, proto) = match s.rsplit_once('/') {
        Some((a, p)) => {
            let p = match p.to_ascii_lowercase().as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => {
                    return Err(invalid(format!(
                        "{what} {input:?}: unknown protocol {other:?} (tcp or udp)"
                    )))
                }
            };
            if !proto_ok {
                return Err(invalid(format!(
                    "{what} {input:?}: a target takes no protocol; it is the rule's"
                )));
            }
            (a, Some(p))
        }
        None => (s, None),
    };
    let bad = || invalid(format!("{what} {input:?} is not IP:PORT (write IPv6 as [ADDR]:PORT)"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: IpAddr = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse().map_err(|_| bad())?),
        None if host.contains(':') => return Err(bad()),
        None => IpAddr::V4(host.parse().map_err(|_| bad())?),
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 10 {
        return Err(bad());
    }
    let port: u64 = port.parse().map_err(|_| bad())?;
    if port == 0 || port > 65535 {
        return Err(invalid(format!(
            "{what} {input:?}: port {port} is out of range 1-65535"
        )));
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        return Err(invalid(format!(
            "{what} {input:?}: {ip} cannot be forwarded (unspecified, loopback, multicast or broadcast)"
        )));
    }
    if let IpAddr::V6(v6) = ip {
        if v6.to_ipv4_mapped().is_some() {
            return Err(invalid(format!(
                "{what} {input:?}: write IPv4-mapped addresses as IPv4"
            )));
        }
    }
    Ok((SocketAddr::new(ip, port as u16), proto))
}

fn check_comment(c: &Option<String>) -> Result<(), NatError> {
    match c {
        Some(c) if c.len() > 256 || c.chars().any(char::is_control) => {
            Err(invalid("comment: at most 256 characters, no control characters"))
        }
        _ => Ok(()),
    }
}

/// Body of `POST /v1/forwards`, also what the CLI sends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    /// `IP:PORT`, `IP:PORT/tcp` or `IP:PORT/udp` (default tcp).
    #[serde(rename = "match")]
    pub service: String,
    /// One or more `IP:PORT` targets.
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A validated forward rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub service: SocketAddr,
    pub targets: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl ForwardRequest {
    pub fn validate(&self) -> Result<ForwardSpec, NatError> {
        let (service, proto) = parse_endpoint(&self.service, "match", true)?;
        if self.to.is_empty() {
            return Err(invalid("a forward needs at least one target"));
        }
        if self.to.len() > tc::MAX_FWD_TARGETS {
            return Err(invalid(format!(
                "{} targets; a forward takes at most {}",
                self.to.len(),
                tc::MAX_FWD_TARGETS
            )));
        }
        let mut targets = Vec::new();
        for t in &self.to {
            let (a, _) = parse_endpoint(t, "target", false)?;
            if a.is_ipv4() != service.is_ipv4() {
                return Err(invalid(format!(
                    "target {a} and match {service} are of different address families"
                )));
            }
            if a == service {
                return Err(invalid(format!("forward loop: {service} forwards to itself")));
            }
            if targets.contains(&a) {
                return Err(invalid(format!("target {a} is listed twice")));
            }
            targets.push(a);
        }
        check_comment(&self.comment)?;
        Ok(ForwardSpec {
            proto: proto.unwrap_or(Proto::Tcp),
            service,
            targets,
            comment: self.comment.clone(),
        })
    }
}

impl ForwardSpec {
    fn key(&self) -> FwdKey {
        FwdKey {
            family: if self.service.is_ipv4() { 4 } else { 6 },
            proto: self.proto.number(),
            port: self.service.port().to_be(),
            addr: addr16(self.service.ip()),
        }
    }

    fn rule(&self, slot: u32) -> FwdRule {
        let mut r = FwdRule {
            slot,
            ntargets: self.targets.len() as u32,
            ..Default::default()
        };
        for (i, t) in self.targets.iter().enumerate() {
            r.t[i] = FwdTarget {
                addr: addr16(t.ip()),
                port: t.port().to_be(),
                _pad: 0,
            };
        }
        r
    }

    pub fn describe(&self) -> String {
        let to: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        format!("forward {}/{} -> {}", self.service, self.proto.as_str(), to.join(", "))
    }
}

/// The path by which `spec` would forward back to its own service through
/// `forwards` (of its protocol), if there is one. Linear in the number of
/// targets: a search with parent links, not a copied path per edge.
pub fn loop_path<'a>(forwards: impl Iterator<Item = &'a ForwardSpec>, spec: &ForwardSpec) -> Option<Vec<SocketAddr>> {
    let mut edges: HashMap<SocketAddr, &[SocketAddr]> = HashMap::new();
    let mut incoming = spec.targets.contains(&spec.service);
    for f in forwards.filter(|f| f.proto == spec.proto && f.service != spec.service) {
        incoming |= f.targets.contains(&spec.service);
        edges.insert(f.service, &f.targets);
    }
    if !incoming {
        // Nothing forwards to this service: no way back to it.
        return None;
    }
    edges.insert(spec.service, &spec.targets);
    let start = spec.service;
    let mut parent: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut stack = vec![start];
    while let Some(node) = stack.pop() {
        for &next in edges.get(&node).copied().unwrap_or_default() {
            if next == start {
                // Walk the parent links back: start .. node, then start again.
                let mut path = vec![node];
                let mut at = node;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if next != start && !parent.contains_key(&next) {
                parent.insert(next, node);
                stack.push(next);
            }
        }
    }
    None
}

/// A forwarding loop among `forwards` (services of one protocol forwarding,
/// through each other, back to themselves), if there is one: one
/// depth-first pass over the whole graph, linear in the number of targets.
pub fn find_loop<'a>(forwards: impl Iterator<Item = &'a ForwardSpec>) -> Option<Vec<SocketAddr>> {
    let mut edges: HashMap<(Proto, SocketAddr), &[SocketAddr]> = HashMap::new();
    for f in forwards {
        edges.insert((f.proto, f.service), &f.targets);
    }
    // 1: on the current path; 2: fully explored.
    let mut state: HashMap<(Proto, SocketAddr), u8> = HashMap::new();
    let mut roots: Vec<(Proto, SocketAddr)> = edges.keys().copied().collect();
    roots.sort_by_key(|(p, a)| (p.as_str(), *a));
    for root in roots {
        if state.contains_key(&root) {
            continue;
        }
        // (node, index of the next target to follow)
        let mut stack = vec![(root, 0usize)];
        state.insert(root, 1);
        while let Some((node, i)) = stack.last().copied() {
            let targets = edges.get(&node).copied().unwrap_or_default();
            match targets.get(i) {
                Some(&t) => {
                    stack.last_mut().expect("non-empty").1 += 1;
                    let next = (node.0, t);
                    match state.get(&next) {
                        Some(1) => {
                            let from = stack.iter().position(|(n, _)| *n == next).expect("on the path");
                            let mut path: Vec<SocketAddr> = stack[from..].iter().map(|(n, _)| n.1).collect();
                            path.push(t);
                            return Some(path);
                        }
                        Some(_) => {}
                        None => {
                            state.insert(next, 1);
                            stack.push((next, 0));
                        }
                    }
                }
                None => {
                    state.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

/// The 16-byte kernel form of an address (IPv4 in the first 4 bytes).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

#[derive(Clone, Debug)]
pub struct Forward {
    pub id: i64,
    pub slot: u32,
    pub spec: ForwardSpec,
    pub created: i64,
}

/// Body of `POST /v1/redirects`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRequest {
    pub cidr: String,
    pub iface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectSpec {
    pub cidr: Cidr,
    pub iface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Checks an interface name before it reaches sysfs paths or ioctls.
pub fn check_ifname(name: &str) -> Result<(), NatError> {
    let ok = !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{name:?} is not a valid interface name")))
    }
}

impl RedirectRequest {
    pub fn validate(&self) -> Result<RedirectSpec, NatError> {
        let cidr: Cidr = self
            .cidr
            .parse()
            .map_err(|e: crate::rules::RuleError| invalid(e.to_string()))?;
        check_ifname(&self.iface)?;
        check_comment(&self.comment)?;
        Ok(RedirectSpec {
            cidr,
            iface: self.iface.clone(),
            comment: self.comment.clone(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub id: i64,
    pub slot: u32,
    pub spec: RedirectSpec,
    pub created: i64,
    /// The interface as resolved now (None: it does not exist).
    pub target: Option<IfaceInfo>,
}

/// What the kernel needs to know about a redirect's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A veth whose peer lives in another namespace: bpf_redirect_peer.
    pub peer: bool,
}

fn sysfs(name: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The driver name of an interface (ETHTOOL_GDRVINFO).
fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: 0x3, // ETHTOOL_GDRVINFO
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: zeroed ifreq is valid; the name fits (checked by check_ifname
    // callers, and truncated here regardless); the fd is closed below.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IF_NAMESIZE - 1)) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, 0x8946 /* SIOCETHTOOL */, &mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Resolves an interface of this namespace; None if it does not exist.
pub fn iface_info(name: &str) -> Option<IfaceInfo> {
    check_ifname(name).ok()?;
    let ifindex = crate::dataplane::ifindex(name)?;
    let mut mac = [0u8; 6];
    if let Some(a) = sysfs(name, "address") {
        for (m, part) in mac.iter_mut().zip(a.split(':')) {
            *m = u8::from_str_radix(part, 16).unwrap_or(0);
        }
    }
    // A veth's iflink is its peer's ifindex; if that index names a veth
    // here pointing back at us, the peer is in this namespace.
    let peer = driver(name).as_deref() == Some("veth") && {
        let iflink: u32 = sysfs(name, "iflink").and_then(|s| s.parse().ok()).unwrap_or(0);
        let local_peer = crate::dataplane::ifname(iflink)
            .and_then(|p| sysfs(&p, "iflink"))
            .and_then(|s| s.parse::<u32>().ok())
            == Some(ifindex);
        iflink != ifindex && !local_peer
    };
    Some(IfaceInfo { ifindex, mac, peer })
}

/// How long a flow direction lives after its last packet, by protocol and
/// state: TCP 60 s half-open, 2 h established, 120 s after a FIN, 10 s
/// after a RST; UDP 30 s one-way, 180 s once more packets were seen.
pub fn timeout(proto: u8, state: u8) -> Duration {
    let s = match (proto, state) {
        (6, tc::CT_NEW) => 60,
        (6, tc::CT_EST) => 7200,
        (6, tc::CT_FIN) => 120,
        (6, _) => 10,
        (_, tc::CT_NEW) => 30,
        _ => 180,
    };
    Duration::from_secs(s)
}

fn is_live(v: &CtVal, proto: u8, now_ns: u64) -> bool {
    now_ns.saturating_sub(v.last_ns) <= timeout(proto, v.state).as_nanos() as u64
}

/// What [`Nat::open`] changed in the kernel to match the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NatReconciled {
    pub forwards: usize,
    pub redirects: usize,
    pub inactive_redirects: usize,
    pub removed: usize,
}

pub struct Nat {
    store: Store,
    tables: Option<NatTables>,
    forwards: BTreeMap<i64, Forward>,
    redirects: BTreeMap<i64, Redirect>,
    /// Last slot handed out, per kind: slots are reused round-robin.
    last_fwd_slot: Option<u32>,
    last_redir_slot: Option<u32>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A free slot, searching round-robin from `after + 1`: a slot freed by a
/// delete is reused as late as possible, so state a packet in flight
/// created for the old rule has expired (or been collected) by then.
fn free_slot(
    used: impl Iterator<Item = u32>,
    cap: u32,
    after: Option<u32>,
    what: &'static str,
) -> Result<u32, NatError> {
    let used: HashSet<u32> = used.collect();
    let start = after.map_or(0, |a| (a + 1) % cap);
    (0..cap)
        .map(|i| (start + i) % cap)
        .find(|s| !used.contains(s))
        .ok_or(NatError::Full(cap, what))
}

/// The other direction's key of a translation-state entry.
fn partner(k: &CtKey, v: &CtVal) -> CtKey {
    // DNAT (client -> service, to target): the reply is target -> client.
    // SNAT (target -> client, from service): the request is client -> service.
    CtKey {
        family: k.family,
        proto: k.proto,
        sport: v.port,
        dport: k.sport,
        _pad: 0,
        saddr: v.addr,
        daddr: k.saddr,
    }
}

impl Nat {
    /// Loads the rules and makes the kernel maps equal to them. `tables` is
    /// None when running without a kernel (API tests).
    pub fn open(store: Store, tables: Option<NatTables>) -> Result<(Self, NatReconciled), NatError> {
        let mut nat = Nat {
            forwards: BTreeMap::new(),
            redirects: BTreeMap::new(),
            store,
            tables,
            last_fwd_slot: None,
            last_redir_slot: None,
        };
        for (id, slot, spec, created) in nat.store.json_rows(crate::store::FORWARDS)? {
            let spec: ForwardSpec =
                serde_json::from_str(&spec).map_err(|e| StoreError::BadRow { id, why: e.to_string() })?;
            nat.forwards.insert(
                id,
                Forward {
                    id,
                    slot,
                    spec,
                    created,
                },
            );
        }
        for (id, slot, spec, created) in nat.store.json_rows(crate::store::REDIRECTS)? {
            let spec: RedirectSpec =
                serde_json::from_str(&spec).map_err(|e| StoreError::BadRow { id, why: e.to_string() })?;
            let target = iface_info(&spec.iface);
            nat.redirects.insert(
                id,
                Redirect {
                    id,
                    slot,
                    spec,
                    created,
                    target,
                },
            );
        }
        nat.last_fwd_slot = nat.forwards.values().map(|f| f.slot).max();
        nat.last_redir_slot = nat.redirects.values().map(|r| r.slot).max();
        let rec = nat.reconcile()?;
        Ok((nat, rec))
    }

    fn reconcile(&mut self) -> Result<NatReconciled, NatError> {
        let mut rec = NatReconciled::default();
        let Some(t) = self.tables.as_mut() else {
            return Ok(rec);
        };
        let desired: HashMap<FwdKey, FwdRule> = self
            .forwards
            .values()
            .map(|f| (f.spec.key(), f.spec.rule(f.slot)))
            .collect();
        for (k, v) in t.forwards()? {
            if desired.get(&k) != Some(&v) {
                t.remove_forward(&k)?;
                rec.removed += 1;
            }
        }
        for (k, v) in &desired {
            t.set_forward(*k, *v)?;
            rec.forwards += 1;
        }
        let mut want: HashMap<LpmKey, RedirVal> = HashMap::new();
        for r in self.redirects.values() {
            match r.target {
                Some(i) => {
                    want.insert(LpmKey::from(r.spec.cidr), redir_val(r.slot, i));
                }
                None => rec.inactive_redirects += 1,
            }
        }
        for (k, v) in t.redirects()? {
            if want.get(&k) != Some(&v) {
                t.remove_redirect(k)?;
                rec.removed += 1;
            }
        }
        for (k, v) in &want {
            t.set_redirect(*k, *v)?;
            rec.redirects += 1;
        }
        t.set_config(self.forwards.len() as u32, want.len() as u32)?;
        Ok(rec)
    }

    fn publish_config(&mut self) -> Result<(), NatError> {
        let nr = self.redirects.values().filter(|r| r.target.is_some()).count() as u32;
        let nf = self.forwards.len() as u32;
        if let Some(t) = self.tables.as_mut() {
            t.set_config(nf, nr)?;
        }
        Ok(())
    }

    /// True if adding `spec` would close a cycle of forwards (A -> B -> A).
    fn loop_path(&self, spec: &ForwardSpec) -> Option<Vec<SocketAddr>> {
        loop_path(self.forwards.values().map(|f| &f.spec), spec)
    }

    pub fn add_forward(&mut self, req: &ForwardRequest) -> Result<Forward, NatError> {
        let spec = req.validate()?;
        if let Some(f) = self
            .forwards
            .values()
            .find(|f| f.spec.proto == spec.proto && f.spec.service == spec.service)
        {
            return Err(NatError::Conflict {
                what: format!("a forward for {}/{}", spec.service, spec.proto.as_str()),
                id: f.id,
            });
        }
        if let Some(p) = self.loop_path(&spec) {
            let p: Vec<String> = p.iter().map(|a| a.to_string()).collect();
            return Err(invalid(format!("forward loop: {}", p.join(" -> "))));
        }
        let slot = free_slot(
            self.forwards.values().map(|f| f.slot),
            tc::MAX_FORWARDS,
            self.last_fwd_slot,
            "forward",
        )?;
        let created = now_unix();
        let json = serde_json::to_string(&spec).expect("a forward spec serialises");
        let tx = self.store.begin()?;
        let id = tx.insert_json(crate::store::FORWARDS, slot, &json, created)?;
        let key = spec.key();
        if let Some(t) = self.tables.as_mut() {
            t.reset_forward_counter(slot)?;
            t.set_forward(key, spec.rule(slot))?;
        }
        if let Err(e) = tx.commit() {
            if let Some(t) = self.tables.as_mut() {
                let _ = t.remove_forward(&key);
            }
            return Err(e.into());
        }
        let f = Forward {
            id,
            slot,
            spec,
            created,
        };
        self.last_fwd_slot = Some(slot);
        self.forwards.insert(id, f.clone());
        self.publish_config()?;
        Ok(f)
    }

    pub fn del_forward(&mut self, id: i64) -> Result<Forward, NatError> {
        let f = self
            .forwards
            .get(&id)
            .cloned()
            .ok_or_else(|| NatError::NotFound(format!("forward with id {id}")))?;
        let tx = self.store.begin()?;
        tx.delete_json(crate::store::FORWARDS, id)?;
        if let Some(t) = self.tables.as_mut() {
            t.remove_forward(&f.spec.key())?;
        }
        if let Err(e) = tx.commit() {
            if let Some(t) = self.tables.as_mut() {
                let _ = t.set_forward(f.spec.key(), f.spec.rule(f.slot));
            }
            return Err(e.into());
        }
        self.forwards.remove(&id);
        self.publish_config()?;
        // Its flows go too: their next packet passes untranslated.
        if let Some(t) = self.tables.as_mut() {
            for (k, v) in t.flows() {
                if v.slot == f.slot {
                    t.remove_flow(&k)?;
                }
            }
        }
        Ok(f)
    }

    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.values()
    }

    pub fn redirects(&self) -> impl Iterator<Item = &Redirect> {
        self.redirects.values()
    }

    /// Per-rule packet counter of a forward (both directions).
    pub fn forward_counter(&self, slot: u32) -> Result<Counter, NatError> {
        Ok(match &self.tables {
            Some(t) => t.forward_counter(slot)?,
            None => Counter::default(),
        })
    }

    pub fn redirect_counter(&self, slot: u32) -> Result<Counter, NatError> {
        Ok(match &self.tables {
            Some(t) => t.redirect_counter(slot)?,
            None => Counter::default(),
        })
    }

    /// Live flows per forward slot: client -> service directions that
    /// have not expired and whose reply direction was not reset.
    pub fn flow_counts(&self) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        if let Some(t) = &self.tables {
            let now = crate::limits::monotonic_ns();
            let all: HashMap<CtKey, CtVal> = t.flows().into_iter().collect();
            for (k, v) in &all {
                let reset = all.get(&partner(k, v)).is_some_and(|p| p.state == tc::CT_CLOSE);
                if v.dir == tc::CT_DNAT && v.state != tc::CT_CLOSE && !reset && is_live(v, k.proto, now) {
                    *out.entry(v.slot).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// The TC statistics by name.
    pub fn stats(&self) -> Result<BTreeMap<&'static str, Counter>, NatError> {
        let mut out = BTreeMap::new();
        if let Some(t) = &self.tables {
            for (i, c) in t.stats()?.into_iter().enumerate() {
                out.insert(tc::STAT_NAMES[i], c);
            }
        }
        Ok(out)
    }

    /// Removes expired translation state and state of deleted rules.
    /// Returns how many entries went.
    pub fn gc(&mut self) -> Result<usize, NatError> {
        self.gc_at(crate::limits::monotonic_ns())
    }

    /// [`Nat::gc`] as if the monotonic clock read `now` (ns): tests.
    pub fn gc_at(&mut self, now: u64) -> Result<usize, NatError> {
        let live_slots: HashSet<u32> = self.forwards.values().map(|f| f.slot).collect();
        let Some(t) = self.tables.as_mut() else { return Ok(0) };
        let mut n = 0;
        let all: HashMap<CtKey, CtVal> = t.flows().into_iter().collect();
        let mut gone = HashSet::new();
        for (k, v) in &all {
            if gone.contains(k) {
                continue;
            }
            if !is_live(v, k.proto, now) || !live_slots.contains(&v.slot) {
                t.remove_flow(k)?;
                gone.insert(*k);
                n += 1;
                // A reset direction takes its partner along: the flow is over.
                let p = partner(k, v);
                if v.state == tc::CT_CLOSE && all.contains_key(&p) && gone.insert(p) {
                    t.remove_flow(&p)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    pub fn add_redirect(&mut self, req: &RedirectRequest) -> Result<Redirect, NatError> {
        self.insert_redirect(req, true)
    }

    /// Puts back a redirect that was removed (a policy apply's undo): its
    /// interface may have gone meanwhile, so it may come back inactive, as
    /// on start; housekeeping activates it when the interface returns.
    pub fn restore_redirect(&mut self, req: &RedirectRequest) -> Result<Redirect, NatError> {
        self.insert_redirect(req, false)
    }

    fn insert_redirect(&mut self, req: &RedirectRequest, need_iface: bool) -> Result<Redirect, NatError> {
        let spec = req.validate()?;
        let target = iface_info(&spec.iface);
        if target.is_none() && need_iface {
            return Err(invalid(format!(
                "interface {} does not exist in the daemon's network namespace",
                spec.iface
            )));
        }
        if let Some(r) = self.redirects.values().find(|r| r.spec.cidr == spec.cidr) {
            return Err(NatError::Conflict {
                what: format!("a redirect for {}", spec.cidr),
                id: r.id,
            });
        }
        let slot = free_slot(
            self.redirects.values().map(|r| r.slot),
            tc::MAX_REDIRECTS,
            self.last_redir_slot,
            "redirect",
        )?;
        let created = now_unix();
        let json = serde_json::to_string(&spec).expect("a redirect spec serialises");
        let tx = self.store.begin()?;
        let id = tx.insert_json(crate::store::REDIRECTS, slot, &json, created)?;
        let key = LpmKey::from(spec.cidr);
        if let Some(t) = self.tables.as_mut() {
            t.reset_redirect_counter(slot)?;
            if let Some(target) = target {
                t.set_redirect(key, redir_val(slot, target))?;
            }
        }
        commit_or_undo(tx, || {
            if let Some(t) = self.tables.as_mut() {
                let _ = t.remove_redirect(key);
            }
        })?;
        self.last_redir_slot = Some(slot);
        let r = Redirect {
            id,
            slot,
            spec,
            created,
            target,
        };
        self.redirects.insert(id, r.clone());
        self.publish_config()?;
        Ok(r)
    }

    pub fn del_redirect(&mut self, id: i64) -> Result<Redirect, NatError> {
        let r = self
            .redirects
            .get(&id)
            .cloned()
            .ok_or_else(|| NatError::NotFound(format!("redirect with id {id}")))?;
        let tx = self.store.begin()?;
        tx.delete_json(crate::store::REDIRECTS, id)?;
        let key = LpmKey::from(r.spec.cidr);
        if let Some(t) = self.tables.as_mut() {
            t.remove_redirect(key)?;
        }
        commit_or_undo(tx, || {
            if let (Some(t), Some(i)) = (self.tables.as_mut(), r.target) {
                let _ = t.set_redirect(key, redir_val(r.slot, i));
            }
        })?;
        self.redirects.remove(&id);
        self.publish_config()?;
        Ok(r)
    }

    /// Configures the L7 capture of the TC programs (they share its config
    /// word): bytes per packet (0 = off), detection, and the port map.
    pub fn set_l7(&mut self, cap: u32, detect: bool, ports: &[(u16, u8)]) -> Result<(), NatError> {
        if let Some(t) = self.tables.as_mut() {
            t.set_l7(cap, detect, ports)?;
        }
        Ok(())
    }

    /// Re-resolves every redirect's interface (containers come and go, and
    /// with them ifindexes) and updates the kernel where it changed.
    /// Returns the number of rules whose target changed.
    pub fn refresh_redirects(&mut self) -> Result<usize, NatError> {
        let mut changed = 0;
        for r in self.redirects.values_mut() {
            let now = iface_info(&r.spec.iface);
            if now == r.target {
                continue;
            }
            changed += 1;
            let key = LpmKey::from(r.spec.cidr);
            if let Some(t) = self.tables.as_mut() {
                match now {
                    Some(i) => t.set_redirect(key, redir_val(r.slot, i))?,
                    None => t.remove_redirect(key)?,
                }
            }
            tracing::info!(iface = %r.spec.iface, cidr = %r.spec.cidr, active = now.is_some(), "redirect target changed");
            r.target = now;
        }
        if changed > 0 {
            self.publish_config()?;
        }
        Ok(changed)
    }
}

fn commit_or_undo(tx: StoreTx<'_>, undo: impl FnOnce()) -> Result<(), NatError> {
    tx.commit().map_err(|e| {
        undo();
        NatError::from(e)
    })
}

fn redir_val(slot: u32, i: IfaceInfo) -> RedirVal {
    RedirVal {
        ifindex: i.ifindex,
        flags: if i.peer { tc::REDIR_F_PEER } else { 0 },
        slot,
        smac: i.mac,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &str, to: &[&str]) -> ForwardRequest {
        ForwardRequest {
            service: m.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            comment: None,
        }
    }

    #[test]
    fn endpoints_parse_with_clear_errors() {
        let (a, p) = parse_endpoint("198.18.1.1:8080/udp", "match", true).unwrap();
        assert_eq!(a, "198.18.1.1:8080".parse().unwrap());
        assert_eq!(p, Some(Proto::Udp));
        let (a, p) = parse_endpoint("[2001:2::1]:80", "match", true).unwrap();
        assert_eq!(a, "[2001:2::1]:80".parse().unwrap());
        assert_eq!(p, None);
        for (bad, why) in [
            ("198.18.1.1:0", "out of range"),
            ("198.18.1.1:65536", "out of range"),
            ("198.18.1.1:99999999999", "not IP:PORT"),
            ("198.18.1.1:-1", "not IP:PORT"),
            ("198.18.1.1", "not IP:PORT"),
            ("2001:2::1:80", "not IP:PORT"),
            ("198.18.1.1:80/sctp", "unknown protocol"),
            ("0.0.0.0:80", "cannot be forwarded"),
            ("127.0.0.1:80", "cannot be forwarded"),
            ("224.0.0.1:80", "cannot be forwarded"),
            ("[::ffff:1.2.3.4]:80", "IPv4-mapped"),
        ] {
            let e = parse_endpoint(bad, "match", true).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = parse_endpoint("198.18.1.1:80/tcp", "target", false).unwrap_err();
        assert!(e.to_string().contains("takes no protocol"), "{e}");
    }

    #[test]
    fn requests_validate() {
        let s = req("198.18.1.1:8080", &["198.18.2.2:80", "198.18.2.3:80"])
            .validate()
            .unwrap();
        assert_eq!(s.proto, Proto::Tcp);
        assert_eq!(s.targets.len(), 2);
        for (r, why) in [
            (req("198.18.1.1:80", &[]), "at least one target"),
            (req("198.18.1.1:80", &["[2001:2::1]:80"]), "different address families"),
            (req("198.18.1.1:80", &["198.18.1.1:80"]), "forward loop"),
            (
                req("198.18.1.1:80", &["198.18.2.2:80", "198.18.2.2:80"]),
                "listed twice",
            ),
        ] {
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let many: Vec<String> = (1..=17).map(|i| format!("198.18.2.{i}:80")).collect();
        let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        assert!(req("198.18.1.1:80", &many).validate().is_err());
    }

    #[test]
    fn loops_across_rules_are_refused_and_nothing_changes() {
        let (mut nat, _) = Nat::open(Store::in_memory().unwrap(), None).unwrap();
        nat.add_forward(&req("198.18.1.1:80", &["198.18.2.2:80"])).unwrap();
        nat.add_forward(&req("198.18.2.2:80", &["198.18.3.3:80"])).unwrap();
        let e = nat.add_forward(&req("198.18.3.3:80", &["198.18.1.1:80"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("forward loop: 198.18.3.3:80 -> 198.18.1.1:80 -> 198.18.2.2:80 -> 198.18.3.3:80"),
            "{e}"
        );
        assert_eq!(nat.forwards().count(), 2);
        // UDP is another namespace of services: no loop.
        nat.add_forward(&req("198.18.3.3:80/udp", &["198.18.1.1:80"])).unwrap();
        let e = nat.add_forward(&req("198.18.1.1:80", &["198.18.9.9:80"])).unwrap_err();
        assert!(matches!(e, NatError::Conflict { id: 1, .. }), "{e}");
    }

    #[test]
    fn find_loop_sees_cycles_in_a_whole_set_only_within_a_protocol() {
        let specs: Vec<ForwardSpec> = [
            ("198.18.1.1:80", &["198.18.2.2:80", "198.18.9.9:80"][..]),
            ("198.18.2.2:80", &["198.18.3.3:80"]),
            ("198.18.3.3:80/udp", &["198.18.1.1:80"]),
        ]
        .iter()
        .map(|(m, t)| req(m, t).validate().unwrap())
        .collect();
        assert_eq!(find_loop(specs.iter()), None, "the way back is UDP: another protocol");
        let mut looped = specs.clone();
        looped.push(req("198.18.3.3:80", &["198.18.1.1:80"]).validate().unwrap());
        let p: Vec<String> = find_loop(looped.iter())
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(p.first(), p.last(), "{p:?}");
        assert_eq!(p.len(), 4, "{p:?}");
        // A long chain with many targets is one linear pass.
        let chain: Vec<ForwardSpec> = (0..1024u32)
            .map(|i| {
                let mut to = vec![format!("10.{}.{}.1:80", (i + 1) >> 8, (i + 1) & 255)];
                to.extend((0..15).map(|k| format!("10.200.{}.{}:80", i >> 4, (i & 15) * 16 + k)));
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                req(&format!("10.{}.{}.1:80", i >> 8, i & 255), &to).validate().unwrap()
            })
            .collect();
        assert_eq!(find_loop(chain.iter()), None);
    }

    #[test]
    fn rules_persist_and_slots_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut nat, _) = Nat::open(Store::open(dir.path()).unwrap(), None).unwrap();
            let a = nat.add_forward(&req("198.18.1.1:80", &["198.18.2.2:80"])).unwrap();
            nat.add_forward(&req("198.18.1.1:81", &["198.18.2.2:81"])).unwrap();
            nat.del_forward(a.id).unwrap();
            let c = nat.add_forward(&req("198.18.1.1:82", &["198.18.2.2:82"])).unwrap();
            assert_eq!(c.slot, 2, "a freed slot is reused last, not first");
            // Round robin wraps to the lowest free slot.
            assert_eq!(free_slot([1, 2].into_iter(), 4, Some(3), "x").unwrap(), 0);
            assert!(free_slot(0..4, 4, Some(1), "x").is_err(), "full");
        }
        let (nat, _) = Nat::open(Store::open(dir.path()).unwrap(), None).unwrap();
        let ports: Vec<u16> = nat.forwards().map(|f| f.spec.service.port()).collect();
        assert_eq!(ports, vec![81, 82]);
    }

    #[test]
    fn redirects_need_a_real_interface_and_a_clean_name() {
        let (mut nat, _) = Nat::open(Store::in_memory().unwrap(), None).unwrap();
        for (iface, why) in [
            ("no-such-if0", "does not exist"),
            ("../etc", "not a valid interface name"),
            ("", "not a valid interface name"),
            ("a-very-long-interface-name", "not a valid interface name"),
        ] {
            let r = RedirectRequest {
                cidr: "198.18.9.0/24".into(),
                iface: iface.into(),
                comment: None,
            };
            let e = nat.add_redirect(&r).unwrap_err().to_string();
            assert!(e.contains(why), "{iface}: {e}");
        }
        let r = RedirectRequest {
            cidr: "198.18.9.1/24".into(),
            iface: "lo".into(),
            comment: None,
        };
        assert!(nat.add_redirect(&r).unwrap_err().to_string().contains("host bits"));
        let r = RedirectRequest {
            cidr: "198.18.9.0/24".into(),
            iface: "lo".into(),
            comment: None,
        };
        let got = nat.add_redirect(&r).unwrap();
        assert!(!got.target.unwrap().peer, "lo is no veth");
        assert!(matches!(nat.add_redirect(&r), Err(NatError::Conflict { .. })));
    }

    #[test]
    fn timeouts_follow_tcp_state() {
        assert!(timeout(6, tc::CT_EST) > timeout(6, tc::CT_NEW));
        assert!(timeout(6, tc::CT_CLOSE) < timeout(6, tc::CT_FIN));
        assert!(timeout(17, tc::CT_EST) > timeout(17, tc::CT_NEW));
        let v = CtVal {
            last_ns: 1_000,
            state: tc::CT_CLOSE,
            ..Default::default()
        };
        assert!(is_live(&v, 6, 1_000 + 9_000_000_000));
        assert!(!is_live(&v, 6, 1_000 + 11_000_000_000));
    }
}
