//! One file into the cache: its blob downloaded into `blobs/<etag>.incomplete` (resumed from what a download
//! cut short left there), checked, renamed to `blobs/<etag>`, and linked into the snapshot.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::cache::{self, BlobPaths};
use super::http::{Client, FileMeta};
use crate::{Error, Result};

/// A download's progress, for a caller that draws it (one bar per file).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// `file` starts downloading: its size where the Hub says it, and the bytes a download cut short left,
    /// from which this one goes on.
    Started { file: &'a str, size: Option<u64>, resumed_from: u64 },
    /// `bytes` of `file` are in, in all.
    Progress { file: &'a str, bytes: u64 },
    /// `file` is whole and in the snapshot.
    Finished { file: &'a str },
}

/// Bytes read per step (and per progress event).
const CHUNK: usize = 1 << 18;

/// Downloads `file` of `repo` at `commit` into the cache and links it at `pointer` in the snapshot.
pub(super) fn fetch(
    client: &Client,
    cache_dir: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    pointer: &Path,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let meta = client.meta(repo, commit, file)?;
    let paths = cache::blob_paths(cache_dir, repo, &meta.etag);
    if !paths.blob.is_file() {
        let _lock = cache::lock(&paths.lock)?;
        // Another process may have finished it while this one waited for the lock.
        if !paths.blob.is_file() {
            let result = download_blob(client, &meta, &paths, repo, file, on_event);
            if result.is_err() && std::fs::metadata(&paths.incomplete).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&paths.incomplete);
            }
            result?;
        }
    }
    cache::link(&paths.blob, pointer)?;
    on_event(Event::Finished { file });
    Ok(())
}

/// An LFS file's ETag is the sha256 of its bytes.
fn sha256_etag(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The start of a `Content-Range: bytes START-END/TOTAL`.
fn range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes")?.trim().split('-').next()?.trim().parse().ok()
}

fn download_blob(
    client: &Client,
    meta: &FileMeta,
    paths: &BlobPaths,
    repo: &str,
    file: &str,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let blobs = paths.incomplete.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(blobs).map_err(|e| Error::io(blobs, "cannot create", e))?;
    let part_path = &paths.incomplete;
    let io = |what: &'static str| move |e: std::io::Error| Error::io(part_path, what, e);
    let mut part = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part_path)
        .map_err(io("cannot create"))?;
    let mut have = part.metadata().map_err(io("cannot read"))?.len();
    if meta.size.is_some_and(|size| have > size) {
        part.set_len(0).map_err(io("cannot write"))?;
        have = 0;
    }
    // The bytes already there count towards the checksum.
    let mut hasher = sha256_etag(&meta.etag).then(Sha256::new);
    if let Some(h) = hasher.as_mut()
        && have > 0
    {
        part.seek(SeekFrom::Start(0)).map_err(io("cannot read"))?;
        let copied = std::io::copy(&mut (&mut part).take(have), &mut HashWriter(h)).map_err(io("cannot read"))?;
        if copied != have {
            return Err(Error::bad_file(part_path, "changed while dfast read it"));
        }
    }
    on_event(Event::Started { file, size: meta.size, resumed_from: have });

    if meta.size != Some(have) {
        let response = client.bytes(meta, have, repo, file)?;
        let partial = response.status().as_u16() == 206;
        let start = if partial {
            response.headers().get("content-range").and_then(|v| v.to_str().ok()).and_then(range_start)
        } else {
            Some(0)
        };
        if start != Some(have) {
            if partial {
                return Err(Error::hub(format!(
                    "the Hub sent `{file}` of `{repo}` from another byte than the {have} asked for; run the command \
                     again"
                )));
            }
            // The whole file instead of the rest: start over.
            part.set_len(0).map_err(io("cannot write"))?;
            have = 0;
            hasher = hasher.map(|_| Sha256::new());
            on_event(Event::Progress { file, bytes: 0 });
        }
        part.seek(SeekFrom::Start(have)).map_err(io("cannot write"))?;
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(cut_short(file, repo, have, meta.size, Some(e))),
            };
            part.write_all(&buf[..n]).map_err(io("cannot write"))?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            have += n as u64;
            on_event(Event::Progress { file, bytes: have });
        }
        part.flush().map_err(io("cannot write"))?;
    }
    if meta.size.is_some_and(|size| size != have) {
        return Err(cut_short(file, repo, have, meta.size, None));
    }
    if let Some(h) = hasher {
        let got = hex(&h.finalize());
        if got != meta.etag {
            drop(part);
            let _ = std::fs::remove_file(part_path);
            return Err(Error::hub(format!(
                "`{file}` of model repo `{repo}` arrived with sha256 {got}, not the {} the Hub names it by; the \
                 download was dropped, run the command again",
                meta.etag
            )));
        }
    }
    drop(part);
    std::fs::rename(part_path, &paths.blob).map_err(|e| Error::io(&paths.blob, "cannot write", e))
}

fn cut_short(file: &str, repo: &str, have: u64, size: Option<u64>, e: Option<std::io::Error>) -> Error {
    let of = size.map_or_else(String::new, |s| format!(" of {s}"));
    let why = e.as_ref().map_or_else(String::new, |e| format!(" ({e})"));
    let message = format!(
        "the download of `{file}` from model repo `{repo}` was cut short after {have}{of} bytes{why}; run the \
         command again to resume it"
    );
    match e {
        Some(e) => Error::hub_cause(message, e),
        None => Error::hub(message),
    }
}

/// Feeds what is written to a hasher.
struct HashWriter<'h>(&'h mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_etags() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert!(sha256_etag(&"a".repeat(64)) && !sha256_etag(&"a".repeat(40)));
        assert_eq!(hex(&Sha256::digest(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
