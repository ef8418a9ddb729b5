//! The file layer under the log: a small trait, the real file system ([`StdVfs`]), and a fake
//! one ([`FakeVfs`]) that keeps written and synced bytes apart, so tests can take honest crash
//! images.
//!
//! Everything the log does to disk goes through [`Vfs`] and [`VfsFile`]: create, append,
//! `fdatasync`, truncate, positional reads, rename, remove, listing and syncing a directory,
//! and mapping a whole file read-only. Durability follows POSIX as the log relies on it:
//!
//! - appended bytes and a truncation are durable once the file is synced;
//! - a created, renamed or removed name is durable once its directory is synced.
//!
//! [`FakeVfs::crash`] returns the disk as a power cut would leave it: only what those two rules
//! made durable. [`FakeVfs::crash_torn`] adds what a power cut during write-back can leave:
//! any mix of the unsynced sectors, old, new or garbage. [`FakeVfs::fail_syncs`] makes every later sync fail, as a dying disk does.

use raft_core::Rng;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file's whole contents, read-only: a memory map on a real disk.
pub type MappedBytes = Box<dyn AsRef<[u8]> + Send + Sync>;

/// The file-system operations the log needs.
pub trait Vfs: Send + Sync {
    /// Creates a new, empty file for reading and writing; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Maps an existing file read-only. The caller must not write the file while it is mapped.
    fn map(&self, path: &Path) -> io::Result<MappedBytes>;
    /// Removes a file (durable once the directory is synced).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file over `to` (durable once the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// The files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the names created, renamed or removed in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
pub trait VfsFile: Send + Sync {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The whole file.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    /// Writes `data` at `offset`, extending the file if needed (not durable until
    /// [`VfsFile::sync`]).
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's contents and length durable (`fdatasync`). It may run on another
    /// thread than the writes it makes durable: it covers every write that returned before
    /// it was called.
    fn sync(&self) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes (not durable until synced).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// Removes `path` if it exists (durable once the directory is synced).
pub fn remove_if_present(vfs: &dyn Vfs, path: &Path) -> io::Result<()> {
    match vfs.remove(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdVfs;

impl Vfs for StdVfs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(path)?;
        Ok(Box::new(file))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Ok(Box::new(OpenOptions::new().read(true).write(true).open(path)?))
    }

    fn map(&self, path: &Path) -> io::Result<MappedBytes> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Box::new(Vec::new())); // an empty file cannot be mapped
        }
        // SAFETY: a map is undefined behaviour if the file changes while it is mapped. The
        // log maps only index files, which it writes whole under a temporary name, renames
        // into place and never writes again; it removes (never rewrites) one before writing a
        // new one under the same name, and unlinking leaves an existing map intact. The
        // directory belongs to one log: other processes must not write in it.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Box::new(map))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|item| item.map(|e| e.path())).collect()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl VfsFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(VfsFile::size(self)?).map_err(io::Error::other)?;
        let mut bytes = vec![0; len];
        FileExt::read_exact_at(self, &mut bytes, 0)?;
        Ok(bytes)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// One file's bytes: as written, and as the last sync left them on disk.
#[derive(Clone, Debug, Default)]
struct Inode {
    written: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct FakeDisk {
    inodes: Vec<Inode>,
    /// Names as the running process sees them.
    names: BTreeMap<PathBuf, usize>,
    /// Names as they are durable (as of each directory's last sync).
    durable_names: BTreeMap<PathBuf, usize>,
    /// Syncs that will still succeed (`None`: all of them).
    syncs_left: Option<u64>,
    /// Renames that will still succeed (`None`: all of them).
    renames_left: Option<u64>,
    syncs: u64,
    /// Positional reads served.
    reads: u64,
}

/// A file system in memory that keeps written and synced bytes apart (tests only; it is
/// public so that the crates above the log can use it too).
#[derive(Clone, Debug, Default)]
pub struct FakeVfs {
    disk: Arc<Mutex<FakeDisk>>,
}

struct FakeFile {
    disk: Arc<Mutex<FakeDisk>>,
    inode: usize,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl FakeVfs {
    /// An empty disk.
    pub fn new() -> FakeVfs {
        FakeVfs::default()
    }

    fn disk(&self) -> MutexGuard<'_, FakeDisk> {
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The disk after a power cut now: only synced bytes and names remain.
    pub fn crash(&self) -> FakeVfs {
        self.image(true, |inode| inode.synced.clone())
    }

    /// The disk after a power cut that came while unsynced data was being written back: the
    /// names and synced bytes of [`FakeVfs::crash`], and of each `sector`-byte block written
    /// since its file's last sync, the old block, the new one or garbage in its changed bytes,
    /// in any mix (picked from `seed`), so a later block may have reached the disk and an
    /// earlier one not. A file whose length changed since its last sync has the old length or
    /// the new one.
    pub fn crash_torn(&self, seed: u64, sector: usize) -> FakeVfs {
        let mut random = Rng::new(seed);
        self.image(true, |inode| torn_bytes(inode, sector.max(1), &mut random))
    }

    /// The disk after the process was killed now: everything written remains (the kernel
    /// still has it), and a reboot would not lose it either.
    pub fn kill(&self) -> FakeVfs {
        self.image(false, |inode| inode.written.clone())
    }

    /// A new disk holding, as written and synced, the durable names (`power_cut`) or all of
    /// them, each file with the bytes `bytes` picks from its inode.
    fn image(&self, power_cut: bool, mut bytes: impl FnMut(&Inode) -> Vec<u8>) -> FakeVfs {
        let disk = self.disk();
        let names = if power_cut { &disk.durable_names } else { &disk.names };
        let mut after = FakeDisk::default();
        for (name, &inode) in names {
            let bytes = bytes(&disk.inodes[inode]);
            after.inodes.push(Inode { written: bytes.clone(), synced: bytes });
            after.names.insert(name.clone(), after.inodes.len() - 1);
        }
        after.durable_names = after.names.clone();
        FakeVfs { disk: Arc::new(Mutex::new(after)) }
    }

    /// Every later file or directory sync fails, as on a dying disk.
    pub fn fail_syncs(&self) {
        self.fail_syncs_after(0);
    }

    /// The next `n` syncs succeed, every later one fails. With [`FakeVfs::crash`], this
    /// stops a multi-step operation after any of its durable steps.
    pub fn fail_syncs_after(&self, n: u64) {
        self.disk().syncs_left = Some(n);
    }

    /// The next `n` renames succeed, every later one fails. With [`FakeVfs::kill`], this
    /// stops a sequence of renames after any of them, as a process killed amid it would.
    pub fn fail_renames_after(&self, n: u64) {
        self.disk().renames_left = Some(n);
    }

    /// How many file and directory syncs succeeded so far.
    pub fn syncs(&self) -> u64 {
        self.disk().syncs
    }

    /// How many positional reads ([`VfsFile::read_exact_at`]) were served so far.
    pub fn reads(&self) -> u64 {
        self.disk().reads
    }

    /// The bytes written to `path` (synced or not), if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.disk();
        disk.names.get(path).map(|&inode| disk.inodes[inode].written.clone())
    }

    /// Replaces the contents of `path` with `bytes`, durably (to plant damage or a torn tail).
    pub fn set_contents(&self, path: &Path, bytes: Vec<u8>) {
        let mut disk = self.disk();
        let inode = match disk.names.get(path) {
            Some(&inode) => inode,
            None => {
                disk.inodes.push(Inode::default());
                disk.inodes.len() - 1
            }
        };
        disk.inodes[inode] = Inode { written: bytes.clone(), synced: bytes };
        disk.names.insert(path.to_path_buf(), inode);
        disk.durable_names.insert(path.to_path_buf(), inode);
    }

    fn file(&self, inode: usize) -> Box<dyn VfsFile> {
        Box::new(FakeFile { disk: self.disk.clone(), inode })
    }
}

/// A file's bytes after a power cut during write-back (see [`FakeVfs::crash_torn`]).
fn torn_bytes(inode: &Inode, sector: usize, random: &mut Rng) -> Vec<u8> {
    let (old, new) = (&inode.synced, &inode.written);
    let len = if random.chance(1, 2) { old.len() } else { new.len() };
    let mut bytes = old.clone();
    bytes.resize(len, 0);
    for start in (0..len).step_by(sector) {
        let block = start..(start + sector).min(len);
        let new_byte = |at: usize| new.get(at).copied().unwrap_or(0);
        if block.clone().all(|at| bytes[at] == new_byte(at)) {
            continue; // unchanged since the last sync
        }
        match random.below(10) {
            0..=3 => {} // the old block stayed
            4..=8 => block.for_each(|at| bytes[at] = new_byte(at)),
            // Garbage only where the block changed: a partial overwrite leaves the rest of
            // its sector as it was (the disk's "powersafe overwrite", as SQLite calls it).
            _ => {
                for at in block.filter(|&at| old.get(at) != new.get(at)) {
                    bytes[at] = random.next_u64() as u8;
                }
            }
        }
    }
    bytes
}

/// Takes one from a budget of operations that will still succeed (`None`: no limit), or
/// fails as injected once it is spent.
fn spend(left: &mut Option<u64>, what: &str) -> io::Result<()> {
    match left {
        Some(0) => Err(io::Error::other(format!("injected {what} failure"))),
        Some(left) => {
            *left -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

fn sync_result(disk: &mut FakeDisk) -> io::Result<()> {
    spend(&mut disk.syncs_left, "sync")?;
    disk.syncs += 1;
    Ok(())
}

impl Vfs for FakeVfs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let mut disk = self.disk();
        if disk.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, path.display().to_string()));
        }
        disk.inodes.push(Inode::default());
        let inode = disk.inodes.len() - 1;
        disk.names.insert(path.to_path_buf(), inode);
        drop(disk);
        Ok(self.file(inode))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let inode = *self.disk().names.get(path).ok_or_else(|| not_found(path))?;
        Ok(self.file(inode))
    }

    fn map(&self, path: &Path) -> io::Result<MappedBytes> {
        let disk = self.disk();
        let inode = *disk.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(disk.inodes[inode].written.clone()))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.disk().names.remove(path).map(drop).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        if !disk.names.contains_key(from) {
            return Err(not_found(from)); // not spending the budget: nothing was renamed
        }
        spend(&mut disk.renames_left, "rename")?;
        let inode = disk.names.remove(from).ok_or_else(|| not_found(from))?;
        disk.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let disk = self.disk();
        Ok(disk.names.keys().filter(|name| name.parent() == Some(dir)).cloned().collect())
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(()) // directories are implied by the names in them
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        sync_result(&mut disk)?;
        let in_dir = |name: &PathBuf| name.parent() == Some(dir);
        let current: Vec<_> =
            disk.names.iter().filter(|(n, _)| in_dir(n)).map(|(n, &i)| (n.clone(), i)).collect();
        disk.durable_names.retain(|name, _| !in_dir(name));
        disk.durable_names.extend(current);
        Ok(())
    }
}

impl FakeFile {
    fn disk(&self) -> MutexGuard<'_, FakeDisk> {
        self.disk.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl VfsFile for FakeFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.disk().inodes[self.inode].written.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk();
        disk.reads += 1;
        let written = &disk.inodes[self.inode].written;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| written.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn read_all(&self) -> io::Result<Vec<u8>> {
        Ok(self.disk().inodes[self.inode].written.clone())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let mut disk = self.disk();
        let written = &mut disk.inodes[self.inode].written;
        if written.len() < start + data.len() {
            written.resize(start + data.len(), 0);
        }
        written[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut disk = self.disk();
        sync_result(&mut disk)?;
        let inode = &mut disk.inodes[self.inode];
        inode.synced = inode.written.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.disk().inodes[self.inode].written.resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_only_synced_bytes_and_names() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let (a, b) = (dir.join("a"), dir.join("b"));
        let file = vfs.create_new(&a).unwrap();
        file.write_at(b"durable", 0).unwrap();
        file.sync().unwrap();
        vfs.sync_dir(dir).unwrap();
        file.write_at(b" lost", 7).unwrap();
        let other = vfs.create_new(&b).unwrap();
        other.write_at(b"name not durable", 0).unwrap();
        other.sync().unwrap();
        let after = vfs.crash();
        assert_eq!(after.contents(&a), Some(b"durable".to_vec()));
        assert_eq!(after.contents(&b), None);
        assert_eq!(vfs.kill().contents(&a), Some(b"durable lost".to_vec()));
    }

    #[test]
    fn a_removal_or_rename_is_durable_only_after_the_directory_sync() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let (a, b) = (dir.join("a"), dir.join("b"));
        vfs.set_contents(&a, b"x".to_vec());
        vfs.rename(&a, &b).unwrap();
        assert_eq!(vfs.crash().list(dir).unwrap(), vec![a.clone()]);
        vfs.sync_dir(dir).unwrap();
        assert_eq!(vfs.crash().list(dir).unwrap(), vec![b.clone()]);
        vfs.remove(&b).unwrap();
        assert_eq!(vfs.crash().list(dir).unwrap(), vec![b]);
    }

    /// A torn power cut keeps every synced byte and any mix of the unsynced blocks: across
    /// seeds, a later block reaches the disk while an earlier one does not.
    #[test]
    fn a_torn_crash_keeps_synced_bytes_and_any_mix_of_unsynced_blocks() {
        let vfs = FakeVfs::new();
        let path = Path::new("/log/a");
        let file = vfs.create_new(path).unwrap();
        vfs.sync_dir(Path::new("/log")).unwrap();
        file.write_at(&[1; 64], 0).unwrap();
        file.sync().unwrap();
        file.write_at(&[2; 64], 64).unwrap();
        let mut later_without_earlier = false;
        for seed in 0..200 {
            let bytes = vfs.crash_torn(seed, 16).contents(path).unwrap();
            assert!(bytes.len() == 64 || bytes.len() == 128, "seed {seed}: {}", bytes.len());
            assert_eq!(bytes[..64], [1; 64], "seed {seed}: a synced byte changed");
            let new: Vec<bool> = bytes[64..].chunks(16).map(|block| block == [2; 16]).collect();
            later_without_earlier |= new.len() == 4 && !new[0] && new[3];
        }
        assert!(later_without_earlier, "no seed kept a later block without an earlier one");
    }

    #[test]
    fn failed_syncs_leave_the_disk_as_it_was() {
        let vfs = FakeVfs::new();
        let path = Path::new("/log/a");
        let file = vfs.create_new(path).unwrap();
        vfs.sync_dir(Path::new("/log")).unwrap();
        file.write_at(b"data", 0).unwrap();
        vfs.fail_syncs();
        assert!(file.sync().is_err());
        assert_eq!(vfs.crash().contents(path), Some(Vec::new()));
    }
}
