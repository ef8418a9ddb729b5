//! `kvctl bench`: a closed-loop load generator, like etcd's benchmark tool. Each of `clients`
//! tasks sends one request, waits for the answer, and sends the next, over `conns` shared
//! connections (spread over the endpoints); latencies go into an HDR histogram per client,
//! merged at the end.

use crate::client::Connection;
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{GetRequest, ReadConsistency, SetRequest};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// What the clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Set random keys.
    Put,
    /// Linearizable gets of random keys.
    Get,
    /// Serializable gets of random keys.
    Sget,
    /// Puts and linearizable gets, `--read-percent` of them gets.
    Mixed,
}

/// The benchmark's settings: `kvctl bench`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchSettings {
    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Requests in flight (one per client).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share, spread over the endpoints.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Seconds to run (default 10 unless --count is given).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Requests to send.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// For --workload mixed: the share of reads, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// Print JSON instead of text (from the global --output).
    #[arg(skip)]
    pub json: bool,
}

impl BenchSettings {
    /// How long to run: `--duration`, or 10 s when neither it nor `--count` is given.
    fn run_for(&self) -> Option<Duration> {
        match (self.duration, self.count) {
            (None, None) => Some(Duration::from_secs(10)),
            (duration, _) => duration.map(Duration::from_secs),
        }
    }

    /// Refuses settings that cannot run.
    pub fn check(&self) -> Result<(), String> {
        if self.clients == 0 || self.conns == 0 || self.keyspace == 0 {
            return Err("--clients, --conns and --keyspace must be at least 1".to_string());
        }
        Ok(())
    }
}

/// What the clients measured.
struct Totals {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the benchmark and prints the result.
pub async fn run(connection: &Connection, settings: BenchSettings) -> Result<(), String> {
    if connection.endpoints.is_empty() {
        return Err("no endpoint given (--endpoints)".into());
    }
    let mut channels = Vec::new();
    for i in 0..settings.conns {
        let endpoint = &connection.endpoints[i % connection.endpoints.len()];
        channels.push(connection.channel(endpoint).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'v'; settings.value_size]);
    let started = Instant::now();
    let deadline = settings.run_for().map(|d| started + d);
    let limit = settings.count.unwrap_or(u64::MAX);
    let progress = progress_bar(&settings);
    let mut tasks = Vec::new();
    for client in 0..settings.clients {
        let channel = channels[client % channels.len()].clone();
        let (settings, value, done) = (settings.clone(), value.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            run_client(KvClient::new(channel), settings, value, done, deadline, limit).await
        }));
    }
    let ticker = {
        let (done, progress) = (done.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let ops = done.load(Ordering::Relaxed);
                match deadline {
                    Some(_) => progress.set_position(started.elapsed().as_secs()),
                    None => progress.set_position(ops.min(limit)),
                }
            }
        })
    };
    let mut totals = Totals { latencies: histogram(), errors: 0, first_error: None };
    for task in tasks {
        let client = task.await.map_err(|e| e.to_string())?;
        totals.latencies.add(&client.latencies).map_err(|e| e.to_string())?;
        totals.errors += client.errors;
        totals.first_error = totals.first_error.or(client.first_error);
    }
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    report(&settings, &totals, elapsed);
    Ok(())
}

fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn progress_bar(settings: &BenchSettings) -> indicatif::ProgressBar {
    let visible = !settings.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let length = match (settings.run_for(), settings.count) {
        (Some(duration), _) => duration.as_secs(),
        (None, Some(count)) => count,
        (None, None) => 0,
    };
    let bar = indicatif::ProgressBar::new(length);
    if !visible {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// A key of `size` bytes for number `n`.
fn key(n: u64, size: usize) -> Bytes {
    let digits = format!("{n:0width$}", width = size.max(1));
    Bytes::from(digits.into_bytes())
}

async fn run_client(
    mut client: KvClient<Channel>,
    settings: BenchSettings,
    value: Bytes,
    done: Arc<AtomicU64>,
    deadline: Option<Instant>,
    limit: u64,
) -> Totals {
    let mut totals = Totals { latencies: histogram(), errors: 0, first_error: None };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d)
            || done.fetch_add(1, Ordering::Relaxed) >= limit
        {
            return totals;
        }
        let key = key(fastrand::u64(..settings.keyspace), settings.key_size);
        let read = match settings.workload {
            Workload::Put => None,
            Workload::Get => Some(ReadConsistency::Linearizable),
            Workload::Sget => Some(ReadConsistency::Serializable),
            Workload::Mixed => (fastrand::u8(..100) < settings.read_percent)
                .then_some(ReadConsistency::Linearizable),
        };
        let sent = Instant::now();
        let result = match read {
            Some(consistency) => {
                let request = GetRequest { key, consistency: consistency.into() };
                client.get(request).await.map(|_| ())
            }
            None => {
                let request = SetRequest { key, value: value.clone(), session: None };
                client.set(request).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                let micros = sent.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                let _ = totals.latencies.record(micros);
            }
            Err(status) => {
                totals.errors += 1;
                totals.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
}

fn report(settings: &BenchSettings, totals: &Totals, elapsed: Duration) {
    let h = &totals.latencies;
    let ops = h.len();
    let rate = ops as f64 / elapsed.as_secs_f64();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let workload = format!("{:?}", settings.workload).to_lowercase();
    if settings.json {
        println!(
            "{}",
            json!({
                "workload": workload, "clients": settings.clients, "conns": settings.conns,
                "value_size": settings.value_size, "ops": ops, "errors": totals.errors,
                "seconds": elapsed.as_secs_f64(), "ops_per_second": rate,
                "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
                                "max": h.max() as f64 / 1000.0 },
                "first_error": totals.first_error,
            })
        );
        return;
    }
    println!(
        "{workload}: {ops} ops in {:.1} s = {rate:.0} ops/s ({} clients, {} connections, {}-byte values)",
        elapsed.as_secs_f64(),
        settings.clients,
        settings.conns,
        settings.value_size
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    if totals.errors > 0 {
        println!(
            "errors: {} (first: {})",
            totals.errors,
            totals.first_error.as_deref().unwrap_or("")
        );
    }
}
