//! Writing a file whole or not at all. Every file the project writes goes through here: the
//! bytes go to a temporary sibling with a name no user file has (hidden, with the process id, a
//! counter and a suffix of ours), are flushed to disk, and the temporary is renamed over the
//! target. A reader sees the old file or the new one, never half of one; an error removes the
//! temporary; a process killed mid-write leaves only a temporary, which
//! [`remove_stale_temporaries`] recognises by its suffix and deletes at the next start.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The suffix that marks a temporary of this module; nothing else ends in it.
const TEMP_SUFFIX: &str = ".msclip-tmp";

/// Writes `bytes` to `path` atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Writes `path` atomically from a writer callback (for encoders that stream, like PNG).
/// The target must not be a directory; its parent must exist.
pub fn write_atomically_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(path, std::io::Error::other("is a directory, not a file")));
    }
    let temp = temporary_for(path)?;
    let written =
        write_and_sync(&temp, write).and_then(|()| std::fs::rename(&temp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // Best effort: the error being returned matters more than the cleanup's.
        let _ = std::fs::remove_file(&temp);
        return written;
    }
    sync_parent(path);
    Ok(())
}

/// Gives the existing file `existing` a second name `path`, atomically: a hard link (no bytes
/// copied), or a synced copy where the filesystem has no hard links. Files this module writes
/// are replaced by rename, never changed in place, so the two names never see each other's
/// later writes.
pub fn link_atomically(existing: &Path, path: &Path) -> Result<()> {
    let temp = temporary_for(path)?;
    let linked = std::fs::hard_link(existing, &temp)
        .or_else(|_| std::fs::copy(existing, &temp).and_then(|_| File::open(&temp)?.sync_all()))
        .map_err(|e| Error::io(&temp, e))
        .and_then(|()| std::fs::rename(&temp, path).map_err(|e| Error::io(path, e)));
    if linked.is_err() {
        let _ = std::fs::remove_file(&temp);
        return linked;
    }
    sync_parent(path);
    Ok(())
}

/// Whether `name` is a temporary this module writes.
pub fn is_temporary(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(TEMP_SUFFIX))
}

/// Deletes the temporaries a killed process left in `dir` (not recursively); returns how many.
/// A missing directory has none.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if is_temporary(&entry.file_name()) && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A fresh temporary name beside `path`: unique within this process (a counter) and across
/// processes (the pid).
fn temporary_for(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("names no file to write")))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.{}-{n}{TEMP_SUFFIX}", std::process::id())))
}

fn write_and_sync(temp: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let file = File::options().write(true).create_new(true).open(temp).map_err(|e| Error::io(temp, e))?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| Error::io(temp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(temp, e))
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to sync a directory,
/// and the file's own contents are already on disk.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("msclip-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_sibling_named_like_the_old_temporaries_is_left_alone() {
        let dir = scratch("sibling");
        std::fs::write(dir.join("notes.tmp"), "mine").unwrap();
        write_atomically(&dir.join("notes.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(dir.join("notes.tmp")).unwrap(), b"mine");
        assert_eq!(std::fs::read(dir.join("notes.json")).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary left: {names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_leave_no_temporary_and_a_directory_target_is_refused() {
        let dir = scratch("fail");
        let err = write_atomically(&dir, b"x").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = write_atomically_with(&dir.join("a.json"), |_| Err(Error::config("encoder failed"))).unwrap_err();
        assert!(err.to_string().contains("encoder failed"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the temporary was removed");
        let err = write_atomically(&dir.join("missing/a.json"), b"x").unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_temporaries_are_recognised_and_removed() {
        let dir = scratch("stale");
        let stale = temporary_for(&dir.join("step_5.safetensors")).unwrap();
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(dir.join("step_5.tmp"), b"user file").unwrap();
        assert!(is_temporary(stale.file_name().unwrap()));
        assert_eq!(remove_stale_temporaries(&dir).unwrap(), 1);
        assert!(!stale.exists() && dir.join("step_5.tmp").exists());
        assert_eq!(remove_stale_temporaries(&dir.join("absent")).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
