"""Tests of the zoo fetch step (pipeline/presets/zoo.py).

All but the last test run on a fake preset whose package archives (a zip "wheel" and an npm-style
tgz) are built in tmp_path; the download function is replaced by one that copies those archives,
so no test touches the network. The last tests check the real pinned starter files in the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.presets import zoo
from pipeline.presets.zoo import Artifact, Member, ZooError

WEIGHTS = b"fake generator weights \x00\x01\x02" * 100
MANIFEST = b'[{"paths": ["tiny_model.bin"], "weights": []}]'
SHARD = b"\x10\x20\x30" * 50


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def make_tgz(path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


class FakeRegistry:
    """Archives by file name in a folder; `download` copies one, like pip download / npm pack would."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.calls: list[str] = []

    def download(self, artifact: Artifact, dest_dir: Path) -> Path:
        self.calls.append(artifact.name)
        return Path(shutil.copy(self.folder / artifact.archive, dest_dir / artifact.archive))


@pytest.fixture
def registry(tmp_path, monkeypatch) -> FakeRegistry:
    """A fake preset "fake" with a wheel artifact and an npm artifact; zoo.download_archive replaced."""
    folder = tmp_path / "registry"
    folder.mkdir()
    wheel = make_wheel(folder / "fakepkg-1.0-py3-none-any.whl",
                       {"fakepkg/__init__.py": b"", "fakepkg/data/weights.bin": WEIGHTS})
    tgz = make_tgz(folder / "fake-npm-2.0.tgz",
                   {"package/model/tiny_model-weights_manifest.json": MANIFEST,
                    "package/model/tiny_model.bin": SHARD, "package/index.js": b"//"})
    artifacts = (
        Artifact("fakepkg", "pypi", "fakepkg", "1.0", wheel.name, sha256(wheel.read_bytes()),
                 (Member("fakepkg/data/weights.bin", "fake/fakepkg/weights.bin", sha256(WEIGHTS)),)),
        Artifact("fake_npm", "npm", "fake-npm", "2.0", tgz.name, sha256(tgz.read_bytes()),
                 (Member("package/model/tiny_model-weights_manifest.json",
                         "fake/npm/model/tiny_model-weights_manifest.json", sha256(MANIFEST)),
                  Member("package/model/tiny_model.bin", "fake/npm/model/tiny_model.bin", sha256(SHARD)))),
    )
    monkeypatch.setitem(zoo.PRESETS, "fake", artifacts)
    fake = FakeRegistry(folder)
    monkeypatch.setattr(zoo, "download_archive", fake.download)
    return fake


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def test_first_fetch_extracts_and_verifies(registry, cache):
    messages = []
    fetched = zoo.fetch_preset("fake", cache, progress=messages.append)
    assert fetched == ["fakepkg", "fake_npm"] and registry.calls == ["fakepkg", "fake_npm"]
    assert (cache / "fake/fakepkg/weights.bin").read_bytes() == WEIGHTS
    assert (cache / "fake/npm/model/tiny_model.bin").read_bytes() == SHARD
    assert zoo.verify_preset("fake", cache) == []
    # only the pinned members were extracted, nothing else from the archives
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == [
        "tiny_model-weights_manifest.json", "tiny_model.bin", "weights.bin"]
    assert "3 files verified" in messages[-1]


def test_second_fetch_uses_the_cache_without_downloading(registry, cache):
    zoo.fetch_preset("fake", cache, progress=lambda m: None)
    registry.calls.clear()
    messages = []
    assert zoo.fetch_preset("fake", cache, progress=messages.append) == []
    assert registry.calls == []
    assert "nothing to download" in messages[-1]


def test_force_downloads_again(registry, cache):
    zoo.fetch_preset("fake", cache, progress=lambda m: None)
    registry.calls.clear()
    zoo.fetch_preset("fake", cache, force=True, progress=lambda m: None)
    assert registry.calls == ["fakepkg", "fake_npm"]


def test_corrupt_cached_file_is_reported_and_fetched_again(registry, cache):
    zoo.fetch_preset("fake", cache, progress=lambda m: None)
    target = cache / "fake/npm/model/tiny_model.bin"
    target.write_bytes(b"garbage")
    problems = zoo.verify_preset("fake", cache)
    assert problems == [f"corrupt: {target} sha256 {sha256(b'garbage')} != expected {sha256(SHARD)}"]
    registry.calls.clear()
    messages = []
    zoo.fetch_preset("fake", cache, progress=messages.append)
    assert registry.calls == ["fake_npm"]  # the intact artifact is not downloaded again
    assert any(m.startswith(f"corrupt: {target}") for m in messages)
    assert target.read_bytes() == SHARD and zoo.verify_preset("fake", cache) == []


def test_missing_file_is_reported(registry, cache):
    zoo.fetch_preset("fake", cache, progress=lambda m: None)
    (cache / "fake/fakepkg/weights.bin").unlink()
    assert zoo.verify_preset("fake", cache) == [f"missing: {cache / 'fake/fakepkg/weights.bin'}"]
    status = {s.path.name: s.state for s in zoo.preset_status("fake", cache)}
    assert status == {"weights.bin": "missing", "tiny_model-weights_manifest.json": "ok", "tiny_model.bin": "ok"}


def test_archive_with_wrong_sha256_is_refused_and_cache_untouched(registry, cache):
    zoo.fetch_preset("fake", cache, progress=lambda m: None)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    # the registry now serves different bytes under the pinned name
    make_wheel(registry.folder / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/data/weights.bin": b"evil"})
    with pytest.raises(ZooError, match=r"fakepkg==1.0: downloaded .* sha256 .* != expected .*cache was not changed"):
        zoo.fetch_preset("fake", cache, force=True, progress=lambda m: None)
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before


def test_member_with_wrong_sha256_is_refused_and_nothing_written(registry, cache, monkeypatch):
    artifact = zoo.PRESETS["fake"][1]
    bad = dataclasses.replace(artifact, members=(
        artifact.members[0], Member(artifact.members[1].source, artifact.members[1].dest, "0" * 64)))
    monkeypatch.setitem(zoo.PRESETS, "fake", (bad,))
    with pytest.raises(ZooError, match=r"member package/model/tiny_model.bin sha256 .* != expected 0{64}"):
        zoo.fetch_preset("fake", cache, progress=lambda m: None)
    # the manifest (which matched) was not renamed into place either: all or nothing per artifact
    assert [p for p in cache.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("source,dest", [
    ("../../etc/passwd", "fake/x.bin"),
    ("/etc/passwd", "fake/x.bin"),
    ("package/model/x.bin", "../outside.bin"),
    ("package/model/x.bin", "fake/../../outside.bin"),
    ("package/model/x.bin", "/tmp/outside.bin"),
    ("package\\..\\x.bin", "fake/x.bin"),
])
def test_path_traversal_names_are_refused(source, dest):
    with pytest.raises(ZooError, match="path traversal"):
        Member(source, dest, "0" * 64)


def test_symlink_member_in_archive_is_refused(registry, cache, monkeypatch, tmp_path):
    tgz = make_tgz(registry.folder / "linky-1.0.tgz", {}, symlinks={"package/model/x.bin": "/etc/passwd"})
    artifact = Artifact("linky", "npm", "linky", "1.0", tgz.name, sha256(tgz.read_bytes()),
                        (Member("package/model/x.bin", "fake/linky/x.bin", "0" * 64),))
    monkeypatch.setitem(zoo.PRESETS, "fake", (artifact,))
    with pytest.raises(ZooError, match="not a regular file"):
        zoo.fetch_preset("fake", cache, progress=lambda m: None)
    assert not (cache / "fake/linky/x.bin").exists()


def test_interrupted_write_leaves_no_final_file(registry, cache, monkeypatch):
    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(zoo.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        zoo.fetch_preset("fake", cache, progress=lambda m: None)
    assert not (cache / "fake/fakepkg/weights.bin").exists()
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no half-written .part files either


def test_download_failure_says_what_to_do(monkeypatch, cache):
    """No network: the message names the package, the client's error, and which files to copy where."""
    failed = subprocess.CompletedProcess([], 1, stdout="",
                                         stderr="ERROR: Could not find a version\nNetwork is unreachable")
    monkeypatch.setattr(zoo.subprocess, "run", lambda *a, **k: failed)
    artifact = zoo.STARTER[0]
    with pytest.raises(zoo.DownloadError) as err:
        zoo.fetch_preset("starter", cache, progress=lambda m: None)
    message = str(err.value)
    assert message.startswith("gan-face-generate==1.1.1: could not download it from pypi")
    assert "Network is unreachable" in message
    assert f"{cache / 'starter/gan_face_generate/weights.tar'} (sha256 {artifact.members[0].sha256})" in message
    assert message.endswith("then run `hfld zoo verify starter`")
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []


def test_missing_npm_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo.shutil, "which", lambda name: None)
    with pytest.raises(ZooError, match=r"@vladmandic/face-api@1.7.15: `npm` was not found.*Node.js"):
        zoo.download_archive(zoo.STARTER[2], tmp_path)


def test_pip_command_pins_the_archive_kind(tmp_path):
    wheel_cmd = zoo.pip_download_command(zoo.STARTER[0], tmp_path)
    assert wheel_cmd[:4] == [zoo.sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in wheel_cmd and "--only-binary=:all:" in wheel_cmd
    assert wheel_cmd[-1] == "gan-face-generate==1.1.1"
    sdist = Artifact("s", "pypi", "s", "1", "s-1.tar.gz", "0" * 64, ())
    assert "--no-binary=:all:" in zoo.pip_download_command(sdist, tmp_path)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HFLD_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HFLD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / ".cache" / "hfld"


def test_unknown_preset(cache):
    with pytest.raises(ZooError, match="unknown zoo preset 'nope'; known: starter"):
        zoo.fetch_preset("nope", cache)


def test_starter_registry_follows_the_cache_layout():
    dests = [m.dest for a in zoo.STARTER for m in a.members]
    assert "starter/gan_face_generate/weights.tar" in dests and "starter/fer/emotion_model.hdf5" in dests
    for name in ("face_landmark_68_model", "age_gender_model", "face_expression_model", "face_recognition_model"):
        assert f"starter/face_api/model/{name}-weights_manifest.json" in dests
        assert f"starter/face_api/model/{name}.bin" in dests
    assert len(set(dests)) == len(dests) == 16  # + 6 files of @vladmandic/human (tests/models/test_human.py)
    assert zoo.list_presets() == ["starter"]


# -- the real pinned files (the CI runs `hfld zoo fetch starter` before the tests) ---------------

@pytest.fixture
def real_cache() -> Path:
    cache = zoo.cache_dir()
    if not zoo.preset_root("starter", cache).is_dir():
        pytest.fail(f"no starter files in {cache} (HFLD_CACHE); run `hfld zoo fetch starter` first")
    return cache


def test_real_starter_cache_verifies(real_cache):
    assert zoo.verify_preset("starter", real_cache) == []


def test_real_face_api_manifests_list_only_fetched_shards(real_cache):
    model_dir = real_cache / "starter/face_api/model"
    for manifest in sorted(model_dir.glob("*-weights_manifest.json")):
        for group in json.loads(manifest.read_text()):
            for shard in group["paths"]:
                assert (model_dir / shard).is_file(), f"{manifest.name} needs {shard}, which the zoo does not fetch"
