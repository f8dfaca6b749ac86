"""The evaluate stage's report: Markdown and self-contained HTML from one list of blocks, so both
show the same numbers, formatted by the same `fmt` functions; and the trajectory figure (PIL).

Honesty rules: the report names the networks that judged and how many faces, gives a bootstrap
confidence interval for every drift figure, and states plainly, per judge and attribute, whether
HFLD reduced the drift or did NOT (a reduction whose interval includes 0 is called not established).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_bytes
from pipeline.stages.evaluate.config import METHODS



# ---------------------------------------------------------------------------------------------
# Number formatting (the only place numbers become text)
# ---------------------------------------------------------------------------------------------

def fmt(x, digits: int = 3) -> str:
    """A number as report text: `digits` decimals, or (digits >= 2) `digits` significant digits below
    0.1, so 0.000412 does not print as 0.000; nan/inf spelled out."""
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if digits >= 2 and 0 < abs(x) < 0.1:
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def fmt_pct(x) -> str:
    return fmt(x, 1) + "%"


def fmt_ci(s: dict, digits: int = 3) -> str:
    """"mean [low, high]" of a summary dict."""
    return f"{fmt(s['mean'], digits)} [{fmt(s['ci_low'], digits)}, {fmt(s['ci_high'], digits)}]"


def fmt_reduction(c: dict) -> str:
    return f"{fmt_pct(c['reduction_pct'])} [{fmt_pct(c['ci_low'])}, {fmt_pct(c['ci_high'])}]"


def fmt_ratio(r: dict) -> str:
    return f"{fmt(r['ratio'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"


# ---------------------------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------------------------

def verdict(what: str, scope: str, hfld_label: str, base: dict, hfld: dict, comparison: dict, confidence: float,
            unit: str) -> str:
    """One honest sentence about a paired comparison of drifts (lower is better)."""
    level = f"{round(confidence * 100):g}% CI"
    red, lo, hi = comparison["reduction_pct"], comparison["ci_low"], comparison["ci_high"]
    values = (f"baseline {fmt(base['mean'])}{unit} vs {hfld_label} {fmt(hfld['mean'])}{unit}, "
              f"n = {comparison['n']} faces")
    if isinstance(red, float) and math.isnan(red):
        return f"{hfld_label}: {what} {scope} could not be compared (no finite drift; {values})."
    if red > 0:
        text = (f"{hfld_label} reduced {what} {scope} by {fmt_pct(red)} ({level} of the reduction "
                f"[{fmt_pct(lo)}, {fmt_pct(hi)}]; {values}).")
        if not (lo > 0):
            text += " The interval includes 0: this sample does not establish a reduction."
        return text
    return (f"{hfld_label} did NOT reduce {what} {scope}: the reduction is {fmt_pct(red)} ({level} "
            f"[{fmt_pct(lo)}, {fmt_pct(hi)}]; {values}).")


def statements(numbers: dict) -> list[str]:
    """Every comparison as a sentence: per judge (overall, then per attribute), landmarks, identity."""
    hfld_label = numbers["methods"]["hfld"]["label"]
    conf = numbers["confidence"]
    judges = numbers["networks"]["judges"]
    out = []
    blocks = [("over all target attributes", numbers["overall"])]
    blocks += [(f"when editing {a}", res) for a, res in numbers["attributes"].items()]
    for scope, res in blocks:
        for key, j in res["emotion"].items():
            out.append(verdict(f"total emotion drift for judge {judges[key]['label']}", scope, hfld_label,
                               j["baseline"]["total_drift_pp"], j["hfld"]["total_drift_pp"], j["comparison"],
                               conf, " pp"))
        lm = res["landmarks"]
        out.append(verdict("landmark drift", scope, hfld_label, lm["baseline"], lm["hfld"], lm["comparison"],
                           conf, ""))
        if "identity" in res:
            ident = res["identity"]
            loss = {m: {"mean": 1 - ident[m]["mean"]} for m in METHODS}
            out.append(verdict("identity loss (1 - cosine similarity)", scope, hfld_label, loss["baseline"],
                               loss["hfld"], ident["comparison"], conf, ""))
    return out


WEAK_EDIT = 0.1            # target change (must-exist mean - non-exist mean) below this: the edit barely works
WEAKER_EDIT_FRACTION = 0.75  # HFLD's target change below this fraction of the baseline's: not a like-for-like pair


def edit_warnings(numbers: dict) -> list[str]:
    """Warnings that make drift comparisons mean little: an edit that does not move its attribute, or
    an HFLD edit much weaker than the baseline's (less change everywhere is then no achievement)."""
    out = []
    for a, res in numbers["attributes"].items():
        change = {m: res["edit"][m]["high_mean"] - res["edit"][m]["low_mean"] for m in METHODS}
        for m in METHODS:
            if change[m] < WEAK_EDIT:
                out.append(f"{numbers['methods'][m]['label']} barely edits {a}: its mean moves from "
                           f"{fmt(res['edit'][m]['low_mean'])} (non-exist set) to {fmt(res['edit'][m]['high_mean'])} "
                           f"(must-exist set); drift figures for {a} say little about this T (undertrained?)")
        if change["baseline"] >= WEAK_EDIT and change["hfld"] < WEAKER_EDIT_FRACTION * change["baseline"]:
            out.append(f"{numbers['methods']['hfld']['label']} edits {a} less strongly than the baseline "
                       f"(target change {fmt(change['hfld'])} vs {fmt(change['baseline'])}): part of any drift "
                       "reduction may come from the weaker edit")
    return out


# ---------------------------------------------------------------------------------------------
# Document blocks -> Markdown / HTML
# ---------------------------------------------------------------------------------------------

@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path
    caption: str


def build_blocks(numbers: dict, figures: dict[str, Path]) -> list:
    methods, nets = numbers["methods"], numbers["networks"]
    label = {m: methods[m]["label"] for m in METHODS}
    conf = f"{round(numbers['confidence'] * 100):g}%"
    n = numbers["n_samples"]
    if numbers["edit_mode"] == "target":
        edit_text = ("each target attribute a was edited with its column of T only, by s = t - R(x)_a "
                     "(the desired change of the attribute probability), with t = 0 (\"non-exist\" set) "
                     "and t = 1 (\"must-exist\" set)")
    else:
        amount = fmt(numbers["fixed_amount"], 2)
        edit_text = (f"each target attribute was edited with its column of T only, by the fixed amounts "
                     f"s = -{amount} (\"non-exist\" set) and s = +{amount} (\"must-exist\" set)")
    blocks: list = [
        Heading(1, f"Evaluation: {label['baseline']} vs. {label['hfld']}"),
        Para(f"{n} faces of the fixed held-out set (seed {numbers['seed']}), preset `{nets['preset']}`; "
             f"{edit_text}. Every interval is a {conf} percentile bootstrap interval over faces "
             f"({numbers['bootstrap_resamples']} resamples); per-face drifts average the two extremes."),
        Heading(2, "Findings"),
        Bullets(list(numbers["statements"])),
    ]
    if numbers["warnings"] or nets["notes"]:
        blocks += [Heading(2, "Warnings and notes"), Bullets(list(numbers["warnings"]) + list(nets["notes"]))]
    blocks += networks_blocks(nets) + directions_blocks(methods)
    for a, res in numbers["attributes"].items():
        blocks += attribute_blocks(a, res, label, nets, figures.get(a))
    blocks += overall_blocks(numbers["overall"], label, nets)
    blocks += [Heading(2, "Definitions"), Bullets(DEFINITIONS)]
    return blocks


DEFINITIONS = [
    ("Change ratio of attribute b when editing a: mean over faces of R_b(must-exist) - R_b(non-exist), "
     "divided by the same for a (so a's own ratio is 1; near 0 = untouched; signed)."),
    "Per-emotion change: mean |p(x') - p(x)| in percentage points (pp), x the original face, x' the edited one.",
    ("Total emotion drift: total-variation distance 0.5 * sum_k |p_k(x') - p_k(x)|, in pp "
     "(the probability mass that moved between emotions)."),
    ("Landmark drift: mean Euclidean distance between the landmarks of x and x', divided by the "
     "inter-ocular distance of x (eye-group centroids) when the landmark model has two eye groups, "
     "otherwise in units of the image side."),
    "Identity similarity: cosine similarity of the face descriptors of x and x' (1 = same descriptor).",
    "Reduction: 100 * (1 - HFLD mean / baseline mean); positive means HFLD drifts less.",
]


def networks_blocks(nets: dict) -> list:
    rows = [["generator", nets["generator"], nets["generator_id"]],
            ["attribute regressor", nets["regressor"]["network"], ", ".join(nets["regressor"]["attributes"])],
            ["landmarks", nets["landmarks"]["network"],
             f"{nets['landmarks']['points']} points, drift normalised by {nets['landmarks']['normalised_by']}"]]
    for key, j in nets["judges"].items():
        rows.append([f"emotion judge: {j['role']}", j["network"], key])
    rows.append(["identity", nets["identity"] or "none in this preset: identity similarity not measured", ""])
    return [Heading(2, "Networks that judged"), Table(["role", "network", "detail"], rows)]


def directions_blocks(methods: dict) -> list:
    rows = []
    for m in METHODS:
        d = methods[m]
        lambdas = ", ".join(f"{k} {v:g}" for k, v in d["lambdas"].items()) if d["lambdas"] else "unknown"
        rows.append([d["label"], d["source"], lambdas, ", ".join(d["landmark_groups"]) or "all",
                     str(d["step"]) if d["step"] is not None else "unknown", (d["sha256"] or "")[:16]])
    return [Heading(2, "Directions compared"),
            Table(["method", "file", "lambdas", "HFLD landmark groups", "steps", "sha256"], rows)]


def attribute_blocks(a: str, res: dict, label: dict, nets: dict, figure: Path | None) -> list:
    blocks: list = [Heading(2, f"Editing {a}")]
    blocks.append(Para(f"Mean regressor output for {a} on the original faces and after each edit "
                       "(an edit that works moves the non-exist set towards 0 and the must-exist set towards 1)."))
    blocks.append(Table(["method", "original", "non-exist set", "must-exist set"],
                        [[label[m], fmt(res["edit"][m]["original_mean"]), fmt(res["edit"][m]["low_mean"]),
                          fmt(res["edit"][m]["high_mean"])] for m in METHODS]))
    ratios = res["change_ratios"]
    blocks.append(Heading(3, f"Change ratios of other attributes (top {len(res['top_k'])}, Tables I-III)"))
    if res["top_k"]:
        blocks.append(Table(["attribute", label["baseline"], label["hfld"]],
                            [[b, fmt_ratio(ratios["baseline"][b]), fmt_ratio(ratios["hfld"][b])] for b in res["top_k"]]))
    else:
        blocks.append(Para("The regressor knows no other attribute."))
    if res["gestures"]:
        blocks.append(Heading(3, "Gesture features (Table IV)"))
        blocks.append(Table(["gesture", label["baseline"], label["hfld"]],
                            [[g, fmt_ratio(ratios["baseline"][g]), fmt_ratio(ratios["hfld"][g])] for g in res["gestures"]]))
    for key, e in res["emotion"].items():
        judge = nets["judges"][key]["label"]
        blocks.append(Heading(3, f"Emotion change, judge {judge} (Table V)"))
        rows = [[emo, fmt_ci(e["baseline"]["per_emotion_pp"][emo]), fmt_ci(e["hfld"]["per_emotion_pp"][emo])]
                for emo in e["baseline"]["per_emotion_pp"]]
        rows.append(["total drift (TV)", fmt_ci(e["baseline"]["total_drift_pp"]), fmt_ci(e["hfld"]["total_drift_pp"])])
        rows.append(["reduction by HFLD", "", fmt_reduction(e["comparison"])])
        blocks.append(Table(["emotion (pp)", label["baseline"], label["hfld"]], rows))
    lm = res["landmarks"]
    blocks.append(Heading(3, "Landmark drift"))
    rows = [["all points", fmt_ci(lm["baseline"]), fmt_ci(lm["hfld"])]]
    rows += [[g, fmt_ci(v["baseline"]), fmt_ci(v["hfld"])] for g, v in lm["per_group"].items()]
    rows.append(["reduction by HFLD", "", fmt_reduction(lm["comparison"])])
    blocks.append(Table(["landmarks", label["baseline"], label["hfld"]], rows))
    if "identity" in res:
        ident = res["identity"]
        blocks.append(Heading(3, "Identity similarity"))
        blocks.append(Table(["", label["baseline"], label["hfld"]],
                            [["cosine similarity", fmt_ci(ident["baseline"], 4), fmt_ci(ident["hfld"], 4)],
                             ["reduction of 1 - similarity", "", fmt_reduction(ident["comparison"])]]))
    if figure is not None:
        blocks.append(Heading(3, "Trajectories (Fig. 4)"))
        blocks.append(Figure(figure, f"Editing {a}: each face's original, then the edit from the non-exist "
                                     f"to the must-exist extreme; {label['baseline']} above {label['hfld']}."))
    return blocks


def overall_blocks(overall: dict, label: dict, nets: dict) -> list:
    rows = []
    for key, e in overall["emotion"].items():
        rows.append([f"total emotion drift (pp), {nets['judges'][key]['label']}", fmt_ci(e["baseline"]["total_drift_pp"]),
                     fmt_ci(e["hfld"]["total_drift_pp"]), fmt_reduction(e["comparison"])])
    lm = overall["landmarks"]
    rows.append(["landmark drift", fmt_ci(lm["baseline"]), fmt_ci(lm["hfld"]), fmt_reduction(lm["comparison"])])
    if "identity" in overall:
        ident = overall["identity"]
        rows.append(["identity similarity (reduction: of 1 - similarity)", fmt_ci(ident["baseline"], 4),
                     fmt_ci(ident["hfld"], 4), fmt_reduction(ident["comparison"])])
    return [Heading(2, "Over all target attributes"),
            Table(["figure", label["baseline"], label["hfld"], "reduction by HFLD"], rows)]


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(md_cell(h) for h in b.headers) + " |")
            lines.append("|" + "|".join("---" for _ in b.headers) + "|")
            lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.path.name})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


CSS = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:0.5em 0 1.2em}th,td{border:1px solid #bbb;padding:0.25em 0.6em;"
       "text-align:left}th{background:#eee}img{max-width:100%;image-rendering:pixelated}"
       "li{margin:0.3em 0}figcaption{font-style:italic}")


def render_html(blocks: list, title: str) -> str:
    """A single HTML file: inline CSS, images as base64 data URIs, no external resource."""
    e = html.escape
    head = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>")
    parts = [head]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{e(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render(numbers: dict, figures: dict[str, Path]) -> tuple[str, str]:
    """(Markdown, HTML) of the evaluation numbers; figures: attribute -> PNG path."""
    blocks = build_blocks(numbers, figures)
    title = blocks[0].text
    return render_markdown(blocks), render_html(blocks, title)


# ---------------------------------------------------------------------------------------------
# Trajectory figure
# ---------------------------------------------------------------------------------------------

def column_captions(cfg, steps: int) -> list[str]:
    if cfg.edit_mode == "target":
        values = np.linspace(0, 1, steps)
        return ["original"] + [f"t={v:.2f}" for v in values]
    values = np.linspace(-cfg.fixed_amount, cfg.fixed_amount, steps)
    return ["original"] + [f"s={v:+.2f}" for v in values]


def write_trajectory_figure(path: Path, attribute: str, images: dict[str, np.ndarray], labels: dict[str, str],
                            cfg) -> Path:
    """Grid PNG: per face, one row per method (baseline above HFLD), columns original + edit steps.

    images: method -> uint8 [faces, columns, H, W, 3]. Small images are enlarged (nearest) to ~128 px.
    """
    from PIL import Image, ImageDraw

    first = images[METHODS[0]]
    n_faces, n_cols, h, w, _ = first.shape
    zoom = max(1, 128 // max(h, w))
    ch, cw = h * zoom, w * zoom
    left, top, gap, pad = 150, 24, 10, 2
    width = left + n_cols * (cw + pad)
    height = top + n_faces * (len(METHODS) * (ch + pad) + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(column_captions(cfg, n_cols - 1)):
        draw.text((left + c * (cw + pad) + 2, 6), text, fill="black")
    y = top
    for f in range(n_faces):
        for m in METHODS:
            draw.text((4, y + ch // 2 - 14), f"face {f}", fill="black")
            draw.text((4, y + ch // 2 + 2), labels[m][:24], fill="black")
            for c in range(n_cols):
                tile = Image.fromarray(images[m][f, c]).resize((cw, ch), Image.NEAREST)
                canvas.paste(tile, (left + c * (cw + pad), y))
            y += ch + pad
        y += gap
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
