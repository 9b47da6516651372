//! How a desired rule set is applied all or nothing, by composition: each
//! capability turns its section of a policy into a [`Part`] (its own diff
//! and its own undoable steps), and [`run`] runs the parts in two phases,
//! undoing every step done, in reverse, if one fails.
//!
//! Phase one ([`Part::grow`]) adds and changes entries, and so holds every
//! step that can fail for want of room or a busy hook; phase two
//! ([`Part::prune`]) removes stale entries, which only fails if the store
//! does. Parts run in the order given, so the caller decides, for example,
//! that new deny/allow rules go in before anything else (tighten before
//! loosening).
//!
//! Most capabilities are plain tables of entries identified by their whole
//! spec; [`TablePlan`] is their part, given a [`Table`]. The context `Cx` is
//! whatever gives each part its controller (`AsMut<Owner>`), so a part
//! never needs to know about the others.

/// What applying a policy changes (or, with a dry run, would change). Each
/// line describes one entry, as the CLI prints it after `+`, `-` or `~`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The step changed nothing (a full table, a busy hook, ...).
    Failed(String),
    /// The step failed half-way and could not put its own change back.
    Partial(String),
}

/// How [`run`] ended when a step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A step failed; every step done before it was undone.
    #[error("{0}")]
    Failed(String),
    /// A step failed and the change could not be fully undone: (what
    /// failed, what the undo says).
    #[error("{0}; {1}")]
    Partial(String, String),
}

/// One capability's share of a policy, planned against its current state.
pub trait Part<Cx> {
    /// Adds this part's lines to the diff.
    fn diff(&self, d: &mut PolicyDiff);
    /// Phase one: adds and in-place changes.
    fn grow(&mut self, cx: &mut Cx) -> Result<(), StepError>;
    /// Phase two: removals.
    fn prune(&mut self, cx: &mut Cx) -> Result<(), StepError>;
    /// Steps done so far and not undone.
    fn steps(&self) -> usize;
    /// Undoes the most recent step done.
    fn undo_last(&mut self, cx: &mut Cx) -> Result<(), String>;
}

/// The parts of a plan, in the order they run.
pub type Parts<'a, Cx> = [Box<dyn Part<Cx> + 'a>];

/// The whole diff of `parts`.
pub fn diff<Cx>(parts: &Parts<'_, Cx>) -> PolicyDiff {
    let mut d = PolicyDiff::default();
    for p in parts {
        p.diff(&mut d);
    }
    d
}

/// Runs every part's phase one, then every part's phase two. On the first
/// failure every step done so far is undone in reverse.
pub fn run<Cx>(cx: &mut Cx, parts: &mut Parts<'_, Cx>) -> Result<(), PlanError> {
    // (part, steps it did) in the order they ran: undo walks it backwards.
    let mut ran: Vec<(usize, usize)> = Vec::new();
    for phase in [0, 1] {
        for i in 0..parts.len() {
            let before = parts[i].steps();
            let r = if phase == 0 {
                parts[i].grow(cx)
            } else {
                parts[i].prune(cx)
            };
            ran.push((i, parts[i].steps() - before));
            if let Err(e) = r {
                let undone = undo(cx, parts, &ran);
                return Err(match (e, undone) {
                    (StepError::Failed(e), Ok(())) => PlanError::Failed(e),
                    (StepError::Failed(e), Err(u)) => {
                        PlanError::Partial(e, format!("undoing the partial change also failed ({u})"))
                    }
                    (StepError::Partial(e), Ok(())) => PlanError::Partial(e, "every other step was undone".into()),
                    (StepError::Partial(e), Err(u)) => {
                        PlanError::Partial(e, format!("undoing the other steps also failed ({u})"))
                    }
                });
            }
        }
    }
    Ok(())
}

/// Undoes `ran` in reverse; the first failure is returned (the rest is
/// still attempted).
fn undo<Cx>(cx: &mut Cx, parts: &mut Parts<'_, Cx>, ran: &[(usize, usize)]) -> Result<(), String> {
    let mut first = None;
    for &(i, n) in ran.iter().rev() {
        for _ in 0..n {
            if let Err(e) = parts[i].undo_last(cx) {
                tracing::error!(error = %e, "undoing a partly applied policy");
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// A capability's table of entries, each identified by its whole spec: a
/// changed entry is removed and its successor added.
pub trait Table {
    /// The controller that holds the table.
    type Owner;
    /// A validated entry.
    type Spec: Clone + PartialEq;
    type Id: Copy;
    /// The entries now, with their ids.
    fn entries(owner: &Self::Owner) -> Vec<(Self::Id, Self::Spec)>;
    /// True if the two cannot both be in the table (the same match).
    fn same_match(a: &Self::Spec, b: &Self::Spec) -> bool;
    /// The entry as one line of a diff.
    fn describe(spec: &Self::Spec) -> String;
    fn add(owner: &mut Self::Owner, spec: &Self::Spec) -> Result<Self::Id, String>;
    fn remove(owner: &mut Self::Owner, id: Self::Id) -> Result<(), String>;
    /// Puts back an entry this apply removed (by default, adds it again).
    fn restore(owner: &mut Self::Owner, spec: &Self::Spec) -> Result<Self::Id, String> {
        Self::add(owner, spec)
    }
}

enum Done<T: Table> {
    Added(T::Id),
    Removed(T::Spec),
}

/// The [`Part`] of a [`Table`]: entries to add, stale entries to remove.
///
/// Adds that replace no stale entry go first. An entry replaced by one with
/// the same match is removed just before its successor is added (the two
/// would conflict). If an add fails while stale entries are still pending
/// (no room yet, or a conflict only they cause), they are removed first
/// and the add is tried once more. Entries put back by an undo get new ids.
pub struct TablePlan<T: Table> {
    adds: Vec<T::Spec>,
    stale: Vec<(T::Id, T::Spec)>,
    unchanged: usize,
    done: Vec<Done<T>>,
}

impl<T: Table> TablePlan<T> {
    /// Plans making the table equal to `want`.
    pub fn new(owner: &T::Owner, want: Vec<T::Spec>) -> Self {
        let have = T::entries(owner);
        let stale: Vec<(T::Id, T::Spec)> = have.iter().filter(|(_, s)| !want.contains(s)).cloned().collect();
        let mut adds: Vec<T::Spec> = Vec::new();
        let mut unchanged = 0;
        for w in want {
            if have.iter().any(|(_, s)| *s == w) {
                unchanged += 1;
            } else {
                adds.push(w);
            }
        }
        TablePlan {
            adds,
            stale,
            unchanged,
            done: Vec::new(),
        }
    }

    /// The entries this plan adds.
    pub fn adds(&self) -> &[T::Spec] {
        &self.adds
    }

    fn remove_stale(&mut self, owner: &mut T::Owner, i: usize) -> Result<(), StepError> {
        let (id, old) = self.stale.remove(i);
        T::remove(owner, id).map_err(StepError::Failed)?;
        self.done.push(Done::Removed(old));
        Ok(())
    }
}

impl<T: Table, Cx: AsMut<T::Owner>> Part<Cx> for TablePlan<T> {
    fn diff(&self, d: &mut PolicyDiff) {
        d.added.extend(self.adds.iter().map(T::describe));
        d.removed.extend(self.stale.iter().map(|(_, s)| T::describe(s)));
        d.unchanged += self.unchanged;
    }

    fn grow(&mut self, cx: &mut Cx) -> Result<(), StepError> {
        let owner = cx.as_mut();
        let mut adds = std::mem::take(&mut self.adds);
        // Adds that replace nothing first (stable: keeps the file's order).
        adds.sort_by_key(|n| self.stale.iter().any(|(_, o)| T::same_match(o, n)));
        for n in adds {
            if let Some(i) = self.stale.iter().position(|(_, o)| T::same_match(o, &n)) {
                self.remove_stale(owner, i)?;
            }
            let id = match T::add(owner, &n) {
                Ok(id) => id,
                Err(_) if !self.stale.is_empty() => {
                    while !self.stale.is_empty() {
                        self.remove_stale(owner, 0)?;
                    }
                    T::add(owner, &n).map_err(StepError::Failed)?
                }
                Err(e) => return Err(StepError::Failed(e)),
            };
            self.done.push(Done::Added(id));
        }
        Ok(())
    }

    fn prune(&mut self, cx: &mut Cx) -> Result<(), StepError> {
        let owner = cx.as_mut();
        while !self.stale.is_empty() {
            self.remove_stale(owner, 0)?;
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.done.len()
    }

    fn undo_last(&mut self, cx: &mut Cx) -> Result<(), String> {
        match self.done.pop() {
            Some(Done::Added(id)) => T::remove(cx.as_mut(), id),
            Some(Done::Removed(spec)) => T::restore(cx.as_mut(), &spec).map(drop),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of (match, value) pairs with room for `cap` entries.
    #[derive(Default)]
    struct Kv {
        rows: Vec<(u32, (char, u8))>,
        next: u32,
        cap: usize,
        fail_add: Option<(char, u8)>,
    }

    struct KvTable;

    impl Table for KvTable {
        type Owner = Kv;
        type Spec = (char, u8);
        type Id = u32;
        fn entries(o: &Kv) -> Vec<(u32, (char, u8))> {
            o.rows.clone()
        }
        fn same_match(a: &(char, u8), b: &(char, u8)) -> bool {
            a.0 == b.0
        }
        fn describe(s: &(char, u8)) -> String {
            format!("{}={}", s.0, s.1)
        }
        fn add(o: &mut Kv, s: &(char, u8)) -> Result<u32, String> {
            if o.fail_add == Some(*s) {
                return Err(format!("{} refused", s.0));
            }
            if o.rows.len() == o.cap || o.rows.iter().any(|(_, r)| r.0 == s.0) {
                return Err("full or conflicting".into());
            }
            o.next += 1;
            o.rows.push((o.next, *s));
            Ok(o.next)
        }
        fn remove(o: &mut Kv, id: u32) -> Result<(), String> {
            o.rows.retain(|(i, _)| *i != id);
            Ok(())
        }
    }

    struct Cx(Kv);
    impl AsMut<Kv> for Cx {
        fn as_mut(&mut self) -> &mut Kv {
            &mut self.0
        }
    }

    fn specs(cx: &Cx) -> Vec<(char, u8)> {
        let mut v: Vec<_> = cx.0.rows.iter().map(|r| r.1).collect();
        v.sort();
        v
    }

    fn apply(cx: &mut Cx, want: &[(char, u8)]) -> Result<PolicyDiff, PlanError> {
        let plan = TablePlan::<KvTable>::new(&cx.0, want.to_vec());
        let mut parts: Vec<Box<dyn Part<Cx>>> = vec![Box::new(plan)];
        let d = diff(&parts);
        run(cx, &mut parts).map(|_| d)
    }

    #[test]
    fn diff_replace_in_place_and_make_room() {
        let mut cx = Cx(Kv {
            cap: 2,
            ..Default::default()
        });
        apply(&mut cx, &[('a', 1), ('b', 1)]).unwrap();
        // 'a' changes value (same match), 'b' goes, 'c' comes: with room for
        // two, 'c' only fits once 'b' is gone.
        let d = apply(&mut cx, &[('a', 2), ('c', 1)]).unwrap();
        assert_eq!(d.added, vec!["a=2", "c=1"]);
        assert_eq!(d.removed, vec!["a=1", "b=1"]);
        assert_eq!(specs(&cx), vec![('a', 2), ('c', 1)]);
        let d = apply(&mut cx, &[('a', 2), ('c', 1)]).unwrap();
        assert!(d.is_empty());
        assert_eq!(d.unchanged, 2);
    }

    #[test]
    fn a_failed_step_undoes_everything_before_it() {
        let mut cx = Cx(Kv {
            cap: 10,
            ..Default::default()
        });
        apply(&mut cx, &[('a', 1), ('b', 1)]).unwrap();
        cx.0.fail_add = Some(('d', 1));
        let e = apply(&mut cx, &[('a', 2), ('c', 1), ('d', 1)]).unwrap_err();
        assert_eq!(e, PlanError::Failed("d refused".into()));
        assert_eq!(specs(&cx), vec![('a', 1), ('b', 1)], "back as it was");
    }
}
