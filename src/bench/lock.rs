//! One bench per results folder, and nothing half-written left behind.
//!
//! A bench holds `OUT/.dfast-bench.lock` (its process id and command line) while it runs: a second bench
//! into the same folder is refused with the first one named, and a lock whose process has died is taken
//! over. The files a bench has in flight (a worker's job and answer, an image before its row is written)
//! are registered here, so that an interrupt ([`interrupt`], Ctrl-C in the CLI) stops the worker and
//! removes them: what stays in the folder is the finished rows and their images.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Result};

/// The lock file's name in the results folder.
pub const LOCK_FILE: &str = ".dfast-bench.lock";

/// The results folder's lock, held until dropped.
#[derive(Debug)]
pub struct BenchLock {
    path: PathBuf,
}

impl BenchLock {
    /// Takes `out`'s lock, or says which bench holds it. A lock left by a process that no longer runs is
    /// taken over.
    pub fn acquire(out: &Path) -> Result<BenchLock> {
        let path = out.join(LOCK_FILE);
        let mine = format!("{}\n{}\n", std::process::id(), command_line());
        for _ in 0..4 {
            track(&path)?;
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(mine.as_bytes()).map_err(|e| Error::io(&path, "cannot write the lock", e))?;
                    return Ok(BenchLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    untrack(&path);
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut lines = held.lines();
                    let pid = lines.next().and_then(|p| p.trim().parse::<u32>().ok());
                    let command = lines.next().unwrap_or("").trim();
                    match pid {
                        Some(pid) if alive(pid) => {
                            return Err(Error::bad_file(
                                out,
                                format!(
                                    "another dfast bench (pid {pid}: {command}) is writing to this folder; wait \
                                     for it to end or choose another --out"
                                ),
                            ));
                        }
                        // An empty lock may be one being written this instant: look again.
                        None if held.is_empty() => std::thread::sleep(std::time::Duration::from_millis(100)),
                        _ => take_over(&path, &held),
                    }
                }
                Err(e) => {
                    untrack(&path);
                    return Err(Error::io(&path, "cannot create the lock", e));
                }
            }
        }
        Err(Error::bad_file(out, format!("cannot take {LOCK_FILE}: other benches keep taking it; try again")))
    }
}

impl Drop for BenchLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        untrack(&self.path);
    }
}

/// Removes a dead bench's lock, unless another bench took it over in between (then it is put back).
fn take_over(path: &Path, stale: &str) {
    let aside = path.with_extension(format!("lock.{}", std::process::id()));
    if std::fs::rename(path, &aside).is_err() {
        return;
    }
    if std::fs::read_to_string(&aside).is_ok_and(|now| now != stale) {
        // A live lock, taken after we read the stale one: back where it was, unless taken yet again.
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces or parentheses.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        // Without /proc there is no telling: taken as running.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ").replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------------------
// What is in flight.

struct InFlight {
    files: Vec<PathBuf>,
    worker: Option<u32>,
    interrupted: bool,
}

static IN_FLIGHT: Mutex<InFlight> = Mutex::new(InFlight { files: Vec::new(), worker: None, interrupted: false });

fn in_flight() -> MutexGuard<'static, InFlight> {
    IN_FLIGHT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn interrupted_error() -> Error {
    Error::runtime("interrupted")
}

/// Registers a file about to be written, to be removed on an interrupt; refused once interrupted.
pub(super) fn track(path: &Path) -> Result<()> {
    let mut state = in_flight();
    if state.interrupted {
        return Err(interrupted_error());
    }
    state.files.push(path.to_path_buf());
    Ok(())
}

/// The file is finished (or removed): an interrupt leaves it alone.
pub(super) fn untrack(path: &Path) {
    in_flight().files.retain(|f| f != path);
}

/// The worker process now running (`None`: none).
pub(super) fn set_worker(pid: Option<u32>) {
    in_flight().worker = pid;
}

/// Runs `f` (say, renaming an image into place and writing its row) with interrupts held off, so that it
/// happens whole or not at all.
pub(super) fn uninterrupted<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let state = in_flight();
    if state.interrupted {
        return Err(interrupted_error());
    }
    let result = f();
    drop(state);
    result
}

/// Stops the running bench: `stop_worker` ends the worker process (given its id), then every file in flight
/// and the lock are removed. Whatever the bench does afterwards fails with "interrupted". Returns the files
/// removed.
pub fn interrupt(stop_worker: &dyn Fn(u32)) -> Vec<PathBuf> {
    let mut state = in_flight();
    state.interrupted = true;
    if let Some(pid) = state.worker.take() {
        stop_worker(pid);
    }
    let files = std::mem::take(&mut state.files);
    files.into_iter().filter(|f| std::fs::remove_file(f).is_ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lock_refuses_and_a_dead_ones_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = BenchLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("{}\n", std::process::id())), "{text}");
        let err = BenchLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("another dfast bench (pid {}", std::process::id())), "{err}");
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists());

        // A process that has ended: its lock is taken over.
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), format!("{dead}\ndfast bench --out x\n")).unwrap();
        let taken = BenchLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(text.starts_with(&format!("{}\n", std::process::id())), "{text}");
        drop(taken);
    }
}
