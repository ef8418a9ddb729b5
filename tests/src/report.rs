//! What a person reads when a check fails: each anomaly as plain text (the smallest failing
//! set of operations, in time order), and an SVG timeline of the operations around it, one
//! lane per process, the failing ones outlined.

use crate::history::{Function, Operation, Outcome};
use crate::linearizable::Anomaly;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// A value as it appears in a report: strings quoted, null as "absent".
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "absent".to_string(),
        other => other.to_string(),
    }
}

/// One operation in a few words: `set "a"`, `get -> "a"`, `cas "a" -> "b"`.
pub fn describe(op: &Operation) -> String {
    let done = op.outcome == Outcome::Ok;
    match op.f {
        Function::Get if done => format!("get -> {}", shown(&op.result)),
        Function::Get => "get".to_string(),
        Function::Set => format!("set {}", shown(&op.args)),
        Function::Cas => match op.args.as_array().map(Vec::as_slice) {
            Some([expected, new]) => format!("cas {} -> {}", shown(expected), shown(new)),
            _ => format!("cas {}", op.args),
        },
        Function::Delete if done => format!("delete (existed: {})", op.result),
        Function::Delete => "delete".to_string(),
        Function::List if done => {
            format!("list -> {} keys", op.result.as_array().map_or(0, Vec::len))
        }
        Function::List => "list".to_string(),
    }
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "unknown",
    }
}

/// Milliseconds, for a report.
fn ms(nanos: u64) -> String {
    format!("{:.3} ms", nanos as f64 / 1e6)
}

/// The anomaly as plain text: its operations in the order they were called.
pub fn anomaly_text(anomaly: &Anomaly, history: &[Operation]) -> String {
    let mut ops: Vec<&Operation> = anomaly.ops.iter().map(|&id| &history[id]).collect();
    ops.sort_by_key(|op| op.call);
    let mut text = format!(
        "key {:?}: no order of these {} operations, each taking effect between its call and \
         its return, explains their results:\n",
        anomaly.key,
        ops.len()
    );
    for op in ops {
        let ret = op.ret.map_or_else(|| "never returned".to_string(), ms);
        let _ = writeln!(
            text,
            "  op {:>6}  process {:>4}  {:>14} .. {:>14}  {:<32} {}",
            op.id,
            op.process,
            ms(op.call),
            ret,
            describe(op),
            outcome_word(op.outcome)
        );
    }
    text
}

/// The operations of `key` that overlap the anomaly's time span, for its timeline.
pub fn around<'a>(anomaly: &Anomaly, history: &'a [Operation]) -> Vec<&'a Operation> {
    let own = anomaly.ops.iter().map(|&id| &history[id]);
    let from = own.clone().map(|op| op.call).min().unwrap_or(0);
    let to = own.map(|op| op.ret.unwrap_or(op.call)).max().unwrap_or(0);
    history
        .iter()
        .filter(|op| op.key == anomaly.key && op.call <= to && op.ret.is_none_or(|r| r >= from))
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Width of the drawing, and the space for the lane labels, in pixels.
const WIDTH: f64 = 1200.0;
const LABELS: f64 = 110.0;
const LANE: f64 = 34.0;

/// An SVG timeline of `ops`: one lane per process, a bar per operation from its call to its
/// return (to the right edge, dashed, if it never returned), green for ok, grey for fail,
/// orange for unknown; those in `outlined` get a red border.
pub fn timeline_svg(ops: &[&Operation], outlined: &HashSet<usize>, title: &str) -> String {
    let start = ops.iter().map(|op| op.call).min().unwrap_or(0);
    let end = ops.iter().map(|op| op.ret.unwrap_or(op.call)).max().unwrap_or(start).max(start + 1);
    let lanes: BTreeMap<u64, usize> = {
        let mut processes: Vec<u64> = ops.iter().map(|op| op.process).collect();
        processes.sort_unstable();
        processes.dedup();
        processes.into_iter().enumerate().map(|(lane, p)| (p, lane)).collect()
    };
    let x = |t: u64| LABELS + (t - start) as f64 / (end - start) as f64 * (WIDTH - LABELS - 20.0);
    let height = 50.0 + LANE * lanes.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"11\">\n\
         <text x=\"8\" y=\"18\" font-size=\"13\">{}</text>\n\
         <text x=\"8\" y=\"{}\">{} .. {}</text>\n",
        escape(title),
        height - 6.0,
        ms(start),
        ms(end)
    );
    for (&process, &lane) in &lanes {
        let y = 30.0 + LANE * lane as f64;
        let _ = writeln!(svg, "<text x=\"8\" y=\"{}\">process {process}</text>", y + 18.0);
    }
    for op in ops {
        let y = 30.0 + LANE * lanes[&op.process] as f64;
        let (x0, x1) = (x(op.call), op.ret.map_or(WIDTH - 20.0, x));
        let fill = match op.outcome {
            Outcome::Ok => "#b7e1b0",
            Outcome::Fail => "#d0d0d0",
            Outcome::Info => "#f5c98a",
        };
        let stroke = if outlined.contains(&op.id) { "#d02020" } else { "#606060" };
        let dash = if op.ret.is_none() { " stroke-dasharray=\"4 3\"" } else { "" };
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"24\" fill=\"{fill}\" \
             stroke=\"{stroke}\" stroke-width=\"{}\"{dash}><title>op {}: {}</title></rect>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            (x1 - x0).max(2.0),
            if outlined.contains(&op.id) { 2.5 } else { 1.0 },
            op.id,
            escape(&describe(op)),
            x0 + 3.0,
            y + 16.0,
            escape(&describe(op)),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(id: usize, process: u64, f: Function, args: Value, result: Value) -> Operation {
        Operation {
            id,
            process,
            f,
            key: "k".into(),
            args,
            result,
            outcome: Outcome::Ok,
            call: 1_000_000 * (id as u64 + 1),
            ret: Some(1_000_000 * (id as u64 + 1) + 500_000),
        }
    }

    #[test]
    fn an_anomaly_reads_as_its_operations_in_call_order() {
        let history = [
            op(0, 1, Function::Set, json!("a"), json!("a")),
            op(1, 2, Function::Set, json!("<b>"), json!("<b>")),
            op(2, 3, Function::Get, Value::Null, json!("a")),
        ];
        let anomaly = Anomaly { key: "k".into(), ops: vec![2, 0, 1] };
        let text = anomaly_text(&anomaly, &history);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("set \"a\"") && lines[3].contains("get -> \"a\""), "{text}");
        let svg = timeline_svg(&around(&anomaly, &history), &[2].into(), "k");
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(svg.matches("#d02020").count(), 1, "only op 2 is outlined");
        assert!(svg.contains("&quot;&lt;b&gt;&quot;") && !svg.contains("\"<b>\""), "escaped");
    }
}
