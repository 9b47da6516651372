//! Containers: which ones run on this host, and what each one is in the
//! network. [`Registry`] holds, per container, its id, name, image, labels
//! (Compose project and service included), runtime, cgroup, network
//! namespace, host-side interfaces and addresses. Two sources fill it:
//! [`docker`] (the Engine API: a listing, then its event stream) and
//! [`discover`] (every other runtime, recognised from cgroup paths in
//! /proc). The registry answers the two questions the rest of sluice asks:
//! what a selector (`container:NAME`, `label:KEY=VALUE`) resolves to now
//! ([`Resolve`]), and which container an interface, address or process
//! belongs to ([`Identify`]). Every change bumps a generation that
//! subscribers watch to re-resolve their rules.

pub mod discover;
pub mod docker;
pub mod host;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use host::{Host, NetSide, SysHost};

use crate::model::{canonical, Identify, LookupError, Resolution, Resolve, Selector, Who};

/// One host-side interface leading into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIface {
    pub ifindex: u32,
    pub name: String,
}

/// A Kubernetes pod, as the cgroup path (and the runtime) names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Everything sluice knows about one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's id (64 hex characters for every runtime sluice knows).
    pub id: String,
    pub name: String,
    /// `docker`, `containerd`, `crio`, `podman` or `kubernetes`.
    pub runtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// A process of the container (its first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The network namespace's inode; none for a stopped container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// True if the container shares the host's network namespace: it has
    /// no interface or address of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    pub interfaces: Vec<HostIface>,
    pub addrs: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl Container {
    /// The id as people read it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    pub fn who(&self) -> Who {
        Who {
            name: self.name.clone(),
            id: self.id.clone(),
        }
    }
}

/// Where the registry's containers come from, and how that source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The Docker Engine API.
    Docker,
    /// cgroup paths in /proc (containerd, CRI-O, Podman, Kubernetes).
    Cgroups,
}

/// The state of one source, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// `connected`, `unreachable`, `absent` (no socket) or `off`.
    pub state: String,
    /// What it is connected to, or why not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Default)]
struct Inner {
    /// By id; each container remembers which source reported it.
    containers: BTreeMap<String, (Source, Container)>,
    sources: BTreeMap<Source, SourceState>,
    /// The cgroup source has scanned once.
    scanned: bool,
    // Indexes of running containers, rebuilt on every change.
    by_ifindex: HashMap<u32, String>,
    by_addr: HashMap<IpAddr, String>,
    by_cgroup: HashMap<String, String>,
    by_netns: HashMap<u64, String>,
}

impl Inner {
    fn reindex(&mut self) {
        self.by_ifindex.clear();
        self.by_addr.clear();
        self.by_cgroup.clear();
        self.by_netns.clear();
        for (id, (_, c)) in &self.containers {
            if !c.running {
                continue;
            }
            for i in &c.interfaces {
                self.by_ifindex.insert(i.ifindex, id.clone());
            }
            for a in &c.addrs {
                self.by_addr.insert(*a, id.clone());
            }
            if let Some(cg) = &c.cgroup {
                self.by_cgroup.insert(cg.clone(), id.clone());
            }
            if let Some(ns) = c.netns.filter(|_| !c.host_network) {
                // Containers of one pod share a namespace: the first keeps it
                // (records from a pid are named through its cgroup first).
                self.by_netns.entry(ns).or_insert_with(|| id.clone());
            }
        }
    }
}

/// The containers on this host, kept current by the sources.
pub struct Registry {
    inner: RwLock<Inner>,
    host: Arc<dyn Host>,
    changed: watch::Sender<u64>,
}

impl Registry {
    pub fn new(host: Arc<dyn Host>) -> Arc<Self> {
        Arc::new(Registry {
            inner: RwLock::new(Inner::default()),
            host,
            changed: watch::channel(0).0,
        })
    }

    /// Bumps whenever a container appears, goes, or changes (name,
    /// addresses, interfaces, labels, running state).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    /// Adds or updates one container of `source`.
    pub fn upsert(&self, source: Source, c: Container) {
        let mut g = self.inner.write().unwrap();
        if g.containers.get(&c.id).is_some_and(|(_, old)| *old == c) {
            return;
        }
        g.containers.insert(c.id.clone(), (source, c));
        g.reindex();
        drop(g);
        self.bump();
    }

    /// Forgets a container (destroyed).
    pub fn remove(&self, id: &str) {
        let mut g = self.inner.write().unwrap();
        if g.containers.remove(id).is_none() {
            return;
        }
        g.reindex();
        drop(g);
        self.bump();
    }

    /// Makes `source`'s containers exactly `list` (a full listing).
    pub fn replace(&self, source: Source, list: Vec<Container>) {
        let mut g = self.inner.write().unwrap();
        let mut next: BTreeMap<String, (Source, Container)> = g
            .containers
            .iter()
            .filter(|(_, (s, _))| *s != source)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for c in list {
            // Another source already reports it (Docker wins over cgroups).
            if next.contains_key(&c.id) {
                continue;
            }
            next.insert(c.id.clone(), (source, c));
        }
        if next == g.containers {
            return;
        }
        g.containers = next;
        g.reindex();
        drop(g);
        self.bump();
    }

    pub fn set_source(&self, source: Source, state: &str, detail: impl Into<String>) {
        let st = SourceState {
            state: state.into(),
            detail: detail.into(),
        };
        let mut g = self.inner.write().unwrap();
        let changed_state = g.sources.get(&source).map(|s| s.state.as_str()) != Some(state);
        if g.sources.get(&source) != Some(&st) {
            tracing::info!(source = ?source, state, detail = %st.detail, "container source");
        }
        g.sources.insert(source, st);
        drop(g);
        // Whether selectors can be resolved may have changed.
        if changed_state {
            self.bump();
        }
    }

    pub fn sources(&self) -> BTreeMap<Source, SourceState> {
        self.inner.read().unwrap().sources.clone()
    }

    /// True once every source has answered (Docker connected, or known to
    /// be absent or off; the cgroups scanned once): selectors resolved now
    /// are complete. Until then, rules keep what the kernel holds for them.
    pub fn settled(&self) -> bool {
        let g = self.inner.read().unwrap();
        let docker = g
            .sources
            .get(&Source::Docker)
            .is_some_and(|s| matches!(s.state.as_str(), "connected" | "absent" | "off"));
        docker && g.scanned
    }

    /// The cgroup source finished a scan.
    pub fn mark_scanned(&self) {
        let first = {
            let mut g = self.inner.write().unwrap();
            !std::mem::replace(&mut g.scanned, true)
        };
        if first {
            self.bump();
        }
    }

    /// True while `source` is connected.
    pub fn connected(&self, source: Source) -> bool {
        self.inner
            .read()
            .unwrap()
            .sources
            .get(&source)
            .is_some_and(|s| s.state == "connected")
    }

    /// Every container, by name.
    pub fn list(&self) -> Vec<Container> {
        let g = self.inner.read().unwrap();
        let mut v: Vec<Container> = g.containers.values().map(|(_, c)| c.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// The ids of `source`'s containers.
    pub fn ids(&self, source: Source) -> Vec<String> {
        let g = self.inner.read().unwrap();
        g.containers
            .iter()
            .filter(|(_, (s, _))| *s == source)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The one container `name` names: an exact name, else a unique id
    /// prefix (at least 3 characters).
    pub fn lookup(&self, name: &str) -> Result<Container, LookupError> {
        let g = self.inner.read().unwrap();
        let all: Vec<&Container> = g.containers.values().map(|(_, c)| c).collect();
        lookup_in(&all, name).cloned()
    }

    fn who(&self, id: Option<&String>) -> Option<Who> {
        let g = self.inner.read().unwrap();
        id.and_then(|id| g.containers.get(id)).map(|(_, c)| c.who())
    }
}

/// [`Registry::lookup`] over a list: exact names first, then exact ids,
/// then id prefixes; the closest names when nothing matches.
fn lookup_in<'a>(all: &[&'a Container], name: &str) -> Result<&'a Container, LookupError> {
    if let Some(c) = all.iter().find(|c| c.name == name || c.id == name) {
        return Ok(c);
    }
    let by_prefix: Vec<&&Container> = if name.len() >= 3 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        all.iter().filter(|c| c.id.starts_with(name)).collect()
    } else {
        Vec::new()
    };
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => {
            // Edit distance with transpositions, relative to the length
            // (a typo like wbe for web), or the name holds what was typed.
            let mut near: Vec<(u32, &str)> = all
                .iter()
                .map(|c| {
                    let sim = strsim::normalized_damerau_levenshtein(&c.name, name);
                    let sim = if c.name.contains(name) { sim.max(0.5) } else { sim };
                    (1000 - (sim * 1000.0) as u32, c.name.as_str())
                })
                .filter(|(d, _)| *d <= 500)
                .collect();
            near.sort();
            Err(LookupError::NotFound {
                name: name.into(),
                closest: near.into_iter().take(3).map(|(_, n)| n.to_string()).collect(),
            })
        }
        many => Err(LookupError::Ambiguous {
            name: name.into(),
            candidates: many.iter().map(|c| format!("{} ({})", c.name, c.short_id())).collect(),
        }),
    }
}

impl Resolve for Registry {
    fn resolve(&self, sel: &Selector) -> Resolution {
        let g = self.inner.read().unwrap();
        let matched: Vec<&Container> = match sel {
            Selector::Container(name) => {
                let all: Vec<&Container> = g.containers.values().map(|(_, c)| c).collect();
                lookup_in(&all, name).into_iter().collect()
            }
            Selector::Label { key, value } => g
                .containers
                .values()
                .map(|(_, c)| c)
                .filter(|c| c.labels.get(key) == Some(value))
                .collect(),
        };
        let mut r = Resolution::default();
        for c in matched.into_iter().filter(|c| c.running) {
            r.containers.push(c.name.clone());
            r.addrs.extend(c.addrs.iter().copied());
            r.ifaces.extend(c.interfaces.iter().map(|i| i.ifindex));
        }
        r.containers.sort();
        r.addrs.sort();
        r.addrs.dedup();
        r.ifaces.sort();
        r.ifaces.dedup();
        r
    }

    fn check(&self, sel: &Selector) -> Result<(), LookupError> {
        match sel {
            Selector::Container(name) => self.lookup(name).map(|_| ()),
            Selector::Label { .. } => Ok(()),
        }
    }
}

impl Identify for Registry {
    fn by_ifindex(&self, ifindex: u32) -> Option<Who> {
        let id = self.inner.read().unwrap().by_ifindex.get(&ifindex).cloned();
        self.who(id.as_ref())
    }

    fn by_addr(&self, addr: IpAddr) -> Option<Who> {
        let id = self.inner.read().unwrap().by_addr.get(&canonical(addr)).cloned();
        self.who(id.as_ref())
    }

    fn by_pid(&self, pid: u32) -> Option<Who> {
        if pid == 0 {
            return None;
        }
        if let Some(cg) = self.host.cgroup_of(pid) {
            let id = self.inner.read().unwrap().by_cgroup.get(&cg).cloned();
            if id.is_some() {
                return self.who(id.as_ref());
            }
        }
        let ns = self.host.netns_of(pid)?;
        let id = self.inner.read().unwrap().by_netns.get(&ns).cloned();
        self.who(id.as_ref())
    }

    fn generation(&self) -> u64 {
        *self.changed.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn container(id: &str, name: &str, addr: &str, ifindex: u32) -> Container {
        Container {
            id: format!("{id:0<64}"),
            name: name.into(),
            runtime: "docker".into(),
            image: "local/busybox:1".into(),
            labels: BTreeMap::from([("app".into(), name.into())]),
            running: true,
            pid: Some(100 + ifindex),
            cgroup: Some(format!("/docker/{id:0<64}")),
            cgroup_id: Some(ifindex as u64),
            netns: Some(4026531000 + ifindex as u64),
            host_network: false,
            interfaces: vec![HostIface {
                ifindex,
                name: format!("veth{ifindex}"),
            }],
            addrs: vec![addr.parse().unwrap()],
            pod: None,
        }
    }

    #[test]
    fn selectors_resolve_and_lookups_explain_themselves() {
        let reg = Registry::new(Arc::new(host::NoHost));
        reg.replace(
            Source::Docker,
            vec![
                container("3fa1", "web", "172.17.0.2", 11),
                container("3fb2", "web-2", "172.17.0.3", 12),
                container("9c00", "db", "172.17.0.4", 13),
            ],
        );
        let r = reg.resolve(&"container:web".parse().unwrap());
        assert_eq!(r.containers, ["web"]);
        assert_eq!(r.addrs, ["172.17.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.ifaces, [11]);
        assert_eq!(reg.resolve(&"container:9c0".parse().unwrap()).containers, ["db"]);
        assert!(reg.resolve(&"label:app=nope".parse().unwrap()).is_empty());
        match reg.check(&"container:wbe".parse().unwrap()) {
            Err(LookupError::NotFound { closest, .. }) => {
                assert!(
                    closest.contains(&"web".to_string()) && !closest.contains(&"db".to_string()),
                    "{closest:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        match reg.check(&"container:3f".parse().unwrap()) {
            Err(LookupError::NotFound { .. }) => {}
            other => panic!("2 characters are no prefix: {other:?}"),
        }
        match reg.check(&"container:3fa".parse().unwrap()) {
            Ok(()) => {}
            other => panic!("{other:?}"),
        }
        match reg.lookup("3f") {
            Err(LookupError::NotFound { .. }) => {}
            other => panic!("{other:?}"),
        }
        match lookup_in(&reg.list().iter().collect::<Vec<_>>(), "3fa1000") {
            Ok(c) => assert_eq!(c.name, "web"),
            other => panic!("{other:?}"),
        }
        let mut both = reg.list();
        both[0].id = format!("{:0<64}", "3fb3"); // db now shares web-2's id prefix
        match lookup_in(&both.iter().collect::<Vec<_>>(), "3fb") {
            Err(LookupError::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2),
            other => panic!("{other:?}"),
        }
        // Identity of interfaces and addresses, mapped IPv6 included.
        assert_eq!(reg.by_ifindex(12).unwrap().name, "web-2");
        assert_eq!(reg.by_addr("::ffff:172.17.0.4".parse().unwrap()).unwrap().name, "db");
        assert!(reg.by_addr("172.17.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn changes_bump_the_generation_and_stopped_containers_resolve_to_nothing() {
        let reg = Registry::new(Arc::new(host::NoHost));
        let rx = reg.subscribe();
        reg.upsert(Source::Docker, container("aa", "web", "172.17.0.2", 11));
        assert_eq!(*rx.borrow(), 1);
        reg.upsert(Source::Docker, container("aa", "web", "172.17.0.2", 11));
        assert_eq!(*rx.borrow(), 1, "no change, no bump");
        let mut stopped = container("aa", "web", "172.17.0.2", 11);
        stopped.running = false;
        reg.upsert(Source::Docker, stopped);
        assert_eq!(*rx.borrow(), 2);
        assert!(reg.resolve(&"container:web".parse().unwrap()).is_empty());
        assert!(reg.check(&"container:web".parse().unwrap()).is_ok(), "it exists");
        assert!(reg.by_ifindex(11).is_none(), "a stopped container holds no interface");
        // A cgroup-found container Docker already reports is not doubled.
        reg.replace(Source::Cgroups, vec![container("aa", "aaaaaaaaaaaa", "172.17.0.2", 11)]);
        assert_eq!(reg.list().len(), 1);
        reg.remove(&container("aa", "", "1.1.1.1", 1).id);
        assert!(reg.list().is_empty());
    }
}
