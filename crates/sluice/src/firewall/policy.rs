//! The firewall's part in a policy: the `deny` and `allow` sections.
//!
//! Rules are identified by what they match, (action, direction, CIDR); a
//! comment alone changes in place. New rules go in as one batch, before
//! anything is removed (tighten before loosening); if the batch does not
//! fit, the stale rules go first and it is tried once more.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Action, Firewall, RuleKey, RuleRequest, RuleSpec, Which};
use crate::model::plan::{Part, PolicyDiff, StepError};

fn line(s: &RuleSpec) -> String {
    let mut l = s.key().describe();
    if let Some(c) = &s.comment {
        l.push_str(&format!(" ({c:?})"));
    }
    l
}

enum Done {
    Added(Vec<RuleKey>),
    Removed(RuleSpec),
    Comment(RuleKey, Option<String>),
}

/// The firewall's share of a policy, planned against its rules.
pub struct FirewallPlan {
    adds: Vec<RuleSpec>,
    /// (key, new comment, old comment).
    comments: Vec<(RuleKey, Option<String>, Option<String>)>,
    /// In key order, removed from the front.
    stale: VecDeque<RuleSpec>,
    unchanged: usize,
    done: Vec<Done>,
}

/// Validates the `deny` and `allow` sections (`deny[N]: why`), and that
/// they fit `max_rules` in total. Runs before any lock is taken.
pub fn validate(deny: &[RuleRequest], allow: &[RuleRequest], max_rules: u32) -> Result<Vec<RuleSpec>, String> {
    let mut want = Vec::new();
    let mut keys = BTreeSet::new();
    for (what, action, list) in [("deny", Action::Deny, deny), ("allow", Action::Allow, allow)] {
        for (i, r) in list.iter().enumerate() {
            let at = |e: &dyn std::fmt::Display| format!("{what}[{}]: {e}", i + 1);
            let spec = RuleSpec::new(action, &r.cidr, r.dst, r.comment.clone()).map_err(|e| at(&e))?;
            if !keys.insert(spec.key()) {
                return Err(at(&format!("{} is listed twice", spec.key().describe())));
            }
            want.push(spec);
        }
    }
    if want.len() > max_rules as usize {
        return Err(format!(
            "{} deny and allow rules; the firewall holds max_rules = {max_rules} in total",
            want.len()
        ));
    }
    Ok(want)
}

/// Plans making the rules equal to `want` (validated).
pub fn plan(fw: &Firewall, want: Vec<RuleSpec>) -> FirewallPlan {
    let mut have: BTreeMap<RuleKey, RuleSpec> = fw.rules().map(|r| (r.spec.key(), r.spec.clone())).collect();
    let mut p = FirewallPlan {
        adds: Vec::new(),
        comments: Vec::new(),
        stale: VecDeque::new(),
        unchanged: 0,
        done: Vec::new(),
    };
    for spec in want {
        match have.remove(&spec.key()) {
            None => p.adds.push(spec),
            Some(old) if old.comment != spec.comment => p.comments.push((spec.key(), spec.comment, old.comment)),
            Some(_) => p.unchanged += 1,
        }
    }
    p.stale = have.into_values().collect();
    p
}

/// The running rules as the `deny` and `allow` sections, sorted by what they
/// match.
pub fn export(fw: &Firewall) -> (Vec<RuleRequest>, Vec<RuleRequest>) {
    let mut specs: Vec<&RuleSpec> = fw.rules().map(|r| &r.spec).collect();
    specs.sort_by_key(|s| s.key());
    let pick = |a: Action| specs.iter().filter(|s| s.action == a).map(|s| s.request()).collect();
    (pick(Action::Deny), pick(Action::Allow))
}

impl FirewallPlan {
    fn remove_stale(&mut self, fw: &mut Firewall) -> Result<(), StepError> {
        while let Some(spec) = self.stale.pop_front() {
            let sel = Which::Target {
                target: spec.target.clone(),
                dir: spec.dir,
            };
            if let Err(e) = fw.delete(spec.action, &sel) {
                self.stale.push_front(spec);
                return Err(StepError::Failed(e.to_string()));
            }
            self.done.push(Done::Removed(spec));
        }
        Ok(())
    }
}

impl<Cx: AsMut<Firewall>> Part<Cx> for FirewallPlan {
    fn diff(&self, d: &mut PolicyDiff) {
        d.added.extend(self.adds.iter().map(line));
        for (key, new, old) in &self.comments {
            let spec = RuleSpec {
                action: key.action,
                target: key.target.clone(),
                dir: key.dir,
                comment: new.clone(),
            };
            d.changed.push(format!(
                "{} (comment was {:?})",
                line(&spec),
                old.clone().unwrap_or_default()
            ));
        }
        d.removed.extend(self.stale.iter().map(line));
        d.unchanged += self.unchanged;
    }

    fn grow(&mut self, cx: &mut Cx) -> Result<(), StepError> {
        let fw = cx.as_mut();
        if !self.adds.is_empty() {
            let adds = std::mem::take(&mut self.adds);
            let added = match fw.add(adds.clone()) {
                Ok(a) => a,
                Err(_) if !self.stale.is_empty() => {
                    self.remove_stale(fw)?;
                    fw.add(adds).map_err(|e| StepError::Failed(e.to_string()))?
                }
                Err(e) => return Err(StepError::Failed(e.to_string())),
            };
            self.done
                .push(Done::Added(added.iter().map(|r| r.spec.key()).collect()));
        }
        for (key, new, old) in std::mem::take(&mut self.comments) {
            fw.set_comment(&key, new)
                .map_err(|e| StepError::Failed(e.to_string()))?;
            self.done.push(Done::Comment(key, old));
        }
        Ok(())
    }

    fn prune(&mut self, cx: &mut Cx) -> Result<(), StepError> {
        self.remove_stale(cx.as_mut())
    }

    fn steps(&self) -> usize {
        self.done.len()
    }

    fn undo_last(&mut self, cx: &mut Cx) -> Result<(), String> {
        let fw = cx.as_mut();
        match self.done.pop() {
            Some(Done::Added(keys)) => {
                let mut first = Ok(());
                for k in keys {
                    let sel = Which::Target {
                        target: k.target,
                        dir: k.dir,
                    };
                    if let Err(e) = fw.delete(k.action, &sel) {
                        first = first.and(Err(e.to_string()));
                    }
                }
                first
            }
            Some(Done::Removed(spec)) => fw.add(vec![spec]).map(drop).map_err(|e| e.to_string()),
            Some(Done::Comment(key, old)) => fw.set_comment(&key, old).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}
