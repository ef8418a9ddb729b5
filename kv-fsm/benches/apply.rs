//! What applying a committed put costs the state machine: decoding the command, the session
//! check and record, and the ordered map's insert (`KvState::apply`).
//!
//! - `apply_put/warm`: a state of 10,000 keys (`key00000000` ...), puts of 100-byte values to
//!   keys drawn at random from them, one session writing in sequence, as a node's own writes
//!   are. Commands are encoded before timing.
//! - `apply_put/cold`: the same, with an 8 MiB buffer written between two timed applies, so
//!   that the map's nodes are mostly out of the caches, as on a busy server where requests,
//!   frames and syncs pass between two applies.
//!
//! docs/performance.md compares these with the map's keys held as `Bytes` (before
//! `kv_fsm::Key`).
//!
//! ```sh
//! cargo bench -p kv-fsm --bench apply
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented public function

use criterion::{criterion_group, criterion_main, Criterion};
use kv_fsm::{encode_command, KvState};
use kv_proto::kv::{command::Op, Command, Put};
use std::time::{Duration, Instant};

const KEYS: u64 = 10_000;

/// A put of 100 bytes to `key`, written by session 1 at `sequence`.
fn put(key: u64, sequence: u64) -> Vec<u8> {
    encode_command(&Command {
        client_id: 1,
        sequence,
        acked_below: sequence,
        open_session: sequence == 1,
        op: Some(Op::Put(Put {
            key: format!("key{key:08}").into_bytes().into(),
            value: vec![b'v'; 100].into(),
        })),
    })
}

/// A state holding every key once, and the index and sequence it has reached.
fn filled() -> (KvState, u64) {
    let mut state = KvState::new();
    for key in 0..KEYS {
        state.apply(key + 1, &put(key, key + 1)).expect("applied");
    }
    (state, KEYS)
}

/// A small xorshift: the same keys in every run.
fn keys(count: usize) -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % KEYS
        })
        .collect()
}

fn apply_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_put");
    for cold in [false, true] {
        let (mut state, mut last) = filled();
        let mut junk = vec![0u8; 8 << 20];
        group.bench_function(if cold { "cold" } else { "warm" }, |b| {
            b.iter_custom(|iterations| {
                let commands: Vec<Vec<u8>> = keys(iterations as usize)
                    .into_iter()
                    .enumerate()
                    .map(|(i, key)| put(key, last + 1 + i as u64))
                    .collect();
                let mut timed = Duration::ZERO;
                for command in &commands {
                    if cold {
                        for byte in junk.iter_mut().step_by(64) {
                            *byte = byte.wrapping_add(1);
                        }
                    }
                    last += 1;
                    let started = Instant::now();
                    state.apply(last, command).expect("applied");
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply_put);
criterion_main!(benches);
