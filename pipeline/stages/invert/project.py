"""Projection: optimise one latent per face so that the generator reproduces the aligned face.

The schedule follows the StyleGAN2(-ADA) projector (NVlabs stylegan2-ada-pytorch `projector.py`):
start at the mean latent w_avg (or, by default, at the nearest of a pool of mapped samples:
ProjectionConfig.start), Adam with betas (0.9, 0.999), learning rate ramped up linearly over
the first `lr_rampup` of the steps and down with a half cosine over the last `lr_rampdown`, Gaussian
noise on the latent whose scale w_std * latent_noise * max(0, 1 - t / latent_noise_ramp)^2 fades out,
and (with optimize_noise) noise maps regularised by their shifted autocorrelation over a pyramid
down to 8x8 and renormalised to zero mean and unit variance after every step. Differences, on purpose:
the latent is W+ (one w per layer, [B, L, w_dim]) instead of one w, the loss is the preset's (pixel +
perceptual + identity + landmark, below; optionally an expression term, losses.expression) instead of
LPIPS-VGG16, a W+ tie (losses.wplus_spread) keeps the layers near one common w, and many faces are
optimised at once.

Which networks are in the loss: the preset's perceptual model F, its identity descriptor (for the
starter: F's own final descriptor), its landmark model H and, with losses.expression > 0, its
expression net (`expression_judge`). The measures of invert's quality stay outside: the held-out
identity descriptor (faceres for the starter) and the preset's emotion judge (fer), which
`expression_judge` never returns.

Every loss term is computed per face ([B]) and the batch loss is their sum, so each face's gradient
is its own: Adam's update is elementwise, so a face's latent follows the same path in any batch (up
to floating-point differences between batched kernels).

Latent spaces:
  "w+"  a generator with a mapping network and L > 1 latent layers (StyleGAN2): wplus [B, L, w_dim];
  "z"   a generator whose mapping is the identity and L = 1 (the starter's DCGAN: W = Z): z itself,
        [B, 1, z_dim], starting at 0 = its mean, with a prior term keeping |z|^2 near z_dim (a DCGAN
        degrades off the shell where its N(0, I) training samples lie).
A generator with one latent layer behind a non-identity mapping is refused (its inversion would need
optimisation through the mapping, which nothing here does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.losses import mean_square_per_sample
from pipeline.core.config import ConfigError
from pipeline.core.seeding import Stream, derive_seed
from pipeline.presets import ModelBundle
from pipeline.stages.invert.config import ProjectionConfig


def latent_space(generator) -> str:
    """"w+" or "z" (see the module docstring); ConfigError for a generator it cannot invert."""
    if int(generator.n_latent) > 1:
        return "w+"
    z = torch.randn(4, int(generator.z_dim), generator=torch.Generator().manual_seed(0))
    z = z.to(next(iter(generator.buffers()), torch.zeros(())).device)
    with torch.no_grad():
        identity = generator.mapping(z).shape == z.shape and torch.allclose(generator.mapping(z), z)
    if identity:
        return "z"
    raise ConfigError(f"model.preset: the generator ({type(generator).__name__}) has one latent layer behind a "
                      "mapping network; invert supports W+ generators (StyleGAN2) and Z = W generators (DCGAN)")


def learning_rate(step: int, steps: int, cfg: ProjectionConfig) -> float:
    """The projector's schedule: linear ramp-up, half-cosine ramp-down, peak cfg.lr."""
    t = step / steps
    down = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return cfg.lr * down * min(1.0, t / cfg.lr_rampup)


def latent_noise_scale(step: int, steps: int, w_std: float, cfg: ProjectionConfig) -> float:
    t = step / steps
    return w_std * cfg.latent_noise * max(0.0, 1.0 - t / cfg.latent_noise_ramp) ** 2


def noise_regularisation(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per face [B]: sum over maps [B, 1, r, r] and pyramid levels (down to 8x8) of the squared mean
    autocorrelation at a one-pixel shift in x and in y."""
    total = noise[0].new_zeros(noise[0].shape[0])
    for n in noise:
        while True:
            total = total + (n * torch.roll(n, 1, dims=3)).mean(dim=(1, 2, 3)) ** 2
            total = total + (n * torch.roll(n, 1, dims=2)).mean(dim=(1, 2, 3)) ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return total


def normalise_noise_(noise: list[torch.Tensor]) -> None:
    """Each face's map to zero mean and unit variance, in place."""
    with torch.no_grad():
        for n in noise:
            n -= n.mean(dim=(1, 2, 3), keepdim=True)
            n *= n.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


def expression_judge(bundle: ModelBundle, weight: float) -> tuple[str, torch.nn.Module] | None:
    """(key, net) of the expression net losses.expression (`weight`) uses, or None when the term is off
    (weight 0) or the bundle has no such net.

    The first of the bundle's emotion judges that has the expression-net protocol
    (`expression_features(image) -> [B, F]`, its penultimate features, and `expression_probs(features)
    -> [B, K]`): face-api's expression net for the starter family (pipeline/presets/starter.py). Never
    the preset's emotion judge `bundle.emotion` (fer for the starter): invert measures emotion
    agreement with it, so it must stay out of the loss.

    The bundle's `judges` are held out from T (evaluate measures T's emotion drift with them; T is
    never trained or selected against them). Using one in the inversion loss is a different stage and
    does not change that: invert fits latents to photos and never sees T; the job's manifest
    (`expression_term`) records that the net is in the inversion loop.
    """
    if weight <= 0:
        return None
    for key, model in bundle.judges.items():
        if model is bundle.emotion:
            continue
        if callable(getattr(model, "expression_features", None)) and callable(getattr(model, "expression_probs", None)):
            return key, model
    return None


def shares_descriptor(bundle: ModelBundle) -> bool:
    """True when the identity model is the perceptual model's own final descriptor (the starter: face-api),
    so one forward pass serves both terms."""
    inner = getattr(bundle.identity, "model", None)
    names = getattr(bundle.perceptual, "feature_names", ())
    return inner is not None and inner is bundle.perceptual and bool(names) and names[-1] == "descriptor"


@dataclass
class Projection:
    """Result of one batch: latents [B, L, w_dim] float32 (L = 1 for "z"), the noise maps (per-layer
    [B, 1, r, r]) when optimised, images [B, 3, R, R] of the final latents, per-face losses [B] at the
    start (its start latent: ProjectionConfig.start) and the end, and the batch's mean loss per step."""
    wplus: torch.Tensor
    noise: list[torch.Tensor] | None
    images: torch.Tensor
    loss_start: torch.Tensor
    loss_end: torch.Tensor
    history: list[float]

    def select(self, index: torch.Tensor) -> "Projection":
        """The faces `index` [n] (on the latents' device) of this result, in that order."""
        return Projection(self.wplus[index], [n[index] for n in self.noise] if self.noise is not None else None,
                          self.images[index], self.loss_start[index], self.loss_end[index], self.history)


class LatentJitter:
    """The projector's latent noise, [B, L, w_dim] per step, each face's from its own generator (seeded by
    its seed), so a face's path does not depend on its batch. Drawn CHUNK steps at a time per face: one
    small kernel per face and step (B per step, 256 at 64 px) cost more than the step's own work."""

    CHUNK = 25

    def __init__(self, seeds: list[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.gens = [torch.Generator(device=device).manual_seed(derive_seed(int(s), Stream.INIT, 1)) for s in seeds]
        self.shape, self.device, self.dtype = shape, device, dtype
        self.block: torch.Tensor | None = None
        self.used = self.CHUNK

    def next(self) -> torch.Tensor:
        if self.used == self.CHUNK:
            self.block = torch.stack([torch.randn((self.CHUNK, *self.shape), generator=g, device=self.device,
                                                  dtype=self.dtype) for g in self.gens], dim=1)
            self.used = 0
        self.used += 1
        return self.block[self.used - 1]


class Projector:
    """Optimises latents for aligned faces with the networks of one bundle (on the bundle's device)."""

    POOL_CHUNK = 256                # candidates synthesised and judged at once for the start
    POOL_CACHE_BYTES = 2 ** 30      # keep the judged pool when it fits this

    def __init__(self, bundle: ModelBundle, cfg: ProjectionConfig, *, precision: str = "fp32",
                 w_std_seed: int = 0):
        self.cfg, self.precision = cfg, precision
        self.g = bundle.generator.eval().requires_grad_(False)
        self.perceptual = bundle.perceptual.eval().requires_grad_(False)
        self.identity = bundle.identity.eval().requires_grad_(False) if bundle.identity is not None else None
        self.landmarks = bundle.landmarks.eval().requires_grad_(False)
        self.shared_descriptor = shares_descriptor(bundle)
        found = expression_judge(bundle, cfg.losses.expression)
        self.expression_name = found[0] if found else ""      # "" = no expression term
        self.expression = found[1].eval().requires_grad_(False) if found else None
        self.device = self.g.mean_latent.device
        # float32 latents and losses (float64 when the networks are: exact comparisons in tests)
        self.dtype = torch.float64 if self.g.mean_latent.dtype == torch.float64 else torch.float32
        self.space = latent_space(self.g)
        self.w_avg = self.g.mean_latent.detach().to(self.dtype)
        self.w_std_seed = w_std_seed
        self.w_std = self.estimate_w_std(w_std_seed)
        self._pool_latents, self._pool_chunks = None, None     # the start's candidates (start "pool" / "both")
        self.noise_maps = self.cfg.optimize_noise and self.space == "w+" and bool(self.g.make_noise("const", 1))
        w = cfg.losses
        self.weights = {"pixel": w.pixel, "perceptual": w.perceptual, "identity": w.identity if self.identity else 0.0,
                        "landmark": w.landmark, "noise": w.noise if self.noise_maps else 0.0,
                        "wplus_spread": w.wplus_spread if self.space == "w+" else 0.0,
                        "z_prior": w.z_prior if self.space == "z" else 0.0,
                        "expression": w.expression if self.expression is not None else 0.0}

    @torch.no_grad()
    def estimate_w_std(self, seed: int) -> float:
        """sqrt(E |w - w_avg|^2) of mapped samples (the projector's w_std); sqrt(dim) exactly for Z = W."""
        if self.space == "z":
            return math.sqrt(int(self.g.z_dim))
        gen = torch.Generator().manual_seed(derive_seed(seed, Stream.INIT, 17))
        z = torch.randn(self.cfg.w_std_samples, int(self.g.z_dim), generator=gen, dtype=self.dtype).to(self.device)
        total = sum(((self.g.mapping(part) - self.w_avg) ** 2).sum().item() for part in z.split(1024))
        return math.sqrt(total / self.cfg.w_std_samples)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def synthesis(self, wplus: torch.Tensor, noise) -> torch.Tensor:
        return self.g.synthesis(wplus, noise if noise is not None else "const")

    # -- targets and losses ---------------------------------------------------------------------

    def judged(self, image: torch.Tensor) -> dict:
        """What the loss networks make of images [B, 3, R, R]: "features" (the perceptual layers), "points"
        [B, P, 2], "identity" [B, D] (when the preset has an identity model) and "expression" (the
        expression net's comparison form, `expression_target`; with the term on), in self.dtype.
        One function for the targets and for every step, so both sides are measured alike."""
        with self.autocast():
            features = [f.to(self.dtype) for f in self.perceptual(image)]
            out = {"features": features, "points": self.landmarks(image).to(self.dtype)}
            if self.identity is not None:
                out["identity"] = features[-1] if self.shared_descriptor else self.identity(image).to(self.dtype)
            if self.expression is not None:
                out["expression"] = self.expression_target(image)
        return out

    @torch.no_grad()
    def targets(self, target: torch.Tensor) -> dict:
        """What the loss compares against, computed once per batch."""
        return {"image": target} | self.judged(target)

    def expression_target(self, image: torch.Tensor) -> torch.Tensor:
        """What the expression term compares: the net's penultimate features [B, F] ("features") or its
        log-probabilities [B, K] ("kl")."""
        features = self.expression.expression_features(image)
        if self.cfg.losses.expression_kind == "features":
            return features.to(self.dtype)
        return self.expression.expression_probs(features).to(self.dtype).clamp_min(1e-12).log()

    def expression_term(self, mine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per face [B], from two `expression_target` outputs: mean squared feature difference, or
        KL(p(target) || p(image)) in nats."""
        if self.cfg.losses.expression_kind == "features":
            return (mine - target).square().mean(dim=1)
        return (target.exp() * (target - mine)).sum(dim=1)

    def terms(self, image: torch.Tensor, tgt: dict, wplus: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        """Per-face loss terms [B] of generated images [B, 3, R, R] against the targets."""
        mine = self.judged(image)
        diff = image.to(self.dtype) - tgt["image"].to(self.dtype)
        pixel = diff.abs() if self.cfg.losses.pixel_kind == "l1" else diff.square()
        out = {"pixel": pixel.mean(dim=(1, 2, 3)),
               "perceptual": torch.stack([mean_square_per_sample(b, a)
                                          for a, b in zip(mine["features"], tgt["features"])]).mean(0),
               "landmark": (mine["points"] - tgt["points"]).abs().mean(dim=(1, 2))}
        if "identity" in mine:
            out["identity"] = 1.0 - F.cosine_similarity(mine["identity"], tgt["identity"], dim=1)
        if "expression" in mine:
            out["expression"] = self.expression_term(mine["expression"], tgt["expression"])
        if self.noise_maps and isinstance(noise, list):
            out["noise"] = noise_regularisation(noise)
        return out | self.latent_terms(wplus)

    def latent_terms(self, wplus: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms [B] that depend on the latent alone: z_prior (Z = W) or wplus_spread (W+)."""
        w = wplus.to(self.dtype)
        if self.space == "z":
            return {"z_prior": (w.square().mean(dim=(1, 2)) - 1.0) ** 2}
        if self.weights["wplus_spread"] > 0:
            return {"wplus_spread": (w - w.mean(dim=1, keepdim=True)).square().sum(dim=2).mean(dim=1) / self.w_std ** 2}
        return {}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in terms.items() if self.weights[k] > 0)

    def loss(self, wplus: torch.Tensor, tgt: dict, noise=None) -> torch.Tensor:
        """Per-face total loss [B] of latents against targets (no latent noise)."""
        with self.autocast():
            image = self.synthesis(wplus, noise)
        return self.total(self.terms(image, tgt, wplus, noise))

    # -- optimisation ---------------------------------------------------------------------------

    def start_latents(self, batch: int, tgt: dict | None = None) -> torch.Tensor:
        """[B, L, w_dim] float32: w_avg in every layer (0 for Z = W); given the batch's targets and with
        projection.start "pool", each face starts instead at whichever of w_avg and the candidate pool's
        latents has the lowest loss against it (`best_start`)."""
        if tgt is None or self.cfg.start != "pool":
            return self.mean_start(batch)
        return self.best_start(batch, tgt)

    def mean_start(self, batch: int) -> torch.Tensor:
        return self.w_avg.reshape(1, 1, -1).expand(batch, int(self.g.n_latent), -1).clone()

    @torch.no_grad()
    def candidate_latents(self) -> torch.Tensor:
        """[K + 1, L, w_dim]: w_avg first, then K = start_candidates mapped N(0, I) samples, one w in every
        layer. Drawn from the projector's w_std seed, so a face's start does not depend on its batch."""
        if self._pool_latents is None:
            k, n_latent = self.cfg.start_candidates, int(self.g.n_latent)
            gen = torch.Generator().manual_seed(derive_seed(self.w_std_seed, Stream.INIT, 29))
            z = torch.randn(k, int(self.g.z_dim), generator=gen, dtype=self.dtype).to(self.device)
            w = torch.cat([self.w_avg[None]] + [self.g.mapping(part).to(self.dtype) for part in z.split(256)])
            self._pool_latents = w[:, None, :].expand(k + 1, n_latent, -1).contiguous()
        return self._pool_latents

    @torch.no_grad()
    def candidate_chunks(self):
        """Yields (latents, images [k, 3, R, R], `judged` dict) for chunks of the candidate pool. Kept after
        the first pass when the pool's images and features fit POOL_CACHE_BYTES (64 px: 2,049 candidates
        take ~0.6 GB), made again for every batch otherwise (256 px VGG features: ~50 MB a candidate)."""
        if self._pool_chunks is not None:
            yield from self._pool_chunks
            return
        kept, size = [], 0
        for latents in self.candidate_latents().split(self.POOL_CHUNK):
            with self.autocast():
                image = self.synthesis(latents, None).to(self.dtype)
            judged = self.judged(image)
            tensors = [image] + [t for v in judged.values() for t in (v if isinstance(v, list) else [v])]
            size += sum(t.numel() * t.element_size() for t in tensors)
            if kept is not None and size <= self.POOL_CACHE_BYTES:
                kept.append((latents, image, judged))
            else:
                kept = None
            yield latents, image, judged
        self._pool_chunks = kept

    @property
    def pool_kept(self) -> bool:
        """Whether the judged candidate pool is kept (made once) rather than made for every batch."""
        return self._pool_chunks is not None

    def pairwise_total(self, tgt: dict, images: torch.Tensor, judged: dict, latents: torch.Tensor) -> torch.Tensor:
        """[B, K] loss of every target face against every candidate: `total(terms(...))` of each pair
        (same terms and weights; the noise-map term left out: it does not depend on the latent), with the
        squared and absolute differences as distance matrices (torch.cdist) instead of B x K pairs."""
        def rows(t):              # [N, ...] -> [N, D] in the projection's dtype
            return t.reshape(t.shape[0], -1).to(self.dtype)

        def mean_sq(a, b):        # [B, ...] x [K, ...] -> [B, K] mean squared difference
            return torch.cdist(rows(a), rows(b)).square() / a[0].numel()

        def mean_abs(a, b):
            return torch.cdist(rows(a), rows(b), p=1.0) / a[0].numel()

        k = images.shape[0]
        pixel = mean_sq if self.cfg.losses.pixel_kind == "l2" else mean_abs
        out = {"pixel": pixel(tgt["image"], images),
               "perceptual": torch.stack([mean_sq(t, c) for t, c in zip(tgt["features"], judged["features"])]).mean(0),
               "landmark": mean_abs(tgt["points"], judged["points"])}
        if "identity" in judged:
            out["identity"] = 1.0 - F.normalize(tgt["identity"], dim=1) @ F.normalize(judged["identity"], dim=1).T
        if "expression" in judged:
            if self.cfg.losses.expression_kind == "features":
                out["expression"] = mean_sq(tgt["expression"], judged["expression"])
            else:     # KL(p(target) || p(candidate)) = sum p_t log p_t - p_t . log p_c
                p_t = tgt["expression"].exp()
                out["expression"] = (p_t * tgt["expression"]).sum(1, keepdim=True) - p_t @ judged["expression"].T
        out |= {name: v[None, :].expand(out["pixel"].shape[0], k) for name, v in self.latent_terms(latents).items()}
        return self.total(out)

    @torch.no_grad()
    def best_start(self, batch: int, tgt: dict) -> torch.Tensor:
        """[B, L, w_dim]: per face, the lowest-loss latent of the candidate pool (w_avg included, chosen
        on ties), by the projection's own loss without latent noise."""
        losses = torch.cat([self.pairwise_total(tgt, images, judged, latents)
                            for latents, images, judged in self.candidate_chunks()], dim=1)
        pool = self.candidate_latents()
        assert losses.shape == (batch, pool.shape[0]), f"pairwise losses {list(losses.shape)}"
        return pool[losses.argmin(dim=1)].clone()

    def start_noise(self, seeds: list[int]) -> list[torch.Tensor] | None:
        """Per-face N(0, 1) maps from each face's own seed (None when noise is not optimised)."""
        if not self.noise_maps:
            return None
        shapes = [n.shape[-2:] for n in self.g.make_noise("const", 1)]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return [torch.cat([torch.randn(1, 1, *hw, generator=g) for g in gens]).to(self.device, self.dtype)
                for hw in shapes]

    def project(self, target: torch.Tensor, seeds: list[int], *, steps: int | None = None) -> Projection:
        """Optimise latents for target faces [B, 3, R, R] in [-1, 1] (aligned like the generator's faces).

        seeds: one per face; face i's initial noise maps and the latent noise of its steps come from
        seeds[i] alone, so its result does not depend on the other faces of the batch (up to the
        rounding of batched kernels).
        """
        steps = steps or self.cfg.steps
        b = target.shape[0]
        res = int(self.g.resolution)
        assert target.shape == (b, 3, res, res), f"target must be [B, 3, {res}, {res}], got {list(target.shape)}"
        assert len(seeds) == b, f"one seed per face: {len(seeds)} seeds for {b} faces"
        target = target.to(self.device, self.dtype)
        if self.cfg.start != "both":
            tgt = self.targets(target)
            return self.optimise(tgt, self.start_latents(b, tgt), seeds, steps)
        # two runs per face in one batch: from w_avg (first half) and from the face's pool pick
        tgt = self.targets(torch.cat([target, target]))
        start = torch.cat([self.mean_start(b), self.best_start(b, judged_map(lambda t: t[:b], tgt))])
        both = self.optimise(tgt, start, seeds + seeds, steps)
        return both.select(torch.where(both.loss_end[b:] < both.loss_end[:b],
                                       torch.arange(b, 2 * b, device=self.device), torch.arange(b, device=self.device)))

    def optimise(self, tgt: dict, start: torch.Tensor, seeds: list[int], steps: int) -> Projection:
        """The projection's loop from latents `start` [B, L, w_dim] against targets `tgt` (of B faces)."""
        wplus = start.requires_grad_(True)
        noise = self.start_noise(seeds)
        params = [wplus] + ([n.requires_grad_(True) for n in noise] if noise else [])
        opt = torch.optim.Adam(params, lr=self.cfg.lr, betas=(0.9, 0.999), fused=self.device.type == "cuda")
        jitter = LatentJitter(seeds, tuple(wplus.shape[1:]), self.device, self.dtype)
        with torch.no_grad():
            loss_start = self.loss(wplus, tgt, noise)
        history = []
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, steps, self.cfg)
            w_in = wplus + jitter.next() * latent_noise_scale(step, steps, self.w_std, self.cfg)
            with self.autocast():
                image = self.synthesis(w_in, noise)
            per_face = self.total(self.terms(image, tgt, wplus, noise))
            opt.zero_grad(set_to_none=True)
            per_face.sum().backward()
            opt.step()
            if noise:
                normalise_noise_(noise)
            history.append(per_face.detach().mean())      # a tensor: no device sync inside the loop
        final = wplus.detach()
        final_noise = [n.detach() for n in noise] if noise else None
        with torch.no_grad():
            with self.autocast():
                images = self.synthesis(final, final_noise).to(self.dtype)
            loss_end = self.total(self.terms(images, tgt, final, final_noise))
        return Projection(final, final_noise, images, loss_start.detach(), loss_end.detach(),
                          torch.stack(history).cpu().tolist())


def judged_map(fn, judged: dict) -> dict:
    """`fn` applied to every tensor of a `Projector.judged` / `targets` dict, whose "features" is a list."""
    return {k: [fn(t) for t in v] if isinstance(v, list) else fn(v) for k, v in judged.items()}


def face_seeds(job_seed: int, rows: np.ndarray) -> list[int]:
    """Per-row seeds of the projection (noise maps, step noise): derive_seed(seed, INVERT-stream, row)."""
    return [derive_seed(job_seed, Stream.INVERT, int(r)) for r in rows]
