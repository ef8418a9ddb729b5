//! Files the log no longer uses, and their removal away from the log's owner.
//!
//! Removing a large file is slow: its blocks are freed, and on a file system mounted with
//! `discard` each range is trimmed as well. On our test machine unlinking a 64 MiB segment
//! took about 45 ms, while renaming it and syncing the directory took 0.5 ms. A log that
//! removed the segments a snapshot made useless held its owner for that long, 170 ms for a
//! 99 MB snapshot received from a leader.
//!
//! So the log *gives up* such a file instead: it renames it to `<name>.<n>.gone`, a name no
//! part of the log reads, and syncs the directory as it did after a removal. From then on
//! the file is not part of the log; [`crate::wal::Wal::take_given_up`] hands the names to
//! the owner, which removes them on any thread ([`GivenUp::remove`]). A crash before that
//! leaves the files behind, and the log's next open removes every `.gone` file it finds.
//!
//! Invariant: a given-up name is never reused, within a process (`<n>` counts up) or
//! across one (open removes the old ones before the log gives up anything).

use crate::vfs::{remove_if_present, Vfs};
use crate::wal::WalError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Ends the name of every file the log gave up.
const SUFFIX: &str = ".gone";

/// Makes given-up names unique within a process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Renames `path` out of the log's way and returns its new name; `None` if there was no
/// such file. The caller syncs the directory.
pub(crate) fn give_up(vfs: &dyn Vfs, path: &Path) -> io::Result<Option<PathBuf>> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}{SUFFIX}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let gone = PathBuf::from(name);
    match vfs.rename(path, &gone) {
        Ok(()) => Ok(Some(gone)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether `path` names a file the log gave up.
pub fn is_given_up(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(SUFFIX))
}

/// Files the log gave up, taken from it to be removed, on any thread.
#[must_use = "given-up files stay on disk until removed (or until the log's next open)"]
pub struct GivenUp {
    vfs: Arc<dyn Vfs>,
    paths: Vec<PathBuf>,
}

impl GivenUp {
    pub(crate) fn new(vfs: Arc<dyn Vfs>, paths: Vec<PathBuf>) -> GivenUp {
        GivenUp { vfs, paths }
    }

    /// Whether there is nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The files' current names.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the files. The directory is not synced: a file a crash brings back is removed
    /// by the next open. On an error the files not yet removed are left to that open too.
    pub fn remove(self) -> Result<(), WalError> {
        for path in &self.paths {
            remove_if_present(&*self.vfs, path)
                .map_err(|source| WalError::Io { path: path.clone(), source })?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for GivenUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GivenUp").field("paths", &self.paths).finish_non_exhaustive()
    }
}
