"""Load the starter DCGAN generator from gan-face-generate's `weights.tar`.

The file is an ordinary torch zip checkpoint `{"netG_state_dict": {...}}` holding only tensors, so it
is read with `torch.load(weights_only=True)`: no pickled code is ever executed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.dcgan import DCGANGenerator
from models.errors import WeightsError, describe_key_problems

ROLE = "generator (starter DCGAN)"
FETCH_HINT = "run `hfld zoo fetch starter`"
CHECKPOINT_KEY = "netG_state_dict"


def _fail(path: Path | str, problem: str, hint: str = FETCH_HINT) -> WeightsError:
    return WeightsError(f"{ROLE}: {path}: {problem}; {hint}")


def read_dcgan_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the generator's state dict from `path` (a torch checkpoint) on the CPU.

    Accepts gan-face-generate's `{"netG_state_dict": sd}` and a bare state dict `sd`.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "weight file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-torch files / refused objects
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _fail(path, f"not a readable torch checkpoint with weights_only=True ({reason})") from err
    if not isinstance(checkpoint, dict):
        raise _fail(path, f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    state = checkpoint.get(CHECKPOINT_KEY, checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(map(str, list(checkpoint)[:5]))
        raise _fail(path, f"expected a '{CHECKPOINT_KEY}' dict of tensors, found keys: {keys}")
    return state


def _shape_problems(state: dict[str, torch.Tensor], model: DCGANGenerator, limit: int = 5) -> str:
    expected = model.state_dict()
    bad = [f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
           for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    more = f" (+{len(bad) - limit} more)" if len(bad) > limit else ""
    return f"wrong shapes: {'; '.join(bad[:limit])}{more}" if bad else ""


def load_dcgan_generator(path: str | Path, nz: int = 100, ngf: int = 64, nc: int = 3) -> DCGANGenerator:
    """Build `DCGANGenerator(nz, ngf, nc)` and load `path` into it with strict keys and shapes.

    Returns the module in inference mode on the CPU with gradients disabled for its parameters
    (it is a frozen generator; gradients still flow to its input).
    """
    state = read_dcgan_state_dict(path)
    model = DCGANGenerator(nz=nz, ngf=ngf, nc=nc)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = "; ".join(p for p in (describe_key_problems(missing, unexpected), _shape_problems(state, model)) if p)
    if problems:
        raise _fail(path, f"does not fit DCGANGenerator(nz={nz}, ngf={ngf}, nc={nc}): {problems}",
                    hint=f"expected gan-face-generate==1.1.1 weights.tar; {FETCH_HINT}")
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()
