//! The forward capability's part in a policy: the `forward` and `redirect`
//! sections, two tables of rules identified by their whole spec. A new
//! redirect's interface must exist when the policy is applied (checked when
//! planning, so a dry run says so too); one put back by an undo may come
//! back inactive, as on a start without its interface.

use super::{find_loop, ForwardRequest, ForwardSpec, Forwarder, RedirectRequest, RedirectSpec};
use crate::{
    model::plan::{Table, TablePlan},
    sys::iface::iface_info,
};

/// The `forward` section of a policy.
pub struct ForwardTable;

impl Table for ForwardTable {
    type Owner = Forwarder;
    type Spec = ForwardSpec;
    type Id = i64;

    fn entries(f: &Forwarder) -> Vec<(i64, ForwardSpec)> {
        f.forwards().map(|r| (r.id, r.spec.clone())).collect()
    }

    fn same_match(a: &ForwardSpec, b: &ForwardSpec) -> bool {
        a.service == b.service && a.proto == b.proto
    }

    fn describe(s: &ForwardSpec) -> String {
        s.describe()
    }

    fn add(f: &mut Forwarder, s: &ForwardSpec) -> Result<i64, String> {
        f.insert_forward(s.clone()).map(|r| r.id).map_err(|e| e.to_string())
    }

    fn remove(f: &mut Forwarder, id: i64) -> Result<(), String> {
        f.del_forward(id).map(drop).map_err(|e| e.to_string())
    }
}

/// The `redirect` section of a policy.
pub struct RedirectTable;

impl Table for RedirectTable {
    type Owner = Forwarder;
    type Spec = RedirectSpec;
    type Id = i64;

    fn entries(f: &Forwarder) -> Vec<(i64, RedirectSpec)> {
        f.redirects().map(|r| (r.id, r.spec.clone())).collect()
    }

    fn same_match(a: &RedirectSpec, b: &RedirectSpec) -> bool {
        a.cidr == b.cidr
    }

    fn describe(s: &RedirectSpec) -> String {
        s.describe()
    }

    fn add(f: &mut Forwarder, s: &RedirectSpec) -> Result<i64, String> {
        f.insert_redirect(s.clone(), true)
            .map(|r| r.id)
            .map_err(|e| e.to_string())
    }

    fn remove(f: &mut Forwarder, id: i64) -> Result<(), String> {
        f.del_redirect(id).map(drop).map_err(|e| e.to_string())
    }

    fn restore(f: &mut Forwarder, s: &RedirectSpec) -> Result<i64, String> {
        f.restore_redirect(s.clone()).map(|r| r.id).map_err(|e| e.to_string())
    }
}

fn too_many(what: &str, n: usize, max: u32) -> Result<(), String> {
    if n > max as usize {
        return Err(format!("{n} {what} entries; the table holds {max}"));
    }
    Ok(())
}

/// Validates the `forward` section (`forward[N]: why`; loops across the
/// whole section included). Runs before any lock is taken.
pub fn validate_forwards(section: &[ForwardRequest]) -> Result<Vec<ForwardSpec>, String> {
    too_many("forward", section.len(), sluice_abi::tc::MAX_FORWARDS)?;
    let mut want: Vec<ForwardSpec> = Vec::new();
    for (i, r) in section.iter().enumerate() {
        let spec = r.validate().map_err(|e| format!("forward[{}]: {e}", i + 1))?;
        if let Some(j) = want.iter().position(|o| ForwardTable::same_match(o, &spec)) {
            return Err(format!(
                "forward[{}]: matches the same service as forward[{}]",
                i + 1,
                j + 1
            ));
        }
        want.push(spec);
    }
    if let Some(p) = find_loop(want.iter()) {
        let i = want.iter().position(|s| s.service == p[0]).unwrap_or(0);
        let p: Vec<String> = p.iter().map(|a| a.to_string()).collect();
        return Err(format!("forward[{}]: forward loop: {}", i + 1, p.join(" -> ")));
    }
    Ok(want)
}

/// Plans making the forwards equal to `want` (validated).
pub fn plan_forwards(f: &Forwarder, want: Vec<ForwardSpec>) -> TablePlan<ForwardTable> {
    TablePlan::new(f, want)
}

/// Validates the `redirect` section (`redirect[N]: why`). Runs before any
/// lock is taken.
pub fn validate_redirects(section: &[RedirectRequest]) -> Result<Vec<RedirectSpec>, String> {
    too_many("redirect", section.len(), sluice_abi::tc::MAX_REDIRECTS)?;
    let mut want: Vec<RedirectSpec> = Vec::new();
    for (i, r) in section.iter().enumerate() {
        let spec = r.validate().map_err(|e| format!("redirect[{}]: {e}", i + 1))?;
        if let Some(j) = want.iter().position(|o| RedirectTable::same_match(o, &spec)) {
            return Err(format!(
                "redirect[{}]: redirects the same CIDR as redirect[{}]",
                i + 1,
                j + 1
            ));
        }
        want.push(spec);
    }
    Ok(want)
}

/// Plans making the redirects equal to `want` (validated). A redirect to
/// add needs its interface now (a dry run says so too).
pub fn plan_redirects(f: &Forwarder, want: Vec<RedirectSpec>) -> Result<TablePlan<RedirectTable>, String> {
    let plan = TablePlan::new(f, want);
    if let Some(spec) = plan
        .adds()
        .iter()
        .find(|s: &&RedirectSpec| iface_info(&s.iface).is_none())
    {
        return Err(format!(
            "redirect {}: interface {} does not exist in the daemon's network namespace",
            spec.cidr, spec.iface
        ));
    }
    Ok(plan)
}

/// The running rules as the `forward` and `redirect` sections, sorted by
/// what they match.
pub fn export(f: &Forwarder) -> (Vec<ForwardRequest>, Vec<RedirectRequest>) {
    let mut fw: Vec<&ForwardSpec> = f.forwards().map(|r| &r.spec).collect();
    fw.sort_by_key(|s| (s.service, s.proto.as_str()));
    let mut rd: Vec<&RedirectSpec> = f.redirects().map(|r| &r.spec).collect();
    rd.sort_by_key(|s| s.cidr);
    (
        fw.into_iter().map(ForwardSpec::request).collect(),
        rd.into_iter().map(RedirectSpec::request).collect(),
    )
}
