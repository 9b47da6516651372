//! The forward and redirect rule model: a forward sends a client's flows
//! for `SERVICE_IP:PORT/PROTO` to one of its targets; a redirect sends
//! packets for a CIDR straight to an interface. Parsing and validation of
//! requests, the kernel form of a rule, and forward-loop detection. Pure
//! code.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use sluice_abi::{tc, FwdKey, FwdRule, FwdTarget};

use crate::{
    model::{normalize_comment, Cidr, CidrError, Proto},
    sys::iface::check_ifname,
};

/// Why a request is not a valid rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn invalid(s: impl Into<String>) -> SpecError {
    SpecError(s.into())
}

fn comment(c: &Option<String>) -> Result<Option<String>, SpecError> {
    normalize_comment(c.clone()).map_err(|e| invalid(e.to_string()))
}

/// Parses `IP:PORT` (IPv6 as `[ADDR]:PORT`), optionally followed by
/// `/tcp` or `/udp` when `proto_ok`.
pub fn parse_endpoint(input: &str, what: &str, proto_ok: bool) -> Result<(SocketAddr, Option<Proto>), SpecError> {
    let s = input.trim();
    let (s, proto) = match s.rsplit_once('/') {
        Some((a, p)) => {
            let p: Proto = p.parse().map_err(|e| invalid(format!("{what} {input:?}: {e}")))?;
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
    pub fn validate(&self) -> Result<ForwardSpec, SpecError> {
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
        Ok(ForwardSpec {
            proto: proto.unwrap_or(Proto::Tcp),
            service,
            targets,
            comment: comment(&self.comment)?,
        })
    }
}

impl ForwardSpec {
    /// The request that validates back to this spec (export).
    pub fn request(&self) -> ForwardRequest {
        ForwardRequest {
            service: format!("{}/{}", self.service, self.proto.as_str()),
            to: self.targets.iter().map(|t| t.to_string()).collect(),
            comment: self.comment.clone(),
        }
    }

    /// Its key in the kernel's forward table.
    pub fn key(&self) -> FwdKey {
        FwdKey {
            family: if self.service.is_ipv4() { 4 } else { 6 },
            proto: self.proto.number(),
            port: self.service.port().to_be(),
            addr: addr16(self.service.ip()),
        }
    }

    /// Its entry in the kernel's forward table, counting in `slot`.
    pub fn rule(&self, slot: u32) -> FwdRule {
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

impl RedirectRequest {
    pub fn validate(&self) -> Result<RedirectSpec, SpecError> {
        let cidr: Cidr = self.cidr.parse().map_err(|e: CidrError| invalid(e.to_string()))?;
        check_ifname(&self.iface).map_err(invalid)?;
        Ok(RedirectSpec {
            cidr,
            iface: self.iface.clone(),
            comment: comment(&self.comment)?,
        })
    }
}

impl RedirectSpec {
    /// The request that validates back to this spec (export).
    pub fn request(&self) -> RedirectRequest {
        RedirectRequest {
            cidr: self.cidr.to_string(),
            iface: self.iface.clone(),
            comment: self.comment.clone(),
        }
    }

    /// One line of a policy diff.
    pub fn describe(&self) -> String {
        format!("redirect {} -> {}", self.cidr, self.iface)
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
    fn forwards_and_redirects_round_trip() {
        for (m, to) in [
            ("198.18.0.1:8080", vec!["198.18.1.2:80"]),
            ("[2001:2::1]:53/udp", vec!["[2001:2::2]:5353", "[2001:2::3]:53"]),
        ] {
            let req = ForwardRequest {
                service: m.into(),
                to: to.into_iter().map(String::from).collect(),
                comment: None,
            };
            let spec = req.validate().unwrap();
            assert_eq!(spec.request().validate().unwrap(), spec);
        }
        let spec = RedirectRequest {
            cidr: "198.18.9.0/24".into(),
            iface: "veth1".into(),
            comment: Some("c".into()),
        }
        .validate()
        .unwrap();
        assert_eq!(spec.request().validate().unwrap(), spec);
    }
}
