//! Write-ahead log costs on a real disk: what one durable batch costs, how fast a log reopens,
//! and how fast a range of entries is read back.
//!
//! - `append/<n>` and `append_bytes/<n>`: batches of `n` entries (1, 16, 256, 4096) of 100
//!   bytes of data, each batch one [`Wal::write`], hence one `write` and one `fdatasync`. The
//!   two groups run the same benchmark; `append` reports entries/s and `append_bytes` MB/s of
//!   entry data (criterion 0.5 reports one throughput per benchmark). On disk an entry takes
//!   30 bytes more than its data (13 bytes of record header, 17 of entry header).
//! - `append_growing/<n>`: as `append/<n>` for 1 and 16 entries, with no room reserved ahead
//!   of the appends (`WalOptions::preallocate_bytes` 0): each batch grows the file, so each
//!   `fdatasync` also writes the file's new size. The difference with `append/<n>` is what
//!   preallocation saves.
//! - `bare_fdatasync/100_bytes`: a plain file, 100 bytes appended and `sync_data` per
//!   iteration: the physical limit of `append/1`.
//! - `open_1gib/<mode>/<size>`: [`Wal::open`] of a log of 4 KiB entries in 64 MiB segments,
//!   built once before timing; `RAFT_LOG_BENCH_OPEN_BYTES` sets its size in bytes of entry data
//!   (default 1 GiB) for a quick run, and `<size>` is its segments' bytes (throughput: segment
//!   bytes per second of open). `indexed` is the default open: sealed segments through their
//!   index files, only the newest segment scanned. `verify_sealed` scans and checksums every
//!   segment. The files were just written, so they are read from the page cache: this is the
//!   cost of mapping, scanning, checksumming and indexing, not of a cold disk.
//! - `read_10k/100_bytes`: `entries(lo, lo + 10_000, u64::MAX)` in the middle of a log of
//!   20,000 entries of 100 bytes, also from the page cache.
//!
//! Disk use stays bounded: each append benchmark appends to one log and, between two timed
//! writes, starts afresh in a new directory once the log holds 256 MiB of entry data (the old
//! one is deleted); the bare file is emptied at 64 MiB the same way. Each append is timed on
//! its own (`iter_custom`), so building a batch and starting a new log are never timed. At
//! most about 1.3 GiB is on disk at once (the log for `open_1gib` plus one append log).
//!
//! Logs live in temporary directories under `RAFT_LOG_BENCH_DIR` if set, else under cargo's
//! `target/tmp`, so every `fdatasync` reaches a real disk (never point it at a tmpfs).
//!
//! ```sh
//! cargo bench -p raft-log --bench wal
//! # quick: a 64 MiB log to open, shorter measurements
//! RAFT_LOG_BENCH_OPEN_BYTES=67108864 cargo bench -p raft-log --bench wal -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use raft_core::{Entry, EntryKind, HardState, Index, LogStore, Term};
use raft_log::wal::{Wal, WalOptions};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Data bytes of an entry in the append and read benchmarks.
const DATA_BYTES: usize = 100;
/// Entries per batch in the append benchmarks.
const APPEND_BATCHES: [u64; 4] = [1, 16, 256, 4096];
/// An append benchmark starts a new log once its log holds this much entry data.
const APPEND_LOG_BYTES_MAX: u64 = 256 << 20;
/// The bare file is emptied once it holds this many bytes.
const BARE_FILE_BYTES_MAX: u64 = 64 << 20;
/// Data bytes of an entry in the log that `open_1gib` opens.
const OPEN_DATA_BYTES: u64 = 4 << 10;
/// The log for `open_1gib` is written in batches of this much entry data.
const OPEN_BATCH_BYTES: u64 = 4 << 20;
/// Entry data in the log that `open_1gib` opens, unless `RAFT_LOG_BENCH_OPEN_BYTES` says.
const OPEN_BYTES_DEFAULT: u64 = 1 << 30;
/// Entries read by `read_10k`.
const READ_ENTRIES: u64 = 10_000;

/// A new temporary directory on the disk the benchmarks measure.
fn bench_dir() -> TempDir {
    let base = std::env::var_os("RAFT_LOG_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    tempfile::Builder::new()
        .prefix("raft-log-bench-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("a directory in {}: {e}", base.display()))
}

/// `count` normal entries of term 1 from index `first`, all sharing `data`.
fn entries(first: Index, count: u64, data: &Bytes) -> Vec<Entry> {
    (0..count)
        .map(|i| Entry {
            term: Term(1),
            index: first.plus(i),
            kind: EntryKind::Normal,
            data: data.clone(),
        })
        .collect()
}

/// The hard state every batch carries: term 1, as the entries. After the first write it is
/// unchanged, so it costs no record and no vote-file sync.
const TERM_1: Option<HardState> = Some(HardState { term: Term(1), vote: None, commit: Index(0) });

/// Writes `count` entries of `data` to `wal` after its last entry, `batch` per write.
fn fill(wal: &mut Wal, count: u64, batch: u64, data: &Bytes) {
    let mut written = 0;
    while written < count {
        let n = batch.min(count - written);
        wal.write(TERM_1, &entries(wal.last_index().next(), n, data)).expect("filling the log");
        written += n;
    }
}

/// A log being appended to, started afresh in a new directory once it holds
/// [`APPEND_LOG_BYTES_MAX`] of entry data.
struct AppendLog {
    // Declared before `_dir`, so it is closed before the directory is deleted.
    wal: Wal,
    options: WalOptions,
    /// Held for its `Drop`, which deletes the directory with the log.
    _dir: TempDir,
    /// Entry data written to this log.
    data_bytes: u64,
}

impl AppendLog {
    fn new(options: WalOptions) -> AppendLog {
        let dir = bench_dir();
        let wal = Wal::open(dir.path(), options.clone()).expect("a new log");
        AppendLog { wal, options, _dir: dir, data_bytes: 0 }
    }

    /// The next `count` entries to append, after starting a new log if this one is full.
    fn next_batch(&mut self, count: u64, data: &Bytes) -> Vec<Entry> {
        if self.data_bytes >= APPEND_LOG_BYTES_MAX {
            *self = AppendLog::new(self.options.clone());
        }
        self.data_bytes += count * data.len() as u64;
        entries(self.wal.last_index().next(), count, data)
    }
}

/// One append benchmark per batch size of `batches`, in group `name`, with `throughput`
/// for a batch, to logs opened with `options`.
fn append_batches(
    c: &mut Criterion,
    name: &str,
    batches: &[u64],
    options: &WalOptions,
    throughput: fn(u64) -> Throughput,
) {
    let data = Bytes::from(vec![0x5a; DATA_BYTES]);
    let mut group = c.benchmark_group(name);
    for &batch in batches {
        group.throughput(throughput(batch));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            let mut log = AppendLog::new(options.clone());
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = log.next_batch(batch, &data);
                    let start = Instant::now();
                    log.wal.write(TERM_1, &batch).expect("an append");
                    timed += start.elapsed();
                }
                timed
            });
        });
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let options = WalOptions::default();
    append_batches(c, "append", &APPEND_BATCHES, &options, Throughput::Elements);
    append_batches(c, "append_bytes", &APPEND_BATCHES, &options, |batch| {
        Throughput::BytesDecimal(batch * DATA_BYTES as u64)
    });
    let growing = WalOptions { preallocate_bytes: 0, ..WalOptions::default() };
    append_batches(c, "append_growing", &[1, 16], &growing, Throughput::Elements);
}

/// 100 bytes appended to a plain file and `sync_data` per iteration.
fn bare_fdatasync(c: &mut Criterion) {
    let mut group = c.benchmark_group("bare_fdatasync");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{DATA_BYTES}_bytes"), |b| {
        let dir = bench_dir();
        let path = dir.path().join("bare");
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).unwrap();
        let bytes = [0x5a; DATA_BYTES];
        let mut len = 0;
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                if len >= BARE_FILE_BYTES_MAX {
                    file.set_len(0).unwrap();
                    len = 0;
                }
                let start = Instant::now();
                file.write_all(&bytes).unwrap();
                file.sync_data().unwrap();
                timed += start.elapsed();
                len += DATA_BYTES as u64;
            }
            timed
        });
    });
    group.finish();
}

/// Entry data for the log that `open_1gib` opens: `RAFT_LOG_BENCH_OPEN_BYTES` or 1 GiB.
fn open_bytes() -> u64 {
    match std::env::var("RAFT_LOG_BENCH_OPEN_BYTES") {
        Ok(value) => value.trim().parse().unwrap_or_else(|e| {
            panic!("RAFT_LOG_BENCH_OPEN_BYTES={value:?} is not a number of bytes: {e}")
        }),
        Err(_) => OPEN_BYTES_DEFAULT,
    }
}

/// The bytes of the segment files in `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

fn open_1gib(c: &mut Criterion) {
    let dir = bench_dir();
    let data = Bytes::from(vec![0x5a; OPEN_DATA_BYTES as usize]);
    let count = (open_bytes() / OPEN_DATA_BYTES).max(1);
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("a new log");
    fill(&mut wal, count, OPEN_BATCH_BYTES / OPEN_DATA_BYTES, &data);
    drop(wal);
    let segment_bytes = segment_bytes(dir.path());
    let reopened = Wal::open(dir.path(), WalOptions::default()).expect("reopening");
    assert_eq!(reopened.last_index(), Index(count), "the log holds every entry");
    drop(reopened);

    let mut group = c.benchmark_group("open_1gib");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::BytesDecimal(segment_bytes));
    for (mode, verify_sealed) in [("indexed", false), ("verify_sealed", true)] {
        let options = WalOptions { verify_sealed, ..WalOptions::default() };
        let id = BenchmarkId::new(mode, format!("{}_MiB", segment_bytes >> 20));
        group.bench_function(id, |b| {
            b.iter_with_large_drop(|| Wal::open(dir.path(), options.clone()).expect("open"));
        });
    }
    group.finish();
}

fn read_10k(c: &mut Criterion) {
    let dir = bench_dir();
    let data = Bytes::from(vec![0x5a; DATA_BYTES]);
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("a new log");
    fill(&mut wal, 2 * READ_ENTRIES, 1_000, &data);
    let lo = Index(READ_ENTRIES / 2);
    let hi = lo.plus(READ_ENTRIES);

    let mut group = c.benchmark_group("read_10k");
    group.throughput(Throughput::Elements(READ_ENTRIES));
    group.bench_function(format!("{DATA_BYTES}_bytes"), |b| {
        b.iter(|| {
            let read = wal.entries(lo, hi, u64::MAX).expect("a read");
            assert_eq!(read.len() as u64, READ_ENTRIES);
            read
        });
    });
    group.finish();
}

criterion_group!(benches, append, bare_fdatasync, open_1gib, read_10k);
criterion_main!(benches);
