//! raft-core's message types to and from the peer protocol.

use crate::peer::{self, append_response, raft_message::Body};
use raft_core::{
    AppendResult, Entry, EntryId, EntryKind, Index, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};
use std::collections::BTreeSet;

/// Why a peer's message does not convert to a raft-core message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field the message kind needs is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// An enum holds a value this version does not know.
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(i32),
    /// Membership ids are not strictly increasing.
    #[error("{0} ids are not strictly increasing")]
    Unordered(&'static str),
    /// A configuration entry without its configuration, or another entry with one.
    #[error("entry {index}: a configuration must come exactly with a configuration entry")]
    ConfigMismatch {
        /// The entry's index.
        index: u64,
    },
}

fn entry_id(id: EntryId) -> peer::EntryId {
    peer::EntryId { term: id.term.0, index: id.index.0 }
}

fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|id| id.0).collect()
}

fn membership(m: &Membership) -> peer::Membership {
    peer::Membership {
        voters: ids(&m.voters),
        voters_outgoing: ids(&m.voters_outgoing),
        learners: ids(&m.learners),
    }
}

fn entry(e: &Entry) -> peer::Entry {
    let (kind, config) = match &e.kind {
        EntryKind::Normal => (peer::EntryKind::Normal, None),
        EntryKind::Noop => (peer::EntryKind::Noop, None),
        EntryKind::Config(m) => (peer::EntryKind::Config, Some(membership(m))),
    };
    peer::Entry {
        term: e.term.0,
        index: e.index.0,
        kind: kind.into(),
        data: e.data.clone(),
        config,
    }
}

/// The snapshot description on the wire.
pub(crate) fn snapshot_meta(meta: &SnapshotMeta) -> peer::SnapshotMeta {
    peer::SnapshotMeta {
        index: meta.index.0,
        term: meta.term.0,
        membership: Some(membership(&meta.membership)),
    }
}

fn body(body: &MessageBody) -> Body {
    match body {
        MessageBody::PreVote { last } => {
            Body::PreVote(peer::PreVote { last: Some(entry_id(*last)) })
        }
        MessageBody::PreVoteResponse { granted } => {
            Body::PreVoteResponse(peer::Granted { granted: *granted })
        }
        MessageBody::Vote { last, transfer } => {
            Body::Vote(peer::Vote { last: Some(entry_id(*last)), transfer: *transfer })
        }
        MessageBody::VoteResponse { granted } => {
            Body::VoteResponse(peer::Granted { granted: *granted })
        }
        MessageBody::Append { prev, entries, commit } => Body::Append(peer::Append {
            prev: Some(entry_id(*prev)),
            entries: entries.iter().map(entry).collect(),
            commit: commit.0,
        }),
        MessageBody::AppendResponse(result) => {
            let result = match *result {
                AppendResult::Accepted { match_index } => {
                    append_response::Result::AcceptedMatchIndex(match_index.0)
                }
                AppendResult::Rejected { rejected, hint } => {
                    append_response::Result::Rejected(peer::Rejected {
                        rejected: rejected.0,
                        hint: Some(entry_id(hint)),
                    })
                }
            };
            Body::AppendResponse(peer::AppendResponse { result: Some(result) })
        }
        MessageBody::Heartbeat { commit, read_round } => {
            Body::Heartbeat(peer::Heartbeat { commit: commit.0, read_round: *read_round })
        }
        MessageBody::HeartbeatResponse { read_round } => {
            Body::HeartbeatResponse(peer::ReadRound { read_round: *read_round })
        }
        MessageBody::ReadIndex { request } => {
            Body::ReadIndex(peer::ReadIndex { request: *request })
        }
        MessageBody::ReadIndexResponse { request, index } => {
            Body::ReadIndexResponse(peer::ReadIndexResponse { request: *request, index: index.0 })
        }
        MessageBody::InstallSnapshot { snapshot } => {
            Body::InstallSnapshot(peer::InstallSnapshot { snapshot: Some(snapshot_meta(snapshot)) })
        }
        MessageBody::Propose { proposals } => {
            Body::Propose(peer::Propose { data: proposals.clone() })
        }
        MessageBody::TimeoutNow => Body::TimeoutNow(peer::TimeoutNow {}),
    }
}

impl From<&Message> for peer::RaftMessage {
    fn from(message: &Message) -> peer::RaftMessage {
        peer::RaftMessage {
            from: message.from.0,
            to: message.to.0,
            term: message.term.0,
            body: Some(body(&message.body)),
        }
    }
}

fn from_entry_id(id: Option<peer::EntryId>, field: &'static str) -> Result<EntryId, WireError> {
    let id = id.ok_or(WireError::Missing(field))?;
    Ok(EntryId::new(Term(id.term), Index(id.index)))
}

fn from_ids(ids: &[u64], field: &'static str) -> Result<BTreeSet<NodeId>, WireError> {
    if ids.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(WireError::Unordered(field));
    }
    Ok(ids.iter().copied().map(NodeId).collect())
}

fn from_membership(
    m: Option<peer::Membership>,
    field: &'static str,
) -> Result<Membership, WireError> {
    let m = m.ok_or(WireError::Missing(field))?;
    Ok(Membership {
        voters: from_ids(&m.voters, "voters")?,
        voters_outgoing: from_ids(&m.voters_outgoing, "outgoing voters")?,
        learners: from_ids(&m.learners, "learners")?,
    })
}

fn from_entry(e: peer::Entry) -> Result<Entry, WireError> {
    let kind =
        peer::EntryKind::try_from(e.kind).map_err(|_| WireError::UnknownEntryKind(e.kind))?;
    let kind = match (kind, e.config) {
        (peer::EntryKind::Normal, None) => EntryKind::Normal,
        (peer::EntryKind::Noop, None) => EntryKind::Noop,
        (peer::EntryKind::Config, Some(config)) => {
            EntryKind::Config(Box::new(from_membership(Some(config), "configuration")?))
        }
        _ => return Err(WireError::ConfigMismatch { index: e.index }),
    };
    Ok(Entry { term: Term(e.term), index: Index(e.index), kind, data: e.data })
}

/// The snapshot description from the wire.
pub(crate) fn from_snapshot_meta(
    meta: Option<peer::SnapshotMeta>,
) -> Result<SnapshotMeta, WireError> {
    let meta = meta.ok_or(WireError::Missing("snapshot"))?;
    Ok(SnapshotMeta {
        index: Index(meta.index),
        term: Term(meta.term),
        membership: from_membership(meta.membership, "snapshot membership")?,
    })
}

fn from_body(body: Body) -> Result<MessageBody, WireError> {
    Ok(match body {
        Body::PreVote(m) => MessageBody::PreVote { last: from_entry_id(m.last, "last")? },
        Body::PreVoteResponse(m) => MessageBody::PreVoteResponse { granted: m.granted },
        Body::Vote(m) => {
            MessageBody::Vote { last: from_entry_id(m.last, "last")?, transfer: m.transfer }
        }
        Body::VoteResponse(m) => MessageBody::VoteResponse { granted: m.granted },
        Body::Append(m) => MessageBody::Append {
            prev: from_entry_id(m.prev, "prev")?,
            entries: m.entries.into_iter().map(from_entry).collect::<Result<_, _>>()?,
            commit: Index(m.commit),
        },
        Body::AppendResponse(m) => MessageBody::AppendResponse(
            match m.result.ok_or(WireError::Missing("append result"))? {
                append_response::Result::AcceptedMatchIndex(index) => {
                    AppendResult::Accepted { match_index: Index(index) }
                }
                append_response::Result::Rejected(r) => AppendResult::Rejected {
                    rejected: Index(r.rejected),
                    hint: from_entry_id(r.hint, "hint")?,
                },
            },
        ),
        Body::Heartbeat(m) => {
            MessageBody::Heartbeat { commit: Index(m.commit), read_round: m.read_round }
        }
        Body::HeartbeatResponse(m) => MessageBody::HeartbeatResponse { read_round: m.read_round },
        Body::ReadIndex(m) => MessageBody::ReadIndex { request: m.request },
        Body::ReadIndexResponse(m) => {
            MessageBody::ReadIndexResponse { request: m.request, index: Index(m.index) }
        }
        Body::InstallSnapshot(m) => {
            MessageBody::InstallSnapshot { snapshot: from_snapshot_meta(m.snapshot)? }
        }
        Body::Propose(m) => MessageBody::Propose { proposals: m.data },
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
    })
}

impl TryFrom<peer::RaftMessage> for Message {
    type Error = WireError;

    fn try_from(message: peer::RaftMessage) -> Result<Message, WireError> {
        Ok(Message {
            from: NodeId(message.from),
            to: NodeId(message.to),
            term: Term(message.term),
            body: from_body(message.body.ok_or(WireError::Missing("message body"))?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message as _;

    fn config() -> Membership {
        let mut m = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        m.voters_outgoing = [NodeId(1), NodeId(4)].into();
        m.learners = [NodeId(7)].into();
        m
    }

    fn every_kind() -> Vec<MessageBody> {
        let last = EntryId::new(Term(3), Index(9));
        let entries = vec![
            Entry { term: Term(3), index: Index(10), kind: EntryKind::Noop, data: Bytes::new() },
            Entry {
                term: Term(3),
                index: Index(11),
                kind: EntryKind::Normal,
                data: Bytes::from_static(b"set x 1"),
            },
            Entry {
                term: Term(3),
                index: Index(12),
                kind: EntryKind::Config(Box::new(config())),
                data: Bytes::new(),
            },
        ];
        vec![
            MessageBody::PreVote { last },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::Vote { last, transfer: true },
            MessageBody::VoteResponse { granted: false },
            MessageBody::Append { prev: last, entries, commit: Index(8) },
            MessageBody::AppendResponse(AppendResult::Accepted { match_index: Index(12) }),
            MessageBody::AppendResponse(AppendResult::Rejected { rejected: Index(9), hint: last }),
            MessageBody::Heartbeat { commit: Index(7), read_round: 4 },
            MessageBody::HeartbeatResponse { read_round: 4 },
            MessageBody::ReadIndex { request: 17 },
            MessageBody::ReadIndexResponse { request: 17, index: Index(12) },
            MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta { index: Index(9), term: Term(3), membership: config() },
            },
            MessageBody::Propose {
                proposals: vec![Bytes::from_static(b"cas y"), Bytes::from_static(b"put z")],
            },
            MessageBody::TimeoutNow,
        ]
    }

    #[test]
    fn every_message_kind_round_trips_through_bytes() {
        for body in every_kind() {
            let message = Message { from: NodeId(1), to: NodeId(2), term: Term(3), body };
            let bytes = peer::RaftMessage::from(&message).encode_to_vec();
            let decoded = peer::RaftMessage::decode(bytes.as_slice()).unwrap();
            assert_eq!(Message::try_from(decoded), Ok(message));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let missing = peer::RaftMessage { from: 1, to: 2, term: 3, body: None };
        assert_eq!(Message::try_from(missing), Err(WireError::Missing("message body")));
        let no_last = peer::RaftMessage {
            body: Some(Body::PreVote(peer::PreVote { last: None })),
            ..Default::default()
        };
        assert_eq!(Message::try_from(no_last), Err(WireError::Missing("last")));
        let unordered = peer::Membership { voters: vec![2, 1], ..Default::default() };
        let snapshot = peer::SnapshotMeta { membership: Some(unordered), ..Default::default() };
        let install = Body::InstallSnapshot(peer::InstallSnapshot { snapshot: Some(snapshot) });
        let message = peer::RaftMessage { body: Some(install), ..Default::default() };
        assert_eq!(Message::try_from(message), Err(WireError::Unordered("voters")));
        let entries = |entry: peer::Entry| {
            let append = peer::Append {
                prev: Some(peer::EntryId::default()),
                entries: vec![entry],
                commit: 0,
            };
            peer::RaftMessage { body: Some(Body::Append(append)), ..Default::default() }
        };
        let unknown = peer::Entry { kind: 9, ..Default::default() };
        assert_eq!(Message::try_from(entries(unknown)), Err(WireError::UnknownEntryKind(9)));
        let bare_config =
            peer::Entry { index: 5, kind: peer::EntryKind::Config.into(), ..Default::default() };
        assert_eq!(
            Message::try_from(entries(bare_config)),
            Err(WireError::ConfigMismatch { index: 5 })
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 200)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if let Ok(frame) = peer::PeerFrame::decode(bytes.as_slice()) {
                if let Some(peer::peer_frame::Frame::Message(m)) = frame.frame {
                    let _ = Message::try_from(m);
                }
            }
        }
    }
}
