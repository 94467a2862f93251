//! Output files: checked before the work starts, written under a temporary name in their folder and renamed
//! into place, so that a full disk or an interrupted run never leaves a truncated file at the name asked for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// The folder a file `path` goes into (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new file in `folder`, named `.dfast-<pid>-<n>.<suffix>`, removed again when dropped unless kept.
struct Temporary {
    path: PathBuf,
    file: std::fs::File,
    keep: bool,
}

impl Temporary {
    fn create(folder: &Path, suffix: &str) -> std::io::Result<Self> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = folder.join(format!(".dfast-{}-{n}.{suffix}", std::process::id()));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Temporary { path, file, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Fails, in one sentence naming `path`, when a file cannot be written there: its folder is missing or not
/// writable (a read-only mount), the name is too long for the file system, or it names a folder. Checks by
/// creating and removing a temporary file in the folder, as the write will.
pub fn check_writable(path: &Path) -> Result<()> {
    let folder = folder_of(path);
    if !folder.is_dir() {
        return Err(Error::bad_file(path, format!("cannot write here: folder {} does not exist", folder.display())));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(Error::bad_file(path, "cannot write here: it is a folder; expected a file name"));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // ENAMETOOLONG and the like: the name itself cannot exist there.
        Err(e) => return Err(Error::io(path, "cannot write here", e)),
    }
    Temporary::create(folder, "check")
        .map(drop)
        .map_err(|e| Error::io(path, &format!("cannot write in folder {}", folder.display()), e))
}

/// Writes `path` through `write`, which gets a buffered temporary file in the same folder; the file is renamed
/// over `path` only once `write` succeeded and the data reached the disk. On failure the temporary file is
/// removed and `path` is left as it was. `what` names the file in errors ("the image", "the latents").
pub fn write_atomically(
    path: &Path,
    what: &str,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<()> {
    let fail = |e: std::io::Error| Error::io(path, &format!("cannot write {what}"), e);
    let mut tmp = Temporary::create(folder_of(path), "partial").map_err(fail)?;
    {
        let mut out = std::io::BufWriter::new(&tmp.file);
        write(&mut out)?;
        out.flush().map_err(fail)?;
    }
    tmp.file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp.path, path).map_err(fail)?;
    tmp.keep = true;
    Ok(())
}

/// [`write_atomically`] for bytes already in memory.
pub fn write_bytes(path: &Path, what: &str, bytes: &[u8]) -> Result<()> {
    write_atomically(path, what, |out| {
        out.write_all(bytes).map_err(|e| Error::io(path, &format!("cannot write {what}"), e))
    })
}

/// The temporary files [`write_atomically`] and [`check_writable`] leave only when killed, in `folder`.
pub fn leftovers(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".dfast-")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "old").unwrap();
        let err = write_atomically(&path, "the text", |out| {
            out.write_all(b"half").unwrap();
            Err(Error::bad_input("stopped"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "stopped");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(leftovers(dir.path()).is_empty());
        write_bytes(&path, "the text", b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn unwritable_places_are_named_before_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join(format!("{}.png", "a".repeat(300)));
        let err = check_writable(&long).unwrap_err().to_string();
        assert!(err.contains("cannot write here") && err.contains("too long"), "{err}");
        let err = check_writable(dir.path()).unwrap_err().to_string();
        assert!(err.contains("it is a folder"), "{err}");
        let err = check_writable(&dir.path().join("no/such.png")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        check_writable(&dir.path().join("fine.png")).unwrap();
        assert!(leftovers(dir.path()).is_empty());
    }
}
