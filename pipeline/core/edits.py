"""The edit protocol shared by evaluation, the tune objective and the figures.

For target attribute a (column j of T, all other columns 0), two edited sets (the paper's
"non-exist" and "must-exist" sets):
- edit_mode "target" (the "Enjoy Your Editing" reference code's semantics: an edit amount is the
  desired change of the attribute's probability): s_j = t - R(x)_a with t = 0 ("low") and t = 1 ("high").
- edit_mode "fixed": s_j = -fixed_amount / +fixed_amount for every face (the paper's s in [-1, 1]).
"""

from __future__ import annotations

from typing import Literal

import torch

EditMode = Literal["target", "fixed"]
EXTREMES = ("low", "high")          # the paper's "non-exist" (0) and "must-exist" (1) sets


def extreme_amount(edit_mode: EditMode, fixed_amount: float, extreme: str, current: torch.Tensor) -> torch.Tensor:
    """Edit amount [B] of the target column for one extreme; current = R(x)_a [B]."""
    if edit_mode == "target":
        return (0.0 if extreme == "low" else 1.0) - current
    return torch.full_like(current, -fixed_amount if extreme == "low" else fixed_amount)


def trajectory_amounts(edit_mode: EditMode, fixed_amount: float, steps: int, current: torch.Tensor) -> torch.Tensor:
    """Edit amounts [steps, B] of a trajectory figure, from the low extreme to the high one."""
    if edit_mode == "target":
        targets = torch.linspace(0, 1, steps, device=current.device)
        return targets[:, None] - current[None, :]
    s = torch.linspace(-fixed_amount, fixed_amount, steps, device=current.device)
    return s[:, None].expand(-1, current.shape[0])


def one_column_edit(amount: torch.Tensor, column: int, n_columns: int) -> torch.Tensor:
    """s [B, n_columns]: `amount` [B] in T's column `column`, zeros elsewhere (one attribute edited)."""
    s = amount.new_zeros(amount.shape[0], n_columns)
    s[:, column] = amount
    return s
