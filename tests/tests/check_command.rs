//! `kv-jepsen check` on recorded histories: its exit code says the verdict, and an anomaly
//! is written out as text and as a timeline.

use std::path::Path;
use std::process::{Command, Output};

const KV_JEPSEN: &str = env!("CARGO_BIN_EXE_kv-jepsen");

fn check(history: &str, out: &Path) -> Output {
    let file = out.join("history.jsonl");
    std::fs::write(&file, history).unwrap();
    Command::new(KV_JEPSEN)
        .args(["check", "--history"])
        .arg(&file)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

const STALE_READ: &str = r#"
{"process":1,"type":"invoke","f":"set","key":"r1","value":"a","time":10}
{"process":1,"type":"ok","f":"set","key":"r1","value":"a","time":20}
{"process":2,"type":"invoke","f":"set","key":"r1","value":"b","time":30}
{"process":2,"type":"ok","f":"set","key":"r1","value":"b","time":40}
{"process":3,"type":"invoke","f":"get","key":"r1","value":null,"time":50}
{"process":3,"type":"ok","f":"get","key":"r1","value":"a","time":60}
{"process":4,"type":"invoke","f":"set","key":"set/e1","value":"e1","time":61}
{"process":4,"type":"ok","f":"set","key":"set/e1","value":"e1","time":62}
{"process":4,"type":"invoke","f":"list","key":"set/","value":null,"time":70}
{"process":4,"type":"ok","f":"list","key":"set/","value":["set/e1"],"time":80}
"#;

#[test]
fn a_stale_read_exits_1_and_is_written_out() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(STALE_READ, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("key \"r1\": no order of these 3 operations"), "{stdout}");
    assert!(stdout.contains("set: Valid"), "{stdout}");
    let svg = std::fs::read_to_string(dir.path().join("anomaly-0.svg")).unwrap();
    assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
    assert!(dir.path().join("anomaly-0.txt").exists());
}

#[test]
fn a_valid_history_exits_0_and_a_broken_one_2() {
    let dir = tempfile::tempdir().unwrap();
    let valid = STALE_READ.replace(r#""value":"a","time":60"#, r#""value":"b","time":60"#);
    let output = check(&valid, dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    let broken = check("{\"process\":1,\"type\":\"ok\"}\n", dir.path());
    assert_eq!(broken.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("history.jsonl") && stderr.contains("line 1"), "{stderr}");
}
