"""The evaluate stage's report: Markdown and self-contained HTML from one list of blocks, so both
show the same numbers, formatted by the same `fmt` functions; and the trajectory figure (PIL).

Honesty rules: the findings open with the edit strength of every T (a T that does not edit has no
drift worth comparing); no drift reduction is stated for an attribute where either arm is not
editing or fools R; drift is compared at matched edit strength first and by the paper's fixed-target
protocol second; the report names every network that judged and whether it was in the training loop
or held out, how many faces and seeds, gives a bootstrap interval (seeds, then faces) for every
figure, and says "reduced at 95%" only when that interval excludes 0.
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import strength as ST
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

def sample_text(comparison: dict) -> str:
    seeds = comparison.get("n_seeds")
    per_arm = f" x {seeds[0]} + {seeds[1]} T's (baseline + HFLD seeds)" if seeds else ""
    return f"n = {comparison['n']} faces{per_arm}"


def verdict(what: str, scope: str, hfld_label: str, base: dict, hfld: dict, comparison: dict, confidence: float,
            unit: str, values: str = "") -> str:
    """One honest sentence about a paired comparison of drifts (lower is better): "reduced at 95%" only
    when the interval of the reduction excludes 0."""
    level = f"{round(confidence * 100):g}% CI"
    red, lo, hi = comparison["reduction_pct"], comparison["ci_low"], comparison["ci_high"]
    values = values or f"baseline {fmt(base['mean'])}{unit} vs {hfld_label} {fmt(hfld['mean'])}{unit}"
    values += f", {sample_text(comparison)}"
    if isinstance(red, float) and math.isnan(red):
        return f"{hfld_label}: {what} {scope} could not be compared (no finite drift; {values})."
    interval = f"[{fmt_pct(lo)}, {fmt_pct(hi)}]"
    if red > 0 and lo > 0:
        return (f"{hfld_label} reduced {what} {scope} by {fmt_pct(red)} ({level} of the reduction {interval}; "
                f"{values}): reduced at {round(confidence * 100):g}%.")
    if red > 0:
        return (f"{hfld_label} did not establish a reduction of {what} {scope}: {fmt_pct(red)} lower, but the "
                f"{level} {interval} includes 0 ({values}).")
    return (f"{hfld_label} did NOT reduce {what} {scope}: the reduction is {fmt_pct(red)} ({level} {interval}; "
            f"{values}).")


def verdict_text(v: str) -> str:
    """A strength verdict as report text: the failing ones in capitals."""
    return v.upper() if v in ST.FAILING else v


def strength_statement(a: str, strength: dict, labels: dict, floors: tuple[float, float]) -> str:
    """The first finding for an attribute: each arm's strength by every scorer, and its verdict."""
    parts = []
    for m in METHODS:
        by = strength[m]["by"]
        scored = ", ".join(f"{fmt_ci(v)} by {strength['scorers'][k]['label']}" for k, v in by.items())
        parts.append(f"{labels[m]} {scored}: {verdict_text(strength[m]['verdict'])}")
    return (f"Edit strength of {a} (mean P(x' | t = 1) - mean P(x' | t = 0), alpha = 1; floors {floors[0]:g} by R, "
            f"{floors[1]:g} by an independent judge): " + "; ".join(parts) + ".")


def matched_statements(a: str, matched: dict, hfld_label: str, confidence: float) -> list[str]:
    """Headline drifts (held-out judges) at each matched strength level."""
    out = []
    for level, entry in matched["levels"].items():
        scope = f"at matched strength {level} (by {matched['by_label']}) when editing {a}"
        for q in matched["headline"]:
            row, info = entry[q], matched["measures"][q]
            b, h, c = row["baseline"], row["hfld"], row["comparison"]
            unreached = [lbl for lbl, r in (("the baseline", b), (hfld_label, h)) if not math.isfinite(r["value"])]
            if unreached:
                out.append(f"No {info['label']} comparison {scope}: {' and '.join(unreached)} never reach(es) "
                           f"strength {level} on the alpha grid {matched['grid'][1:]} (extend alphas).")
                continue
            if c["reached_fraction"] < confidence:
                out.append(f"No {info['label']} claim {scope}: the level is reached in only "
                           f"{fmt_pct(100 * c['reached_fraction'])} of the bootstrap resamples.")
                continue
            values = (f"baseline {fmt(b['value'])}{info['unit']} at alpha {fmt(b['alpha'], 2)} vs {hfld_label} "
                      f"{fmt(h['value'])}{info['unit']} at alpha {fmt(h['alpha'], 2)}")
            out.append(verdict(info["label"], scope, hfld_label, {}, {}, c, confidence, info["unit"], values))
    return out


FIXED = "(fixed-target protocol t in {0, 1}, alpha = 1, not matched in strength)"


def fixed_target_statements(scope: str, res: dict, numbers: dict) -> list[str]:
    hfld_label = numbers["methods"]["hfld"]["label"]
    conf = numbers["confidence"]
    nets = numbers["networks"]
    out = []
    for key, j in res["emotion"].items():
        out.append(verdict(f"total emotion drift for judge {nets['judges'][key]['label']}", scope, hfld_label,
                           j["baseline"]["total_drift_pp"], j["hfld"]["total_drift_pp"], j["comparison"], conf, " pp"))
    for key, lm in res.get("held_out_landmarks", {}).items():
        out.append(verdict(f"landmark drift by {nets['landmark_judges'][key]['label']}", scope, hfld_label,
                           lm["baseline"], lm["hfld"], lm["comparison"], conf, ""))
    lm = res["landmarks"]
    out.append(verdict("landmark drift" + (" by the training landmark model H (in the HFLD loss)"
                                           if res.get("held_out_landmarks") else ""),
                       scope, hfld_label, lm["baseline"], lm["hfld"], lm["comparison"], conf, ""))
    if "identity" in res:
        ident = res["identity"]
        loss = {m: {"mean": 1 - ident[m]["mean"]} for m in METHODS}
        out.append(verdict("identity loss (1 - cosine similarity)", scope, hfld_label, loss["baseline"],
                           loss["hfld"], ident["comparison"], conf, ""))
    return out


def gate_reason(attribute: str, why: str) -> str:
    """Why a failed gate forbids a claim, for each way it failed."""
    out = ""
    if "NOT EDITING" in why:
        out += (f" A T that does not edit {attribute} cannot change an emotion by editing it, so its low drift is "
                "no achievement.")
    if "FOOLING R" in why:
        out += (f" A T that moves R but not an independent judge may exploit R's blind spots instead of changing "
                f"{attribute}, so its drift cannot be read as the effect of an edit.")
    if "UNCONFIRMED" in why:
        out += (f" Only R, the network T was trained against, sees this edit; the held-out judge neither "
                f"confirms nor contradicts it, so its drift is not stated as the effect of an edit of {attribute}.")
    return out


def statements(numbers: dict) -> list[str]:
    """The findings, in order: edit strength per attribute (first), the gate (no claim where a T does not
    edit or fools R), drift at matched strength (held-out judges), then the fixed-target protocol."""
    labels = {m: numbers["methods"][m]["label"] for m in METHODS}
    floors = (numbers["strength_floor"], numbers["judge_strength_floor"])
    out = [strength_statement(a, s, labels, floors) for a, s in numbers["strength"].items()]
    comparable = [a for a, g in numbers["gate"].items() if g["comparable"]]
    for a, g in numbers["gate"].items():
        if not g["comparable"]:
            out.append(f"No drift reduction is stated for {a}: {g['why']}.{gate_reason(a, g['why'])}")
    for a in comparable:
        out += matched_statements(a, numbers["matched"][a], labels["hfld"], numbers["confidence"])
    if comparable:
        every = len(comparable) == len(numbers["attributes"])
        scope = ("over all target attributes" if every else f"over the target attributes that edit ({', '.join(comparable)})")
        out += fixed_target_statements(f"{scope} {FIXED}", numbers["overall"], numbers)
        for a in comparable:
            out += fixed_target_statements(f"when editing {a} {FIXED}", numbers["attributes"][a], numbers)
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


def build_blocks(numbers: dict, figures: dict[str, Path], curves: dict[str, Path] | None = None) -> list:
    methods, nets = numbers["methods"], numbers["networks"]
    label = {m: methods[m]["label"] for m in METHODS}
    conf = f"{round(numbers['confidence'] * 100):g}%"
    n = numbers["n_samples"]
    seeds = numbers["seeds_per_arm"]
    if numbers["edit_mode"] == "target":
        edit_text = ("each target attribute a was edited with its column of T only, by s = t - R(x)_a "
                     "(the desired change of the attribute probability), with t = 0 (\"non-exist\" set) "
                     "and t = 1 (\"must-exist\" set)")
    else:
        amount = fmt(numbers["fixed_amount"], 2)
        edit_text = (f"each target attribute was edited with its column of T only, by the fixed amounts "
                     f"s = -{amount} (\"non-exist\" set) and s = +{amount} (\"must-exist\" set)")
    alphas = ", ".join(fmt(a, 2) for a in numbers["alphas"])
    blocks: list = [
        Heading(1, f"Evaluation: {label['baseline']} vs. {label['hfld']}"),
        Para(f"{n} faces of the fixed held-out set (seed {numbers['seed']}), preset `{nets['preset']}`, "
             f"{seeds['baseline']} baseline and {seeds['hfld']} HFLD T('s) (training seeds); {edit_text}, at the "
             f"edit scales alpha = {alphas} (s multiplied by alpha; alpha = 1 is the paper's protocol). Every "
             f"interval is a {conf} percentile bootstrap interval ({numbers['bootstrap_resamples']} resamples) that "
             "resamples each arm's T's (seeds), then faces within each: it includes the training variance only "
             "as far as there are seeds. Per-face drifts average the two extremes."),
        Heading(2, "Findings"),
        Para("First the edit strength of every T (a T that does not edit cannot change an emotion, so no drift "
             "reduction is stated for an attribute where either arm fails the strength gate); then drift at "
             "matched edit strength, by the held-out judges; then the paper's fixed-target protocol."),
        Bullets(list(numbers["statements"])),
    ]
    if numbers["warnings"] or nets["notes"]:
        blocks += [Heading(2, "Warnings and notes"), Bullets(list(numbers["warnings"]) + list(nets["notes"]))]
    blocks += strength_blocks(numbers, label)
    blocks += matched_blocks(numbers, label, curves or {})
    blocks += [Heading(2, "The paper's fixed-target protocol (t in {0, 1}, alpha = 1)"),
               Para("Tables I-V of the paper at the nominal edit (not matched in strength: an arm that edits less "
                    "drifts less for that reason alone). Rows marked \"extra\" are ours, not the paper's.")]
    for a, res in numbers["attributes"].items():
        blocks += attribute_blocks(a, res, label, nets, figures.get(a), numbers["gate"][a])
    blocks += overall_blocks(numbers["overall"], label, nets)
    blocks += networks_blocks(nets) + directions_blocks(methods)
    blocks += [Heading(2, "Definitions"), Bullets(DEFINITIONS)]
    return blocks


DEFINITIONS = [
    ("Edit strength of a: mean over faces of P_a(x' | t = 1) - P_a(x' | t = 0), the attribute model's "
     "probability on the must-exist minus the non-exist edit of the same face (1 = from certainly-not-a to "
     "certainly-a; 0 = no edit). NOT EDITING: strength by the training regressor R below its floor; FOOLING R: "
     "R's strength passes, a held-out attribute judge's does not."),
    ("Matched strength: every T is evaluated with s multiplied by alpha on a grid (alpha = 0 gives exactly strength "
     "0 and drift 0); the curve (strength(alpha), drift(alpha)), averaged over an arm's seeds, is read by linear "
     "interpolation where it first reaches the level; the alpha shown is where that happens."),
    ("Table V (the paper's): per emotion, mean over the must-exist set of p(x') minus mean over the non-exist set "
     "of p(x'), in percentage points (pp), signed."),
    ("Change ratio of attribute b when editing a: mean over faces of R_b(must-exist) - R_b(non-exist), "
     "divided by the same for a (so a's own ratio is 1; near 0 = untouched; signed); seeds' faces pooled."),
    "Per-emotion change (extra): mean |p(x') - p(x)| in pp, x the original face, x' the edited one.",
    ("Total emotion drift (extra): total-variation distance 0.5 * sum_k |p_k(x') - p_k(x)|, in pp "
     "(the probability mass that moved between emotions)."),
    ("Landmark drift (extra): mean Euclidean distance between the landmarks of x and x', divided by the "
     "inter-ocular distance of x (eye-group centroids) when the landmark model has two eye groups, "
     "otherwise in units of the image side. The training landmark model H sits in the HFLD loss (HFLD is "
     "trained to keep exactly this number low); the held-out landmark judges do not."),
    "Identity similarity (extra): cosine similarity of the face descriptors of x and x' (1 = same descriptor).",
    "Reduction: 100 * (1 - HFLD mean / baseline mean); positive means HFLD drifts less.",
]


def strength_blocks(numbers: dict, label: dict) -> list:
    blocks: list = [Heading(2, "Edit strength (alpha = 1)"),
                    Para(f"Floors: {fmt(numbers['strength_floor'], 2)} by the training regressor R (below: not "
                         f"editing), {fmt(numbers['judge_strength_floor'], 2)} by a held-out attribute judge (below, "
                         "with R passing: fooling R; UNCONFIRMED instead when that judge cannot reach its floor on "
                         "this generator's faces -- its natural span, the difference of its means over the quarter "
                         "of unedited faces R scores highest and the quarter R scores lowest, is below the floor -- "
                         "and the edit moves it at least half as much per unit of R as that natural variation does). "
                         "Per seed: the strength by R of each of the arm's T's.")]
    for a, st in numbers["strength"].items():
        scorers = list(st["scorers"])
        headers = ["method"] + [f"by {st['scorers'][k]['label']}" for k in scorers] + ["per seed (R)", "verdict"]
        rows = [[label[m]] + [fmt_ci(st[m]["by"][k]) for k in scorers]
                + [", ".join(fmt(v) for v in st[m]["by"][scorers[0]]["per_seed"]), verdict_text(st[m]["verdict"])]
                for m in METHODS]
        blocks += [Heading(3, f"{a}"), Table(headers, rows)]
        spans = st.get("natural_span", {})
        if spans:
            blocks.append(Para("Natural span on the unedited faces (R's top quarter minus its bottom quarter): "
                               + "; ".join(f"R {fmt(v['regressor'])}, {st['scorers'][k]['label']} {fmt(v['judge'])}"
                                           for k, v in spans.items()) + "."))
    return blocks


def matched_blocks(numbers: dict, label: dict, curves: dict[str, Path]) -> list:
    blocks: list = [Heading(2, "Drift at matched edit strength")]
    for a, matched in numbers["matched"].items():
        g = numbers["gate"][a]
        blocks.append(Heading(3, f"{a} (strength by {matched['by_label']})"))
        if not g["comparable"]:
            blocks.append(Para(f"No claim: {g['why']}. The numbers are shown for inspection only."))
        rows = []
        for level, entry in matched["levels"].items():
            for q, row in entry.items():
                info = matched["measures"][q]
                name = info["label"] + ("" if q in matched["headline"] else " (secondary: in the loop)")
                arms = [f"{fmt(row[m]['value'])} [{fmt(row[m]['ci_low'])}, {fmt(row[m]['ci_high'])}] at alpha "
                        f"{fmt(row[m]['alpha'], 2)}" if math.isfinite(row[m]["value"]) else "not reached"
                        for m in METHODS]
                reduction = fmt_reduction(row["comparison"]) if g["comparable"] else "no claim (strength gate)"
                rows.append([level, name, *arms, reduction])
        blocks.append(Table(["strength", "drift measure", label["baseline"], label["hfld"], "reduction by HFLD"], rows))
        if a in curves:
            blocks.append(Figure(curves[a], f"Drift against edit strength when editing {a}, both arms (points: the "
                                            f"alpha grid, bars: {round(numbers['confidence'] * 100):g}% intervals); "
                                            "dashed lines: the matched strength levels."))
    return blocks


def networks_blocks(nets: dict) -> list:
    lineage = {r["role"]: r["in_loop"] for r in nets["lineage"]}
    rows = [["generator", nets["generator"], nets["generator_id"], lineage.get("generator G", "")],
            ["attribute regressor R", nets["regressor"]["network"], ", ".join(nets["regressor"]["attributes"]),
             lineage.get("regressor R (regressor loss)", "")]]
    for key, j in nets["attribute_judges"].items():
        rows.append([f"attribute judge {key}", j["network"], ", ".join(j["attributes"]), j["in_loop"]])
    rows.append(["landmarks H", nets["landmarks"]["network"],
                 f"{nets['landmarks']['points']} points, drift normalised by {nets['landmarks']['normalised_by']}",
                 nets["landmarks"]["in_loop"]])
    for key, j in nets["landmark_judges"].items():
        rows.append([f"landmark judge {key}", j["network"], f"{j['points']} points, drift normalised by "
                     f"{j['normalised_by']}", j["in_loop"]])
    for key, j in nets["judges"].items():
        rows.append([f"emotion judge: {j['role']}", j["network"], key, j["in_loop"]])
    identity = next((r for r in nets["lineage"] if r["role"].startswith("identity")), None)
    rows.append(["identity", nets["identity"] or "none in this preset: identity similarity not measured", "",
                 identity["in_loop"] + (" (the perceptual network F)" if identity["in_loop"] != "held out" else "")
                 if identity else ""])
    return [Heading(2, "Networks that judged"), Table(["role", "network", "detail", "in the loop?"], rows)]


def directions_blocks(methods: dict) -> list:
    rows = []
    for m in METHODS:
        for d in methods[m]["seeds"]:
            lambdas = ", ".join(f"{k} {v:g}" for k, v in d["lambdas"].items()) if d["lambdas"] else "unknown"
            rows.append([d["label"], str(d["seed_index"]) + (f" (train seed {d['train_seed']})"
                                                             if d.get("train_seed") is not None else ""),
                         d["source"], lambdas, ", ".join(d["landmark_groups"]) or "all",
                         str(d["step"]) if d["step"] is not None else "unknown", (d["sha256"] or "")[:16]])
    return [Heading(2, "Directions compared"),
            Table(["method", "T", "file", "lambdas", "HFLD landmark groups", "steps", "sha256"], rows)]


def landmark_rows(lm: dict, claim: bool) -> list[list[str]]:
    rows = [["all points", fmt_ci(lm["baseline"]), fmt_ci(lm["hfld"])]]
    rows += [[g, fmt_ci(v["baseline"]), fmt_ci(v["hfld"])] for g, v in lm["per_group"].items()]
    rows.append(["reduction by HFLD", "", fmt_reduction(lm["comparison"]) if claim else "no claim (strength gate)"])
    return rows


def attribute_blocks(a: str, res: dict, label: dict, nets: dict, figure: Path | None, gate: dict | None = None) -> list:
    claim = gate is None or gate["comparable"]
    blocks: list = [Heading(2, f"Editing {a}")]
    if not claim:
        blocks.append(Para(f"No claim for {a}: {gate['why']}."))
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
        rows = [[emo, fmt_ci(e["baseline"]["table_v_pp"][emo]), fmt_ci(e["hfld"]["table_v_pp"][emo])]
                for emo in e["baseline"]["table_v_pp"]]
        blocks.append(Para("The paper's Table V: mean p(x') over the must-exist set minus over the non-exist set (pp)."))
        blocks.append(Table(["emotion (pp)", label["baseline"], label["hfld"]], rows))
        rows = [[f"|change| vs original, {emo} (extra)", fmt_ci(e["baseline"]["per_emotion_pp"][emo]),
                 fmt_ci(e["hfld"]["per_emotion_pp"][emo])] for emo in e["baseline"]["per_emotion_pp"]]
        rows.append(["total drift (TV, extra)", fmt_ci(e["baseline"]["total_drift_pp"]), fmt_ci(e["hfld"]["total_drift_pp"])])
        rows.append(["reduction by HFLD", "", fmt_reduction(e["comparison"]) if claim else "no claim (strength gate)"])
        blocks.append(Table(["our extras (pp)", label["baseline"], label["hfld"]], rows))
    for key, lm in res.get("held_out_landmarks", {}).items():
        blocks.append(Heading(3, f"Landmark drift, held-out judge {key} (extra)"))
        blocks.append(Table(["landmarks", label["baseline"], label["hfld"]], landmark_rows(lm, claim)))
    blocks.append(Heading(3, "Landmark drift" + (", training landmarks H (extra; H is in the HFLD loss)"
                                                 if res.get("held_out_landmarks") else " (extra)")))
    blocks.append(Table(["landmarks", label["baseline"], label["hfld"]], landmark_rows(res["landmarks"], claim)))
    if "identity" in res:
        ident = res["identity"]
        blocks.append(Heading(3, "Identity similarity (extra)"))
        blocks.append(Table(["", label["baseline"], label["hfld"]],
                            [["cosine similarity", fmt_ci(ident["baseline"], 4), fmt_ci(ident["hfld"], 4)],
                             ["reduction of 1 - similarity", "",
                              fmt_reduction(ident["comparison"]) if claim else "no claim (strength gate)"]]))
    if figure is not None:
        blocks.append(Heading(3, "Trajectories (Fig. 4)"))
        blocks.append(Figure(figure, f"Editing {a}: each face's original, then the edit from the non-exist "
                                     f"to the must-exist extreme; {label['baseline']} above {label['hfld']} "
                                     "(each arm's first T)."))
    return blocks


def overall_blocks(overall: dict, label: dict, nets: dict) -> list:
    heading = Heading(2, "Over the target attributes that pass the strength gate (fixed-target protocol)")
    if not overall["attributes"]:
        return [heading, Para("None passes the strength gate: no overall figure is stated.")]
    rows = []
    for key, e in overall["emotion"].items():
        rows.append([f"total emotion drift (pp), {nets['judges'][key]['label']}", fmt_ci(e["baseline"]["total_drift_pp"]),
                     fmt_ci(e["hfld"]["total_drift_pp"]), fmt_reduction(e["comparison"])])
    for key, lm in overall["held_out_landmarks"].items():
        rows.append([f"landmark drift, {nets['landmark_judges'][key]['label']}", fmt_ci(lm["baseline"]),
                     fmt_ci(lm["hfld"]), fmt_reduction(lm["comparison"])])
    lm = overall["landmarks"]
    rows.append(["landmark drift" + (", training H (in the loop)" if overall["held_out_landmarks"] else ""),
                 fmt_ci(lm["baseline"]), fmt_ci(lm["hfld"]), fmt_reduction(lm["comparison"])])
    if "identity" in overall:
        ident = overall["identity"]
        rows.append(["identity similarity (reduction: of 1 - similarity)", fmt_ci(ident["baseline"], 4),
                     fmt_ci(ident["hfld"], 4), fmt_reduction(ident["comparison"])])
    return [heading, Para(f"Attributes: {', '.join(overall['attributes'])}."),
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


def render(numbers: dict, figures: dict[str, Path], curves: dict[str, Path] | None = None) -> tuple[str, str]:
    """(Markdown, HTML) of the evaluation numbers; figures / curves: attribute -> trajectory / drift-vs-strength PNG."""
    blocks = build_blocks(numbers, figures, curves)
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


# ---------------------------------------------------------------------------------------------
# Drift against strength
# ---------------------------------------------------------------------------------------------

def write_strength_figure(path: Path, attribute: str, matched: dict, labels: dict[str, str], numbers: dict) -> Path:
    """One figure per attribute: a panel per drift measure (held-out first), drift (y) against strength
    (x, by matched["by_label"]) over the alpha grid for both arms, with interval bars on both axes and
    the matched strength levels as dashed lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    measures = list(matched["measures"])
    cols = min(len(measures), 2)
    rows = math.ceil(len(measures) / cols)
    fig = MplFigure(figsize=(5.2 * cols, 3.9 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for k, q in enumerate(measures):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, m in enumerate(METHODS):
            st, dr = matched["curves"][m]["strength"], matched["curves"][m][q]
            x, y = np.array([p["mean"] for p in st]), np.array([p["mean"] for p in dr])
            xerr = np.abs(np.array([[p["mean"] - p["ci_low"], p["ci_high"] - p["mean"]] for p in st]).T)
            yerr = np.abs(np.array([[p["mean"] - p["ci_low"], p["ci_high"] - p["mean"]] for p in dr]).T)
            ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), marker="o", ms=4, capsize=2,
                        color=f"C{i}", label=labels[m])
        for level in numbers["strength_levels"]:
            ax.axvline(level, color="grey", linestyle="--", linewidth=0.8)
        info = matched["measures"][q]
        title = info["label"] + ("" if q in matched["headline"] else " (secondary: in the loop)")
        ax.set_title(textwrap.fill(title, 64), fontsize=8)
        ax.set_xlabel(f"edit strength of {attribute}, by {matched['by_label']}", fontsize=7)
        ax.set_ylabel("drift" + (" (pp)" if info["unit"].strip() == "pp" else ""), fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Drift vs edit strength, editing {attribute} (alpha grid {', '.join(fmt(a, 2) for a in matched['grid'])})",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
