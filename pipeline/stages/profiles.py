"""Profiles of `hfld run`: named budgets of the whole experiment, in one registry (PROFILES); the
CLI's `--profile` choices are its keys.

A profile is a nested mapping of RunConfig keys. `apply_profile` puts it UNDER what the user gave
(the config file and --set overrides win), so `hfld run --profile demo --set seeds=2` is the demo with
two seeds per arm. The resolved config records the profile's name (`profile`) and every value.

    demo   the `make demo` default: one seed per arm, a few hundred faces, a short sweep; trains on a
           GPU when one is visible (CPU otherwise); every stage prints progress with an ETA.
    full   the full experiment: 3 seeds per arm (intervals include the training variance), 1,000
           faces, the preset's whole sweep.

The training recipe in both (lr, steps, batch) is what benchmarks/calibrate_starter.py measured to
make the baseline T edit (strength >= 0.6 by R); rerun it when the default generator changes.
Light module: no torch / Ray / MLflow at import (the CLI builds its parser from PROFILES).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.core.config import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    settings: Callable[[Mapping], dict]  # user's data -> nested RunConfig keys (called when applied: may look
                                         # at the machine and at what the user chose, e.g. the preset)


PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    if profile.name in PROFILES:
        raise ValueError(f"profile {profile.name!r} registered twice")
    PROFILES[profile.name] = profile
    return profile


def gpu_visible() -> bool:
    import torch
    return torch.cuda.is_available()


def deep_merge(base: Mapping, top: Mapping) -> dict:
    """`top` over `base`, recursively for nested mappings (top's values win)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def apply_profile(data: Mapping) -> dict:
    """RunConfig data (config file + overrides) with its `profile`'s settings underneath; no profile: unchanged."""
    name = data.get("profile") or ""
    if not name:
        return dict(data)
    if not isinstance(name, str) or name not in PROFILES:
        raise ConfigError(f"profile: {name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return deep_merge(PROFILES[name].settings(data), data)


def _trainer(gpu: bool) -> dict:
    """One Ray Train worker: the GPU when one is visible, else the machine's CPUs (up to 8; 2 on the
    demo machine). Ray Train's controller holds no CPU, so one worker may take them all."""
    if gpu:
        return {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1.0, "cpus_per_worker": 1.0}
    return {"num_workers": 1, "cpus_per_worker": float(min(8, os.cpu_count() or 1))}


# The baseline recipe that edits (benchmarks/calibrate_starter.py; issue 14). Adam moves T by about lr
# per step, so the paper's lr 1e-4 needs ~50,000 steps. Strength by R (Male / Young) and by the held-out
# judge faceres, 48 held-out faces, "target" edit sampling, 2-core CPU, 1 thread:
# - the StyleGAN2 starter trained on to 4,557 kimg (shipped 2026-12-04), lr 3e-2, batch 8, lambda4 0
#   (~0.75 s/step): step 50 -> 0.65 / 0.71 by R (0.30 / 0.17 by faceres); step 100 -> 0.67 / 0.76 (0.27 / 0.18);
#   step 200 -> 0.74 / 0.70. The rows below are the 1,485-kimg weights it replaced.
# - the StyleGAN2 starter (the default since issue 15), lr 3e-2, batch 8 (~1.0-1.2 s/step):
#     lambda4 0:    step 50 -> 0.60 / 0.71 by R (0.15 / 0.18 by faceres); step 100 -> 0.64 / 0.79 (0.14 / 0.21)
#     lambda4 100:  step 50 -> 0.51 / 0.61; step 100 -> 0.55 / 0.74 (faceres 0.10 / 0.16)
#     lambda4 300:  step 50 -> 0.43 / 0.56; step 100 -> 0.55 / 0.61 (faceres 0.13 / 0.13)
#     lambda4 1e3:  step 100 -> 0.35 / 0.49; lambda4 1e4: step 100 -> 0.17 / 0.06 (T frozen)
#   so the demo's sweep searches lambda4 in [10, 300] (tune_spaces/starter_demo.yaml). faceres stays far
#   below its 0.4 floor in every setting. But on the unedited starter faces faceres separates R's most and
#   least "Male" quarter by only 0.10 (R: 0.54; "Young": 0.09 vs 0.74): it cannot reach 0.4 on these faces
#   at all, and these T's move it MORE per unit of R (~0.24) than natural variation does (0.12-0.18), so the
#   report says "unconfirmed (held-out judge insensitive)", not "fooling R" (pipeline/core/strength.py).
# - the DCGAN (now `dcgan64`): on an H200 lr 1e-2 x 1,500 steps x batch 16 -> 0.70 / 0.76 (FULL_RECIPE);
#   on the CPU lr 3e-2 x 300 x batch 16 -> 0.62 / 0.62 by R.
# FULL_RECIPE has not been re-measured on the StyleGAN2 starter on a GPU (lr 1e-2 x 1,500 steps moves T
# further than the CPU recipe above, which already edits by R).
FULL_RECIPE = {"lr": 1e-2, "iterations": 1500, "batch_size": 16}

# The sweep's absolute strength floor (tune objective.strength_floor) in both profiles. Issue 14 asks that
# both arms edit with strength >= 0.6 by R at evaluation. The sweep minimises emotion drift, and a larger
# lambda4 lowers drift by holding T back, so the chosen trial sits just above whatever floor the sweep
# uses; and the sweep judges a trial on few faces (the demo: 32, standard error ~0.03). With the default
# floor 0.5 the demo of 2026-12-04 chose lambda4 87 at 0.614 on 32 faces, which evaluated at 0.590 on 200.
# The evaluation's "not editing" floor stays 0.5 (pipeline/core/strength.py).
SWEEP_STRENGTH_FLOOR = 0.65
# 200 steps, not 120 (2026-12-04): the sweep's baseline and winning trials are the arms' seed-0 T's
# (pipeline/stages/run.py: they came out byte-identical when trained again), which freed the two
# trainings' ~4 min; at 120 steps the baseline's Male (~0.66) left too little room above the sweep's floor.
DEMO_RECIPE = {"lr": 3e-2, "iterations": 200, "batch_size": 8, "edit_sampling": "target"}


def preset_of(data: Mapping) -> str:
    return str((data.get("model") or {}).get("preset") or "starter")


def demo_settings(data: Mapping) -> dict:
    gpu = gpu_visible()
    recipe = FULL_RECIPE if gpu else DEMO_RECIPE
    return {
        "seeds": 1,
        "train": {**recipe, "log_every": 50, "checkpoint_every": 100, "scaling": _trainer(gpu)},
        # the short 2-subset space for the starter; other presets keep their own space
        **({"tune_space": "starter_demo"} if preset_of(data) == "starter" else {}),
        "tune": {"num_samples": 1, "max_concurrent_trials": 1,
                 "scheduler": {"max_steps": recipe["iterations"], "eval_every": recipe["iterations"] // 2,
                               "grace_period": recipe["iterations"] // 2},
                 "trial_scaling": _trainer(gpu),
                 "objective": {"n_samples": 32, "intermediate_samples": 16,
                               "strength_floor": SWEEP_STRENGTH_FLOOR}},
        "generate": {"n_sources": 50, "variants": 4},
        "evaluate": {"n_samples": 200 if not gpu else 300, "alphas": [0.5, 1.0, 1.5], "strength_levels": [0.5, 0.7]},
    }


def full_settings(data: Mapping) -> dict:
    gpu = gpu_visible()
    return {
        "seeds": 3,
        "train": {**FULL_RECIPE, "log_every": 100, "checkpoint_every": 500, "scaling": _trainer(gpu)},
        "tune": {"num_samples": 4, "max_concurrent_trials": 1,
                 "scheduler": {"max_steps": FULL_RECIPE["iterations"], "eval_every": 250, "grace_period": 500},
                 "trial_scaling": _trainer(gpu),
                 "objective": {"n_samples": 128, "intermediate_samples": 32,
                               "strength_floor": SWEEP_STRENGTH_FLOOR}},
        "generate": {"n_sources": 250, "variants": 8},
        "evaluate": {"n_samples": 1000, "alphas": [0.25, 0.5, 1.0, 1.5, 2.0], "strength_levels": [0.5, 0.7]},
    }


register_profile(Profile("demo", "one seed per arm, 200 faces (300 on a GPU), a short sweep (starter: 2 landmark subsets x 1 lambda4); "
                         "GPU when visible; the `make demo` default", demo_settings))
register_profile(Profile("full", "3 seeds per arm, 1,000 faces, the preset's sweep (4 subsets x 4 lambda4 draws), "
                         "5 edit scales", full_settings))
