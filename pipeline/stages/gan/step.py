"""One StyleGAN2 training step with lazy regularisation, without I/O (in-process and on Ray workers).

A step (index t, 0-based) is, as in StyleGAN2 (rosinality's train.py / NVlabs' training loop):
  1. D main:  real x ~ data, fake = G(z) (no grad to G); D loss = softplus(D(fake)) + softplus(-D(x)).
  2. D reg:   when t % r1_every == 0: gamma/2 * E||grad_x D(x)||^2 * r1_every (fp32), its own Adam step.
  3. G main:  fresh z, style mixing, G loss = softplus(-D(G(z))) (D frozen).
  4. G reg:   when pl_weight > 0 and t % pl_every == 0: path-length penalty on batch // pl_batch_shrink
              images * pl_weight * pl_every (fp32), its own Adam step.
  5. w_avg:   G.w_avg moves towards the batch's mean w (decay w_avg_beta): the truncation centre.
  6. EMA:     G_ema = lerp(G, G_ema, beta), beta = 0.5 ** (global batch / half-life in images), with
              the half-life ramped up over the first images (ema_rampup); buffers copied.
Adam of a lazily regularised network uses lr * c and betas ** c, c = every / (every + 1).

Randomness: every random number of step t on worker `rank` comes from two torch.Generators seeded
from (seed, t, rank) on the training device (one for the data, one for latents/noise/mixing), so a
resumed run continues exactly where an uninterrupted one would be, and nothing syncs with the host.
Losses come back as device tensors; the loop turns them into numbers every log_every steps.

Data parallel (Ray workers): gradients are averaged over workers with one all_reduce per
optimiser step (`GradientAverager`), as NVlabs' stylegan2-ada-pytorch does, rather than through
DistributedDataParallel: the four phases run different sub-graphs of G and D (D alone, G through a
frozen D, double backward for R1 and path length), which DDP's per-forward hooks do not fit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.stylegan2 import Discriminator, Generator
from pipeline.core.seeding import Stream, derive_seed
from pipeline.stages.gan.config import ArchitectureConfig, GanConfig
from pipeline.stages.gan.data import DataSource
from pipeline.stages.gan.objective import (d_logistic_loss, ema_beta, g_nonsaturating_loss, lazy_regularisation,
                                           mix_styles, mixing_cutoffs, path_length_noise, path_length_penalty,
                                           r1_penalty)

DATA_RNG, LATENT_RNG = 0, 1        # the two per-step random streams


def build_networks(arch: ArchitectureConfig) -> tuple[Generator, Discriminator]:
    """Fresh G and D of the architecture (initialised from the global torch RNG: seed it first)."""
    channels = arch.channel_table()
    g = Generator(arch.resolution, w_dim=arch.w_dim, n_mlp=arch.n_mlp, channels=channels, lr_mlp=arch.lr_mlp,
                  conv_clamp=arch.conv_clamp)
    d = Discriminator(arch.resolution, channels=channels, conv_clamp=arch.conv_clamp)
    return g, d


def parameter_count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def channels_last_(module: nn.Module) -> nn.Module:
    """NHWC layout for the module's 4-D parameters and buffers (G's modulated weights are 5-D: left as they are)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.ndim == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module


@dataclass
class GanState:
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    device: torch.device
    pl_mean: torch.Tensor                 # 0-d running mean of path lengths, on the device
    step: int = 0                         # completed steps
    cur_nimg: int = 0                     # real images shown to D so far (global, all workers)
    rank: int = 0
    world_size: int = 1
    reduce: Callable[[nn.Module], None] | None = None   # gradient averaging over workers (None: one worker)

    @property
    def kimg(self) -> float:
        return self.cur_nimg / 1000.0


def optimiser_settings(cfg: GanConfig) -> dict[str, dict]:
    """Adam lr / betas of G and D after the lazy-regularisation correction (no correction when a
    regulariser is off: then nothing is applied lazily)."""
    g_every = cfg.pl_every if cfg.pl_weight > 0 else 0
    d_every = cfg.r1_every if cfg.r1_gamma > 0 else 0
    out = {}
    for name, every in (("G", g_every), ("D", d_every)):
        lr, betas = lazy_regularisation(cfg.lr, cfg.betas, every) if every else (cfg.lr, tuple(cfg.betas))
        out[name] = {"lr": lr, "betas": betas, "reg_every": every}
    return out


def setup_gan(cfg: GanConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
              reduce: Callable[[nn.Module], None] | None = None) -> GanState:
    """G, D, G_ema (identical on every worker: initialised from (seed, INIT)) and both Adams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, Stream.INIT, 0))
        G, D = build_networks(cfg.arch)
    G, D = G.to(device).train(), D.to(device).train()
    if cfg.channels_last and device.type == "cuda":
        channels_last_(G), channels_last_(D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opts = optimiser_settings(cfg)
    # A step of these small networks is bound by kernel launches on a GPU: fused Adam there (one kernel, the
    # step counter on the device, no host reads), foreach Adam on the CPU.
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt_g = torch.optim.Adam(G.parameters(), lr=opts["G"]["lr"], betas=opts["G"]["betas"], eps=1e-8, **kind)
    opt_d = torch.optim.Adam(D.parameters(), lr=opts["D"]["lr"], betas=opts["D"]["betas"], eps=1e-8, **kind)
    return GanState(G, D, G_ema, opt_g, opt_d, device, torch.zeros((), device=device), rank=rank,
                    world_size=world_size, reduce=reduce)


def step_rng(seed: int, step: int, rank: int, purpose: int, device: torch.device) -> torch.Generator:
    """The generator of one random stream of step `step` on worker `rank` (on `device`)."""
    s = derive_seed(derive_seed(seed, Stream.TRAIN, step), Stream.TRAIN, rank * 16 + purpose)
    return torch.Generator(device=device).manual_seed(s)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def generate(G: Generator, z: torch.Tensor, cutoffs: torch.Tensor, noise: list) -> tuple[torch.Tensor, ...]:
    """z [2, B, w_dim] (two latents per sample), cutoffs [B] -> (image [B, 3, R, R], wplus [B, L, w_dim],
    w1 [B, w_dim]); one mapping call for both latents."""
    two, b, w_dim = z.shape
    w = G.mapping(z.reshape(two * b, w_dim))
    w1, w2 = w[:b], w[b:]
    wplus = mix_styles(w1, w2, cutoffs, G.n_latent)
    return G.synthesis(wplus, noise), wplus, w1


def draw_latents(G: Generator, batch: int, cfg: GanConfig, rng: torch.Generator, device: torch.device):
    z = torch.randn(2, batch, G.w_dim, generator=rng, device=device)
    cutoffs = mixing_cutoffs(batch, G.n_latent, cfg.style_mixing, rng, device)
    noise = G.make_noise("random", batch, generator=rng, device=device)
    return z, cutoffs, noise


def _as_layout(x: torch.Tensor, cfg: GanConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last and x.is_cuda else x


def _optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, state: GanState) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if state.reduce is not None:
        state.reduce(module)
    opt.step()


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema params = G + beta (G_ema - G); buffers (noise maps, w_avg) copied."""
    ema_params, params = list(G_ema.parameters()), [p.detach() for p in G.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    torch._foreach_copy_(list(G_ema.buffers()), list(G.buffers()))


def train_step(state: GanState, cfg: GanConfig, source: DataSource) -> dict[str, torch.Tensor]:
    """One step (all phases due at this step index); returns the losses as 0-d device tensors."""
    G, D, dev, t = state.G, state.D, state.device, state.step
    batch = cfg.batch_size
    data_rng = step_rng(cfg.seed, t, state.rank, DATA_RNG, dev)
    rng = step_rng(cfg.seed, t, state.rank, LATENT_RNG, dev)
    out: dict[str, torch.Tensor] = {}

    # 1. D main
    real = _as_layout(source.batch(data_rng, batch), cfg)
    z, cutoffs, noise = draw_latents(G, batch, cfg, rng, dev)
    G.requires_grad_(False)
    D.requires_grad_(True)
    with torch.no_grad(), autocast(dev, cfg.precision):
        fake = generate(G, z, cutoffs, noise)[0]
    with autocast(dev, cfg.precision):
        real_logits, fake_logits = D(real), D(_as_layout(fake.detach(), cfg))
        loss_d = d_logistic_loss(real_logits, fake_logits)
    _optimise(state.opt_d, loss_d, D, state)
    out.update(loss_d=loss_d.detach(), real_score=real_logits.detach().float().mean(),
               fake_score=fake_logits.detach().float().mean())

    # 2. D reg (lazy R1, fp32)
    if cfg.r1_gamma > 0 and t % cfg.r1_every == 0:
        real_r = real.detach().float().requires_grad_(True)
        r1 = r1_penalty(real_r, D(real_r))
        _optimise(state.opt_d, r1 * (cfg.r1_gamma / 2 * cfg.r1_every), D, state)
        out["r1"] = r1.detach()

    # 3. G main
    D.requires_grad_(False)
    G.requires_grad_(True)
    z, cutoffs, noise = draw_latents(G, batch, cfg, rng, dev)
    with autocast(dev, cfg.precision):
        fake, _, w1 = generate(G, z, cutoffs, noise)
        loss_g = g_nonsaturating_loss(D(_as_layout(fake, cfg)))
    _optimise(state.opt_g, loss_g, G, state)
    out["loss_g"] = loss_g.detach()

    # 4. G reg (lazy path length, fp32)
    if cfg.pl_weight > 0 and t % cfg.pl_every == 0:
        b = max(1, batch // cfg.pl_batch_shrink)
        z, cutoffs, noise = draw_latents(G, b, cfg, rng, dev)
        images, wplus, _ = generate(G, z, cutoffs, noise)
        pl, state.pl_mean, length = path_length_penalty(images, wplus, path_length_noise(images, rng),
                                                        state.pl_mean, cfg.pl_decay)
        _optimise(state.opt_g, pl * (cfg.pl_weight * cfg.pl_every), G, state)
        out.update(pl=pl.detach(), path_length=length)
    G.requires_grad_(False)

    # 5. w_avg (truncation centre) and 6. EMA
    with torch.no_grad():
        G.w_avg.copy_(w1.detach().float().mean(0).lerp(G.w_avg, cfg.w_avg_beta))
    global_batch = batch * state.world_size
    state.cur_nimg += global_batch
    update_ema(state.G_ema, G, ema_beta(global_batch, state.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
    state.step += 1
    return out
