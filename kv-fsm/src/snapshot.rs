//! Snapshots of the state, written and read as a stream: a 1 GiB state is written from a
//! clone of the persistent map (no copy of the data) through a buffered writer, and read back
//! record by record, so neither needs memory for a second copy of the state.
//!
//! The format (all integers little-endian):
//!
//! ```text
//! "KVSNAP02"                       8 bytes, magic and version
//! applied                          u64
//! records, each starting with a tag byte:
//!   1 key:     key_len u32, key, value_len u32, value, mod_revision u64   (keys ascending)
//!   2 session: client_id u64, acked_below u64, last_index u64, count u32,
//!              count x (sequence u64, result)                            (client ids ascending)
//!   3 member:  id u64, name, peer_address, client_address (each len u32 + UTF-8),
//!              promote u8                                               (ids ascending)
//!   0 end:     next member id u64, keys u64, sessions u64, members u64,
//!              crc32 u32 of every byte before the crc
//! result: kind u8 (1 put, 2 delete, 3 compare-and-set, 4 member), revision u64, then for delete a
//!         flag u8, for compare-and-set succeeded u8, has_current u8, [len u32, current]
//! ```
//!
//! Version 1 ("KVSNAP01") had no promote byte in member records; it is still read, with every
//! flag false.
//!
//! Reading checks the order, the lengths against the limits, the counts and the checksum;
//! damage of any kind is an error, never a panic or a wrong state.

use crate::key::Key;
use crate::session::Session;
use crate::state::{KvState, Stored, WriteResult};
use bytes::Bytes;
use std::io::{self, BufReader, BufWriter, Read, Write};

const MAGIC: &[u8; 8] = b"KVSNAP02";
/// The version before member records carried the promote flag; still read.
const MAGIC_V1: &[u8; 8] = b"KVSNAP01";
const TAG_END: u8 = 0;
const TAG_KEY: u8 = 1;
const TAG_SESSION: u8 = 2;
const TAG_MEMBER: u8 = 3;

/// The largest key a snapshot may hold (the API's limit).
pub const KEY_BYTES_MAX: usize = 4096;
/// The largest value a snapshot may hold: far above any configurable client limit, only a
/// bound against a damaged length.
pub const VALUE_BYTES_MAX: usize = 64 << 20;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The reader failed, or the data ended early.
    #[error("snapshot unreadable: {0}")]
    Io(#[from] io::Error),
    /// The data is not a snapshot of this format, or is damaged.
    #[error("snapshot damaged at byte {offset}: {reason}")]
    Damaged {
        /// Where reading stopped.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A writer that checksums what passes through it.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_u32(out: &mut impl Write, n: usize) -> io::Result<()> {
    let n = u32::try_from(n).map_err(|_| io::Error::other("a length over 4 GiB"))?;
    out.write_all(&n.to_le_bytes())
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    put_u32(out, bytes.len())?;
    out.write_all(bytes)
}

fn put_result(out: &mut impl Write, result: &WriteResult) -> io::Result<()> {
    match result {
        WriteResult::Put { revision } => {
            out.write_all(&[1])?;
            out.write_all(&revision.to_le_bytes())
        }
        WriteResult::Delete { deleted, revision } => {
            out.write_all(&[2])?;
            out.write_all(&revision.to_le_bytes())?;
            out.write_all(&[u8::from(*deleted)])
        }
        WriteResult::Member { revision, id } => {
            out.write_all(&[4])?;
            out.write_all(&revision.to_le_bytes())?;
            out.write_all(&id.to_le_bytes())
        }
        WriteResult::CompareAndSet { succeeded, current, revision } => {
            out.write_all(&[3])?;
            out.write_all(&revision.to_le_bytes())?;
            out.write_all(&[u8::from(*succeeded), u8::from(current.is_some())])?;
            match current {
                Some(current) => put_bytes(out, current),
                None => Ok(()),
            }
        }
    }
}

impl KvState {
    /// Writes the whole state to `out` as a stream, and returns the bytes written. Run it on
    /// a clone (O(1)) to keep applying entries meanwhile.
    pub fn write_snapshot(&self, out: impl Write) -> io::Result<u64> {
        let mut out = Summed {
            inner: BufWriter::with_capacity(256 * 1024, out),
            crc: crc32fast::Hasher::new(),
            written: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&self.applied.to_le_bytes())?;
        for (key, stored) in &self.map {
            out.write_all(&[TAG_KEY])?;
            put_bytes(&mut out, key)?;
            put_bytes(&mut out, &stored.value)?;
            out.write_all(&stored.mod_revision.to_le_bytes())?;
        }
        for (client_id, session) in self.sessions.iter() {
            out.write_all(&[TAG_SESSION])?;
            out.write_all(&client_id.to_le_bytes())?;
            out.write_all(&session.acked_below.to_le_bytes())?;
            out.write_all(&session.last_index.to_le_bytes())?;
            put_u32(&mut out, session.results.len())?;
            for (sequence, result) in &session.results {
                out.write_all(&sequence.to_le_bytes())?;
                put_result(&mut out, result)?;
            }
        }
        for (id, member) in &self.members {
            out.write_all(&[TAG_MEMBER])?;
            out.write_all(&id.to_le_bytes())?;
            for text in [&member.name, &member.peer_address, &member.client_address] {
                put_bytes(&mut out, text.as_bytes())?;
            }
            out.write_all(&[u8::from(member.promote)])?;
        }
        out.write_all(&[TAG_END])?;
        out.write_all(&self.next_member_id.to_le_bytes())?;
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        out.write_all(&(self.sessions.len() as u64).to_le_bytes())?;
        out.write_all(&(self.members.len() as u64).to_le_bytes())?;
        let crc = out.crc.clone().finalize();
        let mut inner = out.inner;
        inner.write_all(&crc.to_le_bytes())?;
        inner.flush()?;
        Ok(out.written + 4)
    }

    /// Reads a state written by [`KvState::write_snapshot`].
    pub fn read_snapshot(input: impl Read) -> Result<KvState, SnapshotError> {
        let mut reader = Reader {
            inner: BufReader::with_capacity(256 * 1024, input),
            crc: crc32fast::Hasher::new(),
            offset: 0,
        };
        let mut magic = [0; 8];
        reader.fill(&mut magic)?;
        // Version 1 had no promote flag in member records: read as false.
        let with_promote = match &magic {
            MAGIC => true,
            MAGIC_V1 => false,
            _ => return Err(reader.damaged("not a key-value snapshot (bad magic)")),
        };
        let mut state = KvState { applied: reader.u64()?, ..KvState::default() };
        let mut last_client: Option<u64> = None;
        let mut last_member: Option<u64> = None;
        loop {
            match reader.u8()? {
                TAG_KEY => {
                    let key = Key::from(reader.bytes(KEY_BYTES_MAX, "key")?);
                    if state.map.get_max().is_some_and(|(last, _)| *last >= key) {
                        return Err(reader.damaged("keys out of order"));
                    }
                    let value = reader.bytes(VALUE_BYTES_MAX, "value")?;
                    let mod_revision = reader.u64()?;
                    state.map.insert(key, Stored { value, mod_revision });
                }
                TAG_SESSION => {
                    let client_id = reader.u64()?;
                    if last_client.is_some_and(|last| last >= client_id) {
                        return Err(reader.damaged("sessions out of order"));
                    }
                    let session = reader.session()?;
                    state.sessions.restore(client_id, session);
                    last_client = Some(client_id);
                }
                TAG_MEMBER => {
                    let id = reader.u64()?;
                    if last_member.is_some_and(|last| last >= id) {
                        return Err(reader.damaged("members out of order"));
                    }
                    let member = crate::state::Member {
                        name: reader.text()?,
                        peer_address: reader.text()?,
                        client_address: reader.text()?,
                        promote: if with_promote { reader.flag()? } else { false },
                    };
                    state.members.insert(id, member);
                    last_member = Some(id);
                }
                TAG_END => break,
                tag => return Err(reader.damaged(&format!("unknown record tag {tag}"))),
            }
        }
        state.next_member_id = reader.u64()?;
        let (keys, sessions, members) = (reader.u64()?, reader.u64()?, reader.u64()?);
        if keys != state.map.len() as u64
            || sessions != state.sessions.len() as u64
            || members != state.members.len() as u64
        {
            return Err(reader.damaged("the record counts do not match"));
        }
        let computed = reader.crc.clone().finalize();
        let mut stored = [0; 4];
        reader.inner.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != computed {
            return Err(reader.damaged("checksum mismatch"));
        }
        if reader.inner.read(&mut [0])? != 0 {
            return Err(reader.damaged("bytes after the end"));
        }
        Ok(state)
    }
}

/// Reads and checksums.
struct Reader<R> {
    inner: BufReader<R>,
    crc: crc32fast::Hasher,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn damaged(&self, reason: &str) -> SnapshotError {
        SnapshotError::Damaged { offset: self.offset, reason: reason.into() }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        let mut buf = [0; 1];
        self.fill(&mut buf)?;
        Ok(buf[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut buf = [0; 4];
        self.fill(&mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut buf = [0; 8];
        self.fill(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn flag(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.damaged(&format!("flag {other}"))),
        }
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Bytes, SnapshotError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.damaged(&format!("a {what} of {len} bytes (at most {max})")));
        }
        let mut buf = vec![0; len];
        self.fill(&mut buf)?;
        Ok(buf.into())
    }

    /// A length-prefixed UTF-8 string of at most 4 KiB (a name or an address).
    fn text(&mut self) -> Result<String, SnapshotError> {
        let bytes = self.bytes(KEY_BYTES_MAX, "member field")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.damaged("a member field is not UTF-8"))
    }

    fn result(&mut self) -> Result<WriteResult, SnapshotError> {
        let kind = self.u8()?;
        let revision = self.u64()?;
        Ok(match kind {
            1 => WriteResult::Put { revision },
            2 => WriteResult::Delete { deleted: self.flag()?, revision },
            4 => WriteResult::Member { revision, id: self.u64()? },
            3 => {
                let succeeded = self.flag()?;
                let current =
                    if self.flag()? { Some(self.bytes(VALUE_BYTES_MAX, "value")?) } else { None };
                WriteResult::CompareAndSet { succeeded, current, revision }
            }
            other => return Err(self.damaged(&format!("unknown result kind {other}"))),
        })
    }

    fn session(&mut self) -> Result<Session, SnapshotError> {
        let acked_below = self.u64()?;
        let last_index = self.u64()?;
        let count = self.u32()?;
        let mut session = Session { acked_below, last_index, ..Session::default() };
        let mut last_sequence = None;
        for _ in 0..count {
            let sequence = self.u64()?;
            if last_sequence.is_some_and(|last| last >= sequence) || sequence < acked_below {
                return Err(self.damaged("session results out of order"));
            }
            session.results.insert(sequence, self.result()?);
            last_sequence = Some(sequence);
        }
        Ok(session)
    }
}
