//! The Hugging Face Hub: model repos by id, downloaded into the cache that Python's `huggingface_hub` uses,
//! so that dfast and Python find each other's downloads.
//!
//! ```text
//! $HF_HUB_CACHE (else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)
//! ├── models--<owner>--<name>/
//! │   ├── refs/<revision>              the commit a branch or tag named when it was downloaded
//! │   ├── blobs/<etag>                 a file's bytes, named by its ETag (sha256 for LFS files)
//! │   ├── blobs/<etag>.incomplete      a download under way or cut short; the next one resumes it
//! │   ├── snapshots/<commit>/<path>    relative symlinks into blobs/, one tree per commit
//! │   └── .no_exist/<commit>/<path>    empty: the repo has no such file at that commit
//! └── .locks/models--<owner>--<name>/<etag>.lock    held while that blob downloads
//! ```
//!
//! A file enters a snapshot only once its blob is whole (its size, and its sha256 for LFS files, checked),
//! so a snapshot never holds half a file.
//!
//! The environment is read as `huggingface_hub` reads it: `HF_ENDPOINT` (a mirror), `HF_TOKEN`, else the token
//! file (`HF_TOKEN_PATH`, else `$HF_HOME/token`, which `hf auth login` writes), `HF_HUB_OFFLINE` (no request
//! at all), `HF_HUB_CACHE` / `HF_HOME`.
//!
//! The HTTP side is dfast's own small client over `ureq`, not hf-hub's download API (hf-hub 0.4.3, whose
//! `Cache` and `Repo` name the layout here). hf-hub falls short where it matters for a shared cache: its
//! resume appends whatever the server sends, so a server that answers a range request with the whole file
//! leaves a corrupt blob, and it checks neither size nor sha256 before linking a blob into the snapshot; its
//! errors do not tell a missing repo from a gated one; its partial files (`.part`) and locks (in `blobs/`)
//! are not where `huggingface_hub` keeps them; it writes `refs/<commit>` for a commit; it has no timeouts;
//! and its `ureq` feature puts indicatif 0.17 into the library, which here draws no bars.

mod cache;
mod download;
mod http;

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub use cache::is_plain_path;
pub use download::Event;
pub use http::Listing;

/// The public Hub, unless `HF_ENDPOINT` names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where in a repo a pipeline is: a revision (branch, tag or commit; the old ONNX convention is the branch
/// `onnx`) and a folder of the repo (repos that keep the ONNX files in `onnx/`).
#[derive(Debug, Clone, Default)]
pub struct HubLocation {
    pub revision: Option<String>,
    pub subfolder: Option<String>,
}

impl HubLocation {
    /// The revision, `main` by default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().filter(|r| !r.is_empty()).unwrap_or("main")
    }

    /// The subfolder without leading or trailing slashes; empty for the repo's root.
    pub fn subfolder(&self) -> &str {
        self.subfolder.as_deref().unwrap_or("").trim_matches('/')
    }
}

/// The Hub and the cache, as the environment sets them.
pub struct Hub {
    /// The hub cache folder (the one holding `models--*`).
    pub cache: PathBuf,
    /// The Hub's base URL, without a trailing slash.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`: no request is made; only the cache is read.
    pub offline: bool,
    token: Option<String>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub`'s `HF_HOME`: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env("HOME").unwrap_or_default()).join(".cache"));
    cache.join("huggingface")
}

/// True for `1`, `ON`, `YES`, `TRUE` in any case, as `huggingface_hub` reads its switches.
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_uppercase().as_str()))
}

impl Hub {
    /// The settings `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let cache = env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home().join("hub"));
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string();
        let token = env("HF_TOKEN").or_else(|| {
            let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
            std::fs::read_to_string(path).ok()
        });
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Hub { cache, endpoint, offline: is_true(env("HF_HUB_OFFLINE")), token }
    }

    /// The folder of `repo` (`owner/name`) in the cache: `models--owner--name`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        cache::repo_dir(&self.cache, repo)
    }

    /// The commit `revision` names in the cache: `refs/<revision>`, or the revision itself when it is a commit
    /// the cache has a snapshot of.
    pub fn cached_commit(&self, repo: &str, revision: &str) -> Option<String> {
        cache::commit(&self.repo_dir(repo), revision)
    }

    /// The revisions the cache has refs for, sorted.
    pub fn cached_revisions(&self, repo: &str) -> Vec<String> {
        cache::revisions(&self.repo_dir(repo))
    }

    /// The snapshot folder of `commit`.
    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    fn client(&self, repo: &str) -> Result<http::Client<'_>> {
        if self.offline {
            return Err(Error::hub(format!(
                "`{repo}` cannot be downloaded: HF_HUB_OFFLINE is set, so dfast makes no request to the Hub (unset \
                 it to download, or download the repo where the Hub can be reached)"
            )));
        }
        Ok(http::Client::new(&self.endpoint, self.token.as_deref()))
    }

    /// The commit `revision` of `repo` names on the Hub, and its files (`api/models/<repo>/revision/<rev>`).
    pub fn list(&self, repo: &str, revision: &str) -> Result<Listing> {
        self.client(repo)?.list(repo, revision)
    }

    /// Downloads `file` of `repo` at `commit` into the cache unless the snapshot has it, and returns its path
    /// in the snapshot. `on_event` sees the download's progress.
    pub fn download(&self, repo: &str, commit: &str, file: &str, on_event: &mut dyn FnMut(Event)) -> Result<PathBuf> {
        if !is_plain_path(file) {
            return Err(Error::hub(format!(
                "the Hub at {} lists `{file}` in model repo `{repo}`, which is not a plain path in a repo",
                self.endpoint
            )));
        }
        let pointer = self.snapshot_dir(repo, commit).join(file);
        if pointer.is_file() {
            return Ok(pointer);
        }
        let client = self.client(repo)?;
        download::fetch(&client, &self.cache, repo, commit, file, &pointer, on_event)?;
        Ok(pointer)
    }

    /// Whether the cache records that `repo` has no `file` at `commit`: `.no_exist/<commit>/<file>`, as
    /// `huggingface_hub` records a file the Hub said it lacks.
    pub fn known_missing(&self, repo: &str, commit: &str, file: &str) -> bool {
        self.repo_dir(repo).join(".no_exist").join(commit).join(file).is_file()
    }

    /// Records that `repo` has no `file` at `commit` (see [`Hub::known_missing`]).
    pub fn mark_missing(&self, repo: &str, commit: &str, file: &str) -> Result<()> {
        let path = self.repo_dir(repo).join(".no_exist").join(commit).join(file);
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "cannot create", e))?;
        std::fs::write(&path, b"").map_err(|e| Error::io(&path, "cannot write", e))
    }

    /// Records that `revision` names `commit` (`refs/<revision>`); nothing for a revision that is the commit.
    pub fn set_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let repo_ref = hf_hub::Repo::with_revision(repo.into(), hf_hub::RepoType::Model, revision.into());
        hf_hub::Cache::new(self.cache.clone())
            .repo(repo_ref)
            .create_ref(commit)
            .map_err(|e| Error::io(self.repo_dir(repo).join("refs").join(revision), "cannot write", e))
    }
}

/// Whether `spec` has the shape of a repo id, `owner/name` (letters, digits, `-`, `_`, `.`; no `..` or `--`),
/// as `huggingface_hub` checks it.
pub fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    part_ok(owner) && part_ok(name) && !spec.contains("--") && !spec.contains("..")
}

/// `path` relative to `root`, with `/` separators (the files of a snapshot, as a listing names them).
pub fn relative_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    cache::walk(root, root, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        for good in ["stabilityai/sdxl-turbo", "segmind/SSD-1B", "a/b.c", "x_y/z"] {
            assert!(is_repo_id(good), "{good}");
        }
        for bad in ["sdxl", "a/b/c", "./a", "a/", "/a", "a/b--c", "a/..", "../x", "a b/c", "-a/b"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
        for plain in ["main", "refs/pr/1", "onnx/unet/model.onnx", "v1.0"] {
            assert!(is_plain_path(plain), "{plain}");
        }
        for bad in ["", "../x", "a/../b", "/a", "a/", "a//b", "./a", "a\\b"] {
            assert!(!is_plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn switches_read_as_huggingface_hub_reads_them() {
        for on in ["1", "true", "ON", "yes"] {
            assert!(is_true(Some(on.into())), "{on}");
        }
        for off in ["0", "false", "", "no"] {
            assert!(!is_true(Some(off.into())), "{off}");
        }
        assert!(!is_true(None));
    }
}
