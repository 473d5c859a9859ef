"""npbert.hub against a loopback stand-in for the Hugging Face hub, and against hub caches laid out exactly
as huggingface-hub lays them out.

The stand-in (an HTTP server on 127.0.0.1, reached through HF_ENDPOINT) speaks the part of the hub's API
that `snapshot_download` uses: the model info call `GET /api/models/{repo}/revision/{rev}` (commit sha
and file list; huggingface-hub >= 1 lists files with `GET /api/models/{repo}/tree/{commit}`), then per
file `HEAD`/`GET /{repo}/resolve/{commit}/{file}` with X-Repo-Commit and ETag headers; large (LFS) files
answer with a redirect to a CDN URL on another host plus X-Linked-Etag / X-Linked-Size, as the real hub
does. Errors carry X-Error-Code (RepoNotFound, RevisionNotFound).

huggingface-hub reads its environment (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, ...) when it is imported,
so every resolution runs in a fresh interpreter with the environment set. Nothing of npbert is mocked.
To check another huggingface-hub major version: make a venv with only that version and run
`NPBERT_TEST_HUB_PYTHON=/that/venv/bin/python python -m pytest tests/test_hub.py` (checked: 0.36.2, 2.4.0).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import npbert
from npbert.hub import CHECKPOINT_FILES, snapshot_commit

REPO = "org/tiny-qa"
COMMIT_MAIN = "a" * 8 + "1" * 32
COMMIT_V2 = "b" * 8 + "2" * 32
LFS = {"model.safetensors", "pytorch_model.bin", "tf_model.h5", "onnx/model.onnx"}
# Files the real repository carries that npbert must never download.
UNWANTED = {
    "pytorch_model.bin": b"\x80pickle",
    "tf_model.h5": b"HDF5",
    "onnx/model.onnx": b"onnx",
    "README.md": b"# card",
    ".gitattributes": b"*.bin filter=lfs",
}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(name: str, data: bytes) -> str:
    """The hub's ETag: sha256 for LFS files, the git blob sha1 otherwise."""
    return hashlib.sha256(data).hexdigest() if name in LFS else git_blob_sha1(data)


@pytest.fixture(scope="module")
def repo_files(tiny_checkpoint):
    """{commit: {path: bytes}}: main is the tiny checkpoint; v2 differs in config.json."""
    main = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file()}
    main.update(UNWANTED)
    config = json.loads(main["config.json"])
    v2 = {**main, "config.json": json.dumps({**config, "_revision": "v2"}).encode()}
    return {COMMIT_MAIN: main, COMMIT_V2: v2}


class HubStandIn:
    """The hub's file API on 127.0.0.1, recording every request."""

    def __init__(self, files: dict, refs: dict):
        self.files, self.refs, self.requests = files, refs, []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                stand_in.requests.append(("HEAD", self.path))
                self._respond(body=False)

            def do_GET(self):
                stand_in.requests.append(("GET", self.path))
                self._respond(body=True)

            def _send(self, status, headers, data=b"", body=True):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _respond(self, body):
                path = self.path.split("?")[0]
                if path.startswith("/cdn/"):
                    data = stand_in.blobs.get(path[5:])
                    return self._send(200 if data else 404, {}, data or b"", body)
                if path.startswith("/api/models/") and "/tree/" in path:
                    repo, _, rev = path[len("/api/models/") :].partition("/tree/")
                    return self._tree(repo, rev, body)
                if path.startswith("/api/models/"):
                    repo, _, rev = path[len("/api/models/") :].partition("/revision/")
                    return self._info(repo, rev, body)
                repo, sep, rest = path[1:].partition("/resolve/")
                if not sep:
                    return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"{}", body)
                rev, _, name = rest.partition("/")
                return self._file(repo, rev, name, body)

            def _commit(self, repo, rev):
                if repo != REPO:
                    self._send(
                        401,
                        {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                        b'{"error": "Repository not found"}',
                    )
                    return None
                commit = stand_in.refs.get(rev, rev if rev in stand_in.files else None)
                if commit is None:
                    self._send(
                        404,
                        {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                        b'{"error": "Invalid rev id"}',
                    )
                return commit

            def _info(self, repo, rev, body):
                commit = self._commit(repo, rev)
                if commit:
                    info = {
                        "id": repo,
                        "sha": commit,
                        "private": False,
                        "siblings": [{"rfilename": n} for n in sorted(stand_in.files[commit])],
                    }
                    self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)

            def _tree(self, repo, rev, body):  # huggingface-hub >= 1 lists files with the tree API
                commit = self._commit(repo, rev)
                if commit:
                    tree = [
                        {
                            "type": "file",
                            "path": n,
                            "size": len(d),
                            "oid": git_blob_sha1(d),
                            **({"lfs": {"oid": etag(n, d), "size": len(d), "pointerSize": 134}} if n in LFS else {}),
                        }
                        for n, d in sorted(stand_in.files[commit].items())
                    ]
                    self._send(200, {"Content-Type": "application/json"}, json.dumps(tree).encode(), body)

            def _file(self, repo, rev, name, body):
                commit = self._commit(repo, rev)
                if not commit:
                    return
                data = stand_in.files[commit].get(name)
                if data is None:
                    return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"{}", body)
                tag = etag(name, data)
                if name in LFS:  # LFS: redirect to the CDN, the real size and hash in X-Linked-*
                    stand_in.blobs[tag] = data
                    return self._send(
                        302,
                        {
                            "Location": f"{stand_in.cdn_url}/cdn/{tag}",
                            "X-Repo-Commit": commit,
                            "X-Linked-Etag": f'"{tag}"',
                            "X-Linked-Size": str(len(data)),
                            "ETag": '"redirect"',
                        },
                        b"",
                        body,
                    )
                self._send(200, {"X-Repo-Commit": commit, "ETag": f'"{tag}"'}, data, body)

        self.blobs = {}
        # The CDN is another host, as on the real hub (huggingface-hub >= 1 follows same-host redirects of
        # a HEAD but reads the metadata off a redirect to another host): 127.0.0.2 is loopback too.
        self.servers = [ThreadingHTTPServer((host, 0), Handler) for host in ("127.0.0.1", "127.0.0.2")]
        self.url, self.cdn_url = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in self.servers)
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def hub(repo_files):
    stand_in = HubStandIn(repo_files, refs={"main": COMMIT_MAIN, "v2": COMMIT_V2})
    yield stand_in
    stand_in.close()


def closed_port_url() -> str:
    """An endpoint nothing listens on: the hub is unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def hub_env(tmp_path, endpoint, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
    )
    env.update(extra)
    return env


# The interpreter that runs npbert/hub.py: this one, or one with another huggingface-hub major version
# (hub.py imports nothing else, so e.g. a venv with only `huggingface-hub>=1` will do).
HUB_PYTHON = os.environ.get("NPBERT_TEST_HUB_PYTHON", sys.executable)

RESOLVE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("npbert_hub", sys.argv[4])  # hub.py alone: no numpy needed
hub = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hub)
repo, revision, local_only = sys.argv[1], sys.argv[2] or None, sys.argv[3] == "1"
try:
    folder = hub.resolve(repo, revision, local_files_only=local_only)
    import huggingface_hub
    print(json.dumps({"folder": str(folder), "files": sorted(p.name for p in folder.iterdir()),
                      "huggingface_hub": huggingface_hub.__version__}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def resolve(env, repo=REPO, revision=None, local_files_only=False) -> dict:
    r = subprocess.run(
        [HUB_PYTHON, "-c", RESOLVE, repo, revision or "", "1" if local_files_only else "0", npbert.hub.__file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def layout(storage: Path) -> dict:
    """A cache folder as {relative path: symlink target or 'dir'/'file: content'}."""
    out = {}
    for p in sorted(storage.rglob("*")):
        rel = str(p.relative_to(storage))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif rel.startswith("refs/"):
            out[rel] = "file: " + p.read_text()
        else:
            out[rel] = "file: " + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_cache(cache: Path, repo: str, commit: str, files: dict, refs: dict) -> Path:
    """A hub cache written by hand, as huggingface-hub's docs (Manage the cache) describe it:
    models--{org}--{name}/blobs/{etag}, snapshots/{commit}/{file} -> ../../blobs/{etag}, refs/{name}."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tag = etag(name, data)
        (storage / "blobs" / tag).write_bytes(data)
        (storage / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", tag))
    (storage / "refs").mkdir(exist_ok=True)
    for ref, target in refs.items():
        (storage / "refs" / ref).write_text(target)
    return storage / "snapshots" / commit


def test_download_fetches_only_the_checkpoint_files(hub, tmp_path, repo_files, tiny_checkpoint):
    env = hub_env(tmp_path, hub.url)
    got = resolve(env)
    storage = tmp_path / "hf_home" / "hub" / "models--org--tiny-qa"
    assert got["folder"] == str(storage / "snapshots" / COMMIT_MAIN)
    assert got["files"] == sorted(n for n in CHECKPOINT_FILES if n in repo_files[COMMIT_MAIN])
    for name in got["files"]:
        assert (Path(got["folder"]) / name).read_bytes() == repo_files[COMMIT_MAIN][name]
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    asked = " ".join(path for _, path in hub.requests)
    assert not any(name in asked for name in UNWANTED)  # never the pickle, TF, ONNX or docs
    assert any(path.startswith("/cdn/") for _, path in hub.requests)  # the LFS redirect was followed
    # huggingface-hub's own layout equals the hand-made one the offline tests use
    expected = tmp_path / "expected"
    make_cache(
        expected, REPO, COMMIT_MAIN, {n: repo_files[COMMIT_MAIN][n] for n in got["files"]}, {"main": COMMIT_MAIN}
    )
    # (blobs, snapshots and refs; huggingface-hub >= 2 also keeps file listings in trees/)
    assert {k: v for k, v in layout(storage).items() if k.startswith(("blobs", "snapshots", "refs"))} == layout(
        expected / "models--org--tiny-qa"
    )
    # a second resolution is served from the cache: metadata only, no file body downloaded again
    hub.requests.clear()
    assert resolve(env)["folder"] == got["folder"]
    assert not [r for r in hub.requests if r[0] == "GET" and not r[1].startswith("/api/")]


def test_cli_answers_with_a_hub_model(hub, tmp_path, tiny_checkpoint):
    """`npbert ask --model org/name` end to end: download, load, answer; equal to the local folder's answer."""
    question, context = "Where do I live?", "My name is John and I live in Seattle."
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "npbert",
            "ask",
            "--model",
            REPO,
            "--question",
            question,
            "--context",
            context,
            "--json",
        ],
        env=hub_env(tmp_path, hub.url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    local = npbert.pipeline("question-answering", model=tiny_checkpoint)(question=question, context=context)
    assert json.loads(r.stdout) == local


def test_revision_is_honoured(hub, tmp_path):
    env = hub_env(tmp_path, hub.url)
    v2 = resolve(env, revision="v2")
    assert Path(v2["folder"]).name == COMMIT_V2
    assert json.loads((Path(v2["folder"]) / "config.json").read_text())["_revision"] == "v2"
    assert ("GET", f"/api/models/{REPO}/revision/v2") in hub.requests
    assert any(path.startswith(f"/{REPO}/resolve/{COMMIT_V2}/") for _, path in hub.requests)
    storage = tmp_path / "hf_home" / "hub" / "models--org--tiny-qa"
    assert (storage / "refs" / "v2").read_text() == COMMIT_V2
    by_commit = resolve(env, revision=COMMIT_MAIN)
    assert (
        Path(by_commit["folder"]).name == COMMIT_MAIN
        and "_revision" not in (Path(by_commit["folder"]) / "config.json").read_text()
    )
    assert snapshot_commit(by_commit["folder"]) == COMMIT_MAIN


def test_hub_errors_are_clear(hub, tmp_path):
    env = hub_env(tmp_path, hub.url)
    missing = resolve(env, revision="no-such-branch")
    assert missing["error"] == "CheckpointNotFound" and "revision 'no-such-branch' not found" in missing["message"]
    unknown = resolve(env, repo="org/unknown")
    assert unknown["error"] == "CheckpointNotFound" and "no such repository" in unknown["message"]
    assert resolve(env, repo="./not/a/folder")["message"].endswith(
        "not a checkpoint folder and not a hub repository id"
    )


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only", "unreachable"])
def test_offline_uses_a_cache_laid_out_as_huggingface_hub_does(tmp_path, repo_files, how):
    files = {n: repo_files[COMMIT_MAIN][n] for n in CHECKPOINT_FILES if n in repo_files[COMMIT_MAIN]}
    cache = tmp_path / "elsewhere"  # HF_HUB_CACHE is honoured, not only HF_HOME
    snapshot = make_cache(cache, REPO, COMMIT_MAIN, files, {"main": COMMIT_MAIN})
    env = hub_env(
        tmp_path,
        closed_port_url(),
        HF_HUB_CACHE=str(cache),
        **({"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {}),
    )
    got = resolve(env, local_files_only=how == "local_files_only")
    assert got.get("folder") == str(snapshot), got
    assert got["files"] == sorted(files)
    # the same cache through the model loader: the weights load from the blobs
    code = (
        "import sys, npbert; m = npbert.DistilBertForQuestionAnswering.from_pretrained(sys.argv[1], "
        "local_files_only=True); print(m.config.dim)"
    )
    r = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "32", r.stderr


def test_local_files_only_makes_no_request(hub, tmp_path, repo_files):
    files = {n: repo_files[COMMIT_MAIN][n] for n in ("config.json", "model.safetensors")}
    make_cache(tmp_path / "hf_home" / "hub", REPO, COMMIT_MAIN, files, {"main": COMMIT_MAIN})
    got = resolve(hub_env(tmp_path, hub.url), local_files_only=True)
    assert Path(got["folder"]).name == COMMIT_MAIN
    assert hub.requests == []


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only", "unreachable"])
def test_offline_and_not_cached_says_what_to_do(tmp_path, how):
    endpoint = closed_port_url()
    env = hub_env(tmp_path, endpoint, **({"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {}))
    got = resolve(env, local_files_only=how == "local_files_only")
    assert got["error"] == "CheckpointNotFound"
    message = got["message"]
    assert REPO in message and "not in the cache" in message and str(tmp_path / "hf_home" / "hub") in message
    reason = {
        "HF_HUB_OFFLINE": "HF_HUB_OFFLINE is set",
        "local_files_only": "local_files_only=True",
        "unreachable": f"the hub at {endpoint} could not be reached",
    }[how]
    assert reason in message  # names the reason
    assert "Run once with network access" in message and "local checkpoint folder" in message
    # cached under another revision only: still not found, naming the revision
    make_cache(tmp_path / "hf_home" / "hub", REPO, COMMIT_MAIN, {"config.json": b"{}"}, {"main": COMMIT_MAIN})
    got = resolve(env, revision="v2", local_files_only=how == "local_files_only")
    assert got["error"] == "CheckpointNotFound" and "revision v2" in got["message"]


def test_cli_offline_error_is_one_line(tmp_path):
    env = hub_env(tmp_path, closed_port_url(), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "npbert", "ask", "--model", REPO, "-q", "Who?", "-c", "John"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("npbert ask: error: org/tiny-qa (revision main) is not in the cache")


def test_local_folder_and_revision(tiny_checkpoint):
    assert npbert.hub.resolve(tiny_checkpoint) == tiny_checkpoint
    with pytest.raises(ValueError, match="applies only to hub repositories"):
        npbert.hub.resolve(tiny_checkpoint, revision="v2")
    assert snapshot_commit(tiny_checkpoint) is None


def test_hub_module_is_the_only_network_code():
    """No other npbert module imports huggingface_hub or opens connections."""
    package = Path(npbert.__file__).parent
    network = ("huggingface_hub", "urllib.request", "requests.")
    offenders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "hub.py" and any(s in p.read_text(encoding="utf-8") for s in network)
    ]
    assert offenders == []


def test_cache_layout_matches_huggingface_hub_scan(tmp_path, repo_files):
    """huggingface-hub's own cache scanner accepts the hand-made cache (same layout, same revision)."""
    files = {n: repo_files[COMMIT_MAIN][n] for n in ("config.json", "vocab.txt")}
    make_cache(tmp_path / "cache", REPO, COMMIT_MAIN, files, {"main": COMMIT_MAIN})
    code = (
        "import sys; from huggingface_hub import scan_cache_dir; info = scan_cache_dir(sys.argv[1]); "
        "(repo,) = info.repos; (rev,) = repo.revisions; "
        "print(repo.repo_id, rev.commit_hash, sorted(rev.refs), sorted(f.file_name for f in rev.files), "
        "len(info.warnings))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(" ", 2)[:2] == [REPO, COMMIT_MAIN]
    assert r.stdout.strip().endswith("['main'] ['config.json', 'vocab.txt'] 0")
