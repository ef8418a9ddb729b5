//! Linearizability of a history of single-key operations, key by key (a history is
//! linearizable iff each key's sub-history is, since the keys are independent registers).
//!
//! The search is Wing and Gong's, with Lowe's memoization ("Testing for linearizability",
//! 2017), as Knossos and Porcupine do it: walk the operations in time order, try to
//! linearize each operation whose call has been reached before any pending return, and
//! backtrack when a return is reached with its operation not yet linearized. A configuration
//! (the set of operations linearized, the register's value) seen before is not explored
//! again.
//!
//! Operations that failed are left out (they surely did not happen). An operation with an
//! unknown outcome may take effect at any time after its call, or never: its return is
//! placed after every other event, and the history is linearizable once every operation with
//! a known outcome is linearized. An unknown read is left out (it changes nothing).
//!
//! A key's search that runs out of its time or memory budget is `Unknown`, never `Valid`.

use crate::history::{Function, Operation, Outcome};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What the check found for a key, or for the whole history (the worst of its keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Some order of the operations, each inside its call and return, explains every result.
    Valid,
    /// The search ran out of budget before deciding.
    Unknown,
    /// No order explains the results: an anomaly.
    Invalid,
}

/// A register operation, its values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// A read that saw this value (`None`: absent).
    Read(Option<u32>),
    /// A write of this value.
    Write(u32),
    /// A compare-and-set that swapped: the value was `expected`, and became `new`.
    Cas { expected: Option<u32>, new: u32 },
    /// A delete; `existed` is what it reported, if it is known.
    Delete { existed: Option<bool> },
}

impl Action {
    /// The register after this action on `state`, or `None` if the action cannot happen
    /// on `state` (its result contradicts it).
    fn step(self, state: Option<u32>) -> Option<Option<u32>> {
        match self {
            Action::Read(seen) => (seen == state).then_some(state),
            Action::Write(value) => Some(Some(value)),
            Action::Cas { expected, new } => (expected == state).then_some(Some(new)),
            Action::Delete { existed } => {
                existed.is_none_or(|existed| existed == state.is_some()).then_some(None)
            }
        }
    }
}

/// One operation of a key, ready for the search.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// The operation's `id` in the history.
    id: usize,
    call: u64,
    /// `None`: unknown outcome.
    ret: Option<u64>,
    action: Action,
}

/// A history operation that cannot be read as a register operation.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("operation {id} ({f:?} of {key:?}): {reason}")]
pub struct BadOperation {
    /// The operation's id.
    pub id: usize,
    /// Its function.
    pub f: Function,
    /// Its key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Interned values: a search compares numbers, not strings.
#[derive(Default)]
struct Values(HashMap<String, u32>);

impl Values {
    fn intern(&mut self, value: &str) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(value.to_string()).or_insert(next)
    }

    /// A JSON string, or null for "absent".
    fn optional(&mut self, value: &Value) -> Result<Option<u32>, String> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(self.intern(s))),
            other => Err(format!("expected a string or null, got {other}")),
        }
    }

    fn required(&mut self, value: &Value) -> Result<u32, String> {
        self.optional(value)?.ok_or_else(|| "expected a string, got null".to_string())
    }
}

/// The register action of `op`, or `None` if it is left out of the search.
fn action(op: &Operation, values: &mut Values) -> Result<Option<Action>, String> {
    if op.outcome == Outcome::Fail {
        return Ok(None);
    }
    let known = op.outcome == Outcome::Ok;
    Ok(Some(match op.f {
        Function::Get if !known => return Ok(None),
        Function::Get => Action::Read(values.optional(&op.result)?),
        Function::Set => Action::Write(values.required(&op.args)?),
        Function::Cas => {
            let Some([expected, new]) = op.args.as_array().map(Vec::as_slice) else {
                return Err(format!("cas arguments must be [expected, new], got {}", op.args));
            };
            Action::Cas { expected: values.optional(expected)?, new: values.required(new)? }
        }
        Function::Delete if !known => Action::Delete { existed: None },
        Function::Delete => match op.result {
            Value::Bool(existed) => Action::Delete { existed: Some(existed) },
            ref other => return Err(format!("a delete's result must be true or false: {other}")),
        },
        Function::List => return Ok(None),
    }))
}

/// The budget of one search.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// The search gives up ("unknown") at this instant.
    pub deadline: Instant,
    /// ... or once it remembers this many configurations.
    pub configurations_max: usize,
}

/// One entry of the time-ordered list: an operation's call or return.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Index into the key's operations.
    op: usize,
    is_call: bool,
}

/// The sentinel before the first entry, and the end marker.
const NIL: usize = usize::MAX;

/// The search over one key's operations (Lowe's algorithm with a doubly linked list whose
/// entries are lifted out when their operation is linearized and put back on backtracking).
struct Search<'a> {
    ops: &'a [KeyOp],
    entries: Vec<Entry>,
    /// `next`/`prev` of each entry; index `entries.len()` is the head sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The entry of each operation's return.
    return_entry: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp]) -> Search<'a> {
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            entries.push((op.call, true, i));
            entries.push((op.ret.unwrap_or(u64::MAX), false, i));
        }
        // At equal times calls come first: such operations are taken as concurrent.
        entries.sort_by_key(|&(time, is_call, op)| (time, !is_call, op));
        let n = entries.len();
        let head = n;
        let mut next = vec![NIL; n + 1];
        let mut prev = vec![NIL; n + 1];
        let mut return_entry = vec![0; ops.len()];
        let mut last = head;
        for (e, &(_, is_call, op)) in entries.iter().enumerate() {
            next[last] = e;
            prev[e] = last;
            last = e;
            if !is_call {
                return_entry[op] = e;
            }
        }
        let entries = entries.into_iter().map(|(_, is_call, op)| Entry { op, is_call }).collect();
        Search { ops, entries, next, prev, return_entry }
    }

    fn head(&self) -> usize {
        self.entries.len()
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts `e` back where it was; entries go back in the reverse order they were lifted.
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, call: usize) {
        let ret = self.return_entry[self.entries[call].op];
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.return_entry[self.entries[call].op];
        self.relink(ret);
        self.relink(call);
    }

    fn run(mut self, budget: Budget) -> Verdict {
        let mut state: Option<u32> = None;
        let mut linearized = vec![0u64; self.ops.len().div_ceil(64)];
        let mut seen: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
        let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
        let mut e = self.next[self.head()];
        let mut steps: u64 = 0;
        loop {
            if e == NIL {
                return Verdict::Valid;
            }
            steps += 1;
            if steps.is_multiple_of(1024) && Instant::now() >= budget.deadline {
                return Verdict::Unknown;
            }
            let Entry { op, is_call } = self.entries[e];
            if is_call {
                if let Some(after) = self.ops[op].action.step(state) {
                    linearized[op / 64] |= 1 << (op % 64);
                    if seen.insert((linearized.clone(), after)) {
                        if seen.len() > budget.configurations_max {
                            return Verdict::Unknown;
                        }
                        stack.push((e, state));
                        state = after;
                        self.lift(e);
                        e = self.next[self.head()];
                        continue;
                    }
                    linearized[op / 64] &= !(1 << (op % 64));
                }
                e = self.next[e];
            } else if self.ops[op].ret.is_none() {
                // Only returns of unknown operations are left: every operation with a known
                // outcome is linearized, and the unknown ones left never took effect.
                return Verdict::Valid;
            } else {
                // `op` returned before it could be linearized: undo the last choice.
                let Some((call, before)) = stack.pop() else { return Verdict::Invalid };
                let undone = self.entries[call].op;
                linearized[undone / 64] &= !(1 << (undone % 64));
                state = before;
                self.unlift(call);
                e = self.next[call];
            }
        }
    }
}

/// An anomaly: a key whose operations no order explains, with a smallest such subset.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// The key.
    pub key: String,
    /// The ids of a minimal set of its operations that is not linearizable by itself (no
    /// operation can be dropped without the rest becoming explainable, or leaving a read
    /// of a value no remaining operation wrote).
    pub ops: Vec<usize>,
}

/// The result of checking a history.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The worst verdict of any key.
    pub verdict: Verdict,
    /// Keys checked.
    pub keys: usize,
    /// Each key found not linearizable.
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search ran out of budget.
    pub unknown: Vec<String>,
}

/// Checks every key's get, set, cas and delete operations of `history` (list operations are
/// the set checker's), giving each key's search at most `per_key`.
pub fn check(history: &[Operation], per_key: Duration) -> Result<Report, BadOperation> {
    let mut by_key: HashMap<&str, (Values, Vec<KeyOp>)> = HashMap::new();
    for op in history {
        let (values, ops) = by_key.entry(&op.key).or_default();
        let action = action(op, values).map_err(|reason| BadOperation {
            id: op.id,
            f: op.f,
            key: op.key.clone(),
            reason,
        })?;
        if let Some(action) = action {
            ops.push(KeyOp { id: op.id, call: op.call, ret: op.ret, action });
        }
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    let mut report =
        Report { verdict: Verdict::Valid, keys: keys.len(), anomalies: vec![], unknown: vec![] };
    for key in keys {
        let ops = &by_key[key].1;
        match check_key(ops, per_key) {
            Verdict::Valid => {}
            Verdict::Unknown => report.unknown.push(key.to_string()),
            Verdict::Invalid => {
                let smallest = minimize(ops, per_key);
                let ids = smallest.iter().map(|op| op.id).collect();
                report.anomalies.push(Anomaly { key: key.to_string(), ops: ids });
            }
        }
    }
    report.verdict = match (report.anomalies.is_empty(), report.unknown.is_empty()) {
        (false, _) => Verdict::Invalid,
        (true, false) => Verdict::Unknown,
        (true, true) => Verdict::Valid,
    };
    Ok(report)
}

/// Configurations one key's search may remember (about 100 bytes each, more with many
/// operations).
const CONFIGURATIONS_MAX: usize = 4_000_000;

fn check_key(ops: &[KeyOp], time: Duration) -> Verdict {
    let budget = Budget { deadline: Instant::now() + time, configurations_max: CONFIGURATIONS_MAX };
    Search::new(ops).run(budget)
}

/// Drops operations from a non-linearizable `ops` one at a time, as long as what is left is
/// still not linearizable and every value read or compared is still produced by one of them
/// (so that the anomaly shown is the one found, not one made by dropping a write). Passes go
/// from the last operation back (reads after a write go before the write) and repeat until
/// none can be dropped. Gives up dropping, with what it has, after `time`.
fn minimize(ops: &[KeyOp], time: Duration) -> Vec<KeyOp> {
    let deadline = Instant::now() + time;
    let mut kept = ops.to_vec();
    let mut dropped_any = true;
    while dropped_any && Instant::now() < deadline {
        dropped_any = false;
        for at in (0..kept.len()).rev() {
            let mut trial = kept.clone();
            let dropped = trial.remove(at);
            let left = deadline.saturating_duration_since(Instant::now());
            if still_explains_its_reads(&trial, dropped)
                && check_key(&trial, left) == Verdict::Invalid
            {
                kept = trial;
                dropped_any = true;
            }
        }
    }
    kept
}

/// What an operation's result needs an earlier operation to have produced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// This value (a read of it, or a compare-and-set expecting it).
    Value(u32),
    /// The key absent (a delete; or the initial state, which is not counted).
    Absent,
    /// Some value (a delete that found the key there).
    AnyValue,
}

fn need(op: &KeyOp) -> Option<Need> {
    match op.action {
        Action::Read(Some(v)) | Action::Cas { expected: Some(v), .. } => Some(Need::Value(v)),
        Action::Read(None) | Action::Cas { expected: None, .. } => Some(Need::Absent),
        Action::Delete { existed: Some(false) } => Some(Need::Absent),
        Action::Delete { existed: Some(true) } => Some(Need::AnyValue),
        Action::Write(_) | Action::Delete { existed: None } => None,
    }
}

fn supplies(op: &KeyOp, need: Need) -> bool {
    match (op.action, need) {
        (Action::Write(v) | Action::Cas { new: v, .. }, Need::Value(wanted)) => v == wanted,
        (Action::Write(_) | Action::Cas { .. }, Need::AnyValue) => true,
        (Action::Delete { .. }, Need::Absent) => true,
        _ => false,
    }
}

/// Whether no result left in `ops` may have come from `dropped` (it was called before the
/// result came back, and produces what the result needs). Dropping an operation that a
/// result may depend on could make up an anomaly instead of showing the one found, even with
/// another possible source left: the search might then have to pair them differently.
fn still_explains_its_reads(ops: &[KeyOp], dropped: KeyOp) -> bool {
    // At equal times the search takes the call first, so `<=`: a write called as a read
    // returns may be what it read.
    let could_supply = |consumer: &KeyOp| consumer.ret.is_none_or(|r| dropped.call <= r);
    !ops.iter().any(|consumer| {
        need(consumer).is_some_and(|wanted| supplies(&dropped, wanted) && could_supply(consumer))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Event, EventType};
    use serde_json::json;

    /// A history written as a trace: `(process, type, f, value, time)` on key "k".
    fn history(events: &[(u64, EventType, Function, Value, u64)]) -> Vec<Operation> {
        let events: Vec<Event> = events
            .iter()
            .map(|(process, kind, f, value, time)| Event {
                process: *process,
                kind: *kind,
                f: *f,
                key: "k".into(),
                value: value.clone(),
                time: *time,
            })
            .collect();
        pair(&events).unwrap()
    }

    fn verdict(ops: &[Operation]) -> Verdict {
        check(ops, Duration::from_secs(5)).unwrap().verdict
    }

    fn smallest(ops: &[Operation]) -> Vec<usize> {
        let report = check(ops, Duration::from_secs(5)).unwrap();
        assert_eq!(report.anomalies.len(), 1, "{report:?}");
        report.anomalies[0].ops.clone()
    }

    use EventType::{Fail, Info, Invoke, Ok};
    use Function::{Cas, Delete, Get, Set};

    #[test]
    fn concurrent_writes_and_reads_in_some_order_are_valid() {
        let ops = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (2, Invoke, Set, json!("b"), 11),
            (3, Invoke, Get, json!(null), 12),
            (3, Ok, Get, json!("a"), 13), // b first, then a, then this read
            (1, Ok, Set, json!("a"), 20),
            (2, Ok, Set, json!("b"), 21),
            (3, Invoke, Get, json!(null), 30),
            (3, Ok, Get, json!("a"), 31),
        ]);
        assert_eq!(verdict(&ops), Verdict::Valid);
    }

    /// The anomaly ReadIndex prevents: a read that returns after a later write completed,
    /// yet sees the value before it.
    #[test]
    fn a_stale_read_is_invalid_and_shown_with_the_writes_it_contradicts() {
        let ops = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Ok, Set, json!("a"), 20),
            (4, Invoke, Get, json!(null), 22),
            (4, Ok, Get, json!("a"), 24), // fine: after a
            (2, Invoke, Set, json!("b"), 30),
            (2, Ok, Set, json!("b"), 40),
            (3, Invoke, Get, json!(null), 50),
            (3, Ok, Get, json!("a"), 60), // stale: b was acknowledged before this began
        ]);
        assert_eq!(verdict(&ops), Verdict::Invalid);
        assert_eq!(smallest(&ops), [0, 2, 3], "set a, set b, the stale read");
    }

    /// The smallest failing set keeps what its results may depend on. Here the delete found
    /// the key there thanks to `set a`: dropping `set a` would leave {delete, set b, get b},
    /// which fails only because the delete must then find `b` (an anomaly made up by the
    /// dropping). What is shown is the stale read with the two writes before it.
    #[test]
    fn the_smallest_failing_set_keeps_what_its_results_may_depend_on() {
        let ops = history(&[
            (1, Invoke, Set, json!("a"), 0),
            (1, Ok, Set, json!("a"), 10),
            (2, Invoke, Delete, json!(null), 100),
            (3, Invoke, Set, json!("b"), 110),
            (2, Ok, Delete, json!(true), 200),
            (2, Invoke, Get, json!(null), 210),
            (2, Ok, Get, json!("b"), 220),
            (3, Ok, Set, json!("b"), 300),
            (4, Invoke, Get, json!(null), 400),
            (4, Ok, Get, json!("a"), 410), // stale: a was deleted, and b written since
        ]);
        assert_eq!(verdict(&ops), Verdict::Invalid);
        assert_eq!(smallest(&ops), [0, 2, 4], "set a, set b, the stale read");
    }

    /// An acknowledged write that a later read does not see, with nothing in between.
    #[test]
    fn a_lost_write_is_invalid() {
        let ops = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Ok, Set, json!("a"), 20),
            (2, Invoke, Get, json!(null), 30),
            (2, Ok, Get, json!(null), 40),
        ]);
        assert_eq!(verdict(&ops), Verdict::Invalid);
        assert_eq!(smallest(&ops), [0, 1]);
    }

    /// Two compare-and-sets from the same value both succeeding: one of them saw a value
    /// that was already gone.
    #[test]
    fn a_cas_that_succeeded_twice_is_invalid() {
        let ops = history(&[
            (1, Invoke, Set, json!("x"), 0),
            (1, Ok, Set, json!("x"), 5),
            (2, Invoke, Cas, json!(["x", "y"]), 10),
            (3, Invoke, Cas, json!(["x", "z"]), 11),
            (2, Ok, Cas, json!(["x", "y"]), 20),
            (3, Ok, Cas, json!(["x", "z"]), 21),
        ]);
        assert_eq!(verdict(&ops), Verdict::Invalid);
        assert_eq!(smallest(&ops), [0, 1, 2]);
    }

    /// An operation with an unknown outcome may have happened (then at any time after its
    /// call, even after later operations) or not; a failed one surely did not.
    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened_and_failures_did_not() {
        let happened_late = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Info, Set, json!("a"), 20),
            (2, Invoke, Get, json!(null), 30),
            (2, Ok, Get, json!(null), 40), // not yet
            (2, Invoke, Get, json!(null), 50),
            (2, Ok, Get, json!("a"), 60), // now
        ]);
        assert_eq!(verdict(&happened_late), Verdict::Valid);
        let never = history(&[
            (1, Invoke, Cas, json!([null, "a"]), 10),
            (1, Info, Cas, json!([null, "a"]), 20),
            (2, Invoke, Get, json!(null), 30),
            (2, Ok, Get, json!(null), 40),
        ]);
        assert_eq!(verdict(&never), Verdict::Valid);
        let failed_but_seen = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Fail, Set, json!("a"), 20),
            (2, Invoke, Get, json!(null), 30),
            (2, Ok, Get, json!("a"), 40), // reads a write that surely did not happen
        ]);
        assert_eq!(verdict(&failed_but_seen), Verdict::Invalid);
    }

    #[test]
    fn deletes_must_report_what_was_there() {
        let ops = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Ok, Set, json!("a"), 20),
            (2, Invoke, Delete, json!(null), 30),
            (2, Ok, Delete, json!(false), 40), // the key was there
        ]);
        assert_eq!(verdict(&ops), Verdict::Invalid);
        let fine = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Ok, Set, json!("a"), 20),
            (2, Invoke, Delete, json!(null), 30),
            (2, Ok, Delete, json!(true), 40),
            (2, Invoke, Get, json!(null), 50),
            (2, Ok, Get, json!(null), 60),
        ]);
        assert_eq!(verdict(&fine), Verdict::Valid);
    }

    /// Keys are independent registers: a value of one key seen under another is an anomaly
    /// of that key alone.
    #[test]
    fn each_key_is_checked_on_its_own() {
        let mut ops = history(&[
            (1, Invoke, Set, json!("a"), 10),
            (1, Ok, Set, json!("a"), 20),
            (2, Invoke, Get, json!(null), 30),
            (2, Ok, Get, json!("a"), 40),
        ]);
        ops[1].key = "other".into();
        let report = check(&ops, Duration::from_secs(5)).unwrap();
        assert_eq!(report.keys, 2);
        assert_eq!(report.verdict, Verdict::Invalid);
        assert_eq!(report.anomalies[0].key, "other");
    }

    /// A search that cannot finish in its budget says so: it never claims the history valid.
    #[test]
    fn a_search_out_of_budget_is_unknown_never_valid() {
        // Many concurrent writes and one read that no order explains: the search must try
        // every subset of the writes before it can say so.
        let mut events = Vec::new();
        for p in 0..40u64 {
            events.push((p, Invoke, Set, json!(format!("v{p}")), 10 + p));
        }
        events.push((99, Invoke, Get, json!(null), 60));
        events.push((99, Ok, Get, json!("never written"), 61));
        for p in 0..40u64 {
            events.push((p, Ok, Set, json!(format!("v{p}")), 100 + p));
        }
        let ops = history(&events);
        let report = check(&ops, Duration::from_millis(50)).unwrap();
        assert_eq!(report.verdict, Verdict::Unknown, "{report:?}");
        assert_eq!(report.unknown, ["k"]);
    }

    /// The reference: tries every order of the operations that respects real time, each
    /// operation of unknown outcome included or left out. Only for a handful of operations.
    fn brute_force(ops: &[KeyOp]) -> bool {
        fn place(ops: &[KeyOp], left: &mut Vec<usize>, state: Option<u32>) -> bool {
            if left.iter().all(|&i| ops[i].ret.is_none()) {
                return true;
            }
            for at in 0..left.len() {
                let x = ops[left[at]];
                let preceded = left.iter().any(|&y| ops[y].ret.is_some_and(|r| r < x.call));
                let Some(after) = x.action.step(state).filter(|_| !preceded) else { continue };
                let taken = left.remove(at);
                let found = place(ops, left, after);
                left.insert(at, taken);
                if found {
                    return true;
                }
            }
            false
        }
        place(ops, &mut (0..ops.len()).collect(), None)
    }

    fn arbitrary_action() -> impl proptest::strategy::Strategy<Value = Action> {
        use proptest::prelude::*;
        let value = || prop_oneof![Just(None), (0..3u32).prop_map(Some)];
        prop_oneof![
            value().prop_map(Action::Read),
            (0..3u32).prop_map(Action::Write),
            (value(), 0..3u32).prop_map(|(expected, new)| Action::Cas { expected, new }),
            prop_oneof![Just(None), any::<bool>().prop_map(Some)]
                .prop_map(|existed| Action::Delete { existed }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        })]

        /// The search agrees with trying every order, on small random histories (most of
        /// them not linearizable, since their results are drawn at random).
        #[test]
        fn the_search_agrees_with_trying_every_order(
            raw in proptest::collection::vec(
                (0..20u64, 0..8u64, proptest::bool::weighted(0.2), arbitrary_action()),
                1..7,
            )
        ) {
            let ops: Vec<KeyOp> = raw
                .iter()
                .enumerate()
                .map(|(id, &(call, length, unknown, action))| {
                    let unknown = unknown && !matches!(action, Action::Read(_));
                    let ret = (!unknown).then_some(call + length);
                    let action = match action {
                        Action::Delete { .. } if unknown => Action::Delete { existed: None },
                        other => other,
                    };
                    KeyOp { id, call, ret, action }
                })
                .collect();
            let expected = if brute_force(&ops) { Verdict::Valid } else { Verdict::Invalid };
            proptest::prop_assert_eq!(check_key(&ops, Duration::from_secs(5)), expected);
        }
    }

    #[test]
    fn malformed_values_are_refused_naming_the_operation() {
        let ops = history(&[(1, Invoke, Cas, json!("not a pair"), 10), (1, Ok, Cas, json!(1), 20)]);
        let error = check(&ops, Duration::from_secs(1)).unwrap_err();
        assert_eq!((error.id, error.f), (0, Cas));
        assert!(error.reason.contains("[expected, new]"), "{error}");
    }
}
