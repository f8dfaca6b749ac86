#!/usr/bin/env python3
"""The README's "bring your own faces" figure, from the outputs of `hfld invert` and `hfld generate --sources`.

    python benchmarks/byof_figure.py --inverted <invert output dir> --augmented <generate output dir> \
        --label emotion --variants 3 --rows 8 -o docs/byof_starter.png

One row per source face (the first --rows faces inverted with status "ok", in source order): the
aligned input, its reconstruction (with the held-out identity cosine), then the first --variants
augmented variants of that face; each row is captioned with the source's label as carried into the
augmented rows (read from the augmented parquet, so a label that did not survive shows up) and the
emotion judge's label on each variant. Nothing is regenerated: the figure shows the stored images.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw


def read_table(folder: Path, columns: list[str]):
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise SystemExit(f"{folder}: no parquet files (expected the output folder of hfld invert / generate)")
    import pyarrow as pa
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pylist()


def png(cell: dict | None, tile: int) -> Image.Image:
    if not cell or not cell.get("bytes"):
        return Image.new("RGB", (tile, tile), (128, 128, 128))
    return Image.open(io.BytesIO(cell["bytes"])).convert("RGB").resize((tile, tile), Image.NEAREST)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inverted", type=Path, required=True)
    p.add_argument("--augmented", type=Path, required=True)
    p.add_argument("--label", default="emotion", help="the label column carried from the sources")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--variants", type=int, default=3)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)

    inverted = [r for r in read_table(args.inverted, ["source_id", "status", "aligned_image", "reconstruction_image",
                                                       "identity_cosine", args.label]) if r["status"] == "ok"]
    augmented = read_table(args.augmented, ["source_id", "variant", "image", args.label, "variant_emotion_label"])
    by_source: dict[str, list[dict]] = {}
    for r in sorted(augmented, key=lambda r: (r["source_id"], r["variant"])):
        by_source.setdefault(r["source_id"], []).append(r)
    faces = [r for r in inverted if r["source_id"] in by_source][:args.rows]
    if not faces:
        raise SystemExit("no inverted face (status ok) has augmented rows: check --inverted / --augmented")

    t, cap = args.tile, 34
    cols = 2 + args.variants
    sheet = Image.new("RGB", (cols * t, cap + len(faces) * (t + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, head in enumerate(["aligned input", "reconstruction"] + [f"variant {k + 1}" for k in range(args.variants)]):
        draw.text((c * t + 4, 8), head, fill="black")
    for i, face in enumerate(faces):
        y = cap + i * (t + cap)
        variants = by_source[face["source_id"]][:args.variants]
        carried = {str(v[args.label]) for v in variants}
        sheet.paste(png(face["aligned_image"], t), (0, y))
        sheet.paste(png(face["reconstruction_image"], t), (t, y))
        for k, v in enumerate(variants):
            sheet.paste(png(v["image"], t), ((2 + k) * t, y))
            draw.text(((2 + k) * t + 4, y + t + 17), f"judge: {v['variant_emotion_label']}", fill="gray")
        draw.text((4, y + t + 3), f"{face['source_id']}: {args.label} = {face[args.label]}; carried to the variants: "
                  f"{', '.join(sorted(carried))}", fill="black")
        draw.text((t + 4, y + t + 17), f"identity cos {face['identity_cosine']:.2f}", fill="gray")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"byof_figure: {len(faces)} faces x (input, reconstruction, {args.variants} variants) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
