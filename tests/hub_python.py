"""huggingface_hub against dfast's test Hub and cache; tests/hub.rs runs it with the huggingface_hub that .ci/run
pins (in .ci/.venv).

    download REPO CACHE         snapshot_download of REPO from HF_ENDPOINT into CACHE
    find REPO CACHE FILE...     offline: each FILE of REPO at main from CACHE, and scan_cache_dir's view of CACHE

Prints one JSON object.
"""

import hashlib
import json
import sys

import huggingface_hub
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    command, repo, cache = sys.argv[1:4]
    out: dict = {"version": huggingface_hub.__version__}
    if command == "download":
        out["snapshot"] = snapshot_download(repo, cache_dir=cache)
    elif command == "find":
        out["files"] = {
            name: sha256(hf_hub_download(repo, name, cache_dir=cache, local_files_only=True))
            for name in sys.argv[4:]
        }
        info = scan_cache_dir(cache)
        out["repos"] = [
            {
                "repo_id": r.repo_id,
                "refs": sorted(r.refs),
                "nb_files": r.nb_files,
                "size_on_disk": r.size_on_disk,
                "files": sorted(f.file_name for rev in r.revisions for f in rev.files),
            }
            for r in info.repos
        ]
        out["warnings"] = [str(w) for w in info.warnings]
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
