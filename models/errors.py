"""Errors raised while building or loading networks.

Every message says which role/file is involved and what the user can do about it,
so a failed run tells the user how to fix it instead of printing a stack of torch internals.
"""


class WeightsError(ValueError):
    """A weight file is missing, unreadable, of the wrong format, or does not fit the model."""


def describe_key_problems(missing: list[str], unexpected: list[str], limit: int = 5) -> str:
    """One line listing the first few missing/unexpected state-dict keys."""
    parts = []
    if missing:
        more = f" (+{len(missing) - limit} more)" if len(missing) > limit else ""
        parts.append(f"missing keys: {', '.join(missing[:limit])}{more}")
    if unexpected:
        more = f" (+{len(unexpected) - limit} more)" if len(unexpected) > limit else ""
        parts.append(f"unexpected keys: {', '.join(unexpected[:limit])}{more}")
    return "; ".join(parts)
