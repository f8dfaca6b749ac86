"""Stage `train`: optimise the edit directions T with the four-term objective.

`run_train(cfg)` is the single-process trainer used by the CLI and tests; `pipeline/ray_train.py`
runs the same `train_loop` on every Ray Train worker. The step function (`train_step`) does no I/O.
`run_training(cfg)` picks between them (`scaling.num_workers`: 0 = in this process, >= 1 = Ray
Train) and records the run in MLflow (`tracking`).

Run directory: <work_dir>/<run_name>/ with config.yaml, metrics.jsonl, checkpoint.safetensors(+.json)
(latest trainer state, for resuming) and directions.safetensors(+.json) (the final T).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch
import yaml
from torch import nn

from models.editing import DirectionMatrix, EditSampling, sample_edits
from models.losses import TERMS, EditObjective, LossWeights, assert_frozen
from pipeline.checkpoints import DirectionsFile, load_directions, save_directions
from pipeline.config import ConfigError, require, to_dict
from pipeline.presets import ModelBundle, ModelConfig, build_bundle, resolve_device
from pipeline.seeding import Stream, global_sample_ids, rng_for
from pipeline.tracking import TrackingConfig, open_tracker

NoiseMode = Literal["const", "random", "zero"]
Precision = Literal["fp32", "bf16"]


def default_work_dir() -> str:
    return os.environ.get("HFLD_WORK_DIR", str(Path.home() / "hfld-work"))


# Set by Ray for the entrypoint of a `ray job submit` job (and inherited by the commands it runs).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def is_uri(location: str) -> bool:
    """s3://bucket/prefix, gs://..., file:///...: a pyarrow/fsspec filesystem URI rather than a path."""
    return "://" in location


def check_output_locations(paths: dict[str, str], uris_allowed: dict[str, str] | None = None) -> None:
    """Refuse output locations that would silently land in the wrong place (field name -> value).

    `paths` must be filesystem paths (local, NFS...): a URI there would become a folder named "s3:"
    in the current directory. Inside a `ray job submit` job, the current directory is a temporary copy
    of --working-dir on the head node, deleted with the job, so relative paths are refused there too
    (`uris_allowed` fields, e.g. Ray's storage_path, may also be URIs).
    """
    in_job = bool(os.environ.get(RAY_JOB_ENV))
    for field_name, value in {**paths, **(uris_allowed or {})}.items():
        if not value:
            continue
        if is_uri(value):
            if field_name in paths:
                raise ConfigError(f"{field_name}: {value!r} is a URI; it must be a filesystem path (a shared "
                                  "mount such as NFS on a cluster)")
            continue
        if in_job and not Path(value).expanduser().is_absolute():
            raise ConfigError(f"{field_name}: {value!r} is a relative path, and this runs as a Ray job whose "
                              "current directory is a temporary copy of --working-dir on the head node, deleted "
                              "with the job; give an absolute path on storage every node mounts (e.g. "
                              "/mnt/hfld/work), or set HFLD_WORK_DIR")


@dataclass(frozen=True)
class ScalingConfig:
    """How many workers optimise T, and with which resources.

    num_workers: 0 = run in this process without Ray; >= 1 = Ray Train (TorchTrainer, DDP over T)
      with that many workers, each drawing its own `batch_size` samples per step (global batch =
      num_workers * batch_size).
    use_gpu: one GPU per worker (NCCL); false = CPU workers (gloo).
    cpus_per_worker: CPUs Ray reserves per worker (fractions allowed, e.g. 0.5).
    gpus_per_worker: GPUs per worker when use_gpu (fractions allowed).
    max_failures: worker-group restarts from the latest checkpoint before the run fails (-1 = no limit).
    storage_path: where Ray keeps checkpoints ("" = <work_dir>/ray): on a multi-node cluster a path every
      node mounts (NFS) or a URI Ray's pyarrow filesystems take (s3://bucket/prefix, gs://...).
    """
    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 0
    storage_path: str = ""

    def __post_init__(self):
        require(self.num_workers >= 0, "scaling.num_workers", self.num_workers, "must be >= 0 (0 = no Ray)")
        require(self.cpus_per_worker > 0 and math.isfinite(self.cpus_per_worker), "scaling.cpus_per_worker",
                self.cpus_per_worker, "must be a finite number > 0")
        require(self.gpus_per_worker >= 0 and math.isfinite(self.gpus_per_worker), "scaling.gpus_per_worker",
                self.gpus_per_worker, "must be a finite number >= 0")
        require(not self.use_gpu or self.gpus_per_worker > 0, "scaling.gpus_per_worker", self.gpus_per_worker,
                "must be > 0 when scaling.use_gpu is true")
        require(self.max_failures >= -1, "scaling.max_failures", self.max_failures, "must be >= 0, or -1 for no limit")


@dataclass(frozen=True)
class TrainConfig:
    """Training of T. Defaults follow the paper (Adam 1e-4, batch 4, 50,000 iterations).

    attributes: edited attributes (T's columns), names of the regressor; empty = preset default.
    landmark_groups: groups of the landmark model the HFLD loss covers; empty = all.
    layer_mask: latent layers T may edit; empty = all.
    edit_sampling: "uniform" (s ~ U[-1,1], paper) or "target" (s = U[0,1] - R(x), reference code).
    truncation: psi applied to the sampled training latents (1 = none).
    noise_mode: generator noise for x and x' (always the same for both): const, random, zero.
    resume: "" (fresh run), "auto" (the run dir's latest checkpoint, if any) or a checkpoint path.
    cuda_graph: on a single CUDA device (T not DDP-wrapped), capture the whole step (both passes,
      backward, Adam) as one CUDA graph after 3 eager warm-up steps and replay it: the step is
      launch-bound at the paper's batch of 4, so this removes most of its CPU overhead.
    scaling: in-process (num_workers 0) or Ray Train workers; see ScalingConfig.
    tracking: MLflow run of this stage; see pipeline.tracking.TrackingConfig.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    attributes: tuple[str, ...] = ()
    landmark_groups: tuple[str, ...] = ()
    layer_mask: tuple[int, ...] = ()
    losses: LossWeights = field(default_factory=LossWeights)
    edit_sampling: EditSampling = "uniform"
    truncation: float = 1.0
    noise_mode: NoiseMode = "const"
    iterations: int = 50_000
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.99)
    init_std: float = 0.02
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    cuda_graph: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    work_dir: str = field(default_factory=default_work_dir)
    run_name: str = ""
    resume: str = ""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")
        require(0 < self.truncation <= 1, "truncation", self.truncation, "must be in (0, 1]")
        require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        require(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        for name in ("regressor", "perceptual", "adversarial", "landmark"):
            v = getattr(self.losses, name)
            require(v >= 0 and math.isfinite(v), f"losses.{name}", v, "must be a finite number >= 0")
        require(len(set(self.attributes)) == len(self.attributes), "attributes", self.attributes, "has duplicates")

    @property
    def name(self) -> str:
        """Deterministic run name: given, or derived from preset, lambda4 and seed."""
        return self.run_name or f"train-{self.model.preset}-l4_{self.losses.landmark:g}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir).expanduser() / self.name


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Batch:
    wplus: torch.Tensor                 # [B, L, w_dim]
    uniforms: torch.Tensor              # [B, N] U[0,1) numbers for the edit amounts
    noise: list | str                   # per-layer noise tensors [B, 1, r, r], or a noise mode


@dataclass
class TrainState:
    objective: EditObjective
    directions: DirectionMatrix          # the bare module (a DDP wrapper, if any, is `model`)
    model: nn.Module                     # what the objective calls: directions or DDP(directions)
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0                        # number of completed optimisation steps


@dataclass
class TrainResult:
    run_dir: Path
    directions_path: Path
    steps: int
    final_metrics: dict
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Building blocks (no I/O)
# ---------------------------------------------------------------------------------------------

def resolve_attributes(cfg: TrainConfig, bundle: ModelBundle) -> tuple[str, ...]:
    attributes = cfg.attributes or bundle.default_attributes
    names = list(bundle.regressor.names)
    unknown = [a for a in attributes if a not in names]
    if unknown:
        raise ConfigError(f"attributes: {unknown} not known to the {bundle.preset!r} regressor; it has {names}")
    if not attributes:
        raise ConfigError("attributes: empty and the preset has no default; name the attributes to edit")
    return tuple(attributes)


def build_objective(cfg: TrainConfig, bundle: ModelBundle, attributes: tuple[str, ...]) -> EditObjective:
    groups = getattr(bundle.landmarks, "groups", {})
    unknown = [g for g in cfg.landmark_groups if g not in groups]
    if unknown:
        raise ConfigError(f"landmark_groups: {unknown} unknown; the {bundle.preset!r} landmark model has {sorted(groups)}")
    return EditObjective(bundle.generator, bundle.regressor, bundle.landmarks, bundle.perceptual,
                         bundle.discriminator, attributes, cfg.landmark_groups, effective_weights(cfg, bundle))


def effective_weights(cfg: TrainConfig, bundle: ModelBundle) -> LossWeights:
    """The lambdas actually used: a preset without a discriminator forces lambda3 (adversarial) to 0
    (its notes say so in every log)."""
    if bundle.discriminator is None:
        return replace(cfg.losses, adversarial=0.0)
    return cfg.losses


def new_directions(cfg: TrainConfig, generator: nn.Module, n_attributes: int) -> DirectionMatrix:
    n_latent, w_dim = generator.n_latent, generator.w_dim
    bad = [i for i in cfg.layer_mask if not 0 <= i < n_latent]
    if bad:
        raise ConfigError(f"layer_mask: {bad} outside this generator's latent layers 0..{n_latent - 1}")
    return DirectionMatrix(n_latent, w_dim, n_attributes, init_std=cfg.init_std, layer_mask=cfg.layer_mask,
                           generator=rng_for(cfg.seed, Stream.INIT, 1))


def setup_training(cfg: TrainConfig, bundle: ModelBundle, device: torch.device,
                   wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainState:
    """Objective + T + Adam; `wrap` (e.g. Ray's prepare_model) wraps T for data parallelism."""
    attributes = resolve_attributes(cfg, bundle)
    objective = build_objective(cfg, bundle, attributes).to(device)
    directions = new_directions(cfg, bundle.generator, len(attributes)).to(device)
    assert_frozen(objective.networks())
    model = wrap(directions) if wrap else directions
    capturable = uses_cuda_graph(cfg, device, model is directions)
    optimizer = torch.optim.Adam(directions.parameters(), lr=cfg.lr, betas=cfg.betas, capturable=capturable)
    return TrainState(objective, directions, model, optimizer, device)


def uses_cuda_graph(cfg: TrainConfig, device: torch.device, unwrapped: bool) -> bool:
    return cfg.cuda_graph and device.type == "cuda" and unwrapped


def latents_from_z(generator: nn.Module, z: torch.Tensor, psi: float) -> torch.Tensor:
    """z [B, Z] -> wplus [B, L, w_dim] through mapping, truncation towards mean_latent, broadcast."""
    w = generator.mapping(z)
    if psi != 1:
        w = generator.mean_latent.reshape(1, -1) + psi * (w - generator.mean_latent.reshape(1, -1))
    return w[:, None, :].expand(-1, generator.n_latent, -1).contiguous()


def sample_noise(generator: nn.Module, mode: NoiseMode, rngs: list[torch.Generator], device) -> list | str:
    """Per-sample random noise from each sample's own generator; other modes are passed by name."""
    if mode != "random" or not hasattr(generator, "make_noise"):
        return mode
    shapes = [n.shape[-2:] for n in generator.make_noise("const", 1)]
    return [torch.cat([torch.randn(1, 1, *hw, generator=r) for r in rngs]).to(device) for hw in shapes]


@torch.no_grad()
def sample_batch(cfg: TrainConfig, generator: nn.Module, n_attributes: int, sample_ids: list[int],
                 device: torch.device, stream: Stream = Stream.TRAIN) -> Batch:
    """Latents, edit uniforms and noise for the given global sample indices (each from its own seed)."""
    rngs = [rng_for(cfg.seed, stream, i) for i in sample_ids]
    z = torch.stack([torch.randn(generator.z_dim, generator=r) for r in rngs]).to(device)
    uniforms = torch.stack([torch.rand(n_attributes, generator=r) for r in rngs]).to(device)
    noise = sample_noise(generator, cfg.noise_mode, rngs, device)
    return Batch(latents_from_z(generator, z, cfg.truncation), uniforms, noise)


def autocast_context(device: torch.device, precision: Precision):
    # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def compute_terms(state: TrainState, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    with autocast_context(state.device, cfg.precision):
        orig = state.objective.original(batch.wplus, batch.noise)
        current = state.objective.current_edited_attributes(orig) if cfg.edit_sampling == "target" else None
        s = sample_edits(cfg.edit_sampling, batch.uniforms, current)
        return state.objective(state.model, batch.wplus, s, batch.noise, orig)


def terms_to_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """All loss terms to Python floats with one device sync."""
    values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
    return dict(zip(terms, values))


def non_finite_error(step: int, values: dict[str, float]) -> NonFiniteLoss:
    text = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    return NonFiniteLoss(f"non-finite loss at step {step} ({text}); T was not updated. "
                         "Lower lr or a lambda, or check the weights of the networks.")


def train_step(state: TrainState, batch: Batch, cfg: TrainConfig) -> dict[str, float]:
    """One Adam step on T. Raises NonFiniteLoss (and leaves T untouched) on a NaN/inf loss."""
    terms = compute_terms(state, batch, cfg)
    values = terms_to_floats(terms)
    if not all(math.isfinite(v) for v in values.values()):
        raise non_finite_error(state.step + 1, values)
    state.optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    state.optimizer.step()
    state.step += 1
    return values


class GraphedTrainStep:
    """train_step as a replayed CUDA graph (single device, T not DDP-wrapped).

    The first WARMUP steps run eagerly on a side stream (cuDNN autotuning, allocator warm-up, as
    CUDA graph capture requires); then one step is captured -- forward passes, backward and the
    capturable Adam update -- and every later step copies its batch into the captured input
    buffers and replays. Results equal the eager step's. A non-finite loss is detected after the
    replay, so T and Adam's moments are restored from copies taken just before it: like the eager
    step, a NaN step leaves T untouched.
    """

    WARMUP = 3

    def __init__(self, state: TrainState, cfg: TrainConfig):
        self.state, self.cfg = state, cfg
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side = torch.cuda.Stream(device=state.device)
        self.eager_steps = 0

    def __call__(self, batch: Batch) -> dict[str, float]:
        if self.graph is None and self.eager_steps < self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream(self.state.device))
            with torch.cuda.stream(self.side):
                values = train_step(self.state, batch, self.cfg)
            torch.cuda.current_stream(self.state.device).wait_stream(self.side)
            self.eager_steps += 1
            return values
        if self.graph is None:
            self.capture(batch)
        return self.replay(batch)

    def trained_tensors(self) -> list[torch.Tensor]:
        opt_state = self.state.optimizer.state[self.state.directions.T]
        return [self.state.directions.T.data, opt_state["exp_avg"], opt_state["exp_avg_sq"], opt_state["step"]]

    def capture(self, batch: Batch) -> None:
        self.static = Batch(batch.wplus.clone(), batch.uniforms.clone(),
                            [n.clone() for n in batch.noise] if isinstance(batch.noise, list) else batch.noise)
        self.state.optimizer.zero_grad(set_to_none=True)  # backward then allocates .grad in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms = compute_terms(self.state, self.static, self.cfg)
            self.terms["total"].backward()
            self.state.optimizer.step()
        self.backup = [t.clone() for t in self.trained_tensors()]

    def replay(self, batch: Batch) -> dict[str, float]:
        self.static.wplus.copy_(batch.wplus)
        self.static.uniforms.copy_(batch.uniforms)
        if isinstance(batch.noise, list):
            for dst, src in zip(self.static.noise, batch.noise):
                dst.copy_(src)
        for dst, src in zip(self.backup, self.trained_tensors()):
            dst.copy_(src)
        self.graph.replay()
        values = terms_to_floats(self.terms)
        if not all(math.isfinite(v) for v in values.values()):
            for dst, src in zip(self.trained_tensors(), self.backup):
                dst.copy_(src)
            raise non_finite_error(self.state.step + 1, values)
        self.state.step += 1
        return values


def make_step(state: TrainState, cfg: TrainConfig) -> Callable[[Batch], dict[str, float]]:
    """The step function for this state: a replayed CUDA graph where it applies, else eager."""
    if uses_cuda_graph(cfg, state.device, state.model is state.directions):
        return GraphedTrainStep(state, cfg)
    return lambda batch: train_step(state, batch, cfg)


# ---------------------------------------------------------------------------------------------
# Checkpoint <-> state
# ---------------------------------------------------------------------------------------------

def sampling_position(cfg: TrainConfig, step: int, world_size: int = 1) -> dict:
    """The training RNG "state": every sample derives from (seed, global sample id), so the next id is
    all a resumed run needs (a different global batch would make it draw other samples)."""
    return {"seed": cfg.seed, "stream": Stream.TRAIN.name, "global_batch": cfg.batch_size * world_size,
            "next_sample_id": step * cfg.batch_size * world_size}


def directions_meta(cfg: TrainConfig, bundle: ModelBundle, state: TrainState, **extra) -> dict:
    return {"rng": sampling_position(cfg, state.step, extra.get("world_size", 1)),
            "attributes": list(state.objective.attributes), "layer_mask": list(cfg.layer_mask),
            "landmark_groups": list(cfg.landmark_groups), "preset": cfg.model.preset,
            "generator_id": bundle.generator_id, "lambdas": to_dict(state.objective.weights), "step": state.step,
            "regressor_names": list(bundle.regressor.names), "config": to_dict(cfg), **extra}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    st = optimizer.state_dict()["state"].get(0)
    if not st:
        return {}
    return {"exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"], "step": torch.as_tensor(st["step"]).float()}


def save_checkpoint(path: Path, cfg: TrainConfig, bundle: ModelBundle, state: TrainState, **extra) -> Path:
    return save_directions(path, state.directions.T, directions_meta(cfg, bundle, state, **extra),
                           optimizer_tensors(state.optimizer))


def restore_state(state: TrainState, ckpt: DirectionsFile, source: Path | str) -> None:
    """Load T, Adam moments and step count from a checkpoint that fits this run."""
    if ckpt.attributes != list(state.objective.attributes):
        raise ConfigError(f"resume: {source} edits {ckpt.attributes}, this run edits {list(state.objective.attributes)}")
    if tuple(ckpt.T.shape) != tuple(state.directions.T.shape):
        raise ConfigError(f"resume: {source} has T of shape {list(ckpt.T.shape)}, this run needs "
                          f"{list(state.directions.T.shape)} (different generator?)")
    with torch.no_grad():
        state.directions.T.copy_(ckpt.T.to(state.device))
    if ckpt.optimizer:
        osd = state.optimizer.state_dict()
        osd["state"] = {0: {"step": ckpt.optimizer["step"].reshape(()).cpu(),
                            "exp_avg": ckpt.optimizer["exp_avg"].to(state.device),
                            "exp_avg_sq": ckpt.optimizer["exp_avg_sq"].to(state.device)}}
        state.optimizer.load_state_dict(osd)
    state.step = int(ckpt.meta.get("step", 0))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite a finished or started run silently."""
    run_dir, latest = cfg.run_dir, cfg.run_dir / "checkpoint.safetensors"
    if cfg.resume == "auto":
        return latest if latest.is_file() else None
    if cfg.resume:
        p = Path(cfg.resume).expanduser()
        if not p.is_file():
            raise ConfigError(f"resume: checkpoint {p} not found")
        return p
    if (run_dir / "directions.safetensors").exists() or latest.exists():
        raise ConfigError(f"run_name: {run_dir} already holds a run; choose another run_name, or set "
                          "resume=auto to continue it")
    return None


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

class ProgressLine:
    """Human-readable progress: step, losses, samples/s since start (or resume) and ETA."""

    def __init__(self, total: int, batch: int, start_step: int, print_fn=print):
        self.total, self.batch, self.start_step, self.print = total, batch, start_step, print_fn
        self.t0 = time.perf_counter()

    def __call__(self, step: int, metrics: dict) -> dict:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (step - self.start_step) * self.batch / elapsed
        eta = (self.total - step) * self.batch / max(rate, 1e-9)
        terms = " ".join(f"{k}={metrics[k]:.4g}" for k in ("total",) + TERMS if k in metrics)
        self.print(f"[train] step {step}/{self.total} {terms} | {rate:.1f} samples/s | eta {eta:.0f}s", flush=True)
        return {"samples_per_s": rate}


def train_loop(cfg: TrainConfig, bundle: ModelBundle, state: TrainState, *, rank: int = 0, world_size: int = 1,
               on_log: Callable[[int, dict], None] | None = None,
               on_checkpoint: Callable[[TrainState], None] | None = None,
               on_step: Callable[[TrainState], None] | None = None) -> dict:
    """Run steps state.step .. cfg.iterations; every worker calls this with its own rank.

    cfg.batch_size is the per-worker batch; sample ids are global so workers never repeat a sample.
    on_log(step, metrics) every log_every steps and at the end; on_checkpoint(state) every
    checkpoint_every steps (not after the last step: the caller saves the final state);
    on_step(state) after every step (fault injection in tests). Every rank reaches on_log and
    on_checkpoint at the same steps, so they may hold collectives. Returns the last step's metrics.
    """
    n_attr = state.directions.n_attributes
    metrics: dict = {}
    step = make_step(state, cfg)
    while state.step < cfg.iterations:
        ids = global_sample_ids(state.step, rank, cfg.batch_size, world_size)
        batch = sample_batch(cfg, bundle.generator, n_attr, ids, state.device)
        metrics = step(batch)
        if on_log and (state.step % cfg.log_every == 0 or state.step == cfg.iterations):
            on_log(state.step, metrics)
        if on_checkpoint and state.step % cfg.checkpoint_every == 0 and state.step < cfg.iterations:
            on_checkpoint(state)
        if on_step:
            on_step(state)
    return metrics


def run_train(cfg: TrainConfig, *, bundle: ModelBundle | None = None, tracker=None,
              print_fn=print) -> TrainResult:
    """Single-process training of T; writes the run directory and returns where T is."""
    resume_from = resolve_resume(cfg)  # before any work: a bad resume/run_name fails fast
    device = resolve_device(cfg.device)
    bundle = bundle or build_bundle(cfg.model, device)
    for note in bundle.notes:
        print_fn(f"[train] note: {note}")
    state = setup_training(cfg, bundle, device)
    if resume_from:
        restore_state(state, load_directions(resume_from), resume_from)
        print_fn(f"[train] resumed from {resume_from} at step {state.step}")
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if tracker:
        tracker.log_params(to_dict(cfg))
        if hasattr(tracker, "set_tags"):
            tracker.set_tags(lineage_tags(cfg, bundle, resumed_from=resume_from))
    lineage = {"mlflow_run_id": tracker.run_id} if getattr(tracker, "run_id", None) else {}
    history: list[dict] = []
    progress = ProgressLine(cfg.iterations, cfg.batch_size, state.step, print_fn)

    def on_log(step, metrics):
        row = {"step": step, **metrics, **progress(step, metrics)}
        history.append(row)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if tracker:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)

    def on_checkpoint(st):
        save_checkpoint(run_dir / "checkpoint.safetensors", cfg, bundle, st)

    final = train_loop(cfg, bundle, state, on_log=on_log, on_checkpoint=on_checkpoint)
    out = save_checkpoint(run_dir / "directions.safetensors", cfg, bundle, state, final_metrics=final, **lineage)
    save_checkpoint(run_dir / "checkpoint.safetensors", cfg, bundle, state)
    if tracker:
        log_final_directions(tracker, cfg, out, print_fn)
    print_fn(f"[train] done: {state.step} steps; T written to {out}")
    return TrainResult(run_dir, out, state.step, final, history)


# ---------------------------------------------------------------------------------------------
# Tracking and dispatch (shared by the in-process and the Ray path)
# ---------------------------------------------------------------------------------------------

DIRECTIONS_ARTIFACT = "directions"   # MLflow artifact folder holding directions.safetensors + .json


def lineage_tags(cfg: TrainConfig, bundle: ModelBundle, **extra) -> dict:
    return {"preset": cfg.model.preset, "generator_id": bundle.generator_id,
            "attributes": ",".join(resolve_attributes(cfg, bundle)), **{k: v for k, v in extra.items() if v}}


def log_final_directions(tracker, cfg: TrainConfig, directions_path: Path, print_fn=print) -> None:
    """T (safetensors + json) as the run's `directions` artifact, and as a registered model version."""
    directions_path = Path(directions_path)
    files = (directions_path, directions_path.with_suffix(".json"))
    if not hasattr(tracker, "register_model"):  # a plain log_params/log_metrics/log_artifact(path) tracker
        for f in files:
            tracker.log_artifact(f)
        return
    for f in files:
        tracker.log_artifact(f, DIRECTIONS_ARTIFACT)
    if cfg.tracking.register_model:
        version = tracker.register_model(DIRECTIONS_ARTIFACT, cfg.tracking.model_name,
                                         tags={"run_name": cfg.name, "preset": cfg.model.preset})
        if version:
            print_fn(f"[train] registered T as model {cfg.tracking.model_name!r} version {version}")


def train_tracker(cfg: TrainConfig):
    """The MLflow run of one training invocation (a null tracker when tracking is disabled)."""
    return open_tracker(cfg.tracking, work_dir=cfg.work_dir, run_name=cfg.name, stage="train",
                        tags={"preset": cfg.model.preset, "num_workers": cfg.scaling.num_workers})


def run_training(cfg: TrainConfig, *, bundle: ModelBundle | None = None, print_fn=print) -> TrainResult:
    """What `hfld train` runs: in this process (scaling.num_workers == 0) or on Ray Train workers.

    Both write the same run directory (config.yaml, metrics.jsonl, directions.safetensors + .json,
    checkpoint.safetensors + .json) and record one MLflow run (unless tracking.enabled is false).
    """
    check_output_locations({"work_dir": cfg.work_dir}, {"scaling.storage_path": cfg.scaling.storage_path})
    if cfg.scaling.num_workers == 0:
        resolve_resume(cfg)  # a bad run_name/resume fails before an MLflow run is created
        with train_tracker(cfg) as tracker:
            return run_train(cfg, bundle=bundle, tracker=tracker, print_fn=print_fn)
    if bundle is not None:
        raise ValueError("run_training: a prebuilt bundle cannot be sent to Ray workers; they build their own")
    from pipeline.ray_train import run_train_ray
    return run_train_ray(cfg, print_fn=print_fn)


def with_overrides(cfg: TrainConfig, **changes) -> TrainConfig:
    return replace(cfg, **changes)
