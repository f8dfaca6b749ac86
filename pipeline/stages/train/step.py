"""One optimisation step of T, without I/O: sampling a batch, the four-term objective, Adam, and the
same step captured as a CUDA graph. Used in-process (loop.py) and on every Ray Train worker.

Shapes: wplus [B, L, w_dim], edit uniforms [B, N], T [L, w_dim, N], images [B, 3, R, R].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from models.editing import DirectionMatrix, sample_edits
from models.losses import EditObjective, LossWeights, assert_frozen
from pipeline.core.config import ConfigError
from pipeline.core.sampling import latents_from_z, sample_noise, to_device
from pipeline.core.seeding import Stream, rng_for
from pipeline.core.streams import StreamSet
from pipeline.presets import ModelBundle, apply_fast_path, fast_measuring_networks
from pipeline.stages.train.config import NonFiniteLoss, Precision, TrainConfig


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
    streams: StreamSet                   # runs the step's independent passes concurrently (CUDA)
    step: int = 0                        # number of completed optimisation steps


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
    """Objective + T + Adam; `wrap` (e.g. Ray's prepare_model) wraps T for data parallelism.

    The StyleGAN2 G and D get cfg.model.fast_path here too (bundles may come from elsewhere than
    build_bundle): on CUDA they run models/stylegan2_fast.py; T-training never differentiates twice,
    so their compiled regions are safe here.
    """
    apply_fast_path(cfg.model.fast_path, bundle.generator, bundle.discriminator)
    if device.type == "cuda":
        fast_measuring_networks(cfg.model, bundle.regressor, bundle.landmarks, bundle.perceptual)
    attributes = resolve_attributes(cfg, bundle)
    objective = build_objective(cfg, bundle, attributes).to(device)
    directions = new_directions(cfg, bundle.generator, len(attributes)).to(device)
    assert_frozen(objective.networks())
    model = wrap(directions) if wrap else directions
    capturable = uses_cuda_graph(cfg, device, model is directions)
    optimizer = torch.optim.Adam(directions.parameters(), lr=cfg.lr, betas=cfg.betas, capturable=capturable)
    return TrainState(objective, directions, model, optimizer, device, StreamSet(device, cfg.concurrent_passes))


def uses_cuda_graph(cfg: TrainConfig, device: torch.device, unwrapped: bool) -> bool:
    return cfg.cuda_graph and device.type == "cuda" and unwrapped


@torch.no_grad()
def sample_batch(cfg: TrainConfig, generator: nn.Module, n_attributes: int, sample_ids: list[int],
                 device: torch.device, stream: Stream = Stream.TRAIN) -> Batch:
    """Latents, edit uniforms and noise for the given global sample indices (each from its own seed)."""
    rngs = [rng_for(cfg.seed, stream, i) for i in sample_ids]
    z = to_device(torch.stack([torch.randn(generator.z_dim, generator=r) for r in rngs]), device)
    uniforms = to_device(torch.stack([torch.rand(n_attributes, generator=r) for r in rngs]), device)
    noise = sample_noise(generator, cfg.noise_mode, rngs, device)
    return Batch(latents_from_z(generator, z, cfg.truncation), uniforms, noise)


def autocast_context(device: torch.device, precision: Precision):
    # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


def compute_terms(state: TrainState, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one batch. With state.streams enabled (CUDA), independent passes overlap:
    x's pass beside the chain through x' (when s does not depend on R(x)), and the judges of x' on
    their own streams, forward and backward."""
    objective, streams = state.objective, state.streams
    with autocast_context(state.device, cfg.precision):
        def original():
            return objective.original(batch.wplus, batch.noise)

        def edited_pass(s: torch.Tensor) -> dict:
            edited = objective.edited_image(state.model, batch.wplus, s, batch.noise)
            return streams.run({name: (lambda m=m: m(edited)) for name, m in objective.judges().items()})

        if cfg.edit_sampling == "target":      # s = U[0,1] - R(x): x's pass comes first
            orig = original()
            s = sample_edits(cfg.edit_sampling, batch.uniforms, objective.current_edited_attributes(orig))
            judged = edited_pass(s)
        else:
            s = sample_edits(cfg.edit_sampling, batch.uniforms, None)
            both = streams.run({"edited": lambda: edited_pass(s), "original": original})
            orig, judged = both["original"], both["edited"]
        return objective.terms(orig, judged, s)


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


def trained_tensors(state: TrainState) -> list[torch.Tensor]:
    """What a step changes: T and, once Adam has stepped, its moments and step count."""
    T = state.directions.T
    moments = state.optimizer.state.get(T, {})
    return [T.data, *(moments[k] for k in ("exp_avg", "exp_avg_sq", "step") if k in moments)]


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

    def capture(self, batch: Batch) -> None:
        self.static = Batch(batch.wplus.clone(), batch.uniforms.clone(),
                            [n.clone() for n in batch.noise] if isinstance(batch.noise, list) else batch.noise)
        self.state.optimizer.zero_grad(set_to_none=True)  # backward then allocates .grad in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms = compute_terms(self.state, self.static, self.cfg)
            self.terms["total"].backward()
            self.state.optimizer.step()
        self.backup = [t.clone() for t in trained_tensors(self.state)]

    def replay(self, batch: Batch) -> dict[str, float]:
        self.launch(batch)
        return self.finish()

    def launch(self, batch: Batch) -> None:
        """Queue one step on the GPU (inputs copied into the graph's buffers, T backed up, replay);
        returns at once. finish() waits for it."""
        self.static.wplus.copy_(batch.wplus)
        self.static.uniforms.copy_(batch.uniforms)
        if isinstance(batch.noise, list):
            for dst, src in zip(self.static.noise, batch.noise):
                dst.copy_(src)
        for dst, src in zip(self.backup, trained_tensors(self.state)):
            dst.copy_(src)
        self.graph.replay()

    def finish(self) -> dict[str, float]:
        """The launched step's loss values (waits for the GPU); a non-finite one restores T and raises."""
        values = terms_to_floats(self.terms)
        if not all(math.isfinite(v) for v in values.values()):
            for dst, src in zip(trained_tensors(self.state), self.backup):
                dst.copy_(src)
            raise non_finite_error(self.state.step + 1, values)
        self.state.step += 1
        return values


def step_and_prepare(step: Callable[[Batch], dict[str, float]], batch: Batch,
                     prepare: Callable[[], Batch | None]) -> tuple[dict[str, float], Batch | None]:
    """(step(batch), prepare()) -- with a replayed CUDA graph, prepare() (drawing the next batch) runs
    while the GPU executes this step, so the GPU does not sit idle while Python draws seeds, copies
    them over and launches the mapping network (the step itself ends in a sync: its loss values).
    Same results as calling the two in turn: the next batch depends on its sample ids only."""
    if isinstance(step, GraphedTrainStep) and step.graph is not None:
        step.launch(batch)
        upcoming = prepare()
        return step.finish(), upcoming
    return step(batch), prepare()


def make_step(state: TrainState, cfg: TrainConfig) -> Callable[[Batch], dict[str, float]]:
    """The step function for this state: a replayed CUDA graph where it applies, else eager."""
    if uses_cuda_graph(cfg, state.device, state.model is state.directions):
        return GraphedTrainStep(state, cfg)
    return lambda batch: train_step(state, batch, cfg)
