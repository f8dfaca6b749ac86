#!/usr/bin/env python3
"""FD_face over kimg across a chain of gan-stage exports (a run started from another's export with
`init_weights` counts its kimg from 0 again; this puts the runs end to end).

    git show 4c0f6c2:zoo/stylegan2_starter64.json > /tmp/first.json
    python tools/plot_fd_lineage.py /tmp/first.json zoo/stylegan2_starter64.json -o docs/starter_fd_curve.png

Cards are given oldest first; each later card's `training.init_from.weights_sha256` must be the sha256
of the card before it, so that unrelated runs are not joined.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def joined_history(cards: list[dict]) -> list[dict]:
    """Every card's quality.fd_history, shifted by the kimg of the runs before it."""
    out, offset = [], 0.0
    for i, card in enumerate(cards):
        if i:
            parent = card["training"].get("init_from") or {}
            if parent.get("weights_sha256") != cards[i - 1]["weights_sha256"]:
                raise SystemExit(f"card {i + 1} did not start from card {i}'s weights "
                                 f"(training.init_from.weights_sha256 {parent.get('weights_sha256')!r})")
        out += [{"kimg": offset + h["kimg"], "fd_face": h["fd_face"]} for h in card["quality"]["fd_history"]]
        offset += card["training"]["kimg"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cards", nargs="+", type=Path, help="export cards (<name>.json), oldest first")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    from pipeline.stages.gan.quality import fd_curve

    cards = [json.loads(c.read_text()) for c in args.cards]
    history = joined_history(cards)
    fd_curve(history, cards[-1]["quality"]["scale"], args.out)
    for h in history:
        print(f"kimg {h['kimg']:8.1f}  FD_face {h['fd_face']:.5f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
