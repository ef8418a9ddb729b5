//! raft-net: the peer transport of kv-server.
//!
//! Nodes talk to each other only through this crate: length-prefixed protobuf frames
//! ([`frame`]) over mutual TLS ([`tls`]), one outbound connection per peer, carrying Raft
//! messages one way. Its promises, each with a test in `tests/`:
//!
//! - only holders of a certificate from the cluster CA can talk to a node, and a peer is the
//!   node its certificate and hello both say, checked against the host configured for that
//!   node id, never the IP it connects from;
//! - a slow, dead or malicious peer never stalls or crashes the node: bad input closes that
//!   one connection, and each peer's send queue is bounded;
//! - messages are coalesced into few writes; snapshots go in chunks, between heartbeats.
//!
//! `docs/transport.md` is the chapter on the design.

mod config;
pub mod frame;
mod inbound;
mod outbound;
pub mod queue;
mod snapshot;
pub mod tls;
mod transport;

pub use config::{AddressError, PeerAddress, TransportConfig};
pub use tls::{TlsError, TlsIdentity, TlsPaths};
pub use transport::{
    Event, ReceivedChunk, Security, SendError, SnapshotSource, StartError, Stats, Transport,
};

/// The peer protocol's version, sent in every hello.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest hello accepted before a peer is authenticated.
const HELLO_BYTES_MAX: usize = 4096;

/// A connection's byte stream, TLS or (for the benchmark only) plain TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}
type BoxStream = Box<dyn Stream>;
