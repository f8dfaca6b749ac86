"""Where the `generate` stage gets T from: a file, an MLflow run, or a registered model version.

    resolve_directions("runs/x/directions.safetensors")             # a file written by save_directions
    resolve_directions("runs:/<run_id>/directions", tracking_uri)    # an artifact of an MLflow run
    resolve_directions("runs:/<run_id>", tracking_uri)               # the same: its `directions/` folder
    resolve_directions("models:/hfld-directions/3", tracking_uri)    # a registered model version

MLflow artifacts are downloaded with MLflow's own client from the given tracking store (offline
with the default local SQLite store) into a private temporary folder, then read with
`pipeline.core.directions.load_directions` (sha256 checked). An artifact path may name the
.safetensors file or a folder holding exactly one (the training stage logs the folder
`directions/` with directions.safetensors and its .json).

Lineage: `run_id` is the MLflow run that produced T (the run of a runs:/ URI, the model version's
run), else the `mlflow_run_id` recorded in T's metadata, else None.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.directions import DIRECTIONS_ARTIFACT, CheckpointError, DirectionsFile, load_directions
from pipeline.core.config import ConfigError

RUNS_URI = re.compile(r"^runs:/([^/]+)/?(.*)$")
MODELS_URI = re.compile(r"^models:/([^/@]+)(?:/([^/]+)|@([^/]+))$")


@dataclass
class ResolvedDirections:
    T: torch.Tensor            # [L, w_dim, N]
    meta: dict
    source: str                # what the user gave (path or URI)
    run_id: str | None         # MLflow run that produced T, when known
    sha256: str                # of the safetensors bytes

    @property
    def attributes(self) -> list[str]:
        return list(self.meta["attributes"])

    @property
    def layer_mask(self) -> list[int]:
        return [int(i) for i in self.meta.get("layer_mask") or []]


def _from_file(path: Path, source: str, run_id: str | None, field: str) -> ResolvedDirections:
    try:
        d: DirectionsFile = load_directions(path)
    except CheckpointError as e:
        raise ConfigError(f"{field}: {e}") from None
    return ResolvedDirections(d.T, d.meta, source, run_id or d.meta.get("mlflow_run_id") or None,
                              d.meta.get("sha256", ""))


def _single_safetensors(folder: Path, source: str, field: str) -> Path:
    if folder.is_file():
        return folder
    found = sorted(folder.rglob("*.safetensors"))
    if not found:
        raise ConfigError(f"{field}: {source} holds no .safetensors file")
    named = [p for p in found if p.name == "directions.safetensors"]
    if len(found) > 1 and len(named) != 1:
        raise ConfigError(f"{field}: {source} holds several .safetensors files ({[p.name for p in found]}); "
                          "name one in the URI")
    return named[0] if len(found) > 1 else found[0]


def _download(artifact_uri: str, tracking_uri: str | None, dst: Path, source: str, field: str) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst),
                                                    tracking_uri=tracking_uri)
    except (MlflowException, OSError) as e:
        raise ConfigError(f"{field}: cannot download {source} from {tracking_uri or 'the tracking store'} "
                          f"({str(e).splitlines()[0][:300]})") from None
    return Path(local)


def _download_directions(artifact_uri: str, tracking_uri: str | None, dst: Path, source: str, field: str) -> Path:
    """Download T's .safetensors (and its .json beside it) or a folder holding them."""
    if artifact_uri.endswith(".safetensors"):
        tensors = _download(artifact_uri, tracking_uri, dst, source, field)
        _download(artifact_uri[: -len(".safetensors")] + ".json", tracking_uri, dst, source, field)
        return tensors
    return _single_safetensors(_download(artifact_uri, tracking_uri, dst, source, field), source, field)


def _model_version(name: str, version: str | None, alias: str | None, tracking_uri: str | None, field: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ConfigError(f"{field}: registered model {name!r} {what} not found in "
                          f"{tracking_uri or 'the tracking store'} ({str(e).splitlines()[0][:200]})") from None


def resolve_directions(source: str, tracking_uri: str | None = None, field: str = "directions") -> ResolvedDirections:
    """T from a path, "runs:/<run_id>[/<artifact path>]" or "models:/<name>/<version>" (or @alias).

    Errors are ConfigError naming `field`; nothing is left behind in temporary folders.
    """
    if not source:
        raise ConfigError(f"{field}: empty; give T as a file path, runs:/<run_id>/<path> or models:/<name>/<version>")
    runs, models = RUNS_URI.match(source), MODELS_URI.match(source)
    if source.startswith(("runs:", "models:")) and not (runs or models):
        raise ConfigError(f"{field}: {source!r} is not runs:/<run_id>[/<artifact path>] or models:/<name>/<version>")
    if not (runs or models):
        return _from_file(Path(source).expanduser(), source, None, field)
    tmp = Path(tempfile.mkdtemp(prefix="hfld-T-"))
    try:
        if runs:
            run_id, artifact_path = runs.groups()
            uri = f"runs:/{run_id}/{artifact_path.strip('/') or DIRECTIONS_ARTIFACT}"
            path = _download_directions(uri, tracking_uri, tmp, source, field)
        else:
            name, version, alias = models.groups()
            mv = _model_version(name, version, alias, tracking_uri, field)
            run_id = mv.run_id or None
            path = _download_directions(mv.source, tracking_uri, tmp, source, field)
        return _from_file(path, source, run_id, field)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_fits_generator(d: ResolvedDirections, generator, field: str = "directions", generator_id: str = "") -> None:
    """T [L, w_dim, N] must match the generator's latent layers and style size, and, when both are known,
    T must have been trained on this very generator (its file records the generator's id, a sha256 of
    its weights): a T's columns mean nothing in another generator's W+ even when the shapes agree."""
    trained_on = str(d.meta.get("generator_id") or "")
    if trained_on and generator_id and trained_on != generator_id:
        raise ConfigError(f"{field}: {d.source} was trained on generator {trained_on[:23]}..., but this preset's "
                          f"generator is {generator_id[:23]}...; use a T trained for this generator (or the preset "
                          f"it was trained with: {d.meta.get('preset', 'unknown')!r})")
    L, w_dim = int(generator.n_latent), int(generator.w_dim)
    if tuple(d.T.shape[:2]) != (L, w_dim):
        raise ConfigError(f"{field}: {d.source} has T of shape {list(d.T.shape)}, but this preset's generator "
                          f"needs [{L}, {w_dim}, N] (T was trained for another generator)")
    bad = [i for i in d.layer_mask if not 0 <= i < L]
    if bad:
        raise ConfigError(f"{field}: {d.source} has layer_mask entries {bad} outside 0..{L - 1}")
