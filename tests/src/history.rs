//! A run's history: every operation a client tried, as an `invoke` event followed by one
//! completion: `ok` (it happened, with this result), `fail` (it surely did not happen) or
//! `info` (its outcome is unknown: a timeout, a lost connection). The file holds one JSON
//! object per line, in the order the events happened:
//!
//! ```text
//! {"process":3,"type":"invoke","f":"cas","key":"r7","value":["a","b"],"time":1200}
//! {"process":3,"type":"ok","f":"cas","key":"r7","value":["a","b"],"time":1850}
//! ```
//!
//! `time` is nanoseconds on a monotonic clock from the start of the run. `value` by `f`:
//!
//! | f | invoke | ok |
//! |---|---|---|
//! | `get` | `null` | the value read, `null` if the key was absent |
//! | `set` | the value written | the same |
//! | `cas` | `[expected, new]` (`expected` `null`: only if absent) | the same (the swap happened) |
//! | `delete` | `null` | `true` if the key was there, `false` if not |
//! | `list` | `null` (`key` is the prefix) | the keys found, in order |
//!
//! A `cas` whose comparison failed is a `fail`: it surely changed nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Write};

/// What an event says of its operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client sends the request.
    Invoke,
    /// The operation happened, with the result in `value`.
    Ok,
    /// The operation surely did not happen.
    Fail,
    /// The outcome is unknown: it may have happened, at any time after the invoke, or not.
    Info,
}

/// The operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// A linearizable read of one key.
    Get,
    /// A write of one key.
    Set,
    /// A compare-and-set of one key.
    Cas,
    /// A delete of one key.
    Delete,
    /// A linearizable list of the keys under a prefix.
    List,
}

/// One line of the history file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// The client that runs the operation; one operation at a time per process.
    pub process: u64,
    /// Invoke or a completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation.
    pub f: Function,
    /// The key (for `list`, the prefix).
    pub key: String,
    /// Arguments or result, by `f` (see the module docs).
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run, on a monotonic clock.
    pub time: u64,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It surely did not happen.
    Fail,
    /// Unknown: completed `info`, or the history ended before it completed.
    Info,
}

/// An invoke paired with its completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    /// Its position among the operations, in order of invocation.
    pub id: usize,
    /// The client.
    pub process: u64,
    /// The operation.
    pub f: Function,
    /// The key (for `list`, the prefix).
    pub key: String,
    /// The invoke's value: the arguments.
    pub args: Value,
    /// The completion's value: the result (`Value::Null` if there was none).
    pub result: Value,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was invoked.
    pub call: u64,
    /// When it completed; `None` for an unknown outcome, which may take effect at any time
    /// after `call`, or never.
    pub ret: Option<u64>,
}

/// A history that cannot be read or paired.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("history line {line}: {reason}")]
pub struct HistoryError {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Writes `event` as one line.
pub fn write_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")
}

/// Reads the events of a history file (empty lines are skipped).
pub fn read_events(input: impl BufRead) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (at, line) in input.lines().enumerate() {
        let line = line.map_err(|e| HistoryError { line: at + 1, reason: e.to_string() })?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line)
            .map_err(|e| HistoryError { line: at + 1, reason: e.to_string() })?;
        events.push(event);
    }
    Ok(events)
}

/// Pairs each invoke with the next completion of the same process. An invoke still open at
/// the end of the history is an unknown outcome (`Info`).
pub fn pair(events: &[Event]) -> Result<Vec<Operation>, HistoryError> {
    let mut operations: Vec<Operation> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for (at, event) in events.iter().enumerate() {
        let error = |reason: String| HistoryError { line: at + 1, reason };
        if event.kind == EventType::Invoke {
            if let Some(&earlier) = open.get(&event.process) {
                return Err(error(format!(
                    "process {} invokes while its operation {earlier} is still open",
                    event.process
                )));
            }
            open.insert(event.process, operations.len());
            operations.push(Operation {
                id: operations.len(),
                process: event.process,
                f: event.f,
                key: event.key.clone(),
                args: event.value.clone(),
                result: Value::Null,
                outcome: Outcome::Info,
                call: event.time,
                ret: None,
            });
            continue;
        }
        let Some(id) = open.remove(&event.process) else {
            return Err(error(format!("process {} completes with nothing open", event.process)));
        };
        let operation = &mut operations[id];
        if (operation.f, &operation.key) != (event.f, &event.key) {
            return Err(error(format!(
                "process {} completes {:?} {:?} but invoked {:?} {:?}",
                event.process, event.f, event.key, operation.f, operation.key
            )));
        }
        if event.time < operation.call {
            return Err(error(format!("completed at {} before its invoke", event.time)));
        }
        operation.result = event.value.clone();
        match event.kind {
            EventType::Ok => (operation.outcome, operation.ret) = (Outcome::Ok, Some(event.time)),
            EventType::Fail => {
                (operation.outcome, operation.ret) = (Outcome::Fail, Some(event.time));
            }
            EventType::Info | EventType::Invoke => {} // unknown: it may take effect later
        }
    }
    Ok(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(process: u64, kind: EventType, f: Function, value: Value, time: u64) -> Event {
        Event { process, kind, f, key: "k".into(), value, time }
    }

    #[test]
    fn events_round_trip_through_json_lines_in_the_documented_shape() {
        let cas = event(3, EventType::Invoke, Function::Cas, json!(["a", "b"]), 1200);
        let mut out = Vec::new();
        write_event(&mut out, &cas).unwrap();
        let line = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            line,
            "{\"process\":3,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"k\",\
             \"value\":[\"a\",\"b\"],\"time\":1200}\n"
        );
        assert_eq!(read_events(&out[..]).unwrap(), vec![cas]);
    }

    #[test]
    fn invokes_pair_with_their_completions_and_open_ones_are_unknown() {
        use EventType::*;
        let events = [
            event(1, Invoke, Function::Set, json!("a"), 10),
            event(2, Invoke, Function::Get, Value::Null, 11),
            event(1, Ok, Function::Set, json!("a"), 20),
            event(2, Fail, Function::Get, Value::Null, 21),
            event(1, Invoke, Function::Delete, Value::Null, 30),
            event(1, Info, Function::Delete, Value::Null, 40),
            event(3, Invoke, Function::Set, json!("b"), 50),
        ];
        let ops = pair(&events).unwrap();
        let summary: Vec<_> = ops.iter().map(|o| (o.process, o.outcome, o.call, o.ret)).collect();
        assert_eq!(
            summary,
            [
                (1, Outcome::Ok, 10, Some(20)),
                (2, Outcome::Fail, 11, Some(21)),
                (1, Outcome::Info, 30, None),
                (3, Outcome::Info, 50, None),
            ]
        );
    }

    #[test]
    fn malformed_histories_are_refused_with_the_line() {
        use EventType::*;
        let twice = [
            event(1, Invoke, Function::Set, json!("a"), 10),
            event(1, Invoke, Function::Set, json!("b"), 11),
        ];
        assert_eq!(pair(&twice).unwrap_err().line, 2);
        let orphan = [event(1, Ok, Function::Set, json!("a"), 10)];
        assert_eq!(pair(&orphan).unwrap_err().line, 1);
        let other_key = [
            event(1, Invoke, Function::Set, json!("a"), 10),
            Event { key: "other".into(), ..event(1, Ok, Function::Set, json!("a"), 11) },
        ];
        assert_eq!(pair(&other_key).unwrap_err().line, 2);
        let garbage = b"{\"process\":1}\nnot json\n";
        assert_eq!(read_events(&garbage[..]).unwrap_err().line, 1);
    }
}
