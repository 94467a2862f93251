//! Models from the Hub: `--model owner/name` downloads into the cache `huggingface_hub` uses, from a test Hub
//! on 127.0.0.1 (`HF_ENDPOINT`, tests/common/hub_server.rs) serving tiny-sd with its UNet's weights as
//! external data, plus what a real repo also holds and a pipeline does not read (PyTorch weights, a README,
//! another ONNX variant). The test Hub is checked against Python's `huggingface_hub` (the version .ci/run pins
//! into .ci/.venv), which downloads from it and reads dfast's downloads.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::assert_clear_error;
use hub_server::{HubServer, Logged, Repo, TOKEN, Tree, commit_of, sha256};

const REPO: &str = "dfast-test/tiny-sd";
const GATED: &str = "dfast-test/gated-sd";
const NO_VAE: &str = "dfast-test/no-vae";

/// The files of tiny-sd as a repo holds them: the UNet's weights in `unet/model.onnx_data`, and files no
/// pipeline reads.
fn tiny_tree() -> Tree {
    let mut tree = Tree::new();
    let root = common::model("tiny-sd");
    let mut files = Vec::new();
    walk(&root, &mut files);
    for path in files {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if rel != "unet/model.onnx" {
            tree.insert(rel, std::fs::read(&path).unwrap());
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let unet = tmp.path().join("model.onnx");
    let model = dfast::onnx::OnnxModel::load(root.join("unet/model.onnx")).unwrap();
    model.save_with(&unet, &dfast::onnx::SaveOptions::external()).unwrap();
    tree.insert("unet/model.onnx".into(), std::fs::read(&unet).unwrap());
    tree.insert("unet/model.onnx_data".into(), std::fs::read(tmp.path().join("model.onnx_data")).unwrap());
    for (name, bytes) in [
        ("README.md", &b"# tiny-sd\n"[..]),
        (".gitattributes", b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"),
        ("unet/diffusion_pytorch_model.safetensors", &[7u8; 4096]),
        ("unet/model_fp16.onnx", &[8u8; 2048]),
        ("vae/config.json", b"{}"),
        ("vae/diffusion_pytorch_model.safetensors", &[9u8; 4096]),
        ("text_encoder/model.safetensors", &[10u8; 4096]),
    ] {
        tree.insert(name.into(), bytes.to_vec());
    }
    tree
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { walk(&path, out) } else { out.push(path) }
    }
}

/// The files generate reads of tiny-sd's tree.
const PIPELINE_FILES: [&str; 13] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.onnx",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/model.onnx",
    "unet/model.onnx_data",
    "vae_decoder/config.json",
    "vae_decoder/model.onnx",
];

fn repos() -> Vec<Repo> {
    let tree = tiny_tree();
    // The `onnx` branch: a PyTorch pipeline at the root, the ONNX export in `onnx/` (without a VAE encoder).
    let mut onnx = Tree::new();
    for (path, bytes) in tree.iter().filter(|(p, _)| !p.starts_with("vae_encoder/")) {
        onnx.insert(format!("onnx/{path}"), bytes.clone());
    }
    for name in ["model_index.json", "scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors"] {
        onnx.insert(name.into(), tree[name].clone());
    }
    let mut no_vae = tree.clone();
    no_vae.remove("vae_decoder/model.onnx");
    vec![
        Repo { id: REPO.into(), gated: false, branches: [("main".into(), tree.clone()), ("onnx".into(), onnx)].into() },
        Repo { id: GATED.into(), gated: true, branches: [("main".into(), tree)].into() },
        Repo { id: NO_VAE.into(), gated: false, branches: [("main".into(), no_vae)].into() },
    ]
}

/// `dfast ARGS` against `server`, with `home` as HF_HOME (the cache is `home/hub`, the token file
/// `home/token`) and nothing else of the caller's Hugging Face environment; `env` on top.
fn dfast(server: &HubServer, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dfast"));
    cmd.args(args).env("HF_ENDPOINT", &server.url).env("HF_HOME", home);
    for var in ["HF_HUB_CACHE", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("dfast runs")
}

fn generate_args<'a>(model: &'a str, out: &'a str, latents: &'a str) -> Vec<&'a str> {
    vec!["generate", "--model", model, "--prompt", "a cat", "--steps", "2", "--seed", "0", "--out", out]
        .into_iter()
        .chain(["--save-latents", latents])
        .collect()
}

fn ok(run: &Output) {
    assert!(run.status.success(), "dfast failed: {}", String::from_utf8_lossy(&run.stderr));
}

/// The files of `repo` whose resolve URL was asked for (HEAD or GET), at any revision.
fn resolved(log: &[Logged], repo: &str) -> BTreeSet<String> {
    let prefix = format!("/{repo}/resolve/");
    log.iter()
        .filter_map(|l| l.path.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('/').map(|(_, file)| file.to_string()))
        .collect()
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut files = Vec::new();
    if dir.is_dir() {
        walk(dir, &mut files);
    }
    files.iter().map(|f| f.strip_prefix(dir).unwrap().to_string_lossy().into_owned()).collect()
}

fn repo_dir(home: &Path, repo: &str) -> PathBuf {
    home.join("hub").join(format!("models--{}", repo.replace('/', "--")))
}

fn strings(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A download, the same repo again with no request, the image equal to the local folder's; the cache in
/// huggingface_hub's layout.
#[test]
fn a_repo_is_downloaded_once_and_makes_the_local_folders_image() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (image, latents) = (tmp.path().join("hub.png"), tmp.path().join("hub.npy"));
    let args = generate_args(REPO, image.to_str().unwrap(), latents.to_str().unwrap());
    ok(&dfast(&server, &home, &args, &[]));
    // Only what generate reads: not the VAE encoder, the PyTorch weights, the README, the fp16 variant.
    assert_eq!(resolved(&server.log(), REPO), strings(&PIPELINE_FILES));

    // huggingface_hub's layout: refs/main, snapshot files linked to whole blobs, no partial file left.
    let dir = repo_dir(&home, REPO);
    let commit = commit_of(REPO, "main");
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), commit);
    let tree = tiny_tree();
    for file in PIPELINE_FILES {
        let pointer = dir.join("snapshots").join(&commit).join(file);
        let link = std::fs::read_link(&pointer).unwrap_or_else(|e| panic!("{file} is not a symlink: {e}"));
        assert!(link.is_relative() && link.to_string_lossy().contains("blobs/"), "{file} -> {}", link.display());
        assert_eq!(std::fs::read(&pointer).unwrap(), tree[file], "{file}");
    }
    let blobs = files_under(&dir.join("blobs"));
    assert_eq!(blobs.len(), PIPELINE_FILES.len(), "{blobs:?}");
    assert!(blobs.contains(&sha256(&tree["unet/model.onnx_data"])), "LFS blobs are named by sha256: {blobs:?}");

    // Again: the cache alone, no request at all.
    server.clear_log();
    ok(&dfast(&server, &home, &args, &[]));
    assert!(server.log().is_empty(), "requests for a cached repo: {:?}", server.log());

    // inspect reads the VAE encoder too: that alone is fetched, then nothing.
    let inspect = ["inspect", REPO, "--json"];
    ok(&dfast(&server, &home, &inspect, &[]));
    assert_eq!(resolved(&server.log(), REPO), strings(&["vae_encoder/config.json", "vae_encoder/model.onnx"]));
    server.clear_log();
    ok(&dfast(&server, &home, &inspect, &[]));
    assert!(server.log().is_empty(), "requests for a cached repo: {:?}", server.log());

    // The same image and latents as from the same files in a folder.
    let local = tmp.path().join("local");
    for (file, bytes) in &tree {
        std::fs::create_dir_all(local.join(file).parent().unwrap()).unwrap();
        std::fs::write(local.join(file), bytes).unwrap();
    }
    let (image2, latents2) = (tmp.path().join("local.png"), tmp.path().join("local.npy"));
    ok(&dfast(
        &server,
        &home,
        &generate_args(local.to_str().unwrap(), image2.to_str().unwrap(), latents2.to_str().unwrap()),
        &[],
    ));
    assert_eq!(image::open(&image).unwrap().to_rgb8(), image::open(&image2).unwrap().to_rgb8(), "images differ");
    assert_eq!(common::read_npy(&latents), common::read_npy(&latents2), "latents differ");
}

/// The Python client that .ci/run installs; the test fails (does not skip) without it.
fn python() -> PathBuf {
    let python = std::env::var_os("DFAST_HUB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join(".ci/.venv/bin/python"));
    let has = Command::new(&python).args(["-c", "import huggingface_hub"]).output().is_ok_and(|o| o.status.success());
    assert!(
        has,
        "{} has no huggingface_hub: run .ci/run once (it makes .ci/.venv with the pinned huggingface-hub), or set \
         DFAST_HUB_PYTHON to a python that has it",
        python.display()
    );
    python
}

/// Runs tests/hub_python.py with `args` against `server`, for at most two minutes; its JSON.
fn hub_python(server: &HubServer, home: &Path, args: &[&str], offline: bool) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(common::root().join("tests/hub_python.py"))
        .args(args)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    let mut child = cmd.spawn().expect("python runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tests/hub_python.py {args:?} ran past two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tests/hub_python.py {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// huggingface_hub downloads from the test Hub (so it answers as the Hub does) and dfast runs that download
/// offline; huggingface_hub finds every file of dfast's download (`inspect` fetches every ONNX component).
#[test]
fn huggingface_hub_and_dfast_share_the_cache() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let tree = tiny_tree();

    // Python's download, run by dfast with no request made.
    let python_home = tmp.path().join("python");
    let cache = python_home.join("hub");
    let got = hub_python(&server, &python_home, &["download", REPO, cache.to_str().unwrap()], false);
    eprintln!("huggingface_hub {}", got["version"]);
    assert!(got["snapshot"].as_str().unwrap().ends_with(&commit_of(REPO, "main")), "{got}");
    server.clear_log();
    let out = tmp.path().join("x.png");
    let lat = tmp.path().join("x.npy");
    let args = generate_args(REPO, out.to_str().unwrap(), lat.to_str().unwrap());
    ok(&dfast(&server, &python_home, &args, &[("HF_HUB_OFFLINE", "1")]));
    assert!(server.log().is_empty(), "{:?}", server.log());

    // dfast's download (inspect: every ONNX component), found by huggingface_hub offline.
    let home = tmp.path().join("dfast");
    let run = dfast(&server, &home, &["inspect", REPO, "--json"], &[]);
    ok(&run);
    let reports: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let components: BTreeSet<&str> =
        reports.as_array().unwrap().iter().map(|r| r["component"].as_str().unwrap()).collect();
    assert_eq!(components, ["text_encoder", "unet", "vae_decoder", "vae_encoder"].into());
    let mut fetched: Vec<String> = PIPELINE_FILES.iter().map(|s| s.to_string()).collect();
    fetched.extend(["vae_encoder/config.json".to_string(), "vae_encoder/model.onnx".to_string()]);
    assert_eq!(resolved(&server.log(), REPO), fetched.iter().cloned().collect());
    let cache = home.join("hub");
    let mut args = vec!["find", REPO, cache.to_str().unwrap()];
    args.extend(fetched.iter().map(String::as_str));
    let found = hub_python(&server, &home, &args, true);
    for file in &fetched {
        assert_eq!(found["files"][file].as_str(), Some(sha256(&tree[file.as_str()]).as_str()), "{file}");
    }
    assert_eq!(found["warnings"], serde_json::json!([]), "{found}");
    let repos = found["repos"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{found}");
    assert_eq!(repos[0]["repo_id"], REPO);
    assert_eq!(repos[0]["refs"], serde_json::json!(["main"]));
    assert_eq!(repos[0]["files"].as_array().unwrap().len(), fetched.len(), "{found}");
    // Blobs are stored once per content (the VAE's encoder and decoder have the same config.json).
    let blobs: BTreeSet<&Vec<u8>> = fetched.iter().map(|f| &tree[f.as_str()]).collect();
    assert_eq!(repos[0]["nb_files"], blobs.len());
    let size: usize = blobs.iter().map(|b| b.len()).sum();
    assert_eq!(repos[0]["size_on_disk"].as_u64(), Some(size as u64), "{found}");
}

/// A download cut short leaves its bytes in `blobs/<etag>.incomplete`, nothing in the snapshot; the next
/// run asks for the rest only.
#[test]
fn a_download_cut_short_resumes() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tiny_tree().remove("unet/model.onnx_data").unwrap();
    let sha = sha256(&data);
    let half = data.len() / 2;
    server.cut_once(&sha, half);
    let (out, lat) = (tmp.path().join("x.png"), tmp.path().join("x.npy"));
    let args = generate_args(REPO, out.to_str().unwrap(), lat.to_str().unwrap());
    let run = dfast(&server, &home, &args, &[]);
    assert_clear_error(&run, &format!("the download of `unet/model.onnx_data` from model repo `{REPO}` was cut short"));
    assert_clear_error(&run, "run the command again to resume it");

    let dir = repo_dir(&home, REPO);
    let commit = commit_of(REPO, "main");
    assert!(!dir.join("snapshots").join(&commit).join("unet/model.onnx_data").exists());
    assert!(!dir.join("refs/main").exists(), "a ref to an incomplete snapshot");
    let partial = dir.join("blobs").join(format!("{sha}.incomplete"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half as u64);

    server.clear_log();
    ok(&dfast(&server, &home, &args, &[]));
    let ranges: Vec<Option<String>> =
        server.log().iter().filter(|l| l.method == "GET" && l.path.ends_with(&sha)).map(|l| l.range.clone()).collect();
    assert_eq!(ranges, [Some(format!("bytes={half}-"))], "{:?}", server.log());
    assert_eq!(std::fs::read(dir.join("blobs").join(&sha)).unwrap(), data);
    assert!(!partial.exists());
    assert!(files_under(&dir.join("blobs")).iter().all(|f| !f.ends_with(".incomplete")));
}

/// A repo that does not exist, a revision it does not have, a file the pipeline needs that it lacks, a
/// gated repo without (or with the wrong) token, offline mode with an empty cache: one sentence naming the
/// repo, and nothing written to the cache.
#[test]
fn refusals_name_the_repo_and_leave_nothing_behind() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (out, lat) = (tmp.path().join("x.png"), tmp.path().join("x.npy"));
    let (out, lat) = (out.to_str().unwrap(), lat.to_str().unwrap());
    /// `--model repo EXTRA` with `env`: an error that says `says`.
    struct Refusal<'a> {
        repo: &'a str,
        extra: &'a [&'a str],
        env: &'a [(&'a str, &'a str)],
        says: String,
    }
    let hub = &server.url;
    let cases = [
        Refusal {
            repo: "dfast-test/nothing",
            extra: &[],
            env: &[],
            says: format!("the Hub at {hub} has no model repo `dfast-test/nothing`"),
        },
        Refusal {
            repo: REPO,
            extra: &["--revision", "v9"],
            env: &[],
            says: format!("model repo `{REPO}` on the Hub at {hub} has no revision `v9`"),
        },
        Refusal {
            repo: NO_VAE,
            extra: &[],
            env: &[],
            says: format!("model repo `{NO_VAE}` at revision `main` has no vae_decoder/model.onnx"),
        },
        Refusal {
            repo: GATED,
            extra: &[],
            env: &[],
            says: format!("model repo `{GATED}` is gated: accept its conditions at {hub}/{GATED}"),
        },
        Refusal {
            repo: GATED,
            extra: &[],
            env: &[("HF_TOKEN", "hf_wrong")],
            says: format!("model repo `{GATED}` is gated and the token dfast sent"),
        },
        Refusal {
            repo: REPO,
            extra: &[],
            env: &[("HF_HUB_OFFLINE", "1")],
            says: format!("model `{REPO}` is not a folder and is not in the Hugging Face cache"),
        },
    ];
    for Refusal { repo, extra, env, says } in cases {
        server.clear_log();
        let args: Vec<&str> = generate_args(repo, out, lat).into_iter().chain(extra.iter().copied()).collect();
        let run = dfast(&server, &home, &args, env);
        assert_clear_error(&run, &says);
        assert!(files_under(&home).is_empty(), "{repo} {env:?} left {:?}", files_under(&home));
        if env.contains(&("HF_HUB_OFFLINE", "1")) {
            assert!(server.log().is_empty(), "offline, yet: {:?}", server.log());
        }
    }

    // The token from HF_TOKEN, or from the file `hf auth login` writes.
    ok(&dfast(&server, &home, &generate_args(GATED, out, lat), &[("HF_TOKEN", TOKEN)]));
    assert!(server.log().iter().filter(|l| l.path.contains("/resolve/")).all(|l| l.authorized));
    let home2 = tmp.path().join("home2");
    std::fs::create_dir_all(&home2).unwrap();
    std::fs::write(home2.join("token"), format!("{TOKEN}\n")).unwrap();
    ok(&dfast(&server, &home2, &generate_args(GATED, out, lat), &[]));
}

/// ONNX files on another branch and in a subfolder (`--revision onnx --subfolder onnx`); the PyTorch pipeline
/// beside them is not fetched, and is said to be one where the ONNX files are missing.
#[test]
fn onnx_branch_and_subfolder() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (out, lat) = (tmp.path().join("x.png"), tmp.path().join("x.npy"));
    let args = generate_args(REPO, out.to_str().unwrap(), lat.to_str().unwrap());
    let with = |extra: &[&str]| -> Vec<String> { args.iter().chain(extra).map(|s| s.to_string()).collect() };
    let dfast = |args: &[String], env: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dfast(&server, &home, &args, env)
    };

    let run = dfast(&with(&["--revision", "onnx"]), &[]);
    assert_clear_error(&run, &format!("model repo `{REPO}` at revision `onnx` has no text_encoder/model.onnx"));
    assert_clear_error(&run, "(it holds PyTorch weights; dfast runs ONNX exports");
    let run = dfast(&with(&["--subfolder", "onnx"]), &[]);
    assert_clear_error(&run, &format!("model repo `{REPO}` at revision `main` has no onnx/model_index.json"));
    assert_clear_error(&run, "it has one at its root: leave out --subfolder");

    server.clear_log();
    let onnx = with(&["--revision", "onnx", "--subfolder", "onnx"]);
    ok(&dfast(&onnx, &[]));
    let expected: BTreeSet<String> = PIPELINE_FILES.iter().map(|f| format!("onnx/{f}")).collect();
    assert_eq!(resolved(&server.log(), REPO), expected);
    let dir = repo_dir(&home, REPO);
    assert_eq!(std::fs::read_to_string(dir.join("refs/onnx")).unwrap(), commit_of(REPO, "onnx"));
    ok(&dfast(&onnx, &[("HF_HUB_OFFLINE", "1")]));
    // By commit, offline: the snapshot, no ref needed.
    let by_commit = with(&["--revision", &commit_of(REPO, "onnx"), "--subfolder", "onnx"]);
    ok(&dfast(&by_commit, &[("HF_HUB_OFFLINE", "1")]));

    // inspect would read a VAE encoder: the listing says there is none, the cache records that
    // (huggingface_hub's .no_exist), and the next inspect asks nothing.
    server.clear_log();
    let inspect: Vec<String> =
        ["inspect", REPO, "--revision", "onnx", "--subfolder", "onnx", "--json"].map(String::from).to_vec();
    ok(&dfast(&inspect, &[]));
    let asked: Vec<String> = server.log().iter().map(|l| l.path.clone()).collect();
    assert_eq!(asked, [format!("/api/models/{REPO}/revision/onnx")]);
    let no_exist = dir.join(".no_exist").join(commit_of(REPO, "onnx")).join("onnx/vae_encoder/model.onnx");
    assert!(no_exist.is_file());
    server.clear_log();
    ok(&dfast(&inspect, &[]));
    assert!(server.log().is_empty(), "{:?}", server.log());
}

/// convert and generate from an image (which also read the VAE encoder), bench and tune take repo ids as
/// generate and inspect do.
#[test]
fn convert_bench_and_tune_take_repo_ids() {
    let server = HubServer::start(repos());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let converted = tmp.path().join("converted");
    let run = dfast(
        &server,
        &home,
        &["convert", "--model", REPO, "--profile", "baseline", "--out", converted.to_str().unwrap()],
        &[],
    );
    ok(&run);
    assert!(converted.join("vae_encoder/model.onnx").is_file() && converted.join("unet/model.onnx").is_file());
    let mut expected = strings(&PIPELINE_FILES);
    expected.extend(strings(&["vae_encoder/config.json", "vae_encoder/model.onnx"]));
    assert_eq!(resolved(&server.log(), REPO), expected);

    // generate from an image (img2img) reads the VAE encoder too, as convert does.
    let home2 = tmp.path().join("home2");
    server.clear_log();
    let picture = common::root().join("tests/references/inputs/picture-83x53.png");
    let img2img = tmp.path().join("img2img.png");
    let (picture, img2img) = (picture.to_str().unwrap(), img2img.to_str().unwrap());
    let args = ["generate", "--model", REPO, "--prompt", "a cat", "--steps", "2", "--image", picture, "--out", img2img];
    ok(&dfast(&server, &home2, &args, &[]));
    assert_eq!(resolved(&server.log(), REPO), expected);

    let results = tmp.path().join("results");
    let bench = [
        "bench",
        "--model",
        REPO,
        "--profile",
        "baseline",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--out",
        results.to_str().unwrap(),
    ];
    ok(&dfast(&server, &home, &bench, &[("HF_HUB_OFFLINE", "1")]));
    let csv = std::fs::read_to_string(results.join("results.csv")).unwrap();
    assert!(csv.lines().nth(1).is_some_and(|row| row.contains(",tiny-sd,")), "the repo's name in the row: {csv}");

    let profile = tmp.path().join("p.toml");
    let run = dfast(
        &server,
        &home,
        &["tune", "--model", "dfast-test/absent", "--ep", "cpu", "--out", profile.to_str().unwrap()],
        &[],
    );
    assert_clear_error(&run, "has no model repo `dfast-test/absent`");
}
