//! The run's picture (`plot.svg`): completed operations per second on top, each operation's
//! latency below (one dot per operation, sampled evenly in a long run; log scale; green ok,
//! grey fail, orange unknown at the top edge), and the fault windows shaded across both,
//! labelled with their kind.

use crate::history::{Operation, Outcome};
use crate::nemesis::FaultWindow;
use std::fmt::Write as _;

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP_PANEL: (f64, f64) = (40.0, 200.0);
const BOTTOM_PANEL: (f64, f64) = (240.0, 520.0);
const HEIGHT: f64 = 560.0;
/// Latencies shown, from 0.1 ms to 10 s (log scale).
const LATENCY_RANGE_MS: (f64, f64) = (0.1, 10_000.0);

/// Draws `history` and `faults` (times in nanoseconds of the history's clock).
pub fn plot_svg(history: &[Operation], faults: &[FaultWindow], title: &str) -> String {
    let end_ns = history.iter().filter_map(|op| op.ret).chain(faults.iter().map(|f| f.end)).max();
    let seconds = (end_ns.unwrap_or(0) as f64 / 1e9).ceil().max(1.0);
    let x = |ns: u64| LEFT + (ns as f64 / 1e9) / seconds * (WIDTH - LEFT - RIGHT);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"monospace\" font-size=\"11\">\n\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"13\">{}</text>\n",
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    for fault in faults {
        let (x0, x1) = (x(fault.start), x(fault.end));
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#f2d0d0\" \
             opacity=\"0.7\"><title>{}</title></rect>\
             <text x=\"{x0:.1}\" y=\"{}\" font-size=\"9\">{:?}</text>",
            TOP_PANEL.0,
            (x1 - x0).max(1.0),
            BOTTOM_PANEL.1 - TOP_PANEL.0,
            fault.what.replace('&', "&amp;").replace('<', "&lt;"),
            TOP_PANEL.0 - 3.0,
            fault.fault
        );
    }
    throughput(&mut svg, history, seconds, &x);
    latencies(&mut svg, history, &x);
    axes(&mut svg, seconds);
    svg.push_str("</svg>\n");
    svg
}

/// Completed-ok operations per second, as a line.
fn throughput(svg: &mut String, history: &[Operation], seconds: f64, x: &dyn Fn(u64) -> f64) {
    let mut per_second = vec![0u64; seconds as usize + 1];
    for op in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        if let Some(ret) = op.ret {
            per_second[(ret / 1_000_000_000) as usize] += 1;
        }
    }
    let peak = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (top, bottom) = TOP_PANEL;
    let points: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let y = bottom - n as f64 / peak * (bottom - top);
            format!("{:.1},{y:.1}", x(s as u64 * 1_000_000_000 + 500_000_000))
        })
        .collect();
    let _ = writeln!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#2060c0\" stroke-width=\"1.5\"/>\n\
         <text x=\"4\" y=\"{}\">{peak:.0}/s</text><text x=\"4\" y=\"{bottom}\">0/s</text>",
        points.join(" "),
        top + 10.0
    );
}

/// Dots drawn at most: a long run's operations are sampled evenly down to this (operations of
/// unknown outcome are always drawn), so that the picture stays a few megabytes.
const DOTS_MAX: usize = 60_000;

/// One dot per operation (or per sampled operation) at its completion time and latency.
fn latencies(svg: &mut String, history: &[Operation], x: &dyn Fn(u64) -> f64) {
    let (top, bottom) = BOTTOM_PANEL;
    let (low, high) = (LATENCY_RANGE_MS.0.log10(), LATENCY_RANGE_MS.1.log10());
    let y = |ms: f64| {
        bottom - (ms.max(LATENCY_RANGE_MS.0).log10() - low) / (high - low) * (bottom - top)
    };
    let stride = history.len().div_ceil(DOTS_MAX).max(1);
    let drawn = history
        .iter()
        .enumerate()
        .filter(|(i, op)| i % stride == 0 || op.outcome == Outcome::Info)
        .map(|(_, op)| op);
    for op in drawn {
        let (at, fill, ms) = match (op.ret, op.outcome) {
            (Some(ret), Outcome::Ok) => (ret, "#3a9a3a", (ret - op.call) as f64 / 1e6),
            (Some(ret), _) => (ret, "#909090", (ret - op.call) as f64 / 1e6),
            (None, _) => (op.call, "#e08a20", LATENCY_RANGE_MS.1),
        };
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1\" fill=\"{fill}\"/>",
            x(at),
            y(ms.min(LATENCY_RANGE_MS.1))
        );
    }
    for ms in [1.0, 10.0, 100.0, 1000.0] {
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>\
             <text x=\"4\" y=\"{:.1}\">{ms} ms</text>",
            WIDTH - RIGHT,
            y(ms) + 4.0,
            y = y(ms)
        );
    }
}

fn axes(svg: &mut String, seconds: f64) {
    let step = (seconds / 20.0).ceil().max(1.0);
    let mut s = 0.0;
    while s <= seconds {
        let x = LEFT + s / seconds * (WIDTH - LEFT - RIGHT);
        let _ = writeln!(svg, "<text x=\"{x:.1}\" y=\"{}\">{s:.0} s</text>", HEIGHT - 20.0);
        s += step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"{}\">operations completed per second (top); latency of each \
         operation (bottom; orange: unknown outcome); faults shaded</text>",
        HEIGHT - 4.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Function;
    use crate::nemesis::Fault;
    use serde_json::Value;

    #[test]
    fn every_operation_is_a_dot_and_every_fault_a_shaded_window() {
        let op = |id: usize, outcome, call: u64, ret: Option<u64>| Operation {
            id,
            process: 1,
            f: Function::Get,
            key: "k".into(),
            args: Value::Null,
            result: Value::Null,
            outcome,
            call,
            ret,
        };
        let history = [
            op(0, Outcome::Ok, 0, Some(2_000_000)),
            op(1, Outcome::Fail, 1_000_000_000, Some(1_500_000_000)),
            op(2, Outcome::Info, 2_000_000_000, None),
        ];
        let faults = [FaultWindow {
            fault: Fault::Kill,
            what: "killed n1".into(),
            start: 500_000_000,
            end: 1_800_000_000,
        }];
        let svg = plot_svg(&history, &faults, "run");
        assert_eq!(svg.matches("<circle").count(), 3);
        let many: Vec<Operation> =
            (0..DOTS_MAX * 3).map(|i| op(i, Outcome::Ok, 0, Some(1_000_000))).collect();
        let sampled = plot_svg(&many, &[], "many").matches("<circle").count();
        assert_eq!(sampled, DOTS_MAX, "a long run is sampled");
        assert_eq!(svg.matches("#f2d0d0").count(), 1);
        assert!(svg.contains("killed n1") && svg.contains("Kill"));
    }
}
