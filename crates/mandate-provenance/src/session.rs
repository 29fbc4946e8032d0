//! The per-session index: which values which results introduced.
//!
//! Two structures, kept consistent:
//!
//! * `calls`, oldest first: one entry per observed result (tool, label,
//!   correlation id, and the values it carried, each once). Eviction drops
//!   the oldest call as a whole.
//! * `values`: each remembered value (family tag + normal form) with how
//!   many retained calls of each label carried it, whether the user's intent
//!   named it, and up to [`ORIGINS`] calls to cite.
//!
//! INVARIANT: `values[v].counts[l]` is the number of retained calls with
//! label `l` whose `keys` hold `v`; an entry with all counts zero exists only
//! if `intent` is set. `bytes` is the sum of [`entry_cost`] over `values`
//! and [`call_cost`] over `calls`. `session_tests.rs` checks both after
//! random operations.

use crate::Label;
use crate::family::Family;
use crate::report::{ArgSources, ArgumentSources, Origin, Sources, ValueSources};
use crate::scan::{MAX_VALUE_BYTES, Scanner};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Calls cited per value (the label flags are exact whatever this is).
pub const ORIGINS: usize = 4;

/// Accounted bytes per remembered value besides its text: the hash table
/// slot (key pointer, counts, origins: 72 bytes and a control byte, at a
/// typical load of two thirds) and the shared string's header and allocator
/// rounding. Right after the table doubles, the real figure is up to a
/// quarter higher; on average it is close.
pub const VALUE_OVERHEAD: usize = 160;
/// Accounted bytes per value a call carried (its reference in the call).
pub const REFERENCE_COST: usize = 24;
/// Accounted bytes per call besides its tool name and correlation id.
pub const CALL_OVERHEAD: usize = 160;

/// Per-session bounds. [`Limits::default`] is what the README documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Accounted index size (values, references and calls, see
    /// [`VALUE_OVERHEAD`], [`REFERENCE_COST`], [`CALL_OVERHEAD`]).
    pub max_index_bytes: usize,
    /// Distinct values remembered, intent included.
    pub max_values: usize,
    /// Results remembered.
    pub max_calls: usize,
    /// Values the intent may name (they are never evicted).
    pub max_intent_values: usize,
    /// Bytes of text read from one result (strings, keys, JSON text).
    pub max_result_scan_bytes: usize,
    /// Bytes of text read from one call's arguments, or one intent.
    pub max_args_scan_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_index_bytes: 4 << 20,
            max_values: 32_768,
            max_calls: 4_096,
            max_intent_values: 1_024,
            max_result_scan_bytes: 1 << 20,
            max_args_scan_bytes: 256 << 10,
        }
    }
}

/// Accounted bytes of one remembered value.
fn entry_cost(key: &str) -> usize {
    key.len().saturating_add(VALUE_OVERHEAD)
}

fn call_cost(call: &Call) -> usize {
    CALL_OVERHEAD
        .saturating_add(call.tool.len())
        .saturating_add(call.call.len())
        .saturating_add(call.keys.len().saturating_mul(REFERENCE_COST))
}

/// What one value is known to have come from.
#[derive(Debug, Clone, Default)]
struct Entry {
    intent: bool,
    /// Retained calls carrying the value, per [`Label::index`].
    counts: [u32; 3],
    /// Sequence numbers of calls to cite (0: empty slot).
    origins: [u64; ORIGINS],
    /// The last call that carried it (to count each call once).
    last_seq: u64,
}

impl Entry {
    fn unreferenced(&self) -> bool {
        !self.intent && self.counts == [0; 3]
    }
}

#[derive(Debug, Clone)]
struct Call {
    seq: u64,
    tool: Arc<str>,
    label: Label,
    call: Arc<str>,
    /// The values this result carried, each once, in first-seen order.
    keys: Vec<Arc<str>>,
}

/// What [`SessionValues::observe_result`] took in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    /// Values the result carried (each counted once).
    pub values: usize,
    /// Whether something was not remembered: input past the scan cap, or
    /// values that did not fit. The session is then [`overflowed`].
    ///
    /// [`overflowed`]: SessionValues::overflowed
    pub truncated: bool,
}

/// Size of the index, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Stats {
    /// Distinct values remembered.
    pub values: usize,
    /// Of which named by the intent.
    pub intent_values: usize,
    /// Results remembered.
    pub calls: usize,
    /// Accounted bytes (bounded by [`Limits::max_index_bytes`]).
    pub index_bytes: usize,
}

/// The values one Mandate session has seen, and where each came from.
///
/// Feed it the user's declared intent ([`observe_intent`]) and every tool
/// result ([`observe_result`]); ask it, before a call, where the values in
/// the call's arguments came from ([`sources`]).
///
/// [`observe_intent`]: SessionValues::observe_intent
/// [`observe_result`]: SessionValues::observe_result
/// [`sources`]: SessionValues::sources
#[derive(Debug, Clone)]
pub struct SessionValues {
    limits: Limits,
    values: HashMap<Arc<str>, Entry>,
    calls: VecDeque<Call>,
    next_seq: u64,
    bytes: usize,
    intent_values: usize,
    overflowed: bool,
    history_unknown: bool,
    /// The version of the intent last observed with
    /// [`SessionValues::observe_intent_version`] (not in a snapshot:
    /// observing the same values again changes nothing).
    intent_version: Option<Box<str>>,
}

impl Default for SessionValues {
    fn default() -> Self {
        SessionValues::new(Limits::default())
    }
}

impl SessionValues {
    /// An empty session (nothing seen yet: its history is complete).
    pub fn new(limits: Limits) -> Self {
        SessionValues {
            limits,
            values: HashMap::new(),
            calls: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            intent_values: 0,
            overflowed: false,
            history_unknown: false,
            intent_version: None,
        }
    }

    /// A session whose earlier results are unknown (the process restarted
    /// and no snapshot was kept). It fails closed like an overflowed one:
    /// see [`SessionValues::is_partial`].
    pub fn with_unknown_history(limits: Limits) -> Self {
        let mut session = SessionValues::new(limits);
        session.history_unknown = true;
        session
    }

    /// Marks the session's history as unknown (results were seen that this
    /// index did not observe).
    pub fn mark_history_unknown(&mut self) {
        self.history_unknown = true;
    }

    /// Whether something this session saw was dropped: an evicted result, a
    /// value that did not fit, input past a scan cap, intent past its cap.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Whether the session's earlier history is unknown.
    pub fn history_unknown(&self) -> bool {
        self.history_unknown
    }

    /// Whether the index may not know every value the session saw
    /// (overflowed or unknown history): an unseen value may then have come
    /// from anywhere, and a caller should treat it as untrusted.
    pub fn is_partial(&self) -> bool {
        self.overflowed || self.history_unknown
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Size of the index.
    pub fn stats(&self) -> Stats {
        Stats {
            values: self.values.len(),
            intent_values: self.intent_values,
            calls: self.calls.len(),
            index_bytes: self.bytes,
        }
    }

    /// Remembers the literal values of the user's declared intent (and of
    /// the user's own request or delegation): each string is scanned like a
    /// result's string value. These are never evicted.
    pub fn observe_intent<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::with_capacity(64);
        let mut scanner = Scanner::new(self.limits.max_args_scan_bytes, |f: Family, v: &str| {
            tag(&mut key, f, v);
            self.add_intent_key(&key);
        });
        for value in values {
            scanner.leaf(value.as_ref());
        }
        if scanner.truncated() {
            drop(scanner);
            self.overflowed = true;
        }
    }

    /// Like [`observe_intent`](SessionValues::observe_intent), for intent
    /// given as JSON (every string and number in it).
    pub fn observe_intent_json(&mut self, intent: &Value) {
        let mut key = String::with_capacity(64);
        let mut scanner = Scanner::new(self.limits.max_args_scan_bytes, |f: Family, v: &str| {
            tag(&mut key, f, v);
            self.add_intent_key(&key);
        });
        scanner.json(intent, 0);
        if scanner.truncated() {
            drop(scanner);
            self.overflowed = true;
        }
    }

    /// Like [`observe_intent_json`](SessionValues::observe_intent_json),
    /// unless `version` (any text that changes whenever the intent's values
    /// may have) is the version observed last: a caller can pass the
    /// session's intent before every call and pay for the scan once.
    pub fn observe_intent_version(&mut self, version: &str, intent: &Value) {
        if self.intent_version.as_deref() == Some(version) {
            return;
        }
        self.observe_intent_json(intent);
        self.intent_version = Some(version.into());
    }

    fn add_intent_key(&mut self, key: &str) {
        if let Some(entry) = self.values.get_mut(key) {
            if !entry.intent {
                if self.intent_values >= self.limits.max_intent_values {
                    self.overflowed = true;
                    return;
                }
                entry.intent = true;
                self.intent_values = self.intent_values.saturating_add(1);
            }
            return;
        }
        if self.intent_values >= self.limits.max_intent_values
            || !self.make_room(entry_cost(key), 0)
        {
            self.overflowed = true;
            return;
        }
        let entry = Entry {
            intent: true,
            ..Entry::default()
        };
        self.values.insert(Arc::from(key), entry);
        self.bytes = self.bytes.saturating_add(entry_cost(key));
        self.intent_values = self.intent_values.saturating_add(1);
    }

    /// Remembers the values in one tool result. `tool` is the exposed tool
    /// name, `label` its configured provenance, `call` the call's
    /// correlation id, `result` the MCP `CallToolResult` as JSON (as the
    /// upstream returned it, before the envelope is added: the envelope's
    /// random boundary would be remembered as an identifier).
    pub fn observe_result(
        &mut self,
        tool: &str,
        label: Label,
        call: &str,
        result: &Value,
    ) -> Observed {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        if !self.push_call(seq, Arc::from(tool), label, Arc::from(call)) {
            return Observed {
                values: 0,
                truncated: true,
            };
        }
        let mut key = String::with_capacity(64);
        let mut values = 0;
        let mut dropped = false;
        let mut scanner = Scanner::new(self.limits.max_result_scan_bytes, |f: Family, v: &str| {
            tag(&mut key, f, v);
            match self.add_result_key(seq, label, &key) {
                Added::New => values += 1,
                Added::Repeat => {}
                Added::Dropped => dropped = true,
            }
        });
        scanner.result(result);
        let unread = scanner.truncated();
        drop(scanner);
        let truncated = unread || dropped;
        if truncated {
            self.overflowed = true;
        }
        Observed { values, truncated }
    }

    /// Appends call `seq`, evicting older calls for room and count. Returns
    /// false (and marks the session overflowed) if even alone it does not fit.
    fn push_call(&mut self, seq: u64, tool: Arc<str>, label: Label, call: Arc<str>) -> bool {
        let record = Call {
            seq,
            tool,
            label,
            call,
            keys: Vec::new(),
        };
        let cost = call_cost(&record);
        if !self.make_room(cost, seq) {
            self.overflowed = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(cost);
        self.calls.push_back(record);
        while self.calls.len() > self.limits.max_calls.max(1) && self.evict_oldest(seq) {}
        true
    }

    fn add_result_key(&mut self, seq: u64, label: Label, key: &str) -> Added {
        loop {
            let (need, existing) = match self.values.get(key) {
                Some(entry) if entry.last_seq == seq => return Added::Repeat,
                Some(_) => (REFERENCE_COST, true),
                None => (REFERENCE_COST.saturating_add(entry_cost(key)), false),
            };
            let fits = self.bytes.saturating_add(need) <= self.limits.max_index_bytes
                && (existing || self.values.len() < self.limits.max_values);
            if !fits {
                if self.evict_oldest(seq) {
                    // The eviction may have removed this very value: look again.
                    continue;
                }
                return Added::Dropped;
            }
            let arc = match self.values.get_key_value(key) {
                Some((k, _)) => Arc::clone(k),
                None => {
                    let k: Arc<str> = Arc::from(key);
                    self.values.insert(Arc::clone(&k), Entry::default());
                    k
                }
            };
            if let Some(entry) = self.values.get_mut(key) {
                entry.last_seq = seq;
                if let Some(count) = entry.counts.get_mut(label.index()) {
                    *count = count.saturating_add(1);
                }
                cite(entry, seq, label, label_of_origins(&self.calls));
            }
            if let Some(call) = self.calls.back_mut() {
                call.keys.push(arc);
            }
            self.bytes = self.bytes.saturating_add(need);
            return Added::New;
        }
    }

    /// Evicts calls, oldest first (never the call `keep`), until `need`
    /// more bytes and one more value fit. Returns whether they do.
    fn make_room(&mut self, need: usize, keep: u64) -> bool {
        loop {
            let fits = self.bytes.saturating_add(need) <= self.limits.max_index_bytes
                && self.values.len() < self.limits.max_values;
            if fits {
                return true;
            }
            if !self.evict_oldest(keep) {
                return false;
            }
        }
    }

    /// Drops the oldest call unless it is `keep`; its values lose that
    /// source, and values left with no source are forgotten. Marks the
    /// session overflowed.
    fn evict_oldest(&mut self, keep: u64) -> bool {
        if self.calls.front().is_none_or(|c| c.seq == keep) {
            return false;
        }
        let Some(call) = self.calls.pop_front() else {
            return false;
        };
        self.overflowed = true;
        self.bytes = self.bytes.saturating_sub(call_cost(&call));
        for key in &call.keys {
            let forget = match self.values.get_mut(key) {
                Some(entry) => {
                    if let Some(count) = entry.counts.get_mut(call.label.index()) {
                        *count = count.saturating_sub(1);
                    }
                    for origin in &mut entry.origins {
                        if *origin == call.seq {
                            *origin = 0;
                        }
                    }
                    entry.unreferenced()
                }
                None => false,
            };
            if forget {
                self.values.remove(key);
                self.bytes = self.bytes.saturating_sub(entry_cost(key));
            }
        }
        true
    }

    /// Where the values in each top-level argument came from: every value
    /// found in the argument (whole strings and numbers, and values inside
    /// free text, through nested arrays and objects), with its sources.
    /// Arguments are reported sorted by name.
    pub fn sources(&self, arguments: &Map<String, Value>) -> ArgSources {
        let mut args = Vec::with_capacity(arguments.len());
        let mut key = String::with_capacity(64);
        let mut truncated = false;
        let mut budget = self.limits.max_args_scan_bytes;
        for (name, value) in arguments {
            let mut values: Vec<ValueSources> = Vec::new();
            let mut scanner = Scanner::new(budget, |family: Family, v: &str| {
                tag(&mut key, family, v);
                let sources = self.sources_of(&key);
                if sources.is_unseen() && !family.reported_when_unseen() {
                    return;
                }
                values.push(ValueSources {
                    family,
                    value: v.to_owned(),
                    sources,
                });
            });
            scanner.json(value, 1);
            truncated |= scanner.truncated();
            budget = scanner.remaining();
            drop(scanner);
            values.sort_by(|a, b| (a.family, &a.value).cmp(&(b.family, &b.value)));
            values.dedup_by(|a, b| a.family == b.family && a.value == b.value);
            args.push(ArgumentSources {
                name: name.clone(),
                values,
            });
        }
        // By name, whatever order the map keeps (serde_json's depends on a
        // cargo feature), so that reports and records are deterministic.
        args.sort_by(|a, b| a.name.cmp(&b.name));
        ArgSources::new(args, self.is_partial() || truncated, truncated)
    }

    fn sources_of(&self, key: &str) -> Sources {
        let Some(entry) = self.values.get(key) else {
            return Sources::default();
        };
        let count = |label: Label| entry.counts.get(label.index()).copied().unwrap_or(0) > 0;
        let origins = entry
            .origins
            .iter()
            .filter_map(|seq| find_call(&self.calls, *seq))
            .map(|call| Origin {
                tool: Arc::clone(&call.tool),
                label: call.label,
                call: Arc::clone(&call.call),
            })
            .collect();
        Sources {
            intent: entry.intent,
            trusted: count(Label::Trusted),
            sensitive: count(Label::Sensitive),
            untrusted: count(Label::Untrusted),
            origins,
        }
    }

    /// The index as plain data, to persist and [`restore`] later.
    ///
    /// [`restore`]: SessionValues::restore
    pub fn snapshot(&self) -> Snapshot {
        let mut intent: Vec<String> = self
            .values
            .iter()
            .filter(|(_, e)| e.intent)
            .map(|(k, _)| k.to_string())
            .collect();
        intent.sort_unstable();
        Snapshot {
            version: SNAPSHOT_VERSION,
            overflowed: self.overflowed,
            history_unknown: self.history_unknown,
            intent,
            calls: self
                .calls
                .iter()
                .map(|c| SnapshotCall {
                    tool: c.tool.to_string(),
                    label: c.label,
                    call: c.call.to_string(),
                    values: c.keys.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds an index from a [`snapshot`](SessionValues::snapshot),
    /// under `limits` (if they are smaller than the snapshot's, the oldest
    /// results are dropped and the session is marked overflowed).
    pub fn restore(snapshot: Snapshot, limits: Limits) -> Result<Self, RestoreError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(RestoreError::Version(snapshot.version));
        }
        let all = snapshot
            .intent
            .iter()
            .chain(snapshot.calls.iter().flat_map(|c| c.values.iter()));
        if let Some(bad) = all.into_iter().find(|k| !valid_key(k)) {
            return Err(RestoreError::Value(bad.chars().take(80).collect()));
        }
        let mut session = SessionValues::new(limits);
        session.overflowed = snapshot.overflowed;
        session.history_unknown = snapshot.history_unknown;
        for key in &snapshot.intent {
            session.add_intent_key(key);
        }
        for call in snapshot.calls {
            let seq = session.next_seq;
            session.next_seq = session.next_seq.saturating_add(1);
            if !session.push_call(seq, Arc::from(call.tool), call.label, Arc::from(call.call)) {
                continue;
            }
            for key in &call.values {
                if session.add_result_key(seq, call.label, key) == Added::Dropped {
                    session.overflowed = true;
                }
            }
        }
        Ok(session)
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut counts: HashMap<&str, [u32; 3]> = HashMap::new();
        let mut bytes = 0usize;
        for call in &self.calls {
            bytes += call_cost(call);
            for key in &call.keys {
                if let Some(c) = counts.entry(key).or_default().get_mut(call.label.index()) {
                    *c += 1;
                }
            }
        }
        for (key, entry) in &self.values {
            bytes += entry_cost(key);
            let expected = counts.remove(key.as_ref()).unwrap_or_default();
            if entry.counts != expected {
                return Err(format!("{key}: counts {:?} != {expected:?}", entry.counts));
            }
            if entry.unreferenced() {
                return Err(format!("{key}: kept with no source"));
            }
        }
        if let Some(key) = counts.keys().next() {
            return Err(format!("{key}: referenced by a call but not indexed"));
        }
        if bytes != self.bytes {
            return Err(format!("accounted {} != recomputed {bytes}", self.bytes));
        }
        if self.bytes > self.limits.max_index_bytes {
            return Err(format!("{} bytes over the bound", self.bytes));
        }
        if self.values.len() > self.limits.max_values {
            return Err(format!("{} values over the bound", self.values.len()));
        }
        if self.calls.len() > self.limits.max_calls.max(1) {
            return Err(format!("{} calls over the bound", self.calls.len()));
        }
        let intent = self.values.values().filter(|e| e.intent).count();
        if intent != self.intent_values || intent > self.limits.max_intent_values {
            return Err(format!(
                "{intent} intent values, counted {}",
                self.intent_values
            ));
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Added {
    New,
    Repeat,
    Dropped,
}

/// Writes the index key of `value`: its family's tag, `:`, the normal form.
fn tag(key: &mut String, family: Family, value: &str) {
    key.clear();
    key.push(family.tag());
    key.push(':');
    key.push_str(value);
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    let family = chars.next().and_then(Family::from_tag);
    family.is_some()
        && chars.next() == Some(':')
        && key.len() > 2
        && key.len() <= MAX_VALUE_BYTES.saturating_add(2)
}

fn find_call(calls: &VecDeque<Call>, seq: u64) -> Option<&Call> {
    let first = calls.front()?.seq;
    let offset = usize::try_from(seq.checked_sub(first)?).ok()?;
    calls.get(offset).filter(|c| c.seq == seq)
}

/// The label of each retained call, by sequence number, for [`cite`].
fn label_of_origins(calls: &VecDeque<Call>) -> impl Fn(u64) -> Option<Label> + '_ {
    move |seq| find_call(calls, seq).map(|c| c.label)
}

/// Records call `seq` (label `label`) among the calls `entry` cites: in a
/// free slot; else, if no cited call has this label, in place of a call
/// whose label is cited most often, so that every label present is cited.
fn cite(entry: &mut Entry, seq: u64, label: Label, label_of: impl Fn(u64) -> Option<Label>) {
    if let Some(slot) = entry.origins.iter_mut().find(|s| **s == 0) {
        *slot = seq;
        return;
    }
    let labels: [Option<Label>; ORIGINS] = entry.origins.map(&label_of);
    if labels.contains(&Some(label)) {
        return;
    }
    let most = |l: &Option<Label>| labels.iter().filter(|x| *x == l).count();
    let replace = labels
        .iter()
        .enumerate()
        .max_by_key(|(i, l)| (most(l), usize::MAX - i))
        .map(|(i, _)| i);
    if let Some(slot) = replace.and_then(|i| entry.origins.get_mut(i)) {
        *slot = seq;
    }
}

/// Version of the [`Snapshot`] format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A session's index as plain data: the intent's values and, oldest
/// first, each remembered result's tool, label, correlation id and values
/// (as `tag:normal-form`, tags as in [`Family`]). Restoring replays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    version: u32,
    overflowed: bool,
    history_unknown: bool,
    intent: Vec<String>,
    calls: Vec<SnapshotCall>,
}

/// One remembered result in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCall {
    tool: String,
    label: Label,
    call: String,
    values: Vec<String>,
}

/// Why a snapshot could not be restored. The caller should then start the
/// session with [`SessionValues::with_unknown_history`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Written by another version of this crate.
    #[error(
        "provenance snapshot version {0} is not supported (this build reads {SNAPSHOT_VERSION})"
    )]
    Version(u32),
    /// A value is not `tag:normal-form` within the size bound.
    #[error("provenance snapshot holds a malformed value {0:?}")]
    Value(String),
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "properties_tests.rs"]
mod properties;
