//! The set workload's check: every write adds one unique element under its own key
//! (`set` of `<prefix><element>`), and linearizable lists of the prefix read the set back.
//! A list must hold every element whose add was acknowledged before the list began (else
//! the add was lost), everything an earlier list held (elements are never removed), and
//! nothing that was never added or whose add surely failed. Each element missing is reported
//! once, at the first list that misses it.

use crate::history::{Function, Operation, Outcome};
use crate::linearizable::Verdict;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One element a list got wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAnomaly {
    /// The element's key.
    pub key: String,
    /// The list that got it wrong (an operation id).
    pub list: usize,
    /// What is wrong.
    pub what: SetFault,
}

/// How a list got an element wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetFault {
    /// Missing, though its add (this operation) was acknowledged before the list began.
    Lost {
        /// The add.
        add: usize,
    },
    /// Missing, though this earlier list (which ended before this one began) held it.
    Vanished {
        /// The earlier list.
        seen_by: usize,
    },
    /// Present, though no add of it was tried, or its add surely failed.
    Unexpected,
}

/// The result of the set check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetReport {
    /// Valid, or Invalid with at least one anomaly.
    pub verdict: Verdict,
    /// Lists checked (those that completed `ok`).
    pub lists: usize,
    /// Acknowledged adds.
    pub acknowledged: usize,
    /// Adds of unknown outcome that the last list holds (they took effect).
    pub unknown_present: usize,
    /// Every anomaly found.
    pub anomalies: Vec<SetAnomaly>,
}

/// A list's result: the keys it found.
fn listed(op: &Operation) -> Result<BTreeSet<String>, String> {
    let Value::Array(items) = &op.result else {
        return Err(format!("list {}: the result must be an array of keys", op.id));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(key) => Ok(key.clone()),
            other => Err(format!("list {}: {other} is not a key", op.id)),
        })
        .collect()
}

/// Checks the adds and lists under `prefix` in `history`.
pub fn check(history: &[Operation], prefix: &str) -> Result<SetReport, String> {
    let adds: Vec<&Operation> =
        history.iter().filter(|op| op.f == Function::Set && op.key.starts_with(prefix)).collect();
    let by_key: HashMap<&str, &Operation> = adds.iter().map(|op| (op.key.as_str(), *op)).collect();
    let mut lists: Vec<(&Operation, BTreeSet<String>)> = Vec::new();
    for op in history {
        if op.f == Function::List && op.key == prefix && op.outcome == Outcome::Ok {
            lists.push((op, listed(op)?));
        }
    }
    let mut anomalies = Vec::new();
    // Every element held by a list that ended before the current one began, with the
    // first such list: lists by call time, the ended ones folded in by return time.
    lists.sort_by_key(|(list, _)| list.call);
    let mut by_return: Vec<usize> = (0..lists.len()).collect();
    by_return.sort_by_key(|&i| lists[i].0.ret);
    let (mut seen, mut folded) = (BTreeMap::new(), 0);
    let (mut vanished, mut unexpected) = (BTreeSet::new(), BTreeSet::new());
    for (list, found) in &lists {
        while folded < by_return.len() && lists[by_return[folded]].0.ret < Some(list.call) {
            let (earlier, held) = &lists[by_return[folded]];
            for key in held {
                seen.entry(key.clone()).or_insert(earlier.id);
            }
            folded += 1;
        }
        let anomaly = |key: &str, what| SetAnomaly { key: key.to_string(), list: list.id, what };
        for add in &adds {
            let acknowledged = add.outcome == Outcome::Ok && add.ret < Some(list.call);
            if acknowledged && !found.contains(&add.key) && !vanished.contains(&add.key) {
                anomalies.push(anomaly(&add.key, SetFault::Lost { add: add.id }));
                vanished.insert(add.key.clone()); // reported once
            }
        }
        for (key, &seen_by) in &seen {
            if !found.contains(key) && vanished.insert(key.clone()) {
                anomalies.push(anomaly(key, SetFault::Vanished { seen_by }));
            }
        }
        for key in found {
            let tried = by_key.get(key.as_str()).is_some_and(|add| add.outcome != Outcome::Fail);
            if !tried && unexpected.insert(key.clone()) {
                anomalies.push(anomaly(key, SetFault::Unexpected));
            }
        }
    }
    let last = lists.iter().max_by_key(|(list, _)| list.call).map(|(_, found)| found);
    let unknown_present = adds
        .iter()
        .filter(|add| add.outcome == Outcome::Info && last.is_some_and(|l| l.contains(&add.key)))
        .count();
    Ok(SetReport {
        verdict: if anomalies.is_empty() { Verdict::Valid } else { Verdict::Invalid },
        lists: lists.len(),
        acknowledged: adds.iter().filter(|add| add.outcome == Outcome::Ok).count(),
        unknown_present,
        anomalies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{pair, Event, EventType};
    use serde_json::json;
    use EventType::{Fail, Info, Invoke, Ok};

    fn ev(process: u64, kind: EventType, f: Function, key: &str, value: Value, time: u64) -> Event {
        Event { process, kind, f, key: key.into(), value, time }
    }

    fn add(process: u64, element: &str, outcome: EventType, from: u64, to: u64) -> [Event; 2] {
        let key = format!("s/{element}");
        [
            ev(process, Invoke, Function::Set, &key, json!(element), from),
            ev(process, outcome, Function::Set, &key, json!(element), to),
        ]
    }

    fn list(process: u64, keys: &[&str], from: u64, to: u64) -> [Event; 2] {
        [
            ev(process, Invoke, Function::List, "s/", Value::Null, from),
            ev(process, Ok, Function::List, "s/", json!(keys), to),
        ]
    }

    fn report(events: &[[Event; 2]]) -> SetReport {
        let mut all: Vec<Event> = events.iter().flatten().cloned().collect();
        all.sort_by_key(|e| e.time);
        check(&pair(&all).unwrap(), "s/").unwrap()
    }

    #[test]
    fn every_acknowledged_add_listed_is_valid_and_unknown_ones_may_be_there() {
        let r = report(&[
            add(1, "a", Ok, 0, 10),
            add(2, "b", Info, 1, 11),
            add(3, "c", Ok, 20, 30), // concurrent with the first list: may be missing
            list(4, &["s/a"], 25, 35),
            list(4, &["s/a", "s/b", "s/c"], 40, 50),
        ]);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
        assert_eq!((r.lists, r.acknowledged, r.unknown_present), (2, 2, 1));
    }

    #[test]
    fn an_acknowledged_add_missing_from_a_later_list_is_lost() {
        let r =
            report(&[add(1, "a", Ok, 0, 10), add(2, "b", Ok, 1, 12), list(3, &["s/b"], 20, 30)]);
        assert_eq!(r.verdict, Verdict::Invalid);
        let lost = SetAnomaly { key: "s/a".into(), list: 2, what: SetFault::Lost { add: 0 } };
        assert_eq!(r.anomalies, [lost]);
    }

    #[test]
    fn an_element_seen_then_gone_vanished_and_one_never_added_is_unexpected() {
        let r = report(&[
            add(1, "a", Info, 0, 10),
            add(2, "x", Fail, 1, 11),
            list(3, &["s/a"], 20, 30),
            list(3, &["s/x"], 40, 50),
        ]);
        assert_eq!(r.verdict, Verdict::Invalid);
        let faults: Vec<_> = r.anomalies.iter().map(|a| (a.key.as_str(), &a.what)).collect();
        assert_eq!(
            faults,
            [("s/a", &SetFault::Vanished { seen_by: 2 }), ("s/x", &SetFault::Unexpected)]
        );
    }
}
