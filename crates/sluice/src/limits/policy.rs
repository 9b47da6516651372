//! The limits' part in a policy: a table of rules identified by their whole
//! spec, where two rules with the same match and kind cannot coexist.

use super::{LimitRequest, LimitSpec, Limiter};
use crate::model::plan::{Table, TablePlan};

/// The `limit` section of a policy.
pub struct LimitTable;

impl Table for LimitTable {
    type Owner = Limiter;
    type Spec = LimitSpec;
    type Id = i64;

    fn entries(l: &Limiter) -> Vec<(i64, LimitSpec)> {
        l.rules().map(|r| (r.id, r.spec.clone())).collect()
    }

    fn same_match(a: &LimitSpec, b: &LimitSpec) -> bool {
        a.m == b.m && a.kind == b.kind
    }

    fn describe(s: &LimitSpec) -> String {
        s.describe()
    }

    fn add(l: &mut Limiter, s: &LimitSpec) -> Result<i64, String> {
        l.add(s.clone()).map(|r| r.id).map_err(|e| e.to_string())
    }

    fn remove(l: &mut Limiter, id: i64) -> Result<(), String> {
        l.delete(id).map(drop).map_err(|e| e.to_string())
    }
}

/// Validates the `limit` section (`limit[N]: why`). Runs before any lock
/// is taken.
pub fn validate(section: &[LimitRequest]) -> Result<Vec<LimitSpec>, String> {
    let max = sluice_abi::MAX_LIMITS as usize;
    if section.len() > max {
        return Err(format!("{} limit entries; the table holds {max}", section.len()));
    }
    let mut want: Vec<LimitSpec> = Vec::new();
    for (i, r) in section.iter().enumerate() {
        let spec = r.validate().map_err(|e| format!("limit[{}]: {e}", i + 1))?;
        if let Some(j) = want.iter().position(|o| LimitTable::same_match(o, &spec)) {
            return Err(format!(
                "limit[{}]: conflicts with limit[{}]: same match ({}) and kind",
                i + 1,
                j + 1,
                spec.m
            ));
        }
        want.push(spec);
    }
    Ok(want)
}

/// Plans making the rules equal to `want` (validated).
pub fn plan(l: &Limiter, want: Vec<LimitSpec>) -> TablePlan<LimitTable> {
    TablePlan::new(l, want)
}

/// The running rules as the `limit` section, sorted by what they match (so
/// the same rule set always exports to the same text).
pub fn export(l: &Limiter) -> Vec<LimitRequest> {
    let mut specs: Vec<&LimitSpec> = l.rules().map(|r| &r.spec).collect();
    specs.sort_by_cached_key(|s| s.describe());
    specs.into_iter().map(LimitSpec::request).collect()
}
