//! Port forwarding (service DNAT) and interface redirect at TC: one name,
//! `forward`, across the CLI, the API, this module and the C side
//! (`bpf/include/forward.h`).
//!
//! [`spec`] is the model; [`Forwarder`] keeps the store and the kernel maps
//! equal through the [`tables::ForwardTables`] seam. Like the firewall, it
//! validates a whole request first, writes SQLite in a transaction and the
//! kernel maps, and undoes the kernel write if the commit fails, so nothing
//! is half-applied. [`Forwarder::gc`] expires translation state by TCP state
//! and age ([`timeout`]); deleting a forward forgets its flows.

pub mod policy;
pub mod spec;
pub mod tables;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use sluice_abi::{tc, Counter, CtKey, CtVal, FwdKey, FwdRule, RedirVal};
pub use spec::{find_loop, loop_path, ForwardRequest, ForwardSpec, RedirectRequest, RedirectSpec, SpecError};
use tables::ForwardTables;

use crate::{
    dataplane::{DataplaneError, LpmKey},
    store::{JsonRow, JsonTable, Store, StoreError, StoreTx},
    sys::{
        iface::{iface_info, IfaceInfo},
        time::{monotonic_ns, unix_secs},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
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

fn invalid(s: impl Into<String>) -> ForwardError {
    ForwardError::Invalid(s.into())
}

impl From<SpecError> for ForwardError {
    fn from(e: SpecError) -> Self {
        ForwardError::Invalid(e.0)
    }
}

#[derive(Clone, Debug)]
pub struct Forward {
    pub id: i64,
    pub slot: u32,
    pub spec: ForwardSpec,
    pub created: i64,
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

/// What [`Forwarder::open`] changed in the kernel to match the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub forwards: usize,
    pub redirects: usize,
    pub inactive_redirects: usize,
    pub removed: usize,
}

/// Keeps the forward and redirect rules in the store and the kernel equal.
pub struct Forwarder {
    store: Store,
    tables: Box<dyn ForwardTables>,
    forwards: BTreeMap<i64, Forward>,
    redirects: BTreeMap<i64, Redirect>,
    /// Last slot handed out, per kind: slots are reused round-robin.
    last_fwd_slot: Option<u32>,
    last_redir_slot: Option<u32>,
}

/// A free slot, searching round-robin from `after + 1`: a slot freed by a
/// delete is reused as late as possible, so state a packet in flight
/// created for the old rule has expired (or been collected) by then.
fn free_slot(
    used: impl Iterator<Item = u32>,
    cap: u32,
    after: Option<u32>,
    what: &'static str,
) -> Result<u32, ForwardError> {
    let used: HashSet<u32> = used.collect();
    let start = after.map_or(0, |a| (a + 1) % cap);
    (0..cap)
        .map(|i| (start + i) % cap)
        .find(|s| !used.contains(s))
        .ok_or(ForwardError::Full(cap, what))
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

impl Forwarder {
    /// Loads the rules and makes the kernel maps equal to them.
    pub fn open(store: Store, tables: Box<dyn ForwardTables>) -> Result<(Self, Reconciled), ForwardError> {
        let mut fwd = Forwarder {
            forwards: BTreeMap::new(),
            redirects: BTreeMap::new(),
            store,
            tables,
            last_fwd_slot: None,
            last_redir_slot: None,
        };
        for row in fwd.store.json_rows(JsonTable::Forwards)? {
            let (id, slot, created) = row_ids(&row)?;
            let mut spec: ForwardSpec =
                serde_json::from_str(&row.spec).map_err(|e| StoreError::BadRow { id, why: e.to_string() })?;
            // Older builds stored an empty comment as given.
            spec.comment = spec.comment.filter(|c| !c.is_empty());
            fwd.forwards.insert(
                id,
                Forward {
                    id,
                    slot,
                    spec,
                    created,
                },
            );
        }
        for row in fwd.store.json_rows(JsonTable::Redirects)? {
            let (id, slot, created) = row_ids(&row)?;
            let mut spec: RedirectSpec =
                serde_json::from_str(&row.spec).map_err(|e| StoreError::BadRow { id, why: e.to_string() })?;
            spec.comment = spec.comment.filter(|c| !c.is_empty());
            let target = iface_info(&spec.iface);
            fwd.redirects.insert(
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
        fwd.last_fwd_slot = fwd.forwards.values().map(|f| f.slot).max();
        fwd.last_redir_slot = fwd.redirects.values().map(|r| r.slot).max();
        let rec = fwd.reconcile()?;
        Ok((fwd, rec))
    }

    fn reconcile(&mut self) -> Result<Reconciled, ForwardError> {
        let mut rec = Reconciled::default();
        let t = &mut self.tables;
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
                    want.insert(LpmKey::from(r.spec.cidr.net()), redir_val(r.slot, i));
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
        t.set_counts(self.forwards.len() as u32, want.len() as u32)?;
        Ok(rec)
    }

    fn publish_config(&mut self) -> Result<(), ForwardError> {
        let nr = self.redirects.values().filter(|r| r.target.is_some()).count() as u32;
        let nf = self.forwards.len() as u32;
        Ok(self.tables.set_counts(nf, nr)?)
    }

    /// True if adding `spec` would close a cycle of forwards (A -> B -> A).
    fn loop_path(&self, spec: &ForwardSpec) -> Option<Vec<SocketAddr>> {
        loop_path(self.forwards.values().map(|f| &f.spec), spec)
    }

    pub fn add_forward(&mut self, req: &ForwardRequest) -> Result<Forward, ForwardError> {
        self.insert_forward(req.validate()?)
    }

    /// Adds a validated forward rule.
    pub fn insert_forward(&mut self, spec: ForwardSpec) -> Result<Forward, ForwardError> {
        if let Some(f) = self
            .forwards
            .values()
            .find(|f| f.spec.proto == spec.proto && f.spec.service == spec.service)
        {
            return Err(ForwardError::Conflict {
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
        let created = unix_secs();
        let json = serde_json::to_string(&spec).expect("a forward spec serialises");
        let tx = self.store.begin()?;
        let id = tx.insert_json(JsonTable::Forwards, slot, &json, created)?;
        let key = spec.key();
        self.tables.reset_forward_counter(slot)?;
        self.tables.set_forward(key, spec.rule(slot))?;
        if let Err(e) = tx.commit() {
            let _ = self.tables.remove_forward(&key);
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

    pub fn del_forward(&mut self, id: i64) -> Result<Forward, ForwardError> {
        let f = self
            .forwards
            .get(&id)
            .cloned()
            .ok_or_else(|| ForwardError::NotFound(format!("forward with id {id}")))?;
        let tx = self.store.begin()?;
        tx.delete_json(JsonTable::Forwards, id)?;
        self.tables.remove_forward(&f.spec.key())?;
        if let Err(e) = tx.commit() {
            let _ = self.tables.set_forward(f.spec.key(), f.spec.rule(f.slot));
            return Err(e.into());
        }
        self.forwards.remove(&id);
        self.publish_config()?;
        // Its flows go too: their next packet passes untranslated.
        for (k, v) in self.tables.flows() {
            if v.slot == f.slot {
                self.tables.remove_flow(&k)?;
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
    pub fn forward_counter(&self, slot: u32) -> Result<Counter, ForwardError> {
        Ok(self.tables.forward_counter(slot)?)
    }

    pub fn redirect_counter(&self, slot: u32) -> Result<Counter, ForwardError> {
        Ok(self.tables.redirect_counter(slot)?)
    }

    /// Live flows per forward slot: client -> service directions that
    /// have not expired and whose reply direction was not reset.
    pub fn flow_counts(&self) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        let now = monotonic_ns();
        let all: HashMap<CtKey, CtVal> = self.tables.flows().into_iter().collect();
        for (k, v) in &all {
            let reset = all.get(&partner(k, v)).is_some_and(|p| p.state == tc::CT_CLOSE);
            if v.dir == tc::CT_DNAT && v.state != tc::CT_CLOSE && !reset && is_live(v, k.proto, now) {
                *out.entry(v.slot).or_insert(0) += 1;
            }
        }
        out
    }

    /// The TC statistics by name.
    pub fn stats(&self) -> Result<BTreeMap<&'static str, Counter>, ForwardError> {
        let mut out = BTreeMap::new();
        for (i, c) in self.tables.stats()?.into_iter().enumerate() {
            out.insert(tc::STAT_NAMES[i], c);
        }
        Ok(out)
    }

    /// Removes expired translation state and state of deleted rules.
    /// Returns how many entries went.
    pub fn gc(&mut self) -> Result<usize, ForwardError> {
        self.expire(monotonic_ns())
    }

    /// [`Forwarder::gc`] as if the monotonic clock read `now` (ns).
    #[cfg(any(test, feature = "test-support"))]
    pub fn gc_at(&mut self, now: u64) -> Result<usize, ForwardError> {
        self.expire(now)
    }

    fn expire(&mut self, now: u64) -> Result<usize, ForwardError> {
        let live_slots: HashSet<u32> = self.forwards.values().map(|f| f.slot).collect();
        let t = &mut self.tables;
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

    pub fn add_redirect(&mut self, req: &RedirectRequest) -> Result<Redirect, ForwardError> {
        self.insert_redirect(req.validate()?, true)
    }

    /// Puts back a redirect that was removed (a policy apply's undo): its
    /// interface may have gone meanwhile, so it may come back inactive, as
    /// on start; housekeeping activates it when the interface returns.
    pub fn restore_redirect(&mut self, spec: RedirectSpec) -> Result<Redirect, ForwardError> {
        self.insert_redirect(spec, false)
    }

    /// Adds a validated redirect rule; with `need_iface`, its interface
    /// must exist now.
    pub fn insert_redirect(&mut self, spec: RedirectSpec, need_iface: bool) -> Result<Redirect, ForwardError> {
        let target = iface_info(&spec.iface);
        if target.is_none() && need_iface {
            return Err(invalid(format!(
                "interface {} does not exist in the daemon's network namespace",
                spec.iface
            )));
        }
        if let Some(r) = self.redirects.values().find(|r| r.spec.cidr == spec.cidr) {
            return Err(ForwardError::Conflict {
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
        let created = unix_secs();
        let json = serde_json::to_string(&spec).expect("a redirect spec serialises");
        let tx = self.store.begin()?;
        let id = tx.insert_json(JsonTable::Redirects, slot, &json, created)?;
        let key = LpmKey::from(spec.cidr.net());
        self.tables.reset_redirect_counter(slot)?;
        if let Some(target) = target {
            self.tables.set_redirect(key, redir_val(slot, target))?;
        }
        commit_or_undo(tx, || {
            let _ = self.tables.remove_redirect(key);
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

    pub fn del_redirect(&mut self, id: i64) -> Result<Redirect, ForwardError> {
        let r = self
            .redirects
            .get(&id)
            .cloned()
            .ok_or_else(|| ForwardError::NotFound(format!("redirect with id {id}")))?;
        let tx = self.store.begin()?;
        tx.delete_json(JsonTable::Redirects, id)?;
        let key = LpmKey::from(r.spec.cidr.net());
        self.tables.remove_redirect(key)?;
        commit_or_undo(tx, || {
            if let Some(i) = r.target {
                let _ = self.tables.set_redirect(key, redir_val(r.slot, i));
            }
        })?;
        self.redirects.remove(&id);
        self.publish_config()?;
        Ok(r)
    }

    /// Re-resolves every redirect's interface (containers come and go, and
    /// with them ifindexes) and updates the kernel where it changed.
    /// Returns the number of rules whose target changed.
    pub fn refresh_redirects(&mut self) -> Result<usize, ForwardError> {
        let mut changed = 0;
        for r in self.redirects.values_mut() {
            let now = iface_info(&r.spec.iface);
            if now == r.target {
                continue;
            }
            changed += 1;
            let key = LpmKey::from(r.spec.cidr.net());
            match now {
                Some(i) => self.tables.set_redirect(key, redir_val(r.slot, i))?,
                None => self.tables.remove_redirect(key)?,
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

fn commit_or_undo(tx: StoreTx<'_>, undo: impl FnOnce()) -> Result<(), ForwardError> {
    tx.commit().map_err(|e| {
        undo();
        ForwardError::from(e)
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

/// A stored row's id, slot and creation time.
fn row_ids(row: &JsonRow) -> Result<(i64, u32, i64), StoreError> {
    let slot = u32::try_from(row.slot).map_err(|_| StoreError::BadRow {
        id: row.id,
        why: format!("slot {} out of range", row.slot),
    })?;
    Ok((row.id, slot, row.created))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tables::MemForwardTables;

    fn open(store: Store) -> Forwarder {
        Forwarder::open(store, Box::<MemForwardTables>::default()).unwrap().0
    }

    fn req(m: &str, to: &[&str]) -> ForwardRequest {
        ForwardRequest {
            service: m.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            comment: None,
        }
    }

    #[test]
    fn loops_across_rules_are_refused_and_nothing_changes() {
        let mut fwd = open(Store::in_memory().unwrap());
        fwd.add_forward(&req("198.18.1.1:80", &["198.18.2.2:80"])).unwrap();
        fwd.add_forward(&req("198.18.2.2:80", &["198.18.3.3:80"])).unwrap();
        let e = fwd.add_forward(&req("198.18.3.3:80", &["198.18.1.1:80"])).unwrap_err();
        assert!(
            e.to_string()
                .contains("forward loop: 198.18.3.3:80 -> 198.18.1.1:80 -> 198.18.2.2:80 -> 198.18.3.3:80"),
            "{e}"
        );
        assert_eq!(fwd.forwards().count(), 2);
        // UDP is another namespace of services: no loop.
        fwd.add_forward(&req("198.18.3.3:80/udp", &["198.18.1.1:80"])).unwrap();
        let e = fwd.add_forward(&req("198.18.1.1:80", &["198.18.9.9:80"])).unwrap_err();
        assert!(matches!(e, ForwardError::Conflict { id: 1, .. }), "{e}");
    }

    #[test]
    fn rules_persist_and_slots_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut fwd = open(Store::open(dir.path()).unwrap());
            let a = fwd.add_forward(&req("198.18.1.1:80", &["198.18.2.2:80"])).unwrap();
            fwd.add_forward(&req("198.18.1.1:81", &["198.18.2.2:81"])).unwrap();
            fwd.del_forward(a.id).unwrap();
            let c = fwd.add_forward(&req("198.18.1.1:82", &["198.18.2.2:82"])).unwrap();
            assert_eq!(c.slot, 2, "a freed slot is reused last, not first");
            // Round robin wraps to the lowest free slot.
            assert_eq!(free_slot([1, 2].into_iter(), 4, Some(3), "x").unwrap(), 0);
            assert!(free_slot(0..4, 4, Some(1), "x").is_err(), "full");
        }
        let fwd = open(Store::open(dir.path()).unwrap());
        let ports: Vec<u16> = fwd.forwards().map(|f| f.spec.service.port()).collect();
        assert_eq!(ports, vec![81, 82]);
    }

    #[test]
    fn redirects_need_a_real_interface_and_a_clean_name() {
        let mut fwd = open(Store::in_memory().unwrap());
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
            let e = fwd.add_redirect(&r).unwrap_err().to_string();
            assert!(e.contains(why), "{iface}: {e}");
        }
        let r = RedirectRequest {
            cidr: "198.18.9.1/24".into(),
            iface: "lo".into(),
            comment: None,
        };
        assert!(fwd.add_redirect(&r).unwrap_err().to_string().contains("host bits"));
        let r = RedirectRequest {
            cidr: "198.18.9.0/24".into(),
            iface: "lo".into(),
            comment: None,
        };
        let got = fwd.add_redirect(&r).unwrap();
        assert!(!got.target.unwrap().peer, "lo is no veth");
        assert!(matches!(fwd.add_redirect(&r), Err(ForwardError::Conflict { .. })));
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
