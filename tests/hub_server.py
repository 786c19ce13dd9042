"""A Hugging Face Hub on 127.0.0.1 for tests: the endpoints huggingface_hub's snapshot_download uses,
serving small datasets in the layouts their publishers use.

Requests it answers (huggingface_hub 2.4, with HF_ENDPOINT pointed here):
  GET  /api/datasets/OWNER/NAME/revision/REV     repo info: the commit a branch or tag points to ("sha")
  GET  /api/datasets/OWNER/NAME/tree/COMMIT      the recursive file list (path, size, oid; no xetHash, so
                                                 huggingface_hub never takes its Xet download path)
  HEAD /datasets/OWNER/NAME/resolve/COMMIT/PATH  X-Repo-Commit, ETag and Content-Length of one file
  GET  /datasets/OWNER/NAME/resolve/COMMIT/PATH  the file, or with `Range: bytes=N-` its tail (206)
and the Hub's errors: 404 with X-Error-Code RepoNotFound, RevisionNotFound or EntryNotFound; 401 for a
gated repository without a token (GatedRepo) or with a token it does not accept ("Invalid credentials
in Authorization header", as the Hub says).

Test switches: `gated[repo] = TOKEN` (only that bearer token reads it), `forbidden` (repositories that
answer 403, a gated one whose terms the account has not been granted), `cut[path] = N` (the next N
full GETs of a file send its headers and half its bytes, then close the connection), `down_after_cut`
(after a cut, the Range request that would resume it gets 500: the transfer fails), `stop()` (the port
closes: the network is down). Every request is logged in `requests` as (method, path, Range header,
whether an Authorization header came).
"""
from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image


class Repo:
    """A dataset repository: commits (each a {path: bytes} tree) and the branches and tags naming them."""

    def __init__(self, files: dict[str, bytes]):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.commit(files, "main")

    def commit(self, files: dict[str, bytes], ref: str = "main") -> str:
        sha = hashlib.sha1(repr(sorted((path, hashlib.sha1(data).hexdigest()) for path, data in files.items()))
                           .encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


class HubServer:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.gated: dict[str, str] = {}
        self.forbidden: set[str] = set()
        self.cut: dict[str, int] = {}
        self.down_after_cut = False
        self.requests: list[tuple[str, str, str | None, bool]] = []
        self.connections: list[socket.socket] = []   # kept-alive client connections, closed by stop()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the port: from now on every connection is refused, as with the network down."""
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            for connection in self.connections:  # clients keep connections alive: drop them too
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def file_requests(self, path: str) -> list[tuple[str, str | None]]:
        """(method, Range header) of every request for the file `path` (of any repository)."""
        return [(method, byte_range) for method, url, byte_range, _ in self.requests
                if "/resolve/" in url and url.split("/resolve/", 1)[1].split("/", 1)[1] == path]


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def setup(self):
            super().setup()
            with hub.lock:
                hub.connections.append(self.connection)

        def do_HEAD(self):
            self.answer(head=True)

        def do_GET(self):
            self.answer(head=False)

        def answer(self, head: bool):
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range"), "Authorization" in self.headers))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "datasets"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo_id, kind, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                repo_id, kind, revision, file = "/".join(parts[1:3]), "resolve", parts[4], "/".join(parts[5:])
            else:
                return self.error(404, "RepoNotFound", "no such endpoint")
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.error(404 if repo_id not in hub.gated else 401, "RepoNotFound", "Repository not found")
            if repo_id in hub.gated:
                given = self.headers.get("Authorization")
                if given is None:
                    return self.error(401, "GatedRepo", f"Access to dataset {repo_id} is restricted. You must be "
                                                        "authenticated to access it.")
                if given != f"Bearer {hub.gated[repo_id]}":
                    return self.error(401, None, "Invalid credentials in Authorization header")
            if repo_id in hub.forbidden:
                return self.error(403, "GatedRepo", f"Access to dataset {repo_id} is restricted and you are not in "
                                                    "the authorized list.")
            commit = repo.resolve(revision)
            if commit is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            tree = repo.commits[commit]
            if kind == "revision":
                return self.json({"id": repo_id, "sha": commit, "private": False,
                                  "siblings": [{"rfilename": name} for name in sorted(tree)]})
            if kind == "tree":
                folders = sorted({"/".join(name.split("/")[:i]) for name in tree
                                  for i in range(1, name.count("/") + 1)})
                return self.json([{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0,
                                   "path": f} for f in folders] +
                                 [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                                   "path": name} for name, data in sorted(tree.items())])
            if file not in tree:
                return self.error(404, "EntryNotFound", f"{file} does not exist", commit=commit)
            self.send_file(tree[file], file, commit, head)

        def send_file(self, data: bytes, file: str, commit: str, head: bool):
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            byte_range = self.headers.get("Range")
            start = int(byte_range.removeprefix("bytes=").split("-")[0]) if byte_range else 0
            with hub.lock:
                cutting = not head and byte_range is None and hub.cut.get(file, 0) > 0
                if cutting:
                    hub.cut[file] -= 1
                failing = not head and byte_range is not None and hub.down_after_cut
            if failing:
                return self.error(500, None, "Internal Error")
            self.send_response(206 if byte_range else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(data) - start))
            if byte_range:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if head:
                return
            if cutting:  # half the bytes, then the connection drops
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

        def json(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status: int, code: str | None, message: str, commit: str | None = None):
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


# ---- the datasets, in their publishers' layouts --------------------------------------------------

def image_bytes(seed: int, fmt: str = "PNG", size: int = 56) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def export_rows(n: int, seed: int, prefix: str) -> list[dict]:
    """Rows of a parquet export: image {bytes, path}, question, answer (yes/no and open answers)."""
    answers = ["yes", "no", "the left lung", "ct"]
    return [{"image": {"bytes": image_bytes(seed * 100 + i), "path": None}, "question": f"{prefix} question {i}?",
             "answer": answers[i % len(answers)]} for i in range(n)]


def published_datasets(n_train: int = 8, n_test: int = 4) -> dict[str, Repo]:
    """Small copies of the repositories src/data/hub.py fetches, in each one's published layout."""
    silvar = {"README.md": b"# Silvar-Med\n"}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [{"img_name": f"xmlab{i}.jpg", "question": f"Is the {split} image {i} abnormal?",
                 "answer": ("Yes, the image appears abnormal due to a mass." if i % 2 == 0 else "No")}
                for i in range(n)]
        annotations = "dataset_unique_abnormal.json" if split == "train" else "test_abnormal.json"
        silvar[f"{split}/{annotations}"] = json.dumps(rows).encode()
        for i in range(n):
            silvar[f"{split}/imgs_{split}_abnormal/xmlab{i}.jpg"] = image_bytes(1000 + i, "JPEG")

    slake_rows = {split: [{"qid": i, "img_id": i, "img_name": f"xmlab{i}/source.jpg", "question": f"Q{i} {split}?",
                           "answer": "Yes" if i % 2 else "Liver", "q_lang": "en", "location": "Abdomen",
                           "modality": "CT", "answer_type": "CLOSED" if i % 2 else "OPEN", "base_type": "vqa",
                           "content_type": "Organ", "triple": ["vhead", "_", "_"]} for i in range(n)]
                  + [{"qid": 100 + i, "img_id": i, "img_name": f"xmlab{i}/source.jpg", "question": "这是什么?",
                      "answer": "肝", "q_lang": "zh", "location": "Abdomen", "modality": "CT", "answer_type": "OPEN",
                      "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"]} for i in range(2)]
                  for split, n in (("train", n_train), ("validation", n_test), ("test", n_test))}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(n_train):
            zipped.writestr(f"imgs/xmlab{i}/source.jpg", image_bytes(2000 + i, "JPEG"))
            zipped.writestr(f"imgs/xmlab{i}/mask.png", image_bytes(3000 + i))
        zipped.writestr("__MACOSX/imgs/._xmlab0", b"resource fork")
    slake = {f"{split}.json": json.dumps(rows, ensure_ascii=False).encode() for split, rows in slake_rows.items()}
    slake |= {"imgs.zip": archive.getvalue(), "KG.zip": b"PK\x05\x06" + bytes(18), "README.md": b"# SLAKE\n"}

    def export(splits: dict[str, int], seed: int) -> dict[str, bytes]:
        return {f"data/{split}-00000-of-00001-{seed:016x}.parquet": parquet_bytes(export_rows(n, seed + k, split))
                for k, (split, n) in enumerate(splits.items())} | {"README.md": b"---\nlicense: cc0-1.0\n---\n"}

    cv_bench = {"test.jsonl": "".join(json.dumps({
        "idx": i, "type": "2D", "task": "Count", "question": "How many?", "choices": ["1", "2"],
        "answer": "(A)", "prompt": "How many? (A) 1 (B) 2", "filename": f"img/2D/count/{i}.png",
        "source": "ADE20K"}) + "\n" for i in range(n_test)).encode()}
    cv_bench |= {f"img/2D/count/{i}.png": image_bytes(4000 + i) for i in range(n_test)}
    cv_bench["test_2d.parquet"] = b"not fetched"
    return {"Hanhpt23/Silvar-Med": Repo(silvar),
            "flaviagiammarino/vqa-rad": Repo(export({"train": n_train, "test": n_test}, 1)),
            "flaviagiammarino/path-vqa": Repo(export({"train": n_train, "validation": n_test, "test": n_test}, 7)),
            "BoKelvin/SLAKE": Repo(slake),
            "nyu-visionx/CV-Bench": Repo(cv_bench)}
