"""Resuming a training run honestly: which checkpoint, whether its config still applies, which MLflow
run continues.

    plan = plan_resume(cfg, source, meta)    # source: the checkpoint (or None); meta: its .json
    plan.step, plan.mlflow, plan.config_history

A checkpoint's metadata holds the resolved config it was trained with. Resuming it under a config that
changes results (another lambda, lr, attribute set, precision, batch...) would leave a T file whose
metadata claims one config for a T made by two, so it is refused unless `resume_force: true`; then the
T file (directions.json) and the MLflow run record every change: `config_history` lists, for each
forced resume, the step it happened at, the previous config and the changed values.

Fields that cannot change the numbers are not compared (RESUME_IGNORED): how long to train
(`iterations`: extending a run is what resume is for), logging and checkpoint cadence, where files
and runs go (`work_dir`, `run_name`, `resume`, `tracking`), where it computes (`device`, `scaling`,
`cuda_graph`, `concurrent_passes`, `model.cache_dir`, `model.compile_measuring`) -- except that the global batch (batch_size x workers) is compared,
since every sample is drawn from its global id and another global batch draws other samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import ConfigError, flatten, to_dict
from pipeline.core.directions import CheckpointError, read_meta
from pipeline.stages.train.config import TrainConfig

CHECKPOINT_FILE = "checkpoint.safetensors"
DIRECTIONS_FILE = "directions.safetensors"

RESUME_IGNORED = ("iterations", "log_every", "checkpoint_every", "work_dir", "run_name", "resume", "resume_force",
                  "tracking", "scaling", "device", "cuda_graph", "concurrent_passes", "model.cache_dir",
                  "model.compile_measuring")
GLOBAL_BATCH = "global batch (batch_size x workers)"


@dataclass
class ResumePlan:
    """What a run starts from. source None = a fresh run."""
    source: Path | str | None = None
    step: int = 0
    mlflow: dict[str, str] | None = None          # {"run_id", "tracking_uri"} of the run to continue
    changes: dict[str, list] = field(default_factory=dict)     # key -> [checkpoint's value, this run's]
    config_history: list[dict] = field(default_factory=list)   # every forced config change so far

    def meta(self) -> dict:
        """What every checkpoint and T file of this run adds to its metadata."""
        return {"config_history": self.config_history} if self.config_history else {}


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite a finished or started run silently."""
    run_dir, latest = cfg.run_dir, cfg.run_dir / CHECKPOINT_FILE
    if cfg.resume == "auto":
        return latest if latest.is_file() else None
    if cfg.resume:
        p = Path(cfg.resume).expanduser()
        if not p.is_file():
            raise ConfigError(f"resume: checkpoint {p} not found")
        return p
    if (run_dir / DIRECTIONS_FILE).exists() or latest.exists():
        raise ConfigError(f"run_name: {run_dir} already holds a run; choose another run_name, or set "
                          "resume=auto to continue it")
    return None


def global_batch(cfg: TrainConfig) -> int:
    return cfg.batch_size * max(1, cfg.scaling.num_workers)


def config_changes(old_config: dict, old_global_batch: int | None, cfg: TrainConfig) -> dict[str, list]:
    """Result-affecting differences between a checkpoint's config and `cfg`: key -> [old, new]."""
    def comparable(d: dict) -> dict:
        return {k: v for k, v in flatten(d).items()
                if not any(k == f or k.startswith(f + ".") for f in RESUME_IGNORED)}
    old, new = comparable(old_config), comparable(to_dict(cfg))
    changes = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    if old_global_batch and old_global_batch != global_batch(cfg):
        changes[GLOBAL_BATCH] = [old_global_batch, global_batch(cfg)]
    return changes


def trained_exactly(meta: dict, cfg: TrainConfig) -> bool:
    """Whether a T file's metadata says it was trained exactly as `cfg` would train it: every setting that
    changes results, the global batch, `cfg.iterations` steps, no forced config change on the way. The
    global batch is the one the file records (as for a resume); a file that records none is not matched."""
    old_batch = meta.get("rng", {}).get("global_batch")
    return (bool(old_batch) and meta.get("step") == cfg.iterations and not meta.get("config_history")
            and not config_changes(meta["config"], old_batch, cfg))


def describe_changes(changes: dict[str, list], limit: int = 6) -> str:
    shown = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit]]
    return ", ".join(shown) + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "")


def mlflow_of(meta: dict, cfg: TrainConfig) -> dict[str, str] | None:
    """The MLflow run that trained a checkpoint, when it is this run directory's (resuming a checkpoint
    of another run directory starts a new run, whose tags name where it resumed from)."""
    if meta.get("mlflow_run_id") and meta.get("run_dir") == str(cfg.run_dir):
        return {"run_id": meta["mlflow_run_id"], "tracking_uri": meta.get("mlflow_tracking_uri", "")}
    return None


def plan_resume(cfg: TrainConfig, source: Path | str | None, meta: dict | None, print_fn=print) -> ResumePlan:
    """The resume plan for checkpoint `source` with metadata `meta`; a config change that affects
    results is a ConfigError unless cfg.resume_force (then it is recorded, see the module docstring)."""
    if source is None:
        return ResumePlan()
    meta = meta or {}
    step = int(meta.get("step", 0))
    history = list(meta.get("config_history", []))
    if "config" not in meta:
        print_fn(f"[train] note: {source} records no config; its settings cannot be compared with this run's")
        return ResumePlan(source, step, mlflow_of(meta, cfg), {}, history)
    changes = config_changes(meta["config"], meta.get("rng", {}).get("global_batch"), cfg)
    if changes and not cfg.resume_force:
        raise ConfigError(f"resume: {source} (step {step}) was trained with other settings: "
                          f"{describe_changes(changes)}. A T trained under two configs would be recorded as one; "
                          "resume with the checkpoint's settings, start a new run_name, or set resume_force=true "
                          "(both configs and the step of the change are then recorded in directions.json and MLflow)")
    if changes:
        print_fn(f"[train] resume_force: continuing {source} at step {step} with changed settings: "
                 f"{describe_changes(changes, limit=20)}")
        history.append({"step": step, "previous_config": meta["config"], "changed": changes})
    return ResumePlan(source, step, mlflow_of(meta, cfg), changes, history)


def plan_from_file(cfg: TrainConfig, print_fn=print) -> ResumePlan:
    """The plan of the in-process path: the checkpoint resolve_resume picks, and its metadata."""
    source = resolve_resume(cfg)
    if source is None:
        return ResumePlan()
    try:
        meta = read_meta(source)
    except CheckpointError as e:
        raise ConfigError(f"resume: {e}") from None
    return plan_resume(cfg, source, meta, print_fn)
