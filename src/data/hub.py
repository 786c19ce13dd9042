"""Datasets by name from the Hugging Face Hub: where each one is published, and the fetch.

A dataset given without a folder (no --data-root for it) is downloaded from its repository on the
Hub by huggingface_hub's `snapshot_download`, only the files its split needs, into the Hub cache
(`HF_HOME`, by default ~/.cache/huggingface; `HF_HUB_CACHE` overrides its hub/ folder), and then read
by the same loaders as a folder (src/data/loaders.py). `HUB_DATASETS` below is the one table of
names, repositories and files; docs/DATA.md shows it with sizes.

    fetch_dataset("slake", "test")                       -> HubSnapshot(root, repo, commit)
    fetch_dataset("vqa-rad", "test", revision="v1.0")    a commit, tag or branch of the repository

What huggingface_hub guarantees and this module relies on: every file is downloaded to a temporary
name and moved into place only when complete (a cut transfer is resumed with a Range request within
the run, and never left looking complete); the files of one commit sit in one snapshot folder
(`HF_HUB_CACHE/datasets--OWNER--NAME/snapshots/COMMIT/`), so a pinned commit always reads the same
bytes; with `HF_HUB_OFFLINE=1` the cache is read without any request, and a snapshot that misses files
it listed is refused. A zip archive (SLAKE's imgs.zip) is unpacked once, beside the snapshot
(`.../unpacked/COMMIT/`), into a temporary folder renamed into place when complete: an interrupted
unpack is never taken for a finished one. The Hub's own progress bars show each download.

Every failure is a DatasetError that says what to do, raised before any model loads: nothing cached
while offline (the `hf download` command that fetches it), no such repository or revision (404), a
gated or private dataset (401/403: a token is needed, or the one given is refused; the token itself is
never printed), the network down, a transfer cut part-way (run again to finish it).
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from src.data.cache_lock import cache_lock
from src.data.rows import DatasetError


@dataclass(frozen=True)
class HubDataset:
    repo: str                            # the dataset repository on the Hub
    form: str                            # the published form, as docs/DATA.md names it
    splits: dict[str, tuple[str, ...]]   # split -> the files it needs (globs; "a | b": whichever exists)
    archives: tuple[str, ...] = field(default=())  # zip files among them, unpacked next to the snapshot


# What each dataset's split fetches; the loaders read these files as docs/DATA.md lays them out.
# The layouts were read from the repositories' public file lists and dataset cards on 2026-12-06.
HUB_DATASETS = {
    "silvar-med": HubDataset("Hanhpt23/Silvar-Med", "the authors' release",
                             {"train": ("train/*",), "test": ("test/*",)}),
    "vqa-rad": HubDataset("flaviagiammarino/vqa-rad", "parquet export",
                          {"train": ("data/train-*.parquet",), "test": ("data/test-*.parquet",)}),
    "slake": HubDataset("BoKelvin/SLAKE", "official JSON files and imgs.zip",
                        {"train": ("train.json", "imgs.zip"), "val": ("validation.json | validate.json", "imgs.zip"),
                         "test": ("test.json", "imgs.zip")}, archives=("imgs.zip",)),
    "path-vqa": HubDataset("flaviagiammarino/path-vqa", "parquet export",
                           {"train": ("data/train-*.parquet",), "val": ("data/validation-*.parquet",),
                            "test": ("data/test-*.parquet",)}),
    "cv-bench": HubDataset("nyu-visionx/CV-Bench", "test.jsonl and img/", {"test": ("test*.jsonl", "img/*")}),
}

NOT_ON_HUB = {
    "vqa-med-2019": "VQA-Med 2019 has no copy on the Hugging Face Hub by its publisher: its official archives "
                    "(ImageClef-2019-VQA-Med-Training.zip, ImageClef-2019-VQA-Med-Validation.zip and the "
                    "VQAMed2019Test set) are published at https://github.com/abachaa/VQA-Med-2019 (the task's page: "
                    "https://www.imageclef.org/2019/medical/vqa); unpack them into one folder and give it with "
                    "--data-root (the layout: docs/DATA.md, vqa-med-2019)",
}

REVISION_HELP = "NAME=REV: fetch dataset NAME from this commit, tag or branch of its Hub repository " \
                "(default: its main branch)"


@dataclass(frozen=True)
class HubSnapshot:
    """One split's files fetched from the Hub: the folder the loader reads, and where they came from."""
    root: Path        # the snapshot folder (or, for a dataset with archives, the folder beside it)
    repo: str         # e.g. "flaviagiammarino/vqa-rad"
    commit: str       # the 40-hex commit the files belong to


def parse_revisions(values: list[str] | tuple[str, ...] | None, flag: str = "--data-revision") -> dict[str, str]:
    """{dataset: revision} from NAME=REV values; a malformed or repeated one is a DatasetError."""
    revisions: dict[str, str] = {}
    for value in values or ():
        name, sep, revision = value.partition("=")
        name, revision = name.strip(), revision.strip()
        if not sep or not name or not revision:
            raise DatasetError(f"{flag} {value!r}: expected NAME=REV, e.g. vqa-rad=main or vqa-rad=<commit>")
        if name in revisions:
            raise DatasetError(f"{flag}: {name} is given twice ({revisions[name]}, {revision})")
        revisions[name] = revision
    return revisions


def fetch_dataset(name: str, split: str, revision: str | None = None) -> HubSnapshot:
    """The files of dataset `name`'s split (canonical: train, val or test) from its Hub repository at
    `revision` (default: main), downloaded into the Hub cache unless already there."""
    if name in NOT_ON_HUB:
        raise DatasetError(f"{name}: {NOT_ON_HUB[name]}")
    if name not in HUB_DATASETS:
        raise DatasetError(f"{name}: not published on the Hugging Face Hub; give the folder holding its files "
                           "with --data-root (see docs/DATA.md)")
    spec = HUB_DATASETS[name]
    if split not in spec.splits:
        raise DatasetError(f"{name} has no split {split!r} on the Hub ({spec.repo}); its splits: "
                           f"{', '.join(spec.splits)}")
    hub = HubSettings.from_environment()
    wanted = spec.splits[split]
    patterns = [pattern for alternatives in wanted for pattern in split_alternatives(alternatives)]
    print(f"{name} {split}: {spec.repo} at {revision or 'main'} from "
          f"{'the local cache (HF_HUB_OFFLINE)' if hub.offline else hub.endpoint}, cache {hub.cache}",
          file=sys.stderr, flush=True)
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(spec.repo, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                        cache_dir=hub.cache, endpoint=hub.endpoint, local_files_only=hub.offline))
    except Exception as error:  # noqa: BLE001 - each failure the transfer can meet becomes one clear message
        problem = fetch_problem(error, name, spec, split, patterns, revision, hub)
        if problem is None:
            raise
        raise DatasetError(hub.scrub(problem)) from None
    missing = [alternatives for alternatives in wanted
               if not any(matches(folder, pattern) for pattern in split_alternatives(alternatives))]
    if missing:
        raise DatasetError(f"{name} {split}: {spec.repo} at commit {folder.name} has no file matching "
                           f"{', '.join(missing)}: its layout is not the one this project reads ({spec.form}, "
                           "docs/DATA.md); give the files with --data-root instead")
    root = folder if not spec.archives else beside_snapshot(name, folder, spec.archives)
    return HubSnapshot(root=root, repo=spec.repo, commit=folder.name)


def split_alternatives(alternatives: str) -> list[str]:
    return [pattern.strip() for pattern in alternatives.split("|")]


def matches(folder: Path, pattern: str) -> bool:
    """Whether the snapshot holds a file matching the glob (a "*" may cross folders, as in allow_patterns)."""
    from huggingface_hub.utils import filter_repo_objects

    if not folder.is_dir():
        return False
    files = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir())
    return any(True for _ in filter_repo_objects(files, allow_patterns=[pattern]))


# ---- where the Hub is, read when a dataset is fetched -------------------------------------------

def offline() -> bool:
    """Whether the environment says to read the Hub cache only, as huggingface_hub reads it: HF_HUB_OFFLINE
    (or the older TRANSFORMERS_OFFLINE) set to 1, true, yes or on."""
    env = os.environ
    return (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").strip().lower() in (
        "1", "true", "yes", "on")


@dataclass(frozen=True)
class HubSettings:
    """The Hub endpoint, cache and offline switch, read from the environment when a dataset is fetched
    (huggingface_hub reads them once, at import; a value set later still counts here)."""
    endpoint: str
    cache: Path
    offline: bool
    token: str | None

    @classmethod
    def from_environment(cls) -> HubSettings:
        from huggingface_hub import constants, get_token

        env = os.environ
        cache = env.get("HF_HUB_CACHE") or (str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME")
                                            else constants.HF_HUB_CACHE)
        return cls(endpoint=env.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/"),
                   cache=Path(cache).expanduser(), offline=offline(), token=get_token())

    def scrub(self, text: str) -> str:
        """The text without the token, should any message have carried it."""
        return text.replace(self.token, "<HF_TOKEN>") if self.token else text


def download_command(repo: str, patterns: list[str], revision: str | None) -> str:
    """The one `hf download` command that puts the split's files into the cache."""
    parts = ["hf download", repo, "--repo-type dataset"]
    if revision:
        parts.append(f"--revision {revision}")
    parts += [f'--include "{pattern}"' for pattern in patterns]
    return " ".join(parts)


def fetch_problem(error: Exception, name: str, spec: HubDataset, split: str, patterns: list[str],
                  revision: str | None, hub: HubSettings) -> str | None:
    """What went wrong fetching the split's files (`patterns`), and what to do, for each failure a fetch
    can meet; None for anything else (a bug, which keeps its traceback)."""
    from huggingface_hub import errors
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo, at = spec.repo, f"{spec.repo}" + (f" at revision {revision}" if revision else "")
    fetch = download_command(repo, patterns, revision)
    page = f"{hub.endpoint}/datasets/{repo}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub 2.x: cached commit lacks files
    if isinstance(error, incomplete):
        asked = "HF_HUB_OFFLINE is set" if hub.offline else f"{hub.endpoint} cannot be reached"
        return (f"{name}: the cached copy of {at} in {hub.cache} lacks files of the {split} split (never fetched, "
                f"or a download cut before it finished) and {asked}: run again with network to complete it, or "
                f"fetch them with: {fetch}")
    if isinstance(error, LocalEntryNotFoundError) and hub.offline:
        return (f"{name}: HF_HUB_OFFLINE is set and {at} is not in the Hugging Face cache ({hub.cache}): fetch it "
                f"once where there is network, into the same HF_HOME, with: {fetch}; or give its folder with "
                "--data-root")
    if isinstance(error, RevisionNotFoundError):
        return (f"{name}: {repo} has no revision {revision!r} ({hub.endpoint} answered 404): give a commit, tag "
                f"or branch of {page} with --data-revision {name}=REV")
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        if status == 403:
            return (f"{name}: {hub.endpoint} refused access to {repo} (403): the token given (HF_TOKEN or "
                    f"`hf auth login`) has no access to this gated dataset; ask for access on {page} and use a "
                    "token of that account")
        if hub.token:
            return (f"{name}: {hub.endpoint} refused the token given for {repo} (401): it is invalid or expired, "
                    f"or its account has no access ({page}); set a valid one in HF_TOKEN or run `hf auth login`")
        return (f"{name}: {repo} is gated or private ({hub.endpoint} answered 401): accept its terms on {page}, "
                "then give a token of that account: set HF_TOKEN or run `hf auth login`")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{name}: no dataset repository {repo} on {hub.endpoint} ({status or 404}): check HF_ENDPOINT, or "
                "give the dataset's folder with --data-root")
    if isinstance(error, LocalEntryNotFoundError):  # the Hub unreachable, nothing usable cached
        cause = error.__cause__ or error.__context__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(error).splitlines()[0]
        return (f"{name}: cannot reach {hub.endpoint} ({reason}) and {at} is not in the Hugging Face cache "
                f"({hub.cache}): check the network and HF_ENDPOINT, or fetch it where there is network with: {fetch} "
                "(then copy HF_HOME here and set HF_HUB_OFFLINE=1)")
    transfer = isinstance(error, (HfHubHTTPError, OSError)) or type(error).__module__.split(".")[0] in (
        "httpx", "httpx2", "requests", "urllib3")
    if transfer:
        reason = (f"the Hub answered {status}" if status is not None else
                  f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")
        return (f"{name}: fetching {at} from {hub.endpoint} stopped part-way ({reason}); "
                "nothing incomplete was kept, and the files already complete stay in the cache: run the same "
                "command again to finish the download")
    return None


# ---- archives: unpacked once, beside the snapshot ------------------------------------------------

def beside_snapshot(name: str, snapshot: Path, archives: tuple[str, ...]) -> Path:
    """The folder the loader reads for a dataset that ships archives: REPO_CACHE/unpacked/COMMIT/, holding
    each archive unpacked (imgs.zip -> imgs/) and a link to every other file of the snapshot."""
    root = snapshot.parent.parent / "unpacked" / snapshot.name
    with cache_lock(root):
        root.mkdir(parents=True, exist_ok=True)
        for archive in archives:
            target = root / PurePosixPath(archive).stem
            if not target.is_dir():
                unpack(name, snapshot / archive, target)
        for entry in snapshot.iterdir():
            link = root / entry.name
            if entry.name not in archives and not os.path.lexists(link):
                link.symlink_to(os.path.relpath(entry, root))
    return root


IGNORED_MEMBERS = ("__MACOSX/", ".DS_Store")


def unpack(name: str, archive: Path, target: Path) -> None:
    """Unpack `archive` into the folder `target` (members under a top folder named like `target` lose
    it), through a temporary folder renamed into place at the end. Absolute paths, '..' and links among
    the members are refused: the archive writes nowhere but inside `target`."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted unpack left: never taken as complete
    try:
        unpack_into(name, archive, target.name, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.rename(partial, target)


def unpack_into(name: str, archive: Path, top: str, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()
                       and not any(part in m.filename for part in IGNORED_MEMBERS)
                       and not PurePosixPath(m.filename).name.startswith("._")]
            strip = all(m.filename.startswith(f"{top}/") for m in members)
            for member in tqdm(members, desc=f"{name}: unpacking {archive.name}", unit="file", delay=2.0):
                relative = member_path(member, archive)
                if strip:
                    relative = PurePosixPath(*relative.parts[1:])
                destination = folder.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, length=1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise DatasetError(f"{name}: cannot unpack {archive} ({error}); the cached archive is damaged: delete "
                           f"{archive.resolve()} and run again to fetch it anew") from None
    except OSError as error:  # a full disk, a folder not writable
        raise DatasetError(f"{name}: cannot unpack {archive} into {folder.parent} ({error})") from None


def member_path(member: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    path = PurePosixPath(member.filename.replace("\\", "/"))
    is_link = stat.S_ISLNK(member.external_attr >> 16)
    if path.is_absolute() or ".." in path.parts or not path.parts or is_link:
        raise DatasetError(f"{archive}: member {member.filename!r} would be written outside the folder it unpacks "
                           "into (an absolute path, '..' or a link): refused")
    return path
