"""Stage `run`: the paper's experiment end to end, from one command.

    tune (optional) -> train `seeds` baseline T's (lambda4 = 0) and `seeds` HFLD T's (Ray Train) ->
    generate a sample dataset with the first HFLD T (Ray Data) -> evaluate every T: edit strength,
    drift at matched strength, the paper's tables -> report

    hfld run --profile demo      # the `make demo` budget (pipeline/stages/profiles.py)
    hfld run --profile full      # 3 seeds per arm, 1,000 faces, the whole sweep

Every stage records a nested MLflow run under one parent run of this invocation. The run-level
`model`, `seed`, `work_dir`, `name` and `tracking` are the single source of truth: they replace the
same fields of the stage sections (train / tune / generate / evaluate; see REPLACED_BY_RUN), which
otherwise keep their own settings. A section that sets one of those fields to anything but its
default is refused when the config is loaded (a ConfigError naming the field), never silently
replaced. The sweep's trials train with the run's `train` recipe (lr, batch, edit sampling; their
length is tune.scheduler.max_steps), so the sweep selects among T's trained like the final ones.
Seed k of an arm trains with seed `seed + k`. A trial of the sweep that trained exactly seed 0 of an arm
(the same result-affecting config, global batch and number of steps: the baseline trial, and the HFLD
trial chosen when it ran to the end) IS that T: it is used as is, not trained again (`reuse_sweep_trials`; on the CPU
the retrained T came out byte-identical). Re-running the same command continues where it
stopped: finished trainings are reused (`resume=auto`) and the generate stage writes only its
missing shards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from pipeline.core.config import ConfigError, from_dict, load_config, require, to_dict
from pipeline.core.directions import DIRECTIONS_ARTIFACT, read_meta
from pipeline.core.locks import run_lock
from pipeline.core.paths import NAME_OR_PATH, PATH, absolute_paths, check_output_locations, default_work_dir
from pipeline.infra.tracking import MLflowTracker, Tracker, TrackingConfig, log_provenance, resolve_tracking_uri, \
    stage_run, tracking_locations
from pipeline.presets import PRESETS, ModelConfig
from pipeline.presets.provenance import provenance
from pipeline.stages.evaluate import EvaluateConfig, EvaluateResult, run_evaluate
from pipeline.stages.generate import GenerateConfig, GenerateResult, run_generate
from pipeline.stages.profiles import DEMO_RECIPE, PROFILES, apply_profile
from pipeline.stages.train import ScalingConfig, TrainConfig, TrainResult, run_train, trained_exactly
from pipeline.stages.tune import ObjectiveConfig, SchedulerConfig, TuneConfig, TuneFailed, TuneResult, pick_best, \
    run_tune


def default_run_train() -> TrainConfig:
    """The CPU demo recipe (profiles.DEMO_RECIPE: a T that edits, not the paper's lr 1e-4, which needs
    ~50,000 steps) on two Ray Train workers."""
    return TrainConfig(**DEMO_RECIPE, log_every=50, checkpoint_every=100, device="auto",
                       scaling=ScalingConfig(num_workers=2, cpus_per_worker=0.5))


def default_run_generate() -> GenerateConfig:
    return GenerateConfig(n_sources=250, variants=8)  # 2,000 labelled faces


def default_run_evaluate() -> EvaluateConfig:
    return EvaluateConfig(n_samples=1000)


def default_run_tune() -> TuneConfig:
    """A small sweep (a few minutes on 2 CPU cores); scale num_samples and max_steps up on a cluster."""
    return TuneConfig(num_samples=1, scheduler=SchedulerConfig(max_steps=80, eval_every=40, grace_period=40),
                      objective=ObjectiveConfig(n_samples=32, intermediate_samples=8))


@dataclass(frozen=True)
class RunConfig:
    """The whole chain.

    profile: the profile (pipeline/stages/profiles.py) whose settings sit under this config's; "" = none.
      Applied when the config is loaded (the CLI's --profile, or resolve_run_config); recorded here.
    name: this invocation's name (folders and the MLflow parent run); "" = run-<preset>-seed<seed>.
    seeds: trained T's per arm (training seeds seed, seed + 1, ...); >= 3 for intervals that include
      the training variance.
    hfld_lambda4: lambda4 of the HFLD T when the sweep is off (with it on, the sweep's best is used).
    use_tune: run the lambda4 / landmark-subset sweep first and train the HFLD T with its winner.
    tune_space: the sweep's search space; "" = the preset's own (Preset.tune_space).
    use_generate: generate the sample dataset with the HFLD T.
    reuse_sweep_trials: seed 0 of an arm is the sweep's trial of the same config when one ran all
      train.iterations steps (its T, MLflow run and lineage); false = train every arm's T anew.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    profile: str = ""
    seed: int = 0
    seeds: int = 1
    name: str = ""
    work_dir: str = field(default_factory=default_work_dir, metadata=PATH)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hfld_lambda4: float = 0.5e6
    use_tune: bool = True
    tune_space: str = field(default="", metadata=NAME_OR_PATH)
    use_generate: bool = True
    reuse_sweep_trials: bool = True
    train: TrainConfig = field(default_factory=default_run_train)
    tune: TuneConfig = field(default_factory=default_run_tune)
    generate: GenerateConfig = field(default_factory=default_run_generate)
    evaluate: EvaluateConfig = field(default_factory=default_run_evaluate)

    def __post_init__(self):
        require(self.hfld_lambda4 > 0, "hfld_lambda4", self.hfld_lambda4, "must be > 0 (the baseline is lambda4 = 0)")
        require(self.seeds >= 1, "seeds", self.seeds, "must be >= 1 (trained T's per arm)")
        require(not self.profile or self.profile in PROFILES, "profile", self.profile,
                f"is not a profile; choose one of {sorted(PROFILES)}")
        check_stage_sections(self)  # at load time, so --print-config never shows a setting the run would drop

    @property
    def run_name(self) -> str:
        return self.name or f"run-{self.model.preset}-seed{self.seed}"

    @property
    def out_dir(self) -> Path:
        return Path(self.work_dir).expanduser() / self.run_name


def resolve_run_config(data: dict | None = None, where: str = "config") -> RunConfig:
    """A RunConfig from a mapping, its `profile` applied underneath (what the CLI does for --profile)."""
    return from_dict(RunConfig, apply_profile(data or {}), where)


@dataclass
class RunResult:
    out_dir: Path
    baseline: TrainResult                # seed 0 of each arm (all seeds: baselines / hflds)
    hfld: TrainResult
    evaluation: EvaluateResult
    dataset: GenerateResult | None = None
    sweep: TuneResult | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str = ""
    seconds: float = 0.0
    baselines: list[TrainResult] = field(default_factory=list)
    hflds: list[TrainResult] = field(default_factory=list)


def train_config(cfg: RunConfig, base: TrainConfig, role: str, lambda4: float, k: int = 0) -> TrainConfig:
    """Seed k of an arm: training seed cfg.seed + k, its own run directory."""
    return replace(base, model=cfg.model, seed=cfg.seed + k, work_dir=str(cfg.out_dir / "train"),
                   run_name=f"{role}-l4_{lambda4:g}" + (f"-seed{k}" if cfg.seeds > 1 else ""), resume="auto",
                   tracking=stage_tracking(cfg), losses=replace(base.losses, landmark=lambda4))


def trained_by_sweep(arm: TrainConfig, sweep: TuneResult | None) -> TrainResult | None:
    """The sweep's trial that trained exactly `arm` (every result-affecting setting, the global batch and
    arm.iterations steps, no forced config change), as a TrainResult; None when there is none."""
    if sweep is None:
        return None
    for row in sweep.rows:
        path = Path(row.get("directions") or "")
        if row.get("status") != "COMPLETED" or not path.is_file():
            continue
        meta = read_meta(path)
        if trained_exactly(meta, arm):
            return TrainResult(run_dir=path.parent, directions_path=path, steps=int(meta["step"]),
                               final_metrics=dict(meta.get("final_metrics") or {}))
    return None


def stage_tracking(cfg: RunConfig) -> TrackingConfig:
    """Every stage records into the run's store (an explicit URI: stages have their own work dirs)."""
    return replace(cfg.tracking, tracking_uri=resolve_tracking_uri(cfg.tracking, cfg.work_dir))


def hfld_base_from_sweep(cfg: RunConfig, sweep: TuneResult) -> tuple[TrainConfig, float]:
    """The HFLD arm's choices (landmark groups, attributes, layer mask, lambda4) on the run's own budget:
    the sweep's best trial, or its best HFLD trial when the baseline scored best (the HFLD arm needs a
    lambda4 > 0; the report then shows that the baseline had the lower drift); the configured
    hfld_lambda4 only when no HFLD trial completed."""
    best = load_config(TrainConfig, sweep.best_config_path)
    if best.losses.landmark == 0:
        best = best_hfld_trial(sweep)
        if best is None:
            return cfg.train, cfg.hfld_lambda4
    base = replace(cfg.train, landmark_groups=best.landmark_groups, attributes=best.attributes,
                   layer_mask=best.layer_mask)
    return base, best.losses.landmark


def best_hfld_trial(sweep: TuneResult) -> TrainConfig | None:
    """The config of the sweep's best lambda4 > 0 trial by the sweep's own ranking (pick_best: completed,
    finite score, lowest first, so feasible before infeasible) among those that left a T file, or None."""
    hfld_rows = [r for r in sweep.rows if r.get("role") != "baseline" and Path(r.get("directions") or "").is_file()]
    try:
        row = pick_best(hfld_rows)
    except TuneFailed:
        return None
    return from_dict(TrainConfig, read_meta(row["directions"])["config"], f"{row['directions']} (config)")


class Progress:
    """Stage banners with the elapsed time and, once a training has finished, an ETA for the trainings left
    (each stage prints its own progress and ETA within it)."""

    def __init__(self, total: int, print_fn):
        self.total, self.k, self.print = total, 0, print_fn
        self.t0 = time.perf_counter()
        self.train_seconds: list[float] = []
        self.trainings_left = 0

    def banner(self, text: str) -> None:
        self.k += 1
        elapsed = (time.perf_counter() - self.t0) / 60
        eta = ""
        if self.train_seconds and self.trainings_left:
            per = sum(self.train_seconds) / len(self.train_seconds)
            eta = f"; trainings left {self.trainings_left} x ~{per / 60:.1f} min"
        self.print(f"\n[run] ({self.k}/{self.total}) {text}  [elapsed {elapsed:.1f} min{eta}]", flush=True)

    def train(self, fn, *args, **kwargs):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.train_seconds.append(time.perf_counter() - t)
        self.trainings_left -= 1
        return result


def run_pipeline(cfg: RunConfig, *, tracker: Tracker | None = None, print_fn=print) -> RunResult:
    """Run every stage; returns where everything is (also printed at the end).

    The run folder (<work_dir>/<name>) is locked for the whole chain: a second `hfld run` of the same
    name gets a ConfigError naming this process.
    """
    check_stage_sections(cfg)
    own_store = tracking_locations(cfg.tracking, cfg.work_dir) if tracker is None else {}
    check_output_locations({"work_dir": cfg.work_dir, "name": cfg.out_dir, **own_store})
    cfg = absolute_paths(cfg)
    with run_lock(cfg.out_dir, "name", print_fn) as lock:
        return _run_locked(cfg, lock, tracker, print_fn)


def _run_locked(cfg: RunConfig, lock, tracker: Tracker | None, print_fn) -> RunResult:
    t0 = time.perf_counter()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    progress = Progress(1 + cfg.use_tune + cfg.use_generate + 2 * cfg.seeds, print_fn)
    progress.trainings_left = 2 * cfg.seeds
    with stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.run_name, stage="run",
                   tags={"preset": cfg.model.preset, "profile": cfg.profile}, lock=lock, print_fn=print_fn) as parent:
        parent.log_params(to_dict(cfg))
        log_provenance(parent, provenance(cfg.model, "see each stage's run (this process only coordinates)"))
        parent_id = getattr(parent, "run_id", None)
        sweep = None
        base, lambda4 = cfg.train, cfg.hfld_lambda4
        if cfg.use_tune:
            progress.banner("tune: sweep lambda4 and landmark subsets (Ray Tune), trials held to the strength floor")
            tune_cfg = replace(cfg.tune, train=replace(cfg.train, model=cfg.model, seed=cfg.seed, tracking=cfg.tracking),
                               space=cfg.tune_space or PRESETS[cfg.model.preset].tune_space or cfg.model.preset,
                               work_dir=str(out), run_name="sweep", tracking=stage_tracking(cfg))
            sweep = run_tune(tune_cfg, tracker=parent, print_fn=print_fn)
            base, lambda4 = hfld_base_from_sweep(cfg, sweep)
            print_fn(f"[run] sweep winner: lambda4 = {lambda4:g}, landmark groups = "
                     f"{list(base.landmark_groups) or 'all'}"
                     + ("" if sweep.best.get("role") != "baseline" else
                        " (the baseline scored best; this is the best HFLD trial)"))
        baselines = train_arm(cfg, cfg.train, "baseline", 0.0, sweep, progress, parent, print_fn)
        hflds = train_arm(cfg, base, "HFLD", lambda4, sweep, progress, parent, print_fn)
        dataset = None
        if cfg.use_generate:
            progress.banner("generate labelled augmented faces with the HFLD T (Ray Data)")
            gen_cfg = replace(cfg.generate, model=cfg.model, seed=cfg.seed, directions=str(hflds[0].directions_path),
                              work_dir=str(out), run_name="dataset", output_dir="", tracking=stage_tracking(cfg))
            dataset = run_generate(gen_cfg, tracker=parent, print_fn=print_fn)
        progress.banner("evaluate: edit strength, drift at matched strength, the paper's tables; write the report")
        eval_cfg = replace(cfg.evaluate, model=cfg.model, seed=cfg.seed, work_dir=str(out),
                           run_name=f"{cfg.run_name}-evaluate", output_dir=str(out / "report"),
                           tracking=stage_tracking(cfg))
        evaluation = run_evaluate(eval_cfg, tracker=parent, baseline=baselines, hfld=hflds, print_fn=print_fn)
        seconds = time.perf_counter() - t0
        parent.log_metrics({"seconds": seconds, **{f"evaluate.{k}": v for k, v in evaluation.flat_metrics.items()
                                                   if k.startswith(("overall.", "strength.", "matched."))}})
        for path in (evaluation.report_md, evaluation.report_html, *evaluation.strength_figures.values()):
            parent.log_artifact(path, "report")
    result = RunResult(out, baselines[0], hflds[0], evaluation, dataset, sweep, parent_id,
                       resolve_tracking_uri(cfg.tracking, cfg.work_dir), seconds, baselines, hflds)
    print_summary(result, print_fn)
    return result


def train_arm(cfg: RunConfig, base: TrainConfig, role: str, lambda4: float, sweep: TuneResult | None,
              progress: Progress, parent, print_fn) -> list[TrainResult]:
    """The arm's `seeds` T's: seed 0 from the sweep when a trial trained exactly it, the others trained."""
    results = []
    for k in range(cfg.seeds):
        arm = train_config(cfg, base, role.lower(), lambda4, k)
        what = f"{role} T {k + 1}/{cfg.seeds} (lambda4 = {lambda4:g}, seed {arm.seed})"
        reused = trained_by_sweep(arm, sweep) if cfg.reuse_sweep_trials and k == 0 else None
        if reused is not None:
            progress.banner(f"{what}: the sweep's trial {reused.run_dir.name} trained this exact config for "
                            f"{reused.steps} steps; its T is used, not trained again")
            progress.trainings_left -= 1
            parent.set_tags({f"{role.lower()}_T_seed{k}": str(reused.directions_path)})
            register_reused(parent, arm, reused, print_fn)
            results.append(reused)
            continue
        progress.banner(f"train {what} with Ray Train")
        results.append(progress.train(run_train, arm, tracker=parent, print_fn=print_fn))
    return results


def register_reused(parent, arm: TrainConfig, reused: TrainResult, print_fn) -> None:
    """A reused trial's T becomes a version of the registered model, as a trained arm's would (its source
    is the trial's MLflow run, which logged the T as its `directions` artifact)."""
    run_id = read_meta(reused.directions_path).get("mlflow_run_id")
    if not (arm.tracking.register_model and run_id and isinstance(parent, MLflowTracker)):
        return
    registered = parent.client.get_run(run_id).data.tags.get("registered_model")
    if registered:  # a re-run of the same command: registered the first time
        print_fn(f"[run] the trial's T is registered as model {registered}")
        return
    trial = MLflowTracker(parent.client, run_id, parent.tracking_uri, owns_run=False)
    version = trial.register_model(DIRECTIONS_ARTIFACT, arm.tracking.model_name,
                                   tags={"run_name": arm.name, "preset": arm.model.preset, "from_sweep": "true"})
    print_fn(f"[run] registered the trial's T as model {arm.tracking.model_name!r} version {version}")


def print_summary(r: RunResult, print_fn=print) -> None:
    lines = [f"\n[run] done in {r.seconds / 60:.1f} min. Results in {r.out_dir}:",
             f"  report          {r.evaluation.report_html}  (Markdown: {r.evaluation.report_md})",
             *[f"  drift/strength  {p}" for p in r.evaluation.strength_figures.values()],
             *[f"  T baseline      {t.directions_path}" for t in (r.baselines or [r.baseline])],
             *[f"  T HFLD          {t.directions_path}" for t in (r.hflds or [r.hfld])]]
    if r.dataset is not None:
        lines.append(f"  dataset         {r.dataset.out_dir}  ({r.dataset.n_rows} rows, "
                     f"QC pass {100 * r.dataset.qc_pass_rate:.1f}%)")
    if r.sweep is not None:
        lines.append(f"  sweep           {r.sweep.table_path}  (best config: {r.sweep.best_config_path})")
    # The headline: strength first (one line per attribute), then what was found at matched strength.
    statements = r.evaluation.statements
    strength = [s for s in statements if s.startswith("Edit strength of")]
    gated = [s for s in statements if s.startswith("No drift reduction is stated")]
    matched = [s for s in statements if "at matched strength" in s]
    lines += ["", *[f"  {s}" for s in strength + gated + matched[:6]], ""]
    if r.tracking_uri:
        lines.append(f"  MLflow store    {r.tracking_uri}  (parent run {r.mlflow_run_id})")
        lines.append(f"  open the UI:    mlflow ui --backend-store-uri {r.tracking_uri}")
    print_fn("\n".join(lines), flush=True)


# What the run sets in each section (section -> field path -> the run-level setting that replaces it). A
# section value that differs from the section's default would be silently replaced, so it is refused.
REPLACED_BY_RUN: dict[str, dict[str, str]] = {
    "train": {"model": "model", "seed": "seed", "work_dir": "work_dir", "run_name": "name",
              "resume": "the run (it always resumes: resume=auto)", "tracking": "tracking",
              "losses.landmark": "hfld_lambda4 (the baseline always uses 0)"},
    "tune": {"train.model": "model", "train.seed": "seed", "space": "tune_space", "work_dir": "work_dir",
             "run_name": "name", "tracking": "tracking"},
    "generate": {"model": "model", "seed": "seed", "work_dir": "work_dir", "run_name": "name",
                 "output_dir": "work_dir and name (the dataset goes to <work_dir>/<name>/dataset)",
                 "tracking": "tracking"},
    "evaluate": {"model": "model", "seed": "seed", "work_dir": "work_dir", "run_name": "name",
                 "output_dir": "work_dir and name (the report goes to <work_dir>/<name>/report)",
                 "tracking": "tracking"},
}
SECTION_DEFAULTS = {"train": default_run_train, "tune": default_run_tune, "generate": default_run_generate,
                    "evaluate": default_run_evaluate}


def _field(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_stage_sections(cfg: RunConfig) -> None:
    """Settings a section may not carry because the run sets them (clear error instead of silence)."""
    if cfg.tune.train != TrainConfig():
        raise ConfigError("tune.train: the run's sweep trains with the run's `train` section (so it selects among "
                          "T's trained like the final ones); set the recipe there")
    if cfg.generate.directions:
        raise ConfigError("generate.directions: the run generates with the HFLD T it trains; leave it empty")
    if cfg.evaluate.baseline or cfg.evaluate.hfld:
        raise ConfigError("evaluate.baseline / evaluate.hfld: the run evaluates the T's it trains; leave them empty")
    for section, fields in REPLACED_BY_RUN.items():
        given, default = getattr(cfg, section), SECTION_DEFAULTS[section]()
        for name, replaced_by in fields.items():
            value = _field(given, name)
            if value != _field(default, name):
                shown = to_dict(value) if hasattr(value, "__dataclass_fields__") else value
                raise ConfigError(f"{section}.{name}: {shown!r} would be replaced by the run's {replaced_by}; set that "
                                  f"at the top level of the run config instead, and leave {section}.{name} unset")
