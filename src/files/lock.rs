//! An advisory lock on a directory, so two processes never write one run at once (two
//! `--resume` of the same run would interleave their logs and checkpoints). The operating
//! system releases it when the process ends, however it ends, so a killed run never leaves
//! a stale lock behind.

use std::fs::{File, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};

const LOCK_FILE: &str = ".msclip.lock";

/// Held while alive; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist) or fails at once, saying another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::config(format!(
                "{} is in use by another msclip process; wait for it to finish or stop it first",
                dir.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// The name of the lock file inside a locked directory.
    pub fn file_name() -> &'static str {
        LOCK_FILE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("msclip-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DirLock::acquire(&dir).unwrap();
        let err = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another msclip process"), "{err}");
        drop(first);
        DirLock::acquire(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
