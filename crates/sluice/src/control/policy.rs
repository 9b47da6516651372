//! Policy as code: the whole rule set (deny, allow, limits, forwards,
//! redirects, disabled probes) as one document. `sluice export` writes it as
//! TOML; `sluice apply -f FILE [--dry-run]` makes the running rule set equal
//! to it. Each section holds exactly the bodies the REST API takes, so a
//! policy file is validated by the same code as a single `POST`.
//!
//! Applying is all or nothing, by composition: every capability plans its
//! own section against its current rules (validating it in full and
//! computing its diff; nothing is touched if any entry is bad), and
//! [`crate::model::plan::run`] runs the parts, holding every controller's
//! lock, in an order that never loosens the firewall in between (new
//! deny/allow entries go in before anything else) and that puts every step
//! that can fail (a full table, a missing interface, a busy hook) before
//! anything is removed. If a step fails, the steps done are undone in
//! reverse and the error says nothing was changed. Adding a capability is
//! one more part in [`apply`]'s list.

use std::{collections::BTreeSet, sync::MutexGuard};

use serde::{Deserialize, Serialize};

use super::{
    hooks::Hooks,
    probes::{self, ProbeCx, ProbeStates},
    Ctl,
};
pub use crate::model::plan::PolicyDiff;
use crate::{
    dataplane::ProbeId,
    firewall::{self, Firewall, RuleRequest},
    forward::{self, ForwardRequest, Forwarder, RedirectRequest},
    limits::{self, LimitRequest, Limiter},
    model::{
        json::{object, objects},
        plan::{self, Part, PlanError},
    },
};

/// Version of the policy document format.
pub const POLICY_VERSION: u32 = 1;

/// The whole rule set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version; 1 is the only one. Required: a document without it
    /// (an empty file, a stray TOML) is refused, not read as "no rules".
    #[serde(default)]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "objects")]
    pub deny: Vec<RuleRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "objects")]
    pub allow: Vec<RuleRequest>,
    #[serde(
        default,
        rename = "limit",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "objects"
    )]
    pub limits: Vec<LimitRequest>,
    #[serde(
        default,
        rename = "forward",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "objects"
    )]
    pub forwards: Vec<ForwardRequest>,
    #[serde(
        default,
        rename = "redirect",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "objects"
    )]
    pub redirects: Vec<RedirectRequest>,
    #[serde(default, deserialize_with = "object")]
    pub probes: ProbesSection,
}

impl Policy {
    /// No deny, allow, limit, forward or redirect entry: applying it would
    /// remove every rule.
    pub fn has_no_rules(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.limits.is_empty()
            && self.forwards.is_empty()
            && self.redirects.is_empty()
    }
}

/// How to apply a policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Only say what would change.
    pub dry_run: bool,
    /// Let a policy with no rules remove every rule in force.
    pub allow_empty: bool,
}

/// Probe states: every probe not listed as disabled is enabled.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbesSection {
    #[serde(default)]
    pub disabled: Vec<String>,
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
    /// A policy with no rules would remove every rule in force, and the
    /// caller did not ask for that.
    #[error("this policy has no rules: applying it would remove all {0} rules in force; nothing was changed (pass --allow-empty, or ?allow_empty=true, if that is what you want)")]
    Empty(usize),
    /// A step failed and the change could not be fully undone.
    #[error("{0}; {1}: compare `sluice export` with the file")]
    Partial(String, String),
}

impl From<PlanError> for PolicyError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Failed(e) => PolicyError::Failed(e),
            PlanError::Partial(e, u) => PolicyError::Partial(e, u),
        }
    }
}

/// Every controller, locked in one order for a whole apply or export: no
/// other request can interleave, and a diff cannot go stale. The hooks are
/// locked only while a probe changes, so interfaces keep attaching.
struct Locked<'a> {
    fw: MutexGuard<'a, Firewall>,
    limits: MutexGuard<'a, Limiter>,
    forward: MutexGuard<'a, Forwarder>,
    probes: MutexGuard<'a, ProbeStates>,
    hooks: &'a std::sync::Mutex<dyn Hooks + 'static>,
}

impl<'a> Locked<'a> {
    fn new(s: &'a Ctl) -> Self {
        Locked {
            fw: s.fw.lock().unwrap(),
            limits: s.limits.lock().unwrap(),
            forward: s.forward.lock().unwrap(),
            probes: s.probes.lock().unwrap(),
            hooks: &s.hooks,
        }
    }
}

impl AsMut<Firewall> for Locked<'_> {
    fn as_mut(&mut self) -> &mut Firewall {
        &mut self.fw
    }
}

impl AsMut<Limiter> for Locked<'_> {
    fn as_mut(&mut self) -> &mut Limiter {
        &mut self.limits
    }
}

impl AsMut<Forwarder> for Locked<'_> {
    fn as_mut(&mut self) -> &mut Forwarder {
        &mut self.forward
    }
}

impl ProbeCx for Locked<'_> {
    fn parts(&mut self) -> (&mut ProbeStates, MutexGuard<'_, dyn Hooks + 'static>) {
        (&mut self.probes, self.hooks.lock().unwrap())
    }
}

/// Every section, validated in full before any lock is taken.
struct Validated {
    rules: Vec<firewall::RuleSpec>,
    limits: Vec<limits::LimitSpec>,
    forwards: Vec<forward::ForwardSpec>,
    redirects: Vec<forward::RedirectSpec>,
    disabled: BTreeSet<ProbeId>,
}

fn validate(p: &Policy, max_rules: u32) -> Result<Validated, PolicyError> {
    let invalid = PolicyError::Invalid;
    if p.version == 0 {
        return Err(invalid(format!(
            "the policy has no `version` (a policy file starts with `version = {POLICY_VERSION}`, as `sluice export` writes it); refusing it"
        )));
    }
    if p.version != POLICY_VERSION {
        return Err(invalid(format!(
            "policy version {} is not supported (this sluice writes and reads version {POLICY_VERSION})",
            p.version
        )));
    }
    Ok(Validated {
        rules: firewall::policy::validate(&p.deny, &p.allow, max_rules).map_err(invalid)?,
        limits: limits::policy::validate(&p.limits).map_err(invalid)?,
        forwards: forward::policy::validate_forwards(&p.forwards).map_err(invalid)?,
        redirects: forward::policy::validate_redirects(&p.redirects).map_err(invalid)?,
        disabled: probes::validate(&p.probes.disabled).map_err(invalid)?,
    })
}

/// Every `container:` selector of the policy names one existing container,
/// unless its entry says `inactive = true` (a typo must not protect
/// nothing).
fn check_containers(s: &Ctl, p: &Policy) -> Result<(), PolicyError> {
    use crate::model::{Resolve, Target};
    for (what, list) in [("deny", &p.deny), ("allow", &p.allow)] {
        for (i, r) in list.iter().enumerate() {
            let Ok(Target::Sel(sel)) = r.cidr.parse::<Target>() else { continue };
            if !r.inactive {
                s.containers
                    .check(&sel)
                    .map_err(|e| PolicyError::Invalid(format!("{what}[{}]: {e}", i + 1)))?;
            }
        }
    }
    Ok(())
}

/// Each capability's part, in the order they run: the firewall first, so
/// new deny/allow rules are in force before anything else changes.
fn parts<'a>(cx: &Locked<'_>, v: Validated) -> Result<Vec<Box<dyn Part<Locked<'a>>>>, PolicyError> {
    Ok(vec![
        Box::new(firewall::policy::plan(&cx.fw, v.rules)),
        Box::new(limits::policy::plan(&cx.limits, v.limits)),
        Box::new(forward::policy::plan_forwards(&cx.forward, v.forwards)),
        Box::new(forward::policy::plan_redirects(&cx.forward, v.redirects).map_err(PolicyError::Invalid)?),
        Box::new(probes::plan(&cx.probes, v.disabled)),
    ])
}

/// Makes the running rule set equal to `policy` (or, with `dry_run`, only
/// says what that would change).
pub fn apply(s: &Ctl, policy: &Policy, opts: ApplyOptions) -> Result<PolicyDiff, PolicyError> {
    let r = apply_locked(s, policy, opts);
    // Synced whatever happened: a failed apply may have toggled the tracer
    // and put it back.
    s.sync_conn_table();
    r
}

fn apply_locked(s: &Ctl, policy: &Policy, opts: ApplyOptions) -> Result<PolicyDiff, PolicyError> {
    // Validation (up to a 32 MiB document) holds no lock: rule changes,
    // status and the ring reader's rule names go on meanwhile.
    let max_rules = s.fw.lock().unwrap().capacity();
    let valid = validate(policy, max_rules)?;
    check_containers(s, policy)?;
    let mut cx = Locked::new(s);
    let mut parts = parts(&cx, valid)?;
    let mut diff = plan::diff(&parts);
    // An empty document is far more often a mistake (a truncated file, the
    // wrong file) than a wish to open everything: it needs saying so. The
    // dry run answers the same, so it predicts the apply.
    if policy.has_no_rules() && !diff.removed.is_empty() && !opts.allow_empty {
        return Err(PolicyError::Empty(diff.removed.len()));
    }
    if opts.dry_run || diff.is_empty() {
        return Ok(diff);
    }
    plan::run(&mut cx, &mut parts)?;
    diff.applied = true;
    Ok(diff)
}

/// The running rule set as a policy (what `sluice export` prints): one
/// snapshot, with entries sorted by what they match, so the same rule set
/// always exports to the same text (and a file under version control
/// diffs well).
pub fn export(s: &Ctl) -> Policy {
    let cx = Locked::new(s);
    let (mut deny, mut allow) = firewall::policy::export(&cx.fw);
    // A container that does not exist now: the file says so, and applies.
    for r in deny.iter_mut().chain(allow.iter_mut()) {
        if let Ok(crate::model::Target::Sel(sel)) = r.cidr.parse::<crate::model::Target>() {
            r.inactive = crate::model::Resolve::check(&*s.containers, &sel).is_err();
        }
    }
    let (forwards, redirects) = forward::policy::export(&cx.forward);
    Policy {
        version: POLICY_VERSION,
        deny,
        allow,
        limits: limits::policy::export(&cx.limits),
        forwards,
        redirects,
        probes: ProbesSection {
            disabled: probes::export(&cx.probes),
        },
    }
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
    use crate::{firewall::tables::MemFirewallTables, limits::tables::MemLimitTables, store::Store, visibility::Hub};

    fn ctl(max_rules: u32) -> Ctl {
        let (fw, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(MemFirewallTables::new(max_rules))).unwrap();
        let limits = Limiter::open(Store::in_memory().unwrap(), Box::<MemLimitTables>::default()).unwrap();
        Ctl::with_doubles(fw, limits, Hub::new(0))
    }

    const DRY: ApplyOptions = ApplyOptions {
        dry_run: true,
        allow_empty: false,
    };
    const APPLY: ApplyOptions = ApplyOptions {
        dry_run: false,
        allow_empty: false,
    };

    fn validate(p: &Policy, max_rules: u32) -> Result<PolicyDiff, PolicyError> {
        apply(&ctl(max_rules), p, DRY)
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
            let toml = if toml.starts_with("version") {
                toml.to_string()
            } else {
                format!("version = 1\n{toml}")
            };
            let p = from_toml(&toml).unwrap();
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

    #[test]
    fn a_policy_must_say_its_version_and_empty_needs_asking() {
        let s = ctl(10);
        let e = apply(&s, &from_toml("").unwrap(), DRY).unwrap_err().to_string();
        assert!(e.contains("no `version`"), "{e}");
        // Nothing in force: an empty policy changes nothing, and is fine.
        let empty = from_toml("version = 1\n").unwrap();
        assert!(apply(&s, &empty, APPLY).unwrap().is_empty());
        let p = from_toml("version = 1\n[[deny]]\ncidr = \"198.18.1.0/24\"\n[[limit]]\npps = 5\n").unwrap();
        assert!(apply(&s, &p, APPLY).unwrap().applied);
        for opts in [DRY, APPLY] {
            let e = apply(&s, &empty, opts).unwrap_err();
            assert!(matches!(e, PolicyError::Empty(2)), "{e}");
        }
        // Probe states alone are no rules either.
        let probes_only = from_toml("version = 1\n[probes]\ndisabled = []\n").unwrap();
        assert!(matches!(apply(&s, &probes_only, APPLY), Err(PolicyError::Empty(2))));
        assert_eq!(export(&s).deny.len(), 1, "nothing was removed");
        let asked = ApplyOptions {
            dry_run: false,
            allow_empty: true,
        };
        let d = apply(&s, &empty, asked).unwrap();
        assert!(d.applied && d.removed.len() == 2, "{d:?}");
        assert!(export(&s).has_no_rules());
    }

    #[test]
    fn apply_is_all_or_nothing_across_capabilities() {
        use std::sync::{Arc, Mutex};

        use crate::control::hooks::{MemHooks, SharedHooks};
        let mut s = ctl(10);
        let mem = Arc::new(Mutex::new(MemHooks::default()));
        let shared: SharedHooks = mem.clone();
        s.hooks = shared;
        mem.lock().unwrap().attach(5, "veth5").unwrap();
        let mut p = from_toml(
            "version = 1\n[[deny]]\ncidr = \"198.18.1.0/24\"\n[[limit]]\npps = 5\n[[forward]]\nmatch = \"198.18.0.1:80\"\nto = [\"198.18.1.2:80\"]\n",
        )
        .unwrap();
        p.probes.disabled = vec!["xdp/veth5".into()];
        let d = apply(&s, &p, APPLY).unwrap();
        assert!(d.applied);
        assert_eq!((d.added.len(), d.changed.len()), (3, 1), "{d:?}");
        let before = to_toml(&export(&s));
        // The last part fails (enabling the XDP probe finds the hook busy):
        // the firewall, limit and forward steps before it are undone.
        let mut p2 = p.clone();
        p2.deny.push(RuleRequest {
            cidr: "198.18.2.0/24".into(),
            dst: false,
            comment: None,
            inactive: false,
        });
        p2.limits[0].pps = Some(6);
        p2.forwards.clear();
        p2.probes.disabled.clear();
        mem.lock().unwrap().fail_attach = Some("another program holds the hook".into());
        let e = apply(&s, &p2, DRY).unwrap();
        assert_eq!(
            (e.added.len(), e.removed.len(), e.changed.len()),
            (2, 2, 1),
            "dry run: {e:?}"
        );
        let e = apply(&s, &p2, APPLY).unwrap_err().to_string();
        assert!(
            e.contains("another program") && e.contains("nothing was changed"),
            "{e}"
        );
        assert_eq!(to_toml(&export(&s)), before, "the rules are back as they were");
        assert!(mem.lock().unwrap().disabled.contains(&"xdp/veth5".parse().unwrap()));
    }
}
