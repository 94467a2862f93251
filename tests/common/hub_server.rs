//! A small Hugging Face Hub on 127.0.0.1 for the tests (`HF_ENDPOINT` points at it), answering in the Hub's
//! shape, as `huggingface_hub` and dfast ask it:
//!
//! ```text
//! GET  /api/models/<repo>/revision/<rev>          {"id", "sha", "siblings": [{"rfilename"}], "gated", ...}
//! GET  /api/models/<repo>/tree/<rev>[/<path>]      [{"type": "file"|"directory", "path", "oid", "size", "lfs"}]
//! HEAD|GET /<repo>/resolve/<rev>/<file>            small files: 200 (206 with Range), ETag = git blob id;
//!                                                  LFS files: 302 to the CDN, X-Linked-Etag, X-Linked-Size
//! HEAD|GET <cdn>/cdn/<sha256>                      the bytes, with Range
//! ```
//!
//! The CDN is another port of 127.0.0.1: another origin, as the Hub's CDN is another host (clients follow a
//! redirect within the Hub's origin, and send the token only there).
//!
//! Every answer from a repo carries `X-Repo-Commit`; refusals carry `X-Error-Code` (RepoNotFound 401,
//! RevisionNotFound 404, EntryNotFound 404, GatedRepo 401 without a token, 403 with a wrong one). Every request
//! is logged; a download can be cut short once after N bytes. The server answers one request per
//! connection, and stops when dropped or after [`LIFETIME`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Digest as _;

/// The longest a server lives, whatever the test does.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// The token a gated repo accepts.
pub const TOKEN: &str = "hf_dfasttesttoken";

/// A repo's files at one commit: path -> bytes.
pub type Tree = BTreeMap<String, Vec<u8>>;

pub struct Repo {
    pub id: String,
    pub gated: bool,
    /// branch -> its tree; each branch is one commit.
    pub branches: BTreeMap<String, Tree>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorized: bool,
}

struct State {
    cdn: String,
    repos: Vec<Repo>,
    log: Mutex<Vec<Logged>>,
    /// (path suffix of a resolve or cdn URL, bytes to send before closing): armed once.
    cut: Mutex<Option<(String, usize)>>,
}

pub struct HubServer {
    pub url: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A 40-hex commit id for `branch` of `repo`.
pub fn commit_of(repo: &str, branch: &str) -> String {
    hex(&sha1::Sha1::digest(format!("commit {repo} {branch}").as_bytes()))
}

/// Git's blob id of `bytes` (what the Hub's ETag is for a file not in LFS).
pub fn git_blob_id(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the Hub keeps `path` in LFS (the binary types of its default `.gitattributes`).
pub fn is_lfs(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(ext, "onnx" | "onnx_data" | "pb" | "safetensors" | "bin" | "msgpack" | "h5") || !name.contains('.')
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl HubServer {
    pub fn start(repos: Vec<Repo>) -> HubServer {
        let listeners: Vec<TcpListener> =
            (0..2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1")).collect();
        let urls: Vec<String> = listeners.iter().map(|l| format!("http://{}", l.local_addr().unwrap())).collect();
        let (url, cdn) = (urls[0].clone(), urls[1].clone());
        let state = Arc::new(State { cdn, repos, log: Mutex::new(Vec::new()), cut: Mutex::new(None) });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            for l in &listeners {
                l.set_nonblocking(true).unwrap();
            }
            while !stop2.load(Ordering::SeqCst) && started.elapsed() < LIFETIME {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((stream, _)) = l.accept() {
                        idle = false;
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = serve(&st, stream);
                        });
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        HubServer { url, state, stop, thread: Some(thread) }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// The next GET whose path ends with `suffix` sends `bytes` bytes of the body and closes the connection.
    pub fn cut_once(&self, suffix: &str, bytes: usize) {
        *self.state.cut.lock().unwrap() = Some((suffix.to_string(), bytes));
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body, then close.
    cut: Option<usize>,
}

impl Answer {
    fn new(status: u16) -> Self {
        Answer { status, headers: Vec::new(), body: Vec::new(), cut: None }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn json(value: serde_json::Value) -> Self {
        let mut a = Answer::new(200).header("Content-Type", "application/json");
        a.body = value.to_string().into_bytes();
        a
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut a = Answer::new(status).header("X-Error-Code", code).header("X-Error-Message", message);
        a.body = serde_json::json!({ "error": message }).to_string().into_bytes();
        a.header("Content-Type", "application/json")
    }
}

fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let auth = headers.get("authorization").cloned();
    state.log.lock().unwrap().push(Logged {
        method: method.clone(),
        path: path.to_string(),
        range: headers.get("range").cloned(),
        authorized: auth.is_some(),
    });
    let mut answer = route(state, path, query, headers.get("range").map(String::as_str), auth.as_deref());
    if method == "GET" && answer.status < 300 {
        let mut cut = state.cut.lock().unwrap();
        if cut.as_ref().is_some_and(|(suffix, _)| path.ends_with(suffix.as_str())) {
            answer.cut = cut.take().map(|(_, n)| n);
        }
    }
    let mut out = stream;
    let reason = match answer.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", answer.status);
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !answer.headers.iter().any(|(k, _)| k == "Content-Length") {
        head.push_str(&format!("Content-Length: {}\r\n", answer.body.len()));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n = answer.cut.unwrap_or(answer.body.len()).min(answer.body.len());
        out.write_all(&answer.body[..n])?;
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// The repo, commit and tree of `<owner>/<name>` at `rev` (a branch or a commit), or the refusal.
fn lookup<'s>(state: &'s State, owner: &str, name: &str, rev: &str) -> Result<(&'s Repo, String, &'s Tree), Answer> {
    let id = format!("{owner}/{name}");
    let Some(repo) = state.repos.iter().find(|r| r.id == id) else {
        return Err(Answer::error(401, "RepoNotFound", "Repository not found"));
    };
    for (branch, tree) in &repo.branches {
        let commit = commit_of(&repo.id, branch);
        if rev == branch || rev == commit {
            return Ok((repo, commit, tree));
        }
    }
    Err(Answer::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}")))
}

fn route(state: &State, path: &str, query: &str, range: Option<&str>, auth: Option<&str>) -> Answer {
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let seg = |i: usize| segments.get(i).map(String::as_str).unwrap_or("");
    match (seg(0), seg(1)) {
        ("api", "models") => {
            let (owner, name, kind, rev) = (seg(2), seg(3), seg(4), seg(5));
            let (repo, commit, tree) = match lookup(state, owner, name, rev) {
                Ok(found) => found,
                Err(refusal) => return refusal,
            };
            match kind {
                "revision" => Answer::json(serde_json::json!({
                    "_id": commit[..24],
                    "id": repo.id,
                    "modelId": repo.id,
                    "author": owner,
                    "sha": commit,
                    "lastModified": "2026-12-01T00:00:00.000Z",
                    "createdAt": "2026-12-01T00:00:00.000Z",
                    "private": false,
                    "gated": if repo.gated { serde_json::json!("manual") } else { serde_json::json!(false) },
                    "disabled": false,
                    "downloads": 0,
                    "likes": 0,
                    "library_name": "diffusers",
                    "tags": ["diffusers", "onnx"],
                    "siblings": tree.keys().map(|f| serde_json::json!({ "rfilename": f })).collect::<Vec<_>>(),
                })),
                "tree" => {
                    let under = segments[6.min(segments.len())..].join("/");
                    let recursive = query.split('&').any(|kv| kv == "recursive=true" || kv == "recursive=True");
                    Answer::json(tree_listing(tree, &under, recursive))
                }
                _ => Answer::error(404, "", "Not found"),
            }
        }
        ("cdn", sha) => {
            let found = state
                .repos
                .iter()
                .flat_map(|r| r.branches.values())
                .flat_map(|t| t.values())
                .find(|b| sha256(b) == sha);
            match found {
                Some(bytes) => bytes_answer(bytes, range).header("ETag", format!("\"{sha}\"")),
                None => Answer::error(404, "", "Not found"),
            }
        }
        (owner, name) if seg(2) == "resolve" => {
            let (repo, commit, tree) = match lookup(state, owner, name, seg(3)) {
                Ok(found) => found,
                Err(refusal) => return refusal,
            };
            if repo.gated && auth != Some(format!("Bearer {TOKEN}").as_str()) {
                let (status, message) = match auth {
                    None => (
                        401,
                        format!(
                            "Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                            repo.id
                        ),
                    ),
                    Some(_) => (
                        403,
                        format!("Access to model {} is restricted and you are not in the authorized list.", repo.id),
                    ),
                };
                return Answer::error(status, "GatedRepo", &message).header("X-Repo-Commit", commit);
            }
            let file = segments[4.min(segments.len())..].join("/");
            let Some(bytes) = tree.get(&file) else {
                return Answer::error(404, "EntryNotFound", &format!("{file} does not exist on \"{}\"", seg(3)))
                    .header("X-Repo-Commit", commit);
            };
            if is_lfs(&file) {
                let sha = sha256(bytes);
                let mut a = Answer::new(302)
                    .header("Location", format!("{}/cdn/{sha}", state.cdn))
                    .header("X-Linked-Etag", format!("\"{sha}\""))
                    .header("X-Linked-Size", bytes.len().to_string())
                    .header("ETag", format!("\"{}\"", git_blob_id(bytes)))
                    .header("X-Repo-Commit", commit);
                a.body = b"Found. Redirecting".to_vec();
                a
            } else {
                bytes_answer(bytes, range)
                    .header("ETag", format!("\"{}\"", git_blob_id(bytes)))
                    .header("X-Repo-Commit", commit)
            }
        }
        _ => Answer::error(404, "", "Not found"),
    }
}

/// The bytes, or the range of them `range` (`bytes=A-` or `bytes=A-B`) asks for.
fn bytes_answer(bytes: &[u8], range: Option<&str>) -> Answer {
    let total = bytes.len();
    let parsed = range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let a: usize = a.trim().parse().ok()?;
        let b: usize = if b.trim().is_empty() { total.saturating_sub(1) } else { b.trim().parse().ok()? };
        Some((a, b.min(total.saturating_sub(1))))
    });
    let a = match parsed {
        Some((start, _)) if start >= total => {
            return Answer::new(416).header("Content-Range", format!("bytes */{total}"));
        }
        Some((start, end)) => {
            let mut a = Answer::new(206).header("Content-Range", format!("bytes {start}-{end}/{total}"));
            a.body = bytes[start..=end].to_vec();
            a
        }
        None => {
            let mut a = Answer::new(200);
            a.body = bytes.to_vec();
            a
        }
    };
    a.header("Accept-Ranges", "bytes")
}

/// `/api/models/<repo>/tree/<rev>/<under>`: the entries under `under`, all of them where `recursive`.
fn tree_listing(tree: &Tree, under: &str, recursive: bool) -> serde_json::Value {
    let prefix = if under.is_empty() { String::new() } else { format!("{under}/") };
    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, bytes) in tree {
        let Some(rest) = path.strip_prefix(&prefix) else { continue };
        let parts: Vec<&str> = rest.split('/').collect();
        for i in 1..parts.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{prefix}{}", parts[..i].join("/")));
            }
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut entry = serde_json::json!({
            "type": "file", "oid": git_blob_id(bytes), "size": bytes.len(), "path": path,
        });
        if is_lfs(path) {
            entry["lfs"] = serde_json::json!({ "oid": sha256(bytes), "size": bytes.len(), "pointerSize": 134 });
        }
        entries.push(entry);
    }
    for d in dirs {
        let oid = hex(&sha1::Sha1::digest(d.as_bytes()));
        entries.push(serde_json::json!({ "type": "directory", "oid": oid, "size": 0, "path": d }));
    }
    serde_json::Value::Array(entries)
}
