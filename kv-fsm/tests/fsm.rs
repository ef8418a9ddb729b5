//! The state machine against a plain `BTreeMap` model, and its snapshots: random writes
//! (with sessions, retries and acknowledgements) applied to both must agree; a snapshot taken
//! at any point restores to an equal state; any cut or flipped bit of a snapshot is refused.

use bytes::Bytes;
use kv_fsm::{encode_command, KvState, WriteResult};
use kv_proto::kv::{command::Op, Command, CompareAndSet, Delete, Put, RemoveMember, SetMember};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Step {
    Put {
        key: u8,
        value: u8,
    },
    Delete {
        key: u8,
    },
    Cas {
        key: u8,
        expected: Option<u8>,
        value: u8,
    },
    /// Record member `id` in the member table, or remove it.
    Member {
        id: u8,
        remove: bool,
    },
    /// Retry the `back`-th latest write of a session.
    Retry {
        back: u8,
    },
    Noop,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..16u8, any::<u8>()).prop_map(|(key, value)| Step::Put { key, value }),
        1 => (0..16u8).prop_map(|key| Step::Delete { key }),
        2 => (0..16u8, prop::option::of(0..4u8), any::<u8>())
            .prop_map(|(key, expected, value)| Step::Cas { key, expected, value }),
        2 => (0..4u8).prop_map(|back| Step::Retry { back }),
        1 => (1..6u8, any::<bool>()).prop_map(|(id, remove)| Step::Member { id, remove }),
        1 => Just(Step::Noop),
    ]
}

/// Even keys short, odd ones longer than the 38 bytes a `kv_fsm::Key` holds inline, so
/// that applying, listing and snapshots see both kinds, and in one order.
fn key(k: u8) -> Bytes {
    if k.is_multiple_of(2) {
        Bytes::from(format!("key/{k:02}"))
    } else {
        Bytes::from(format!("key/{k:02}/{}", "long".repeat(10)))
    }
}

fn value(v: u8) -> Bytes {
    Bytes::from(vec![v; 1 + usize::from(v) % 7])
}

struct Model {
    map: BTreeMap<Bytes, (Bytes, u64)>,
    members: BTreeMap<u64, String>,
}

impl Model {
    fn execute(&mut self, index: u64, op: &Op) -> WriteResult {
        match op {
            Op::Put(p) => {
                self.map.insert(p.key.clone(), (p.value.clone(), index));
                WriteResult::Put { revision: index }
            }
            Op::Delete(d) => {
                WriteResult::Delete { deleted: self.map.remove(&d.key).is_some(), revision: index }
            }
            Op::SetMember(m) => {
                self.members.insert(m.id, m.name.clone());
                WriteResult::Member { revision: index, id: m.id }
            }
            Op::RemoveMember(m) => {
                self.members.remove(&m.id);
                WriteResult::Member { revision: index, id: m.id }
            }
            Op::CompareAndSet(c) => {
                let current = self.map.get(&c.key).map(|(v, _)| v.clone());
                if current == c.expected {
                    self.map.insert(c.key.clone(), (c.value.clone(), index));
                    WriteResult::CompareAndSet { succeeded: true, current: None, revision: index }
                } else {
                    WriteResult::CompareAndSet { succeeded: false, current, revision: index }
                }
            }
        }
    }
}

fn run(steps: &[Step]) -> Result<KvState, TestCaseError> {
    let mut state = KvState::new();
    let mut model = Model { map: BTreeMap::new(), members: BTreeMap::new() };
    // One session (client 7); its writes so far: (sequence, op, first result).
    let mut written: Vec<(u64, Op, WriteResult)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let index = i as u64 + 1;
        let op = match step {
            Step::Noop => {
                state.skip(index);
                continue;
            }
            Step::Put { key: k, value: v } => Op::Put(Put { key: key(*k), value: value(*v) }),
            Step::Delete { key: k } => Op::Delete(Delete { key: key(*k) }),
            Step::Member { id, remove: true } => {
                Op::RemoveMember(RemoveMember { id: u64::from(*id) })
            }
            Step::Member { id, remove: false } => Op::SetMember(SetMember {
                id: u64::from(*id),
                name: format!("n{id}-{index}"),
                peer_address: format!("node-{id}.example:2380"),
                client_address: format!("node-{id}.example:2379"),
                allocate: false,
                min_id: 0,
                promote: false,
            }),
            Step::Cas { key: k, expected, value: v } => Op::CompareAndSet(CompareAndSet {
                key: key(*k),
                expected: expected.map(value),
                value: value(*v),
            }),
            Step::Retry { back } => {
                let Some((sequence, op, first)) =
                    written.iter().rev().nth(usize::from(*back)).cloned()
                else {
                    state.skip(index);
                    continue;
                };
                let command = Command {
                    client_id: 7,
                    sequence,
                    acked_below: 0,
                    op: Some(op),
                    open_session: false,
                };
                let result = state.apply(index, &encode_command(&command));
                prop_assert_eq!(result, Ok(first), "a retry gets its first result");
                continue;
            }
        };
        let sequence = written.len() as u64 + 1;
        let command = Command {
            client_id: 7,
            sequence,
            acked_below: 0,
            op: Some(op.clone()),
            open_session: false,
        };
        let result = state.apply(index, &encode_command(&command));
        let expected = model.execute(index, &op);
        prop_assert_eq!(result.as_ref(), Ok(&expected));
        written.push((sequence, op, expected));
    }
    let got: Vec<(Bytes, (Bytes, u64))> = state
        .list(b"", b"", 0)
        .map(|(k, s)| (k.to_bytes(), (s.value.clone(), s.mod_revision)))
        .collect();
    let want: Vec<(Bytes, (Bytes, u64))> = model.map.into_iter().collect();
    prop_assert_eq!(got, want);
    let members: BTreeMap<u64, String> =
        state.members().iter().map(|(id, m)| (*id, m.name.clone())).collect();
    prop_assert_eq!(members, model.members);
    prop_assert_eq!(state.applied(), steps.len() as u64);
    Ok(state)
}

fn snapshot(state: &KvState) -> Vec<u8> {
    let mut out = Vec::new();
    let written = state.clone().write_snapshot(&mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_state_machine_behaves_as_a_map_and_retries_apply_once(
        steps in prop::collection::vec(step(), 0..120),
    ) {
        run(&steps)?;
    }

    #[test]
    fn a_snapshot_restores_an_equal_state(steps in prop::collection::vec(step(), 0..120)) {
        let state = run(&steps)?;
        let restored = KvState::read_snapshot(snapshot(&state).as_slice()).unwrap();
        prop_assert_eq!(&restored, &state);
        // The restored state goes on exactly as the original: a retry still gets its result.
        prop_assert_eq!(restored.sessions(), state.sessions());
    }
}

fn sample_state() -> KvState {
    let steps: Vec<Step> = (0..12u8)
        .map(|i| match i % 4 {
            _ if i == 5 => Step::Member { id: 2, remove: false },
            0 => Step::Put { key: i, value: i },
            1 => Step::Cas { key: i - 1, expected: Some(i - 1), value: 9 },
            2 => Step::Cas { key: 3, expected: Some(1), value: 1 },
            _ => Step::Delete { key: 100 },
        })
        .collect();
    run(&steps).unwrap()
}

#[test]
fn a_snapshot_cut_at_any_byte_is_refused() {
    let bytes = snapshot(&sample_state());
    for cut in 0..bytes.len() {
        assert!(KvState::read_snapshot(&bytes[..cut]).is_err(), "cut at {cut} accepted");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(KvState::read_snapshot(longer.as_slice()).is_err(), "trailing bytes accepted");
}

#[test]
fn every_flipped_bit_of_a_snapshot_is_refused() {
    let bytes = snapshot(&sample_state());
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(KvState::read_snapshot(damaged.as_slice()).is_err(), "flip of bit {bit} accepted");
    }
}

#[test]
fn a_huge_length_is_refused_without_allocating_it() {
    let mut bytes = b"KVSNAP02".to_vec();
    bytes.extend(0u64.to_le_bytes());
    bytes.push(1); // a key record
    bytes.extend(u32::MAX.to_le_bytes());
    let error = KvState::read_snapshot(bytes.as_slice()).unwrap_err();
    assert!(error.to_string().contains("at most 4096"), "{error}");
}

/// Keys must come in order (the map is rebuilt from them, and equal keys would merge): a
/// snapshot whose keys go backwards is refused, an inline key after a heap one included.
#[test]
fn keys_out_of_order_are_refused() {
    let record = |key: &[u8]| {
        let mut bytes = vec![1]; // a key record
        bytes.extend(u32::try_from(key.len()).unwrap().to_le_bytes());
        bytes.extend(key);
        bytes.extend(0u32.to_le_bytes()); // an empty value
        bytes.extend(7u64.to_le_bytes()); // its revision
        bytes
    };
    let long = [b'b'; 64];
    for (first, second) in [(&b"b"[..], &b"a"[..]), (&b"a"[..], &b"a"[..]), (&long[..], &b"b"[..])]
    {
        let mut bytes = b"KVSNAP02".to_vec();
        bytes.extend(9u64.to_le_bytes());
        bytes.extend(record(first));
        bytes.extend(record(second));
        let error = KvState::read_snapshot(bytes.as_slice()).unwrap_err();
        assert!(error.to_string().contains("keys out of order"), "{error}");
    }
}

/// A snapshot of the previous format (no promote flag in member records) still reads, with
/// the flag false: a node upgraded over an old data directory starts.
#[test]
fn a_version_1_snapshot_still_reads() {
    let mut state = KvState::new();
    let join = SetMember {
        id: 3,
        name: "n3".into(),
        peer_address: "h:3".into(),
        client_address: "h:4".into(),
        allocate: true,
        min_id: 3,
        promote: true,
    };
    let command = Command { op: Some(Op::SetMember(join)), ..Default::default() };
    state.apply(1, &encode_command(&command)).unwrap();
    let mut bytes = Vec::new();
    state.write_snapshot(&mut bytes).unwrap();
    // The only member record is the last record: its promote byte sits just before the end
    // record (tag, next member id, three counts) and the checksum.
    let promote_at = bytes.len() - 4 - 8 * 4 - 1 - 1;
    assert_eq!(bytes.remove(promote_at), 1);
    bytes[..8].copy_from_slice(b"KVSNAP01");
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]).to_le_bytes();
    bytes[body..].copy_from_slice(&crc);
    let restored = KvState::read_snapshot(bytes.as_slice()).expect("version 1 reads");
    assert_eq!(restored.members()[&3].name, "n3");
    assert!(!restored.members()[&3].promote);
}
