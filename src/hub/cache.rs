//! The cache's layout (see the module docs): where a repo, a ref, a blob, a lock and a snapshot file go.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Whether `path` is a plain relative path in a repo: `/`-separated names, none empty, `.` or `..`, no
/// backslash (as `huggingface_hub` checks a name before it becomes a path in the cache). Revisions
/// (`refs/pr/1`), subfolders and the files a listing names must be.
pub fn is_plain_path(path: &str) -> bool {
    !path.is_empty() && !path.contains('\\') && path.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// `models--owner--name`, as `huggingface_hub` and hf-hub name a model repo's folder.
pub(super) fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(hf_hub::Repo::model(repo.to_string()).folder_name())
}

/// The commit `revision` names: `refs/<revision>`, or the revision itself where it is a commit with a
/// snapshot (a commit has no ref).
pub(super) fn commit(repo_dir: &Path, revision: &str) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let commit = text.trim();
        if !commit.is_empty() {
            return Some(commit.to_string());
        }
    }
    repo_dir.join("snapshots").join(revision).is_dir().then(|| revision.to_string())
}

/// The names under `refs/` (`pr/1` for a nested one), sorted.
pub(super) fn revisions(repo_dir: &Path) -> Vec<String> {
    let refs = repo_dir.join("refs");
    let mut out = Vec::new();
    walk(&refs, &refs, &mut out);
    out.sort();
    out
}

/// The files under `dir` (symlinks to files count), as `/`-separated paths relative to `root`.
pub(super) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
        }
    }
}

/// Where a blob and its download go.
pub(super) struct BlobPaths {
    pub blob: PathBuf,
    pub incomplete: PathBuf,
    pub lock: PathBuf,
}

pub(super) fn blob_paths(cache: &Path, repo: &str, etag: &str) -> BlobPaths {
    let dir = repo_dir(cache, repo);
    let folder = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    BlobPaths {
        blob: dir.join("blobs").join(etag),
        incomplete: dir.join("blobs").join(format!("{etag}.incomplete")),
        lock: cache.join(".locks").join(folder).join(format!("{etag}.lock")),
    }
}

/// Holds `path` locked (an advisory lock, as `huggingface_hub`'s file lock) until dropped, so that two
/// processes do not download the same blob at once: the second waits, then finds the blob.
pub(super) fn lock(path: &Path) -> Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, "cannot create the download lock", e))?;
    file.lock().map_err(|e| Error::io(path, "cannot take the download lock", e))?;
    Ok(file)
}

/// Puts `blob` at `pointer` in the snapshot: a relative symlink (`../../blobs/<etag>`), as
/// `huggingface_hub` makes them; a copy where the filesystem has no symlinks.
pub(super) fn link(blob: &Path, pointer: &Path) -> Result<()> {
    let parent = pointer.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create", e))?;
    if pointer.is_file() {
        return Ok(());
    }
    let _ = std::fs::remove_file(pointer); // a dangling link from a removed blob
    #[cfg(unix)]
    {
        let target = relative(blob, parent);
        if std::os::unix::fs::symlink(&target, pointer).is_ok() {
            return Ok(());
        }
    }
    std::fs::copy(blob, pointer).map(|_| ()).map_err(|e| Error::io(pointer, "cannot write", e))
}

/// `to` as a path relative to the folder `from` (both absolute or both relative, with no `..` inside).
fn relative(to: &Path, from: &Path) -> PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_links_point_up_to_the_blobs() {
        let repo = Path::new("/c/models--a--b");
        let got = relative(&repo.join("blobs/e1"), &repo.join("snapshots/abc/onnx/unet"));
        assert_eq!(got, Path::new("../../../../blobs/e1"));
    }

    #[test]
    fn refs_name_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        std::fs::create_dir_all(repo.join("refs/pr")).unwrap();
        std::fs::write(repo.join("refs/main"), "c1\n").unwrap();
        std::fs::write(repo.join("refs/pr/1"), "c2").unwrap();
        std::fs::create_dir_all(repo.join("snapshots/c3")).unwrap();
        assert_eq!(commit(repo, "main").as_deref(), Some("c1"));
        assert_eq!(commit(repo, "pr/1").as_deref(), Some("c2"));
        assert_eq!(commit(repo, "c3").as_deref(), Some("c3"));
        assert_eq!(commit(repo, "onnx"), None);
        assert_eq!(revisions(repo), ["main", "pr/1"]);
    }
}
