//! One writer per run directory. Every command that writes a run directory (`search`, `train`,
//! `distill`, `score --out`, `merge`) holds an exclusive OS file lock on `DIR/.kdscout.lock` for
//! the whole run. The kernel releases the lock when the process ends, however it ends, so a
//! `kill -9` never leaves a stale lock behind; a second process on the same directory stops at
//! once and names the holder's pid.
//!
//! The lock file itself is never deleted: removing it while another process waits on it would let
//! two processes lock two different files of the same name.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::{Error, Result};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".kdscout.lock";

/// Held for as long as the process writes the directory; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub dir: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and locks it, or fails at once with [`Error::Busy`] naming the
    /// directory and the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating run directory {}", dir.display())))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(format!("opening the lock file {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let who = holder
                    .lines()
                    .find_map(|l| l.strip_prefix("pid "))
                    .map_or("another kdscout process".to_string(), |pid| format!("kdscout process {}", pid.trim()));
                return Err(Error::Busy {
                    dir: dir.display().to_string(),
                    detail: format!(
                        "is in use by {who} (lock {}); wait for it to finish (or stop it), or choose another --out",
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Io { context: format!("locking {}", path.display()), source: e });
            }
        }
        // Who holds it, for the message of a second process (informational only: the lock is the
        // kernel's, not this text).
        let args: Vec<String> = std::env::args().collect();
        let text = format!("pid {}\ncommand {}\n", std::process::id(), args.join(" "));
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(RunLock { _file: file, dir: dir.to_path_buf() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("kdscout-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir).unwrap();
        // A second open file description conflicts with the first even in the same process.
        let e = RunLock::acquire(&dir).unwrap_err();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) || msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
