//! Attenuation: an intent that may only narrow another.
//!
//! A grant `a` is narrower than a grant `b` (`a ⊑ b`) when
//!
//! * its target is within `b`'s: the same tool; the same class; or a tool
//!   whose class (as the caller's `class_of` says) is `b`'s class; and
//! * for every argument `b` constrains, `a` constrains it too, with a
//!   constraint that implies `b`'s ([`Constraint::implies`]): every value
//!   `a` accepts, from any source `a` accepts, `b` accepts.
//!
//! Then every call `a` covers, `b` covers. Uses are counted over the whole
//! intent: intent `A` is narrower than intent `B` when every grant of `A`
//! is narrower than some grant of `B`, and the calls `A` allows fit in the
//! uses of `B`: a grant of `A` without a count needs a grant of `B`
//! without a count above it; the counted grants of `A` must fit, as a
//! flow, into the counts of the grants above them (a grant's uses may be
//! split between several grants of `B` that are all above it, since each
//! of them covers every call it covers). Identifiers and order play no
//! part.
//!
//! This relation is reflexive and transitive (a preorder): two intents
//! narrower than each other are equivalent (the same grants in another
//! order, one grant of 2 uses against two identical grants of 1, …). It is
//! sound, not complete: when it cannot prove a constraint implies another
//! (two different patterns), it answers "not narrower".
//!
//! [`Constraint::implies`]: crate::Constraint::implies

use crate::grant::{Grant, Target};
use crate::intent::Intent;
use mandate_core::ToolClass;

/// What class a tool is in, per the gateway's configuration (`None`:
/// unknown, so a tool grant is never found within a class grant).
pub type ClassOf<'a> = dyn Fn(&str) -> Option<ToolClass> + 'a;

impl Grant {
    /// `self ⊑ wider` for single grants (uses aside): every call `self`
    /// covers, `wider` covers. A tool grant is within a class grant only
    /// when `class_of` puts the tool in that class.
    pub fn is_narrower_than_with(&self, wider: &Grant, class_of: &ClassOf<'_>) -> bool {
        let target = match (self.target(), wider.target()) {
            (Target::Tool(a), Target::Tool(b)) => a == b,
            (Target::Class(a), Target::Class(b)) => a == b,
            (Target::Tool(t), Target::Class(c)) => class_of(t) == Some(*c),
            (Target::Class(_), Target::Tool(_)) => false,
        };
        target
            && wider.arguments().iter().all(|(name, theirs)| {
                self.arguments()
                    .get(name)
                    .is_some_and(|ours| ours.implies(theirs))
            })
    }
}

impl Intent {
    /// `self ⊑ wider` (see the module documentation), with tools and
    /// classes compared by name only: a tool grant is never within a
    /// class grant.
    pub fn is_narrower_than(&self, wider: &Intent) -> bool {
        self.is_narrower_than_with(wider, &|_| None)
    }

    /// `self ⊑ wider`, a tool grant being within a class grant when
    /// `class_of` puts the tool in that class.
    pub fn is_narrower_than_with(&self, wider: &Intent, class_of: &ClassOf<'_>) -> bool {
        let ours = self.grants();
        let theirs = wider.grants();
        // For each of our grants, the indexes of theirs above it.
        let above: Vec<Vec<usize>> = ours
            .iter()
            .map(|a| {
                theirs
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| a.is_narrower_than_with(b, class_of))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let unlimited = |i: &usize| theirs.get(*i).is_some_and(|b| b.max_uses().is_none());
        // Uncounted grants need an uncounted grant above them.
        for (a, up) in ours.iter().zip(&above) {
            if up.is_empty() || (a.max_uses().is_none() && !up.iter().any(unlimited)) {
                return false;
            }
        }
        // Counted grants: a flow from each of ours (its count) through the
        // grants above it into their counts must carry every use.
        let n_ours = ours.len();
        let source = 0;
        let sink = 1 + n_ours + theirs.len();
        let mut flow = Flow::new(sink + 1);
        let mut demand = 0_u64;
        for (i, (a, up)) in ours.iter().zip(&above).enumerate() {
            let Some(uses) = a.max_uses() else { continue };
            demand += u64::from(uses);
            flow.add(source, 1 + i, u64::from(uses));
            for j in up {
                flow.add(1 + i, 1 + n_ours + j, INFINITE);
            }
        }
        for (j, b) in theirs.iter().enumerate() {
            let cap = b.max_uses().map_or(INFINITE, u64::from);
            flow.add(1 + n_ours + j, sink, cap);
        }
        flow.max_flow(source, sink) == Some(demand)
    }
}

/// More than every count of an intent put together.
const INFINITE: u64 = u64::MAX / 4;

/// A small max-flow network (Edmonds–Karp), enough for two intents of at
/// most [`crate::limits::MAX_GRANTS`] grants each.
struct Flow {
    /// Edge `e` and its reverse `e ^ 1`.
    edges: Vec<(usize, u64)>,
    adjacent: Vec<Vec<usize>>,
}

impl Flow {
    fn new(nodes: usize) -> Self {
        Self {
            edges: Vec::new(),
            adjacent: vec![Vec::new(); nodes],
        }
    }

    fn add(&mut self, from: usize, to: usize, cap: u64) {
        let e = self.edges.len();
        self.edges.push((to, cap));
        self.edges.push((from, 0));
        if let Some(list) = self.adjacent.get_mut(from) {
            list.push(e);
        }
        if let Some(list) = self.adjacent.get_mut(to) {
            list.push(e + 1);
        }
    }

    /// The maximum flow; `None` only if the network is inconsistent.
    fn max_flow(&mut self, source: usize, sink: usize) -> Option<u64> {
        let mut total = 0_u64;
        loop {
            // Breadth-first search for a path with capacity left.
            let mut via: Vec<Option<usize>> = vec![None; self.adjacent.len()];
            let mut queue = std::collections::VecDeque::from([source]);
            while let Some(u) = queue.pop_front() {
                for &e in self.adjacent.get(u)? {
                    let &(to, cap) = self.edges.get(e)?;
                    if cap > 0 && to != source && via.get(to)?.is_none() {
                        *via.get_mut(to)? = Some(e);
                        queue.push_back(to);
                    }
                }
            }
            if via.get(sink)?.is_none() {
                return Some(total);
            }
            // Its bottleneck, then push that much along it.
            let mut bottleneck = INFINITE;
            let mut v = sink;
            while v != source {
                let e = (*via.get(v)?)?;
                bottleneck = bottleneck.min(self.edges.get(e)?.1);
                v = self.edges.get(e ^ 1)?.0;
            }
            let mut v = sink;
            while v != source {
                let e = (*via.get(v)?)?;
                self.edges.get_mut(e)?.1 -= bottleneck;
                self.edges.get_mut(e ^ 1)?.1 += bottleneck;
                v = self.edges.get(e ^ 1)?.0;
            }
            total = total.checked_add(bottleneck)?;
        }
    }
}
