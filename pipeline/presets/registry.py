"""Model presets: one implementation and one weight source per role, chosen by name.

A `Preset` carries what the stages need to know about it without building anything (attribute
names, landmark group names, the number of latent layers, its default tune space, whether it has
a discriminator) and a `build` function that makes a `ModelBundle` (the networks every stage needs).
The registry's keys are the CLI's choices; presets register themselves in their own modules
(pipeline/presets/tiny.py, starter.py, paper.py), which pipeline/presets/__init__.py imports.
Weight files come from the zoo cache (packages fetched by `hfld zoo fetch`) or from paths the user
gives in `model.weights` (role -> path); nothing is downloaded here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from models.stylegan2_fast import FastPath
from pipeline.core.config import require
from pipeline.core.paths import PATH

ROLES = ("generator", "discriminator", "regressor", "landmarks", "perceptual", "emotion")
FAST_PATHS = ("compiled", "eager", "off")
TRAINING_JUDGE = "training"         # key of the training-loop network among judges of one kind

Point = tuple[float, float]
AlignMethod = Literal["none", "template", "ffhq"]


@dataclass(frozen=True)
class AlignmentSpec:
    """How the preset's generator frames a face: what `hfld invert` warps real photos to.

    Three face points fix a similarity transform (scale, rotation, shift): the subject's right eye,
    left eye and mouth centre. All template points are (x, y) fractions of the aligned crop.

    method:
      "none"      inputs are already framed like the generator's faces: centre square, resized;
      "template"  move the three points onto fixed positions (least-squares similarity transform);
      "ffhq"      the FFHQ rule (NVlabs ffhq-dataset): a square of side
                  2 * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) around eye_avg + 0.1 * eye_to_mouth,
                  oriented by eye_to_eye - rot90(eye_to_mouth).
    detector_template: the three points as the BlazeFace detector's keypoints 0, 1, 3 (right eye,
      left eye, mouth) place them on the generator's own faces ("template": the first pass).
    landmark_template: the three points as the preset's landmark model H places them (centroids of
      its two eye groups and of its mouth groups) on the generator's own faces. When set, a second
      pass runs H on the first-pass crop and aligns with H's points (sharper than BlazeFace's).
    framing_centre / framing_spread: how the generator frames its own faces as this alignment sees them:
      over its faces, the median and the robust spread (1.4826 x median absolute deviation) of the
      final alignment warp's parameters relative to the plain centre-square resize, (log scale,
      degrees, centre shift x, centre shift y; shifts in crop fractions). `hfld invert`'s
      align.keep_framed keeps (only resizes) a face within align.keep_sigmas spreads of the centre and
      moves any other face only as far as the edge of that range. None = not measured (always warp).
    measured: how the templates were obtained (generator, faces, seed).
    """
    method: AlignMethod = "none"
    detector_template: tuple[Point, Point, Point] | None = None
    landmark_template: tuple[Point, Point, Point] | None = None
    framing_centre: tuple[float, float, float, float] | None = None
    framing_spread: tuple[float, float, float, float] | None = None
    measured: str = ""

    def __post_init__(self):
        require(self.method in ("none", "template", "ffhq"), "alignment.method", self.method,
                "must be none, template or ffhq")
        require(self.method != "template" or self.detector_template is not None, "alignment.detector_template",
                self.detector_template, "is needed by the template method")
        for name in ("detector_template", "landmark_template"):
            points = getattr(self, name)
            if points is not None:
                require(len(points) == 3 and all(len(p) == 2 for p in points), f"alignment.{name}", points,
                        "must be three (x, y) points: right eye, left eye, mouth")
        require((self.framing_centre is None) == (self.framing_spread is None), "alignment.framing_spread",
                self.framing_spread, "and alignment.framing_centre must be given together")
        for name in ("framing_centre", "framing_spread"):
            values = getattr(self, name)
            if values is not None:
                require(len(values) == 4, f"alignment.{name}", values,
                        "must be 4 numbers: log scale, degrees, shift x, shift y")
        if self.framing_spread is not None:
            require(all(v > 0 for v in self.framing_spread), "alignment.framing_spread", self.framing_spread,
                    "must be > 0 (a spread of 0 would keep no face)")


@dataclass(frozen=True)
class Preset:
    """One preset. Facts are known without weights so configs and search spaces can be checked early.

    landmark_groups: group names of its landmark model (what HFLD subsets may name).
    attribute_names: its regressor's attributes (None: only known once built).
    n_latent: latent layers L of its generator (None: depends on the user's weights).
    tune_space: name of its search space in tune_spaces/.
    weight_licences: where its weights come from and under which terms (provenance of every output).
    alignment: how its generator frames faces (`hfld invert` aligns photos the same way).
    heldout_identity: the face descriptor `hfld invert` reports identity similarity with; it must
      not be in the inversion loss (pipeline.presets.faces.build_heldout_identity names them).
    """
    name: str
    description: str
    build: Callable[["ModelConfig"], "ModelBundle"]
    weight_roles: tuple[str, ...] = ()
    default_attributes: tuple[str, ...] = ()
    default_attribute_targets: tuple[str, ...] = ()  # attributes evaluate edits by default
    has_discriminator: bool = True
    landmark_groups: tuple[str, ...] = ()
    attribute_names: tuple[str, ...] | None = None
    n_latent: int | None = None
    tune_space: str = ""
    # model config -> {role or package: {"source", "licence"}} (pipeline/presets/provenance.py records it)
    weight_licences: Callable[["ModelConfig"], dict[str, dict[str, str]]] | None = None
    alignment: AlignmentSpec = AlignmentSpec()
    heldout_identity: str = ""


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    PRESETS[preset.name] = preset
    return preset


@dataclass(frozen=True)
class ModelConfig:
    """Which networks to use.

    preset: a key of PRESETS.
    weights: role -> weight file, overriding the preset's default source (roles: see ROLES and the
      preset's description).
    cache_dir: zoo cache for fetched package weights ("" = $HFLD_CACHE or ~/.cache/hfld).
    fast_path: how a StyleGAN2 generator (and discriminator) runs on a CUDA device (the CPU always
      runs the reference code): "compiled" (default) = models.stylegan2_fast (bfloat16 channels_last
      activations on the highest resolutions, fused elementwise work) with each block torch.compile'd
      (eager if compiling fails): on one H200, G at 256 px ran 5.5x rosinality's fused-CUDA model and
      the T step 2x the reference (docs/performance.md); "eager" = the same without torch.compile
      (slower than the reference: only for debugging); "off" = the reference modules in the stage's
      `precision` (bit-for-bit the pre-fast-path behaviour; no compile time).
    compile_measuring: with fast_path "compiled", also torch.compile the forward of the frozen networks
      that judge G's images in the loss (perceptual, landmarks, identity, regressor) and, in generate,
      of its scorers (emotion, landmarks, attributes, judges) on CUDA; eager on the CPU and after a
      compile failure (pipeline/core/compiled.py). Same function up to rounding.
    """
    preset: str = "starter"
    weights: dict[str, str] = field(default_factory=dict, metadata=PATH)
    cache_dir: str = field(default="", metadata=PATH)
    fast_path: Literal["compiled", "eager", "off"] = "compiled"
    compile_measuring: bool = True

    def __post_init__(self):
        require(self.preset in PRESETS, "model.preset", self.preset, f"is not a preset; choose one of {sorted(PRESETS)}")
        allowed = PRESETS[self.preset].weight_roles
        for role, path in self.weights.items():
            require(role in allowed, f"model.weights.{role}", path,
                    f"names a role preset {self.preset!r} does not take a file for; it takes: {list(allowed) or 'none'}")


@dataclass
class ModelBundle:
    """The networks of one preset, all frozen-ready nn.Modules on one device.

    In the training loop (T is optimised against them): regressor R, landmarks H, perceptual F,
    discriminator D. In the tune objective (model selection): emotion. Held out (never seen while T
    is trained or selected, so T cannot have learnt to fool them):
    judges: held-out EMOTION judges (name -> image -> probs [B, 7]). Held out from T; `hfld invert`'s
      optional expression term (projection.losses.expression > 0) uses one with the expression-net
      protocol in the inversion loss (pipeline.stages.invert.project.expression_judge; the invert
      manifest's `expression_term` records it), which does not change its role for T.
    landmark_judges: held-out LANDMARK judges (name -> image -> points [B, P, 2], with `groups`).
    attribute_judges: held-out ATTRIBUTE judges (name -> image -> probs [B, A'], with `names`): they
      measure edit strength independently of R.
    identity: a face-descriptor model (image -> [B, D]) for identity similarity, or None (it may be
      the perceptual network itself: `lineage()` says so).
    """
    preset: str
    generator: nn.Module
    discriminator: nn.Module | None
    regressor: nn.Module
    landmarks: nn.Module
    perceptual: nn.Module
    emotion: nn.Module
    judges: dict[str, nn.Module] = field(default_factory=dict)
    identity: nn.Module | None = None
    generator_id: str = ""                 # content hash of the generator weights (lineage)
    notes: tuple[str, ...] = ()            # printed in every log (e.g. "no discriminator: lambda3 = 0")
    default_attributes: tuple[str, ...] = ()
    landmark_judges: dict[str, nn.Module] = field(default_factory=dict)
    attribute_judges: dict[str, nn.Module] = field(default_factory=dict)

    def to(self, device: torch.device) -> "ModelBundle":
        for name in ("generator", "discriminator", "regressor", "landmarks", "perceptual", "emotion", "identity"):
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, m.to(device).eval())
        for name in ("judges", "landmark_judges", "attribute_judges"):
            setattr(self, name, {k: v.to(device).eval() for k, v in getattr(self, name).items()})
        return self

    def measuring_networks(self) -> list[nn.Module]:
        """Every frozen network that judges G's images (all but G and D), each once."""
        nets = [self.regressor, self.landmarks, self.perceptual, self.emotion, self.identity,
                *self.judges.values(), *self.landmark_judges.values(), *self.attribute_judges.values()]
        out: list[nn.Module] = []
        for net in nets:
            if net is not None and not any(net is seen for seen in out):
                out.append(net)
        return out

    def emotion_judges(self) -> dict[str, dict]:
        """key -> {"model", "label", "role", "network", "labels", "in_loop"}: the training judge first,
        then the held-out ones."""
        out = {TRAINING_JUDGE: {"model": self.emotion, "role": "training judge",
                                "network": type(self.emotion).__name__, "in_loop": IN_TUNE}}
        for name, model in self.judges.items():
            out[name] = {"model": model, "role": "held-out judge", "network": type(model).__name__,
                         "in_loop": HELD_OUT}
        for key, j in out.items():
            j["labels"] = list(getattr(j["model"], "labels", [f"class{i}" for i in range(7)]))
            j["label"] = f"{key if key != TRAINING_JUDGE else j['network']} ({j['role']})"
        return out

    def landmark_models(self) -> dict[str, dict]:
        """key -> {"model", "label", "role", "network", "groups", "in_loop"}: the training landmark
        model H (key "training", in the HFLD loss) first, then the held-out landmark judges."""
        out = {TRAINING_JUDGE: _described(self.landmarks, "training landmarks (H)", IN_TRAINING)}
        out.update({k: _described(m, "held-out landmark judge", HELD_OUT) for k, m in self.landmark_judges.items()})
        for key, d in out.items():
            d["groups"] = {g: list(idx) for g, idx in getattr(d["model"], "groups", {}).items()}
            d["label"] = f"{key if key != TRAINING_JUDGE else d['network']} ({d['role']})"
        return out

    def attribute_models(self) -> dict[str, dict]:
        """key -> {"model", "label", "role", "network", "names", "in_loop"}: the training regressor R
        (key "training", in the regressor loss) first, then the held-out attribute judges."""
        out = {TRAINING_JUDGE: _described(self.regressor, "training regressor (R)", IN_TRAINING)}
        out.update({k: _described(m, "held-out attribute judge", HELD_OUT) for k, m in self.attribute_judges.items()})
        for key, d in out.items():
            d["names"] = list(d["model"].names)
            d["label"] = f"{key if key != TRAINING_JUDGE else d['network']} ({d['role']})"
        return out

    def lineage(self) -> list[dict]:
        """Every network of the bundle: role, class name and where it sits relative to T's optimisation
        (IN_TRAINING: a loss term; IN_TUNE: the tune objective that selects lambda4; HELD_OUT: neither)."""
        rows = [("generator G", self.generator, IN_TRAINING),
                ("discriminator D (adversarial loss)", self.discriminator, IN_TRAINING),
                ("regressor R (regressor loss)", self.regressor, IN_TRAINING),
                ("landmarks H (HFLD loss)", self.landmarks, IN_TRAINING),
                ("perceptual F (perceptual loss)", self.perceptual, IN_TRAINING),
                ("emotion (tune objective)", self.emotion, IN_TUNE)]
        rows += [(f"emotion judge {k}", m, HELD_OUT) for k, m in self.judges.items()]
        rows += [(f"landmark judge {k}", m, HELD_OUT) for k, m in self.landmark_judges.items()]
        rows += [(f"attribute judge {k}", m, HELD_OUT) for k, m in self.attribute_judges.items()]
        if self.identity is not None:
            inner = getattr(self.identity, "model", self.identity)
            shared = inner is self.perceptual
            rows.append(("identity (face descriptor)", inner, IN_TRAINING if shared else HELD_OUT))
        return [{"role": role, "network": type(m).__name__, "in_loop": where} for role, m, where in rows
                if m is not None]


IN_TRAINING = "in the training loop"
IN_TUNE = "in the tune objective (model selection), not in the training loss"
HELD_OUT = "held out"


def _described(model: nn.Module, role: str, in_loop: str) -> dict:
    return {"model": model, "role": role, "network": type(model).__name__, "in_loop": in_loop}


def tensor_hash(module: nn.Module) -> str:
    """sha256 over a module's state dict (names + bytes), for lineage of random or loaded weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def fast_path(mode: str) -> FastPath | None:
    """ModelConfig.fast_path -> the FastPath the StyleGAN2 networks get (None = reference code)."""
    require(mode in FAST_PATHS, "model.fast_path", mode, f"must be one of {list(FAST_PATHS)}")
    return None if mode == "off" else FastPath(compile=mode == "compiled")


def apply_fast_path(mode: str, *networks: nn.Module | None) -> None:
    """Set ModelConfig.fast_path on every network that has one (StyleGAN2 G and D; others ignore it).
    It takes effect on CUDA inputs only, so a bundle built on the CPU and moved later gets it too."""
    fast = fast_path(mode)
    for net in networks:
        if net is not None and hasattr(net, "set_fast_path"):
            net.set_fast_path(fast)


def channels_last_convs(mode: str, *networks: nn.Module | None) -> None:
    """With a fast path on (ModelConfig.fast_path != "off"), store every nn.Conv2d weight of the
    measuring networks NHWC: cuDNN then runs their convolutions in its tensor-core layout and keeps
    the activations NHWC, instead of transposing around each convolution. On the CPU oneDNN gains
    the same way (the starter's judges at batch 32 on 2 cores: up to 2x, 1.5x all together;
    benchmarks/results_cpu_judges_cpu.txt). Each conv whose weight is now NHWC only (not 1x1 or
    depthwise) also gets its input NHWC (`nhwc_input`, a forward pre-hook; once per conv however
    often this runs). Same function (float rounding aside); only nn.Conv2d weights change layout, as
    nothing else in those networks views them."""
    if mode == "off":
        return
    for net in networks:
        for m in (net.modules() if net is not None else ()):
            if isinstance(m, nn.Conv2d) and m.weight.dim() == 4:
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
                # 1x1 and depthwise weights are both layouts at once: cuDNN keeps such a conv in its
                # input's layout, so an NCHW input costs its backward nothing
                both_layouts = m.weight.is_contiguous()
                if not both_layouts and nhwc_input not in m._forward_pre_hooks.values():
                    m.register_forward_pre_hook(nhwc_input)


def nhwc_input(conv: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a conv whose weight is NHWC: hand it its input NHWC too.

    Why: cuDNN's backward converts the output's gradient to the layout of the conv's *input*
    (`cudnn_convolution_backward`: grad_output.to(input.suggest_memory_format())) and then back to
    the weight's (`cudnn_convolution_backward_input`: .contiguous(cudnn_conv_suggest_memory_format)),
    so a conv fed an NCHW map pays two full copies of its output gradient per backward. The judges'
    first convs read the NCHW image: VGG's conv1_1 at 1024 px, batch 4, copied [4, 64, 1024, 1024]
    twice, 6.0 ms per step in the 2026-12-06 H200 profile. The forward converts its input anyway (and
    oneDNN on the CPU does the same), so this moves that copy, of the small input, ahead of the conv."""
    x = args[0] if args else None
    if torch.is_tensor(x) and x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def fast_measuring_networks(cfg: ModelConfig, *networks: nn.Module | None) -> None:
    """The fast path of the frozen networks that judge G's images (perceptual, landmarks, identity,
    regressor): NHWC conv weights (`channels_last_convs`) unless cfg.fast_path is "off", and with
    "compiled" and cfg.compile_measuring their forward torch.compile'd on CUDA inputs
    (pipeline/core/compiled.py; eager on the CPU and after a compile failure)."""
    from pipeline.core.compiled import compile_networks  # noqa: PLC0415 (torch._dynamo only when used)
    channels_last_convs(cfg.fast_path, *networks)
    compile_networks(cfg.fast_path == "compiled" and cfg.compile_measuring, *networks)


def build_bundle(cfg: ModelConfig, device: torch.device | str = "cpu") -> ModelBundle:
    """Build the preset's networks (with cfg.fast_path set: G and D's fast path, the measuring
    networks' NHWC weights) and move them to `device` (eval mode; later moves keep the layout)."""
    preset = PRESETS[cfg.preset]
    bundle = preset.build(cfg)
    if not bundle.default_attributes:
        bundle.default_attributes = preset.default_attributes
    apply_fast_path(cfg.fast_path, bundle.generator, bundle.discriminator)
    bundle = bundle.to(torch.device(device))
    judges = bundle.measuring_networks()
    for net in judges:
        # pretrained judges: losses differentiate w.r.t. the image only. Also what keeps NHWC safe on
        # the CPU: torch 2.14.1's oneDNN corrupts the heap computing a *weight* gradient of a 1x1
        # stride-2 conv on an NHWC map (mini-Xception's first shortcut: [3, 8, 60, 60] -> abort).
        net.requires_grad_(False)
    channels_last_convs(cfg.fast_path, *judges)
    return bundle
