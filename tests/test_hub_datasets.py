"""Datasets by name from the Hugging Face Hub (src/data/hub.py), through huggingface_hub's real
snapshot_download against a Hub on 127.0.0.1 (tests/hub_server.py) that HF_ENDPOINT points at; every
test has its own HF_HOME. Then train.py and evaluate.py with no --data-root and no --datasets."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from src.data import hub as hub_module
from src.data.loaders import locate_dataset, read_dataset
from src.data.rows import DatasetError
from tests.hub_server import HubServer, published_datasets

pytestmark = [  # expected here: the small served sets are not the official counts, and half the Silvar-Med
    # answers carry no explanation (src/data/reasoning_set.py says so in one warning)
    pytest.mark.filterwarnings("ignore:.*the official release has:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*published answers hold no explanation:UserWarning"),
]

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_SecretTokenThatMustNeverBeShown123"


@pytest.fixture
def server():
    with HubServer(published_datasets()) as running:
        yield running


@pytest.fixture
def hub_env(server, tmp_path, monkeypatch):
    """HF_ENDPOINT at the local Hub, a fresh HF_HOME, online. huggingface_hub read its constants at import
    (conftest set HF_HUB_OFFLINE=1 first): its offline switch is turned off here, and the one request it
    makes to its import-time endpoint (the agent-harness registry behind its User-Agent) is not made.
    Any name other than 127.0.0.1 looked up during the test fails it: no traffic goes anywhere else."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    elsewhere, lookup = [], socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", b"127.0.0.1"):
            elsewhere.append(host)
            raise OSError(f"the tests reach 127.0.0.1 only, not {host}")
        return lookup(host, *args, **kwargs)

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("HF_TOKEN", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(_detect_agent, "_fetch_registry", lambda: None)
    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    yield home
    assert elsewhere == []


def snapshot_files(home: Path, repo: str) -> set[str]:
    folder = home / "hub" / f"datasets--{repo.replace('/', '--')}" / "snapshots"
    return {path.relative_to(commit).as_posix() for commit in folder.iterdir() for path in commit.rglob("*")
            if not path.is_dir()} if folder.is_dir() else set()


def go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_first_fetch_takes_the_split_files_then_the_cache_serves_them_offline(server, hub_env, monkeypatch, capsys):
    """A fresh process with HF_ENDPOINT and HF_HOME set (as a user types them) fetches VQA-RAD's test
    split, only its parquet shard; SLAKE's JSON and imgs.zip, unpacked beside the snapshot. With the
    server gone, the same calls read the cache (HF_HUB_OFFLINE=1, or the network simply down)."""
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(hub_env), "HF_HUB_OFFLINE": "0"}
    fetch = ("import json; from src.data.hub import fetch_dataset; s = fetch_dataset('vqa-rad', 'test'); "
             "print(json.dumps([str(s.root), s.repo, s.commit]))")
    result = subprocess.run([sys.executable, "-c", fetch], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    root, repo, commit = json.loads(result.stdout.splitlines()[-1])
    assert (repo, commit) == ("flaviagiammarino/vqa-rad", server.repos[repo].refs["main"])
    assert Path(root) == hub_env / "hub" / "datasets--flaviagiammarino--vqa-rad" / "snapshots" / commit
    assert snapshot_files(hub_env, repo) == {"data/test-00000-of-00001-0000000000000001.parquet"}  # not train
    assert "Fetching 1 files" in result.stderr  # huggingface_hub's own progress bar

    slake = locate_dataset("slake", None, "test")
    images = slake.root / "imgs"
    assert slake.root == hub_env / "hub" / "datasets--BoKelvin--SLAKE" / "unpacked" / slake.commit
    assert sorted(p.name for p in images.iterdir()) == [f"xmlab{i}" for i in range(8)]
    assert not (slake.root / "__MACOSX").exists() and not (slake.root / ".imgs.partial").exists()
    assert snapshot_files(hub_env, "BoKelvin/SLAKE") == {"test.json", "imgs.zip"}  # not KG.zip nor train.json
    with pytest.warns(UserWarning, match="4 rows, the official release has 1061"):  # the count check still runs
        samples = read_dataset(slake, "test")
    assert [s.question for s in samples] == [f"Q{i} test?" for i in range(4)]  # English rows only
    assert samples[0].image == str(images / "xmlab0" / "source.jpg")
    from benchmarks.dataset_check import main as dataset_check

    dataset_check(["slake", "--split", "test", "--workers", "1"])  # the check of a split before a GPU is rented
    printed = capsys.readouterr().out
    assert f"slake: BoKelvin/SLAKE at commit {slake.commit}" in printed
    assert "not the official count: slake test from" in printed and "4 rows, the official release has 1061" in printed

    served = len(server.requests)
    server.stop()
    for offline in (True, False):  # HF_HUB_OFFLINE=1; then the network down without it
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        again = locate_dataset("vqa-rad", None, "test")
        assert (str(again.root), again.commit) == (root, commit)
        assert locate_dataset("slake", None, "test") == slake
    assert len(server.requests) == served

    go_offline(monkeypatch)
    with pytest.raises(DatasetError, match=r"lacks files of the train split .* HF_HUB_OFFLINE is set: .* hf download "
                                           r'flaviagiammarino/vqa-rad --repo-type dataset --include "data/train-'):
        locate_dataset("vqa-rad", None, "train")
    with pytest.raises(DatasetError, match=r"path-vqa: HF_HUB_OFFLINE is set and flaviagiammarino/path-vqa is not in "
                                           r'the Hugging Face cache .*: hf download flaviagiammarino/path-vqa '
                                           r'--repo-type dataset --include "data/test-\*.parquet"'):
        locate_dataset("path-vqa", None, "test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(DatasetError, match=rf"path-vqa: cannot reach {server.url} \(ConnectError"):
        locate_dataset("path-vqa", None, "test")


def test_a_pinned_revision_reads_that_commit_and_an_unknown_one_is_named(server, hub_env):
    repo = server.repos["flaviagiammarino/vqa-rad"]
    first = repo.refs["main"]
    repo.refs["v1.0"] = first
    new_rows = published_datasets(n_test=3)["flaviagiammarino/vqa-rad"].commits
    second = repo.commit(next(iter(new_rows.values())))  # main moves on: 3 test rows
    with pytest.warns(UserWarning):
        assert len(read_dataset(locate_dataset("vqa-rad", None, "test"), "test")) == 3
        tagged = locate_dataset("vqa-rad", None, "test", revision="v1.0")
        assert tagged.commit == first != second and len(read_dataset(tagged, "test")) == 4
    asked = len(server.requests)
    assert locate_dataset("vqa-rad", None, "test", revision=first).commit == first  # a commit: nothing to ask
    assert server.requests[asked:] == []
    with pytest.raises(DatasetError, match=r"vqa-rad: flaviagiammarino/vqa-rad has no revision 'v9' \(.* answered "
                                           r"404\): .* --data-revision vqa-rad=REV"):
        locate_dataset("vqa-rad", None, "test", revision="v9")
    with pytest.raises(DatasetError, match="pins the Hub copy, but its files are read from the folder given"):
        locate_dataset("vqa-rad", hub_env, "test", revision="v1.0")


def test_404_401_and_403_say_what_to_do_and_the_token_never_shows(server, hub_env, tmp_path, monkeypatch, capsys):
    del server.repos["nyu-visionx/CV-Bench"]
    with pytest.raises(DatasetError, match=rf"cv-bench: no dataset repository nyu-visionx/CV-Bench on {server.url} "
                                           r"\(404\)"):
        locate_dataset("cv-bench", None, "test")
    silvar = server.repos["Hanhpt23/Silvar-Med"]  # the release moves its files out of train/ and test/
    silvar.commit({path.split("/", 1)[-1]: data for path, data in silvar.commits[silvar.refs["main"]].items()})
    with pytest.raises(DatasetError, match=r"silvar-med train: Hanhpt23/Silvar-Med at commit \w+ has no file matching "
                                           r"train/\*: its layout is not the one this project reads"):
        locate_dataset("silvar-med", None, "train")
    silvar.refs["main"] = next(iter(silvar.commits))
    with pytest.raises(DatasetError, match="vqa-med-2019: VQA-Med 2019 has no copy on the Hugging Face Hub .*"
                                           "github.com/abachaa/VQA-Med-2019 .* give it with --data-root"):
        locate_dataset("vqa-med-2019", None, "test")

    server.gated["Hanhpt23/Silvar-Med"] = "hf_TheRightOne"
    with pytest.raises(DatasetError, match=r"Hanhpt23/Silvar-Med is gated or private \(.* answered 401\): accept its "
                                           r"terms on .*/datasets/Hanhpt23/Silvar-Med, .* HF_TOKEN or run `hf auth"):
        locate_dataset("silvar-med", None, "train")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(DatasetError, match=r"refused the token given for Hanhpt23/Silvar-Med \(401\)") as refused:
        locate_dataset("silvar-med", None, "train")
    assert server.requests[-1][3]  # the token went with the request
    printed = capsys.readouterr()
    assert TOKEN not in str(refused.value) + printed.out + printed.err
    assert not any(TOKEN.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    monkeypatch.setenv("HF_TOKEN", "hf_TheRightOne")
    assert len(read_dataset(locate_dataset("silvar-med", None, "train"), "train")) == 8
    server.forbidden.add("flaviagiammarino/vqa-rad")
    with pytest.raises(DatasetError, match=r"refused access to flaviagiammarino/vqa-rad \(403\): the token given .* "
                                           r"has no access to this gated dataset; ask for access on"):
        locate_dataset("vqa-rad", None, "test")


def test_a_transfer_cut_half_way_is_never_read_as_complete_and_the_rerun_finishes_it(server, hub_env, monkeypatch):
    """The connection drops half-way through the parquet shard and the Hub then fails the resume: the
    fetch stops with a clear error and nothing incomplete in the cache. The rerun meets another cut, which
    huggingface_hub resumes with a Range request for the rest, and reads all rows. (It writes what it
    received in chunks of DOWNLOAD_CHUNK_SIZE, 10 MB: 4 KB here, so that a 40 KB file is cut mid-way.)"""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    shard = "data/test-00000-of-00001-0000000000000007.parquet"
    server.cut[shard], server.down_after_cut = 1, True
    with pytest.raises(DatasetError, match=r"path-vqa: fetching flaviagiammarino/path-vqa from .* stopped part-way "
                                           r"\(the Hub answered 500\); nothing incomplete was kept, .* run the "
                                           r"same command again"):
        locate_dataset("path-vqa", None, "test")
    storage = hub_env / "hub" / "datasets--flaviagiammarino--path-vqa"
    assert snapshot_files(hub_env, "flaviagiammarino/path-vqa") == set()
    assert [p.name for p in storage.rglob("*.incomplete")] == []
    go_offline(monkeypatch)
    with pytest.raises(DatasetError, match="lacks files of the test split"):
        locate_dataset("path-vqa", None, "test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    server.cut[shard], server.down_after_cut = 1, False
    with pytest.warns(UserWarning, match="4 rows, the official release has 6719"):
        samples = read_dataset(locate_dataset("path-vqa", None, "test"), "test")
    assert [s.question for s in samples] == [f"test question {i}?" for i in range(4)]
    repo = server.repos["flaviagiammarino/path-vqa"]
    half = len(repo.commits[repo.refs["main"]][shard]) // 2
    written = half // 4096 * 4096  # the whole chunks written before the cut
    gets = [byte_range for method, byte_range in server.file_requests(shard) if method == "GET"]
    assert written > 0 and gets == [None, f"bytes={written}-", None, f"bytes={written}-"]  # resumed where it stopped


def test_an_archive_unpacks_once_atomically_and_only_inside_its_folder(tmp_path):
    import zipfile

    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("imgs/xmlab0/source.jpg", b"jpeg")
    target = tmp_path / "out" / "imgs"
    target.parent.mkdir()
    (target.parent / ".imgs.partial" / "stale").mkdir(parents=True)  # an unpack interrupted earlier
    hub_module.unpack("slake", archive, target)
    assert [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()] == ["xmlab0/source.jpg"]
    assert not (target.parent / ".imgs.partial").exists()

    for member in ("../evil.jpg", "/etc/evil.jpg"):
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("imgs/ok.jpg", b"jpeg")
            zipped.writestr(member, b"x")
        with pytest.raises(DatasetError, match="would be written outside the folder it unpacks into"):
            hub_module.unpack("slake", archive, tmp_path / "bad" / "imgs")
        assert not (tmp_path / "bad" / "imgs").exists() and not (tmp_path / "bad" / ".imgs.partial").exists()
    archive.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="cannot unpack .*imgs.zip .* the cached archive is damaged"):
        hub_module.unpack("slake", archive, tmp_path / "bad" / "imgs")
    assert not (tmp_path / "bad" / "imgs").exists()


def test_train_as_typed_fetches_its_dataset_records_the_commit_and_resumes_only_on_it(
        server, hub_env, tiny_path, tmp_path, monkeypatch, capsys):
    """`train.py --method rarl --samples 8 --model tiny --max-steps 1` with no --data-root trains a step on
    Silvar-Med fetched from the Hub and records its commit in config.json; once main has moved on,
    --resume refuses the new files before any model loads, naming the flag that resumes on the old one,
    which does."""
    import train
    from src.cli.errors import run_main
    from src.grpo import trainer

    out = tmp_path / "train"
    argv = ["--method", "rarl", "--samples", "8", "--model", "tiny", "--max-steps", "1", "--group-size", "2",
            "--max-completion-length", "8", "--no-gradient-checkpointing", "--output-dir", str(out)]
    train.main(argv)
    silvar = server.repos["Hanhpt23/Silvar-Med"]
    commit = silvar.refs["main"]
    assert json.loads((out / "config.json").read_text())["data"]["data_revision"] == f"silvar-med={commit}"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    moved = silvar.commit({**silvar.commits[commit], "README.md": b"# Silvar-Med, edited\n"})
    capsys.readouterr()
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stop:
        patch.setattr(trainer, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
        run_main(lambda: train.main(argv + ["--resume", "--max-steps", "2"]))
    assert stop.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error == [f"error: --resume: {out / 'config.json'} trained on silvar-med from Hanhpt23/Silvar-Med at "
                     f"commit {commit}; the Hub now gives commit {moved}: resume on the same files with "
                     f"--data-revision silvar-med={commit}, or start a new run in another --output-dir"]
    train.main(argv + ["--resume", "--max-steps", "2", "--data-revision", f"silvar-med={commit}"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_as_typed_fetches_the_paper_test_sets_and_records_each_commit(server, hub_env, tiny_path, tmp_path,
                                                                                 capsys):
    """`evaluate.py --model tiny --judge none --limit 4` with no --datasets evaluates the test sets it
    fetches, VQA-Med 2019 left out with one line; run.json and summary.json record each one's commit,
    and a rerun in the folder on files of another commit is refused."""
    import evaluate
    from src.errors import UserError

    out = tmp_path / "eval"
    argv = ["--model", "tiny", "--judge", "none", "--limit", "4", "--max-new-tokens", "8", "--output-dir", str(out)]
    summary = evaluate.main(argv)
    assert "vqa-med-2019:test skipped: it has no copy on the Hugging Face Hub" in capsys.readouterr().err
    groups = {(g["dataset"], g["prompt"]): g["metrics"]["n"] for g in summary["groups"]}
    assert groups == {(name, prompt): 4 for name in ("silvar-med", "vqa-rad", "slake", "path-vqa")
                      for prompt in ("reasoning", "non-reasoning")}
    repos = {"silvar-med": "Hanhpt23/Silvar-Med", "vqa-rad": "flaviagiammarino/vqa-rad", "slake": "BoKelvin/SLAKE",
             "path-vqa": "flaviagiammarino/path-vqa"}
    recorded = {name: {"repo": repo, "commit": server.repos[repo].refs["main"]} for name, repo in repos.items()}
    assert json.loads((out / "run.json").read_text())["data"] == recorded == summary["data"]

    slake = server.repos["BoKelvin/SLAKE"]
    slake.commit({**slake.commits[slake.refs["main"]], "README.md": b"# SLAKE, edited\n"})
    with pytest.raises(UserError, match=rf"holds predictions made with other settings \(data.slake.commit: "
                                        rf"'{recorded['slake']['commit']}' -> '{slake.refs['main']}'\)"):
        evaluate.main(argv + ["--datasets", "slake:test"])


def test_evaluate_with_nothing_but_a_judge_names_the_base_model_and_an_output_folder(capsys):
    import evaluate

    args = evaluate.parse_args(["--judge", "none"])
    assert (args.model, args.output_dir, args.datasets) == (
        "Qwen/Qwen2-VL-2B-Instruct", Path("runs/eval-Qwen-Qwen2-VL-2B-Instruct"), None)
    assert capsys.readouterr().err.splitlines() == [
        "no --model: evaluating the base model Qwen/Qwen2-VL-2B-Instruct, where train.py starts (the paper's "
        "zero-shot row)", "no --output-dir: writing to runs/eval-Qwen-Qwen2-VL-2B-Instruct"]
    checkpoint = evaluate.parse_args(["--model", "runs/rarl/checkpoint-500"]).output_dir
    assert checkpoint == Path("runs/eval-rarl-checkpoint-500")
