//! Framing: a 4-byte big-endian length, then that many bytes of one prost-encoded
//! `PeerFrame`.
//!
//! The length is checked against the limit before anything is allocated for the frame, so a
//! peer cannot make a node reserve more than `frame_bytes_max` bytes per connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kv_proto::peer::PeerFrame;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Why a frame could not be read. Every variant closes the connection it came from, and only
/// that one.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The prefix announces more than the limit.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The connection ended inside a frame.
    #[error("the connection ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// The bytes received of the frame (prefix included).
        got: usize,
        /// The bytes the frame needed.
        want: usize,
    },
    /// The bytes are not a `PeerFrame`.
    #[error("undecodable frame: {0}")]
    Undecodable(#[from] prost::DecodeError),
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends `frame`, length-prefixed, to `out`.
///
/// # Panics
/// If the encoded frame exceeds 4 GiB (the sender bounds frames far below that).
pub fn encode(frame: &PeerFrame, out: &mut BytesMut) {
    // One size pass: `encode_raw` writes without measuring the message again.
    let len = frame.encoded_len();
    out.reserve(LENGTH_BYTES + len);
    out.put_u32(u32::try_from(len).expect("a frame below 4 GiB"));
    frame.encode_raw(out);
}

/// `frame` as its own length-prefixed buffer.
pub fn encode_to_bytes(frame: &PeerFrame) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out.freeze()
}

/// Reads frames from one connection, reusing one buffer.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `reader`, each at most `frame_bytes_max` bytes (the prefix excluded).
    pub fn new(reader: R, frame_bytes_max: usize) -> FrameReader<R> {
        FrameReader { reader, buf: BytesMut::with_capacity(64 * 1024), frame_bytes_max }
    }

    /// Changes the frame limit (raised once the peer is authenticated); buffered bytes stay.
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        self.frame_bytes_max = frame_bytes_max;
    }

    /// The next frame, or `None` if the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<PeerFrame>, FrameError> {
        if !self.fill(LENGTH_BYTES).await? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..LENGTH_BYTES].try_into().expect("4 bytes"));
        let len = len as usize;
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLarge { len: len as u64, max: self.frame_bytes_max });
        }
        if !self.fill(LENGTH_BYTES + len).await? {
            return Err(FrameError::Truncated { got: self.buf.len(), want: LENGTH_BYTES + len });
        }
        self.buf.advance(LENGTH_BYTES);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(PeerFrame::decode(body)?))
    }

    /// Reads until the buffer holds `want` bytes. `Ok(false)` if the connection ended first
    /// with nothing buffered at all (a clean close); a close after some bytes is truncation.
    async fn fill(&mut self, want: usize) -> Result<bool, FrameError> {
        self.buf.reserve(want.saturating_sub(self.buf.len()));
        while self.buf.len() < want {
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(false);
                }
                return Err(FrameError::Truncated { got: self.buf.len(), want });
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::peer::{peer_frame::Frame, Hello};

    fn hello(node_id: u64) -> PeerFrame {
        let hello = Hello {
            protocol_version: 1,
            cluster_id: "c".into(),
            node_id,
            to_node_id: 2,
            ..Hello::default()
        };
        PeerFrame { frame: Some(Frame::Hello(hello)) }
    }

    async fn read_all(bytes: &[u8], max: usize) -> (Vec<PeerFrame>, Option<FrameError>) {
        let mut reader = FrameReader::new(bytes, max);
        let mut frames = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, None),
                Err(error) => return (frames, Some(error)),
            }
        }
    }

    #[tokio::test]
    async fn frames_read_back_in_order() {
        let mut out = BytesMut::new();
        for id in 1..=3 {
            encode(&hello(id), &mut out);
        }
        let (frames, error) = read_all(&out, 1024).await;
        assert!(error.is_none());
        assert_eq!(frames, vec![hello(1), hello(2), hello(3)]);
    }

    #[tokio::test]
    async fn a_cut_at_every_byte_is_truncation_or_a_clean_end() {
        let mut out = BytesMut::new();
        encode(&hello(1), &mut out);
        let first_len = out.len();
        encode(&hello(2), &mut out);
        for cut in 0..out.len() {
            let (frames, error) = read_all(&out[..cut], 1024).await;
            let whole = usize::from(cut >= first_len);
            assert_eq!(frames.len(), whole, "cut {cut}");
            let at_boundary = cut == 0 || cut == first_len;
            assert_eq!(error.is_none(), at_boundary, "cut {cut}: {error:?}");
            if !at_boundary {
                assert!(matches!(error, Some(FrameError::Truncated { .. })), "cut {cut}");
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_prefix_is_refused_before_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let (_, error) = read_all(&bytes, 1 << 20).await;
        assert!(matches!(error, Some(FrameError::TooLarge { len: 0xffff_ffff, .. })), "{error:?}");
    }

    #[tokio::test]
    async fn garbage_is_an_error_never_a_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..500 {
            let mut bytes = vec![0, 0, 0, (round % 64) as u8];
            bytes.extend((0..round % 64).map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }));
            let _ = read_all(&bytes, 1024).await;
        }
    }
}
