//! Policy as code: the whole rule set (deny, allow, limits, forwards,
//! redirects, disabled probes) as one document. `sluice export` writes it as
//! TOML; `sluice apply -f FILE [--dry-run]` makes the running rule set equal
//! to it. Each section holds exactly the bodies the REST API takes, so a
//! policy file is validated by the same code as a single `POST`.
//!
//! Applying is all or nothing: the whole document is validated and diffed
//! first (nothing is touched if any entry is bad); then, holding every rule
//! controller's lock, the changes run in an order that never loosens the
//! firewall in between (new deny/allow entries are added before stale ones
//! go) and that puts every step that can fail (a full table, a missing
//! interface, a busy hook) before anything is removed; if a step fails, the
//! steps already done are undone in reverse, and the error says nothing was
//! changed. Entries are identified by what they
//! match: a deny/allow rule by (CIDR, direction), whose comment alone can
//! change in place; limits, forwards and redirects by their whole
//! validated spec (a changed one is removed and re-added).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    api::{types::RuleRequest, Ctl},
    firewall::{FwError, Selector},
    limits::{LimitKind, LimitRequest, LimitSpec, LimiterError},
    nat::{ForwardRequest, ForwardSpec, NatError, RedirectRequest, RedirectSpec},
    probes::ProbeId,
    rules::{Action, RuleKey, RuleSpec},
};

/// Version of the policy document format.
pub const POLICY_VERSION: u32 = 1;

/// The whole rule set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version; 1 (the default) is the only one.
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::api::objects"
    )]
    pub deny: Vec<RuleRequest>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::api::objects"
    )]
    pub allow: Vec<RuleRequest>,
    #[serde(
        default,
        rename = "limit",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::api::objects"
    )]
    pub limits: Vec<LimitRequest>,
    #[serde(
        default,
        rename = "forward",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::api::objects"
    )]
    pub forwards: Vec<ForwardRequest>,
    #[serde(
        default,
        rename = "redirect",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::api::objects"
    )]
    pub redirects: Vec<RedirectRequest>,
    #[serde(default, deserialize_with = "probes_section")]
    pub probes: ProbesSection,
}

impl crate::api::Body for Policy {
    const MAX_BODY: usize = crate::api::MAX_POLICY_BODY;
}

fn probes_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ProbesSection, D::Error> {
    Ok(<crate::api::Obj<ProbesSection> as Deserialize>::deserialize(d)?.0)
}

fn default_version() -> u32 {
    POLICY_VERSION
}

/// Probe states: every probe not listed as disabled is enabled.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbesSection {
    #[serde(default)]
    pub disabled: Vec<String>,
}

/// What applying a policy changes (or, with dry run, would change). Each
/// line describes one entry, as the CLI prints it after `+`, `-` or `~`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    /// False for a dry run (or when there was nothing to do).
    pub applied: bool,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Bad input: names the section and entry.
    #[error("{0}")]
    Invalid(String),
    /// A step failed (map full, interface busy, ...); everything done was
    /// undone.
    #[error("{0}; nothing was changed")]
    Failed(String),
    /// A step failed and so did undoing one of the earlier steps.
    #[error("{0}; undoing the partial change also failed ({1}): compare `sluice export` with the file")]
    Partial(String, String),
}

/// A policy validated in full.
struct Validated {
    rules: Vec<RuleSpec>,
    limits: Vec<LimitSpec>,
    forwards: Vec<(ForwardSpec, ForwardRequest)>,
    redirects: Vec<(RedirectSpec, RedirectRequest)>,
    disabled: BTreeSet<ProbeId>,
}

/// Validates every entry, and that the end state fits: `max_rules` deny
/// and allow rules in total, and the fixed limit, forward and redirect
/// tables (so a dry run says so too, and an apply never fails for room).
fn validate(p: &Policy, max_rules: u32) -> Result<Validated, PolicyError> {
    let bad = |what: &str, i: usize, e: &dyn std::fmt::Display| PolicyError::Invalid(format!("{what}[{}]: {e}", i + 1));
    if p.version != POLICY_VERSION {
        return Err(PolicyError::Invalid(format!(
            "policy version {} is not supported (this sluice writes and reads version {POLICY_VERSION})",
            p.version
        )));
    }
    for (what, n, max) in [
        ("limit", p.limits.len(), sluice_abi::MAX_LIMITS),
        ("forward", p.forwards.len(), sluice_abi::tc::MAX_FORWARDS),
        ("redirect", p.redirects.len(), sluice_abi::tc::MAX_REDIRECTS),
    ] {
        if n > max as usize {
            return Err(PolicyError::Invalid(format!(
                "{n} {what} entries; the table holds {max}"
            )));
        }
    }
    let mut rules = Vec::new();
    let mut keys = BTreeSet::new();
    for (what, action, list) in [("deny", Action::Deny, &p.deny), ("allow", Action::Allow, &p.allow)] {
        for (i, r) in list.iter().enumerate() {
            let spec = RuleSpec::new(action, &r.cidr, r.dst, r.comment.clone()).map_err(|e| bad(what, i, &e))?;
            if !keys.insert(spec.key()) {
                return Err(bad(what, i, &format!("{} is listed twice", spec.key().describe())));
            }
            rules.push(spec);
        }
    }
    if rules.len() > max_rules as usize {
        return Err(PolicyError::Invalid(format!(
            "{} deny and allow rules; the firewall holds max_rules = {max_rules} in total",
            rules.len()
        )));
    }
    let mut limits: Vec<LimitSpec> = Vec::new();
    for (i, l) in p.limits.iter().enumerate() {
        let spec = l.validate().map_err(|e| bad("limit", i, &e))?;
        if let Some(j) = limits.iter().position(|o| o.m == spec.m && o.kind == spec.kind) {
            return Err(bad(
                "limit",
                i,
                &format!("conflicts with limit[{}]: same match ({}) and kind", j + 1, spec.m),
            ));
        }
        limits.push(spec);
    }
    let mut forwards: Vec<(ForwardSpec, ForwardRequest)> = Vec::new();
    for (i, f) in p.forwards.iter().enumerate() {
        let spec = f.validate().map_err(|e| bad("forward", i, &e))?;
        if let Some(j) = forwards
            .iter()
            .position(|(o, _)| o.service == spec.service && o.proto == spec.proto)
        {
            return Err(bad(
                "forward",
                i,
                &format!("matches the same service as forward[{}]", j + 1),
            ));
        }
        forwards.push((spec, f.clone()));
    }
    let mut redirects: Vec<(RedirectSpec, RedirectRequest)> = Vec::new();
    for (i, r) in p.redirects.iter().enumerate() {
        let spec = r.validate().map_err(|e| bad("redirect", i, &e))?;
        if let Some(j) = redirects.iter().position(|(o, _)| o.cidr == spec.cidr) {
            return Err(bad(
                "redirect",
                i,
                &format!("redirects the same CIDR as redirect[{}]", j + 1),
            ));
        }
        redirects.push((spec, r.clone()));
    }
    if let Some(p) = crate::nat::find_loop(forwards.iter().map(|(s, _)| s)) {
        let i = forwards.iter().position(|(s, _)| s.service == p[0]).unwrap_or(0);
        let p: Vec<String> = p.iter().map(|a| a.to_string()).collect();
        return Err(bad("forward", i, &format!("forward loop: {}", p.join(" -> "))));
    }
    let mut disabled = BTreeSet::new();
    for (i, id) in p.probes.disabled.iter().enumerate() {
        let id: ProbeId = id.parse().map_err(|e| bad("probes.disabled", i, &e))?;
        if !disabled.insert(id.clone()) {
            return Err(bad("probes.disabled", i, &format!("{id} is listed twice")));
        }
    }
    Ok(Validated {
        rules,
        limits,
        forwards,
        redirects,
        disabled,
    })
}

/// A limit spec as the request that validates back to it.
pub fn limit_request(s: &LimitSpec) -> LimitRequest {
    let rate = Some(s.rate as i64);
    let (mut pps, mut bps, mut conns) = (None, None, None);
    match s.kind {
        LimitKind::Pps => pps = rate,
        LimitKind::Bps => bps = rate,
        LimitKind::Conns => conns = rate,
    }
    let dst_port = match (s.m.dst_port, s.m.proto) {
        // A conns rule's tcp is implied.
        (Some(p), Some(pr)) if s.kind != LimitKind::Conns => Some(format!("{p}/{pr}")),
        (Some(p), _) => Some(p.to_string()),
        (None, _) => None,
    };
    LimitRequest {
        src: s.m.src.map(|c| c.to_string()),
        dst: s.m.dst.map(|c| c.to_string()),
        dst_port,
        pps,
        bps,
        conns,
        burst: Some(s.burst as i64),
        per_source: s.per_source,
        warmup: (s.warmup_ms > 0)
            .then(|| humantime::format_duration(std::time::Duration::from_millis(s.warmup_ms)).to_string()),
        comment: s.comment.clone(),
    }
}

fn forward_request(s: &ForwardSpec) -> ForwardRequest {
    ForwardRequest {
        service: format!("{}/{}", s.service, s.proto.as_str()),
        to: s.targets.iter().map(|t| t.to_string()).collect(),
        comment: s.comment.clone(),
    }
}

fn redirect_request(s: &RedirectSpec) -> RedirectRequest {
    RedirectRequest {
        cidr: s.cidr.to_string(),
        iface: s.iface.clone(),
        comment: s.comment.clone(),
    }
}

fn limit_line(s: &LimitSpec) -> String {
    let mut l = format!("limit {} {} {}/s burst {}", s.m, s.kind.as_str(), s.rate, s.burst);
    if s.per_source {
        l.push_str(" per-source");
    }
    if s.warmup_ms > 0 {
        l.push_str(&format!(" warmup {}ms", s.warmup_ms));
    }
    l
}

fn rule_line(s: &RuleSpec) -> String {
    let mut l = s.key().describe();
    if let Some(c) = &s.comment {
        l.push_str(&format!(" ({c:?})"));
    }
    l
}

fn redirect_line(s: &RedirectSpec) -> String {
    format!("redirect {} -> {}", s.cidr, s.iface)
}

/// The running rule set as a policy (what `sluice export` prints). Entries
/// are sorted by what they match, not by id, so the same rule set always
/// exports to the same text (and a file under version control diffs well).
pub fn export(s: &Ctl) -> Result<Policy, PolicyError> {
    let internal = |e: String| PolicyError::Failed(e);
    // One snapshot: every lock at once, in apply's order, so an apply
    // cannot land between two sections.
    let fw = s.fw.lock().unwrap();
    let lim = s.limits.lock().unwrap();
    let nat = s.nat.lock().unwrap();
    let probes = s.probes.lock().unwrap();
    let mut p = Policy {
        version: POLICY_VERSION,
        ..Default::default()
    };
    for action in [Action::Deny, Action::Allow] {
        let mut rules: Vec<_> = fw.list(action).map_err(|e| internal(e.to_string()))?;
        rules.sort_by_key(|(r, _)| r.spec.key());
        let out = if action == Action::Deny {
            &mut p.deny
        } else {
            &mut p.allow
        };
        for (r, _) in rules {
            out.push(RuleRequest {
                cidr: r.spec.cidr.to_string(),
                dst: r.spec.dir == crate::rules::Direction::Dst,
                comment: r.spec.comment.clone(),
            });
        }
    }
    let mut limits = lim.list().map_err(|e| internal(e.to_string()))?;
    limits.sort_by_cached_key(|(l, _)| limit_line(&l.spec));
    p.limits = limits.iter().map(|(l, _)| limit_request(&l.spec)).collect();
    let mut f: Vec<_> = nat.forwards().collect();
    f.sort_by_key(|f| (f.spec.service, f.spec.proto.as_str()));
    p.forwards = f.iter().map(|f| forward_request(&f.spec)).collect();
    let mut r: Vec<_> = nat.redirects().collect();
    r.sort_by_key(|r| r.spec.cidr);
    p.redirects = r.iter().map(|r| redirect_request(&r.spec)).collect();
    p.probes.disabled = probes.disabled().iter().map(|p| p.to_string()).collect();
    Ok(p)
}

/// One step done, and how to undo it.
enum Undo {
    RuleAdded(Action, RuleKey),
    RuleRemoved(RuleSpec),
    CommentChanged(RuleKey, Option<String>),
    LimitAdded(i64),
    LimitRemoved(LimitSpec),
    ForwardAdded(i64),
    ForwardRemoved(ForwardRequest),
    RedirectAdded(i64),
    RedirectRemoved(RedirectRequest),
    Probe(ProbeId, bool),
}

/// Makes the running rule set equal to `policy` (or, with `dry_run`, only
/// says what that would change).
pub fn apply(s: &Ctl, policy: &Policy, dry_run: bool) -> Result<PolicyDiff, PolicyError> {
    let max_rules = s.fw.lock().unwrap().capacity();
    let want = validate(policy, max_rules)?;
    // Every controller locked, in one order, for the whole apply: no other
    // request can interleave, and the diff cannot go stale.
    let mut fw = s.fw.lock().unwrap();
    let mut lim = s.limits.lock().unwrap();
    let mut nat = s.nat.lock().unwrap();
    let mut probes = s.probes.lock().unwrap();
    let mut diff = PolicyDiff::default();

    // Firewall: by key; a comment alone changes in place.
    let mut have: BTreeMap<RuleKey, RuleSpec> = BTreeMap::new();
    for action in [Action::Deny, Action::Allow] {
        for (r, _) in fw.list(action).map_err(|e| PolicyError::Failed(e.to_string()))? {
            have.insert(r.spec.key(), r.spec);
        }
    }
    let mut rule_adds = Vec::new();
    let mut comment_changes = Vec::new();
    for spec in &want.rules {
        match have.remove(&spec.key()) {
            None => {
                diff.added.push(rule_line(spec));
                rule_adds.push(spec.clone());
            }
            Some(old) if old.comment != spec.comment => {
                diff.changed.push(format!(
                    "{} (comment was {:?})",
                    rule_line(spec),
                    old.comment.clone().unwrap_or_default()
                ));
                comment_changes.push((spec.key(), spec.comment.clone(), old.comment));
            }
            Some(_) => diff.unchanged += 1,
        }
    }
    let rule_removes: Vec<RuleSpec> = have.into_values().collect();
    diff.removed.extend(rule_removes.iter().map(rule_line));

    // Limits, forwards, redirects: by whole spec.
    let cur_limits = lim.list().map_err(|e| PolicyError::Failed(e.to_string()))?;
    let limit_removes: Vec<(i64, LimitSpec)> = cur_limits
        .iter()
        .filter(|(l, _)| !want.limits.contains(&l.spec))
        .map(|(l, _)| (l.id, l.spec.clone()))
        .collect();
    let limit_adds: Vec<&LimitSpec> = want
        .limits
        .iter()
        .filter(|w| !cur_limits.iter().any(|(l, _)| &l.spec == *w))
        .collect();
    diff.unchanged += want.limits.len() - limit_adds.len();
    diff.removed.extend(limit_removes.iter().map(|(_, s)| limit_line(s)));
    diff.added.extend(limit_adds.iter().map(|s| limit_line(s)));

    let forward_removes: Vec<(i64, ForwardSpec)> = nat
        .forwards()
        .filter(|f| !want.forwards.iter().any(|(w, _)| *w == f.spec))
        .map(|f| (f.id, f.spec.clone()))
        .collect();
    let forward_adds: Vec<&(ForwardSpec, ForwardRequest)> = want
        .forwards
        .iter()
        .filter(|(w, _)| !nat.forwards().any(|f| f.spec == *w))
        .collect();
    diff.unchanged += want.forwards.len() - forward_adds.len();
    diff.removed.extend(forward_removes.iter().map(|(_, s)| s.describe()));
    diff.added.extend(forward_adds.iter().map(|(s, _)| s.describe()));

    let redirect_removes: Vec<(i64, RedirectSpec)> = nat
        .redirects()
        .filter(|r| !want.redirects.iter().any(|(w, _)| *w == r.spec))
        .map(|r| (r.id, r.spec.clone()))
        .collect();
    let redirect_adds: Vec<&(RedirectSpec, RedirectRequest)> = want
        .redirects
        .iter()
        .filter(|(w, _)| !nat.redirects().any(|r| r.spec == *w))
        .collect();
    // A new redirect needs its interface now (the API's rule too); found
    // here, before any step runs, and by a dry run as well.
    if let Some((spec, _)) = redirect_adds
        .iter()
        .find(|(spec, _)| crate::dataplane::ifindex(&spec.iface).is_none())
    {
        return Err(PolicyError::Invalid(format!(
            "redirect {}: interface {} does not exist in the daemon's network namespace",
            spec.cidr, spec.iface
        )));
    }
    diff.unchanged += want.redirects.len() - redirect_adds.len();
    diff.removed
        .extend(redirect_removes.iter().map(|(_, s)| redirect_line(s)));
    diff.added.extend(redirect_adds.iter().map(|(s, _)| redirect_line(s)));

    // Probes: the listed ones disabled, every other one enabled.
    // Disables first: disabling an XDP probe can let an interface attach
    // that an enable of its tc probes then finds.
    let mut probe_changes: Vec<(ProbeId, bool)> = Vec::new();
    for id in want.disabled.difference(probes.disabled()) {
        diff.changed.push(format!("probe {id} disabled"));
        probe_changes.push((id.clone(), false));
    }
    for id in probes.disabled().difference(&want.disabled) {
        diff.changed.push(format!("probe {id} enabled"));
        probe_changes.push((id.clone(), true));
    }
    diff.unchanged += want.disabled.intersection(probes.disabled()).count();

    if dry_run || diff.is_empty() {
        return Ok(diff);
    }

    let mut done: Vec<Undo> = Vec::new();
    let fail = |e: String,
                done: &mut Vec<Undo>,
                fw: &mut crate::firewall::Firewall,
                lim: &mut crate::limits::Limiter,
                nat: &mut crate::nat::Nat,
                probes: &mut crate::probes::ProbeStates| {
        match undo(s, done, fw, lim, nat, probes) {
            Ok(()) => PolicyError::Failed(e),
            Err(u) => PolicyError::Partial(e, u),
        }
    };
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    return Err(fail(
                        e.to_string(),
                        &mut done,
                        &mut fw,
                        &mut lim,
                        &mut nat,
                        &mut probes,
                    ))
                }
            }
        };
    }
    // Every step that can fail (a full table, another owner's program on a
    // hook) runs before anything is removed, so an undo usually only
    // deletes what this apply added. Two exceptions, per table: an entry
    // replaced by one with the same match goes just before its successor is
    // added (the two would conflict); and if an add fails while stale
    // entries are still pending (no room yet, or a forward that only loops
    // through one about to go), those go first and the add is tried again.
    // Stale entries put back by an undo get new ids.
    let mut rule_removes = Some(rule_removes);
    macro_rules! remove_rule {
        ($spec:expr) => {{
            let spec: RuleSpec = $spec;
            step!(fw.delete(
                spec.action,
                &Selector::Cidr {
                    cidr: spec.cidr,
                    dir: spec.dir
                }
            ));
            done.push(Undo::RuleRemoved(spec));
        }};
    }
    // Tighten before loosening: new deny/allow entries first.
    if !rule_adds.is_empty() {
        let added = match fw.add(rule_adds.clone()) {
            Ok(a) => a,
            Err(_) if rule_removes.as_ref().is_some_and(|r| !r.is_empty()) => {
                for spec in rule_removes.take().unwrap_or_default() {
                    remove_rule!(spec);
                }
                step!(fw.add(rule_adds))
            }
            Err(e) => step!(Err(e)),
        };
        done.extend(added.iter().map(|r| Undo::RuleAdded(r.spec.action, r.spec.key())));
    }
    for (key, comment, old) in comment_changes {
        step!(fw.set_comment(&key, comment));
        done.push(Undo::CommentChanged(key, old));
    }

    // One table's adds: `$same` says whether an old entry has the new one's
    // match; adds without such an old entry run first.
    macro_rules! table {
        ($pending:ident, $adds:expr, |$o:ident, $n:ident| $same:expr, add $add:expr,
         remove |$id:ident, $old:ident| $remove:block, added |$r:ident| $added:expr) => {{
            let mut adds: Vec<_> = $adds.into_iter().collect();
            adds.sort_by_key(|$n| $pending.iter().any(|(_, $o)| $same));
            for $n in adds {
                if let Some(i) = $pending.iter().position(|(_, $o)| $same) {
                    let ($id, $old) = $pending.remove(i);
                    $remove
                }
                let $r = match $add {
                    Ok(r) => r,
                    Err(_) if !$pending.is_empty() => {
                        for ($id, $old) in std::mem::take(&mut $pending) {
                            $remove
                        }
                        step!($add)
                    }
                    Err(e) => step!(Err(e)),
                };
                done.push($added);
            }
        }};
    }
    let mut limit_removes = limit_removes;
    table!(
        limit_removes, limit_adds, |o, n| o.m == n.m && o.kind == n.kind,
        add lim.add((*n).clone()),
        remove |id, old| {
            step!(lim.delete(id));
            done.push(Undo::LimitRemoved(old));
        },
        added |l| Undo::LimitAdded(l.id)
    );
    let mut forward_removes = forward_removes;
    table!(
        forward_removes, forward_adds, |o, n| o.service == n.0.service && o.proto == n.0.proto,
        add nat.add_forward(&n.1),
        remove |id, old| {
            step!(nat.del_forward(id));
            done.push(Undo::ForwardRemoved(forward_request(&old)));
        },
        added |f| Undo::ForwardAdded(f.id)
    );
    let mut redirect_removes = redirect_removes;
    table!(
        redirect_removes, redirect_adds, |o, n| o.cidr == n.0.cidr,
        add nat.add_redirect(&n.1),
        remove |id, old| {
            step!(nat.del_redirect(id));
            done.push(Undo::RedirectRemoved(redirect_request(&old)));
        },
        added |r| Undo::RedirectAdded(r.id)
    );
    for (id, enabled) in probe_changes {
        match probes.apply(s.dp.as_deref(), &id, enabled) {
            Ok(_) => done.push(Undo::Probe(id, !enabled)),
            Err(crate::probes::SetProbeError::Partial(m)) => {
                let undone = undo(s, &mut done, &mut fw, &mut lim, &mut nat, &mut probes);
                return Err(PolicyError::Partial(
                    m,
                    undone.err().unwrap_or_else(|| "every other step was undone".into()),
                ));
            }
            Err(e) => step!(Err(e)),
        }
    }
    // Stale entries last: removing only fails if the store does.
    for spec in rule_removes.take().unwrap_or_default() {
        remove_rule!(spec);
    }
    for (id, old) in limit_removes {
        step!(lim.delete(id));
        done.push(Undo::LimitRemoved(old));
    }
    for (id, old) in forward_removes {
        step!(nat.del_forward(id));
        done.push(Undo::ForwardRemoved(forward_request(&old)));
    }
    for (id, old) in redirect_removes {
        step!(nat.del_redirect(id));
        done.push(Undo::RedirectRemoved(redirect_request(&old)));
    }
    diff.applied = true;
    Ok(diff)
}

/// Undoes `done` in reverse; the first failure is returned (the rest is
/// still attempted).
fn undo(
    s: &Ctl,
    done: &mut Vec<Undo>,
    fw: &mut crate::firewall::Firewall,
    lim: &mut crate::limits::Limiter,
    nat: &mut crate::nat::Nat,
    probes: &mut crate::probes::ProbeStates,
) -> Result<(), String> {
    let mut first: Option<String> = None;
    while let Some(u) = done.pop() {
        let r: Result<(), String> = match u {
            Undo::RuleAdded(action, key) => fw
                .delete(
                    action,
                    &Selector::Cidr {
                        cidr: key.cidr,
                        dir: key.dir,
                    },
                )
                .map(drop)
                .map_err(|e: FwError| e.to_string()),
            Undo::RuleRemoved(spec) => fw.add(vec![spec]).map(drop).map_err(|e| e.to_string()),
            Undo::CommentChanged(key, old) => fw.set_comment(&key, old).map_err(|e| e.to_string()),
            Undo::LimitAdded(id) => lim.delete(id).map(drop).map_err(|e: LimiterError| e.to_string()),
            Undo::LimitRemoved(spec) => lim.add(spec).map(drop).map_err(|e| e.to_string()),
            Undo::ForwardAdded(id) => nat.del_forward(id).map(drop).map_err(|e: NatError| e.to_string()),
            Undo::ForwardRemoved(req) => nat.add_forward(&req).map(drop).map_err(|e| e.to_string()),
            Undo::RedirectAdded(id) => nat.del_redirect(id).map(drop).map_err(|e| e.to_string()),
            Undo::RedirectRemoved(req) => nat.restore_redirect(&req).map(drop).map_err(|e| e.to_string()),
            Undo::Probe(id, enabled) => probes.restore(s.dp.as_deref(), &id, enabled).map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "undoing a partly applied policy");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Parses a TOML policy file; errors carry the line and column.
pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
    toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))
}

/// Renders a policy as TOML, with a header saying what the file is.
pub fn to_toml(p: &Policy) -> String {
    let body = toml::to_string(p).expect("a policy serialises to TOML");
    format!(
        "# sluice policy: the whole rule set. `sluice apply -f FILE` makes the\n\
         # running rules equal to this file (add --dry-run to only see the diff).\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_exports_to_the_request_that_validates_back_to_it() {
        let reqs = [
            LimitRequest {
                pps: Some(100),
                ..Default::default()
            },
            LimitRequest {
                src: Some("10.0.0.0/8".into()),
                dst_port: Some("53/udp".into()),
                bps: Some(1_000_000),
                burst: Some(3000),
                per_source: true,
                warmup: Some("1m".into()),
                comment: Some("dns".into()),
                ..Default::default()
            },
            LimitRequest {
                dst: Some("2001:db8::/32".into()),
                dst_port: Some("443".into()),
                conns: Some(5),
                ..Default::default()
            },
            LimitRequest {
                conns: Some(7),
                warmup: Some("1500ms".into()),
                ..Default::default()
            },
        ];
        for r in reqs {
            let spec = r.validate().unwrap();
            assert_eq!(limit_request(&spec).validate().unwrap(), spec, "{r:?}");
        }
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
            assert_eq!(forward_request(&spec).validate().unwrap(), spec);
        }
        let spec = RedirectRequest {
            cidr: "198.18.9.0/24".into(),
            iface: "veth1".into(),
            comment: Some("c".into()),
        }
        .validate()
        .unwrap();
        assert_eq!(redirect_request(&spec).validate().unwrap(), spec);
    }

    #[test]
    fn bad_documents_name_the_entry_and_change_nothing() {
        for (toml, why) in [
            ("[[deny]]\ncidr = \"10.0.0.0/33\"\n", "deny[1]"),
            (
                "[[deny]]\ncidr = \"10.0.0.0/8\"\n[[deny]]\ncidr = \"10.0.0.0/8\"\n",
                "listed twice",
            ),
            ("[[limit]]\npps = 0\n", "limit[1]"),
            ("[[limit]]\npps = 5\n[[limit]]\npps = 6\n", "conflicts with limit[1]"),
            ("[[forward]]\nmatch = \"1.2.3.4:80\"\nto = []\n", "forward[1]"),
            ("[[redirect]]\ncidr = \"10.0.0.0/8\"\niface = \"../x\"\n", "redirect[1]"),
            ("[probes]\ndisabled = [\"xdp/a/b\"]\n", "probes.disabled[1]"),
            ("version = 2\n", "version 2 is not supported"),
        ] {
            let p = from_toml(toml).unwrap();
            let e = validate(&p, 1000)
                .err()
                .unwrap_or_else(|| panic!("{toml} validated"))
                .to_string();
            assert!(e.contains(why), "{toml}: {e}");
        }
        for (toml, why) in [
            ("[[deny]]\ncidr = \"10.0.0.0/8\"\nport = 3\n", "unknown field `port`"),
            ("[[bogus]]\n", "unknown field `bogus`"),
        ] {
            let e = from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("line"), "{toml}: {e}");
        }
    }
}
