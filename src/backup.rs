//! Backups of a node's data directory, and restoring one.
//!
//! `backup` writes a consistent copy of a stopped node's store (a RocksDB checkpoint: on the
//! same filesystem its table files are hard links) with the directory's key files, and marks
//! the copy. A node that starts on a marked copy renews the store's identity before anything
//! else ([`edgesync_proto::Node::renew_store`]): a new store id, so every peer forgets what it
//! believed the node held and sends everything the node's summary lacks, and a new actor
//! epoch, so the node never takes again a sequence number that left after the copy. The mark
//! travels with the copy, so a copy of a backup made with `cp` is as safe as `restore`'s.

use std::path::{Path, PathBuf};

use crate::net::authorship::AUTHOR_KEY_FILE;
use crate::net::RESET_KEY_FILE;
use crate::store::{Durability, OpenError, RocksStore};

/// Files of a data directory besides the database that a backup carries.
pub const KEY_FILES: [&str; 2] = [AUTHOR_KEY_FILE, RESET_KEY_FILE];

/// A backup or restore that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The node's store did not open (the node runs: stop it first).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The target exists.
    #[error("{} exists; a backup or restore writes a new directory", .0.display())]
    Exists(PathBuf),
    /// The source is not a backup made by `edgesync backup`.
    #[error("{} is not an edgesync backup (no copy mark): make backups with `edgesync backup`", .0.display())]
    NotABackup(PathBuf),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] edgesync_proto::StoreError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup wrote.
#[derive(Debug, serde::Serialize)]
pub struct Backup {
    /// The backup's directory.
    pub dir: PathBuf,
    /// Its time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The key files copied with it.
    pub key_files: Vec<String>,
}

/// Backs up the data directory of a stopped node into `out`, which must not exist.
pub fn backup(data_dir: &Path, out: &Path) -> Result<Backup, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let store = RocksStore::open(data_dir, Durability::Fsync)?;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    store.backup(out, at_ms)?;
    let mut key_files = Vec::new();
    for name in KEY_FILES {
        let from = data_dir.join(name);
        if !from.exists() {
            continue;
        }
        let bytes = std::fs::read(&from).map_err(io(&from))?;
        let to = out.join(name);
        crate::os::write_atomic(&to, &bytes, 0o600).map_err(io(&to))?;
        key_files.push(name.to_string());
    }
    Ok(Backup {
        dir: out.to_path_buf(),
        at_ms,
        key_files,
    })
}

/// Restores the backup in `from` into `data_dir`, which must not exist (or be empty). The
/// node's first start on it renews the store's identity.
pub fn restore(from: &Path, data_dir: &Path) -> Result<u64, BackupError> {
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(BackupError::Exists(data_dir.to_path_buf()));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let copied = copy_files(from, data_dir).and_then(|()| {
        let store = RocksStore::open(data_dir, Durability::Fsync)?;
        store
            .copy_mark()?
            .ok_or_else(|| BackupError::NotABackup(from.to_path_buf()))
    });
    if copied.is_err() {
        // Nothing half-restored is left for a node to start on.
        let _ = std::fs::remove_dir_all(data_dir);
    }
    copied
}

/// Copies every file of `from` (a flat directory, as a backup is) into `to`, synced.
fn copy_files(from: &Path, to: &Path) -> Result<(), BackupError> {
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let path = entry.path();
        if !entry.file_type().map_err(io(&path))?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        std::fs::copy(&path, &target).map_err(io(&path))?;
        std::fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(io(&target))?;
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(io(to))
}
