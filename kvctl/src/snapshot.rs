//! `kvctl snapshot save` and `kvctl snapshot restore`: a backup of the whole key space to a
//! local file, and a new cluster's data directories seeded from one, as etcd's snapshot save
//! and restore do (docs/operations.md#backup-and-restore).
//!
//! The file is kv-fsm's snapshot format, checksummed: `save` checks it by reading it back
//! before giving it its name, and `restore` refuses a file that does not check.

use crate::client::{CallError, Connection};
use kv_fsm::KvState;
use kv_proto::kv::SnapshotSaveRequest;
use raft_core::{HardState, Index, Membership, NodeId, SnapshotMeta, Term};
use raft_log::wal::{Wal, WalOptions};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// What a saved file holds, as printed.
pub struct Saved {
    /// Keys in the copy.
    pub keys: usize,
    /// The log index the copy is as of.
    pub applied: u64,
    /// The file's size.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// Streams a snapshot from the first endpoint that answers into `file` (through
/// `file.part`, synced, checked, then renamed).
pub async fn save(connection: &Connection, file: &Path) -> Result<Saved, CallError> {
    if file.exists() {
        let reason = "exists already; a backup never replaces another: give a new name";
        return Err(CallError::Local(format!("{}: {reason}", file.display())));
    }
    let part = part_path(file);
    let saved = save_through(connection, file, &part).await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&part); // nothing half-written is left behind
    }
    saved
}

async fn save_through(
    connection: &Connection,
    file: &Path,
    part: &Path,
) -> Result<Saved, CallError> {
    let part = part.to_path_buf();
    let local = |e: std::io::Error| CallError::Local(format!("{}: {e}", part.display()));
    connection
        .call(|channel| {
            let part = part.clone();
            async move {
                let mut stream = Connection::cluster(channel)
                    .snapshot_save(SnapshotSaveRequest {})
                    .await?
                    .into_inner();
                // Each endpoint tried starts the file again.
                let failed =
                    |e: std::io::Error| tonic::Status::internal(format!("{}: {e}", part.display()));
                let mut out = File::create(&part).map_err(failed)?;
                while let Some(chunk) = stream.message().await? {
                    out.write_all(&chunk.data).map_err(failed)?;
                }
                out.sync_all().map_err(failed)?;
                Ok(())
            }
        })
        .await?;
    let state = read_state(&part).map_err(CallError::Local)?;
    let (bytes, crc32) = checksum(&part).map_err(local)?;
    std::fs::rename(&part, file).map_err(local)?;
    sync_parent(file).map_err(local)?;
    Ok(Saved { keys: state.len(), applied: state.applied(), bytes, crc32 })
}

/// Seeds `data_dir` (absent or empty) for a member of a new cluster of `members` (ids in
/// order) from the backup `file`: the log holds the backup as its snapshot, with the new
/// cluster's configuration; every member is seeded from the same file, so all start equal.
pub fn restore(file: &Path, data_dir: &Path, members: &[NodeId]) -> Result<Saved, String> {
    let empty = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
        Err(error) => return Err(format!("{}: {error}", data_dir.display())),
    };
    if !empty {
        return Err(format!(
            "{}: not empty; a restore seeds a new member's empty data directory",
            data_dir.display()
        ));
    }
    let mut state = read_state(file)?;
    let first_free = members.iter().map(|id| id.0.saturating_add(1)).max().unwrap_or(1);
    state.forget_members(first_free);
    let applied = state.applied();
    let meta = SnapshotMeta {
        index: Index(applied),
        term: Term(1),
        membership: Membership::new(members.iter().copied()),
    };
    let failed = |e: raft_log::wal::WalError| format!("{}: {e}", data_dir.display());
    let mut wal = Wal::open(data_dir, WalOptions::default()).map_err(failed)?;
    wal.install_snapshot_with(&meta, &mut |out| state.write_snapshot(out).map(|_| ()))
        .map_err(failed)?;
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(applied) };
    wal.write(Some(hard_state), &[]).map_err(failed)?;
    wal.take_given_up().remove().map_err(failed)?; // the empty log the install replaced
    let (bytes, crc32) = checksum(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Saved { keys: state.len(), applied, bytes, crc32 })
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// Reads and checks a backup file (its checksum, its format).
fn read_state(file: &Path) -> Result<KvState, String> {
    let opened = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    KvState::read_snapshot(BufReader::new(opened))
        .map_err(|e| format!("{}: not a good backup: {e}", file.display()))
}

/// The size and CRC-32 of `file`.
fn checksum(file: &Path) -> std::io::Result<(u64, u32)> {
    let mut input = BufReader::new(File::open(file)?);
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 64 << 10];
    let mut bytes = 0;
    loop {
        let read = input.read(&mut buffer)?;
        if read == 0 {
            return Ok((bytes, hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
}

/// Makes a rename in `file`'s directory durable.
fn sync_parent(file: &Path) -> std::io::Result<()> {
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    raft_log::vfs::Vfs::sync_dir(&raft_log::vfs::StdVfs, parent)
}
