//! Requests to the Hub: a repo's listing, a file's metadata (HEAD), its bytes (GET with a range), and the
//! Hub's refusals (`X-Error-Code`) as sentences that name the repo.

use std::time::Duration;

use ureq::http::{HeaderMap, Response, StatusCode};

use super::cache::is_plain_path;
use crate::{Error, Result};

/// Connect and per-read time limits: a stalled server is an error, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed (the Hub's renamed repos, its CDN).
const MAX_REDIRECTS: usize = 10;

/// The files of a repo at a revision, as the Hub lists them.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The commit the revision names.
    pub commit: String,
    /// Every file's path in the repo (`unet/model.onnx`).
    pub files: Vec<String>,
}

pub(super) struct Client<'a> {
    endpoint: &'a str,
    token: Option<&'a str>,
    agent: ureq::Agent,
}

/// What the Hub says of a file before it is downloaded.
#[derive(Debug, Clone)]
pub(super) struct FileMeta {
    /// `X-Linked-Etag` (an LFS file's sha256), else `ETag`, without quotes: the blob's name.
    pub etag: String,
    /// `X-Linked-Size`, else `Content-Length`.
    pub size: Option<u64>,
    /// Where the bytes are (the CDN for LFS files, else the resolve URL).
    pub url: String,
}

/// Percent-encodes `text` for a URL path; `/` stays where `keep_slash`.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// `"abc"`, `W/"abc"` -> `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

impl<'a> Client<'a> {
    pub fn new(endpoint: &'a str, token: Option<&'a str>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent(format!("dfast/{}", env!("CARGO_PKG_VERSION")))
            // Sizes and ranges are of the bytes as stored.
            .accept_encoding("identity")
            .build()
            .new_agent();
        Client { endpoint, token, agent }
    }

    /// One request; `follow` says which redirects to follow: those within the origin (the Hub's own, as
    /// `huggingface_hub` follows them for metadata), or all (to the CDN, without the token once the origin
    /// changes).
    fn send(
        &self,
        method: &str,
        url: &str,
        range: Option<u64>,
        follow: Follow,
        repo: &str,
    ) -> Result<Response<ureq::Body>> {
        let mut url = url.to_string();
        let mut with_token = true;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = match method {
                "HEAD" => self.agent.head(&url),
                _ => self.agent.get(&url),
            };
            if let (Some(token), true) = (self.token, with_token) {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            if let Some(start) = range {
                request = request.header("Range", format!("bytes={start}-"));
            }
            let response = request.call().map_err(|e| self.unreachable(repo, e))?;
            let location = header(response.headers(), "location").map(str::to_string);
            let (true, Some(location)) = (response.status().is_redirection(), location) else { return Ok(response) };
            let next = if location.contains("://") {
                location
            } else {
                format!("{}/{}", origin(&url), location.trim_start_matches('/'))
            };
            let same_origin = origin(&next) == origin(&url);
            if follow == Follow::SameOrigin && !same_origin {
                return Ok(response);
            }
            with_token &= same_origin;
            url = next;
        }
        Err(Error::hub(format!("the Hub at {} redirected more than {MAX_REDIRECTS} times for `{repo}`", self.endpoint)))
    }

    fn unreachable(&self, repo: &str, e: ureq::Error) -> Error {
        Error::hub_cause(
            format!(
                "cannot reach the Hub at {} for `{repo}`: {e} (HF_ENDPOINT names a mirror; HF_HUB_OFFLINE=1 uses the \
                 cache alone)",
                self.endpoint
            ),
            e,
        )
    }

    /// The commit `revision` names and the repo's files there.
    pub fn list(&self, repo: &str, revision: &str) -> Result<Listing> {
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: String,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        let url = format!("{}/api/models/{}/revision/{}", self.endpoint, encode(repo, true), encode(revision, false));
        let mut response = self.send("GET", &url, None, Follow::SameOrigin, repo)?;
        if !response.status().is_success() {
            return Err(self.refusal(&response, repo, revision, None));
        }
        let text = response.body_mut().read_to_string().map_err(|e| self.unreachable(repo, e))?;
        let info: Info = serde_json::from_str(&text).map_err(|e| {
            Error::hub_cause(
                format!("the Hub at {} answered {url} with JSON that is not a repo listing", self.endpoint),
                e,
            )
        })?;
        if info.sha.is_empty() || !info.sha.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::hub(format!(
                "the Hub at {} named commit `{}` for `{repo}` at `{revision}`, which is not a commit id",
                self.endpoint, info.sha
            )));
        }
        Ok(Listing { commit: info.sha, files: info.siblings.into_iter().map(|s| s.rfilename).collect() })
    }

    /// The resolve URL of `file` at `commit`.
    fn resolve_url(&self, repo: &str, commit: &str, file: &str) -> String {
        format!("{}/{}/resolve/{}/{}", self.endpoint, encode(repo, true), encode(commit, false), encode(file, true))
    }

    /// `file`'s ETag, size and where its bytes are: a HEAD of its resolve URL.
    pub fn meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta> {
        let url = self.resolve_url(repo, commit, file);
        let response = self.send("HEAD", &url, None, Follow::SameOrigin, repo)?;
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.refusal(&response, repo, commit, Some(file)));
        }
        let headers = response.headers();
        let etag = header(headers, "x-linked-etag").or_else(|| header(headers, "etag")).map(normalize_etag);
        let blob_name = |e: &String| is_plain_path(e) && !e.contains('/') && !e.starts_with('.');
        let Some(etag) = etag.filter(blob_name) else {
            return Err(Error::hub(format!(
                "the Hub at {} sent no usable ETag for `{file}` of `{repo}` (is HF_ENDPOINT a Hub or a mirror of one?)",
                self.endpoint
            )));
        };
        let size = header(headers, "x-linked-size")
            .or_else(|| if status.is_redirection() { None } else { header(headers, "content-length") })
            .and_then(|s| s.trim().parse().ok());
        let url = match header(headers, "location") {
            Some(location) if status.is_redirection() => location.to_string(),
            _ => url,
        };
        Ok(FileMeta { etag, size, url })
    }

    /// The bytes of `meta.url` from byte `start` on: the response (206 from `start`, or 200 with the whole
    /// file when the server ignores ranges).
    pub fn bytes(&self, meta: &FileMeta, start: u64, repo: &str, file: &str) -> Result<Response<ureq::Body>> {
        let response = self.send("GET", &meta.url, (start > 0).then_some(start), Follow::All, repo)?;
        if !response.status().is_success() {
            return Err(self.refusal(&response, repo, "", Some(file)));
        }
        Ok(response)
    }

    /// The Hub's refusal as one sentence naming the repo (and the file).
    fn refusal(&self, response: &Response<ureq::Body>, repo: &str, revision: &str, file: Option<&str>) -> Error {
        let status = response.status();
        let code = header(response.headers(), "x-error-code").unwrap_or("");
        let said = header(response.headers(), "x-error-message").unwrap_or("");
        let hub = self.endpoint;
        let message = match code {
            "GatedRepo" if self.token.is_some() => format!(
                "model repo `{repo}` is gated and the token dfast sent (HF_TOKEN, else the token file) has no access \
                 to it: accept its conditions at {hub}/{repo} with that account"
            ),
            "GatedRepo" => format!(
                "model repo `{repo}` is gated: accept its conditions at {hub}/{repo}, then set HF_TOKEN (or log in \
                 with `hf auth login`)"
            ),
            "RevisionNotFound" => format!("model repo `{repo}` on the Hub at {hub} has no revision `{revision}`"),
            "EntryNotFound" => {
                format!("model repo `{repo}` on the Hub at {hub} has no file `{}`", file.unwrap_or_default())
            }
            _ if code == "RepoNotFound" || status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND => {
                let private = if self.token.is_some() {
                    "(or it is private, and the token dfast sent has no access to it)"
                } else {
                    "(or it is private: set HF_TOKEN, or log in with `hf auth login`)"
                };
                format!("the Hub at {hub} has no model repo `{repo}` {private}")
            }
            _ => {
                let what = file.map_or_else(|| "the listing".to_string(), |f| format!("`{f}`"));
                let said = if said.is_empty() { String::new() } else { format!(": {said}") };
                format!("the Hub at {hub} answered {status} for {what} of model repo `{repo}`{said}")
            }
        };
        Error::hub(message)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Follow {
    SameOrigin,
    All,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_etags() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("onnx/unet/model a.onnx", true), "onnx/unet/model%20a.onnx");
        assert_eq!(origin("http://127.0.0.1:80/x/resolve/y"), "http://127.0.0.1:80");
        assert_eq!(origin("https://hub.example"), "https://hub.example");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
    }
}
