//! Engine throughput without IO: how fast raft-core moves proposals through a 3-node cluster
//! whose "disk" and "network" are in memory, so the numbers are the engine's own cost.
//!
//! ```sh
//! cargo bench -p raft-core --bench engine
//! ```

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft_core::{EntryId, Index, Message, MessageBody, NodeId, Term};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{entry, msg, node, Cluster};

/// Proposals of 128 bytes, `batch` per round, each round committed and applied everywhere.
fn replicate_3_nodes(c: &mut Criterion) {
    let mut group = c.benchmark_group("replicate_3_nodes");
    for batch in [1u64, 16, 256] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("batch_{batch}"), |b| {
            let mut cluster = Cluster::new(3, |_| {});
            cluster.elect(1);
            let data = Bytes::from(vec![0u8; 128]);
            b.iter(|| {
                for _ in 0..batch {
                    cluster.node(1).propose(data.clone()).expect("leader takes proposals");
                }
                cluster.stabilize();
            });
        });
    }
    group.finish();
}

/// A follower handling one append of 64 entries of 128 bytes, and taking its Ready.
fn follower_append_64(c: &mut Criterion) {
    let mut group = c.benchmark_group("follower");
    group.throughput(Throughput::Elements(64));
    group.bench_function("append_64_entries", |b| {
        b.iter_batched(
            || {
                let n2 = node(2, &[1, 2, 3], |_| {});
                let entries = (1..=64).map(|i| entry(1, i)).collect();
                let prev = EntryId::new(Term(0), Index(0));
                let append = MessageBody::Append { prev, entries, commit: Index(64) };
                (n2, msg(1, 2, 1, append))
            },
            |(mut n2, append): (common::Node, Message)| {
                n2.step(append).expect("well-formed append");
                let ready = n2.ready();
                n2.store_mut().append(&ready.entries);
                n2.on_persisted(ready.number);
                assert_eq!(ready.messages_after_persist[0].to, NodeId(1));
                n2
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, replicate_3_nodes, follower_append_64);
criterion_main!(benches);
