"""The held-out quality check of `hfld invert`: invert faces whose latent we know.

    hfld invert-check --preset starter --n-faces 200          # on a GPU: minutes; CPU: slow

The preset's generator makes `n_faces` faces from a stream no other stage draws from
(Stream.INVERT_CHECK: never seen by training, tuning, evaluation or generation), they are written as
PNG files with a CSV of ids and the training emotion judge's label, and the real path inverts them:
`run_invert` on that CSV (decode, detect, align, project, measure). Then, over the faces found:

    identity cosine   held-out descriptor, aligned input vs reconstruction (from the invert output)
    landmark error    preset landmark model, inter-ocular units (in the loss; reported for drift)
    emotion agreement the emotion judge's label on the aligned input vs the reconstruction, and on
                      the generated face as written vs the reconstruction
    ... by margin     (an extra, not a target) the agreement among faces whose input label the judge
                      decided by a top-2 probability margin >= 0.05 / 0.1 / 0.2, and the median margin
                      where the label held and where it changed: are the misses the judge's near-ties?
    latent recovery   mean over latent layers of |w_hat - w| / w_std (w_std: spread of mapped latents,
                      so the mean latent, where the optimisation starts, scores about 1)

The alignment re-frames each face to the preset's template, so the crop is close to, not exactly, the
generated face: latent recovery measures the whole path. `--set invert.align.method=none` isolates the
projection (the generated faces are already framed).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.core.config import require, to_dict
from pipeline.core.io import atomic_write_bytes
from pipeline.core.metrics import eye_groups
from pipeline.core.paths import check_output_locations
from pipeline.core.sampling import latents_from_z
from pipeline.core.seeding import Stream, rng_for
from pipeline.infra.tracking import Tracker, stage_run
from pipeline.presets import build_bundle
from pipeline.stages.invert.config import InputConfig, InvertConfig
from pipeline.stages.invert.job import prepare
from pipeline.stages.invert.project import Projector
from pipeline.stages.invert.stage import run_invert

IDENTITY_TARGET, SHARE_TARGET, AGREEMENT_TARGET = 0.9, 0.9, 0.9
MARGINS = (0.05, 0.1, 0.2)      # top-2 probability margins of the emotion judge on the input (an extra)


@dataclass(frozen=True)
class InvertCheckConfig:
    """invert: the invert settings (its input is the generated faces; leave input.path empty).
    n_faces: faces to generate and invert. seed: their seed (stream INVERT_CHECK).
    output_dir: "" = <invert.work_dir>/invert-check-<preset>-seed<seed>."""
    invert: InvertConfig = field(default_factory=InvertConfig)
    n_faces: int = 200
    seed: int = 0
    output_dir: str = ""

    def __post_init__(self):
        require(self.n_faces >= 1, "n_faces", self.n_faces, "must be >= 1")
        require(not self.invert.input.path, "invert.input.path", self.invert.input.path,
                "is made by the check (its generated faces); leave it empty")

    @property
    def out_dir(self) -> Path:
        name = f"invert-check-{self.invert.model.preset}-seed{self.seed}"
        return Path(self.output_dir or Path(self.invert.work_dir) / name).expanduser().resolve()


@dataclass
class InvertCheckResult:
    out_dir: Path
    report_json: Path
    report_md: Path
    metrics: dict
    mlflow_run_id: str | None = None


@torch.no_grad()
def write_faces(cfg: InvertCheckConfig, folder: Path) -> tuple[Path, np.ndarray]:
    """Generate the faces (PNG) and faces.csv (file, face_id, emotion_label); returns the CSV path and
    the true latents [n, L, w_dim]."""
    from PIL import Image
    bundle = build_bundle(cfg.invert.model, "cpu")
    g = bundle.generator
    labels = list(getattr(bundle.emotion, "labels", [f"class{i}" for i in range(7)]))
    folder.mkdir(parents=True, exist_ok=True)
    truths, lines = [], ["file,face_id,emotion_label"]
    for start in range(0, cfg.n_faces, 32):
        index = list(range(start, min(cfg.n_faces, start + 32)))
        z = torch.stack([torch.randn(int(g.z_dim), generator=rng_for(cfg.seed, Stream.INVERT_CHECK, i)) for i in index])
        wplus = latents_from_z(g, z, 1.0)
        images = g.synthesis(wplus, "const")
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        emotion = bundle.emotion(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1).argmax(1)
        for k, i in enumerate(index):
            name = f"face-{i:05d}.png"
            Image.fromarray(pixels[k]).save(folder / name)
            lines.append(f"{name},face-{i:05d},{labels[int(emotion[k])]}")
        truths.append(wplus.numpy())
    csv = folder / "faces.csv"
    atomic_write_bytes(csv, ("\n".join(lines) + "\n").encode())
    return csv, np.concatenate(truths)


def latent_errors(estimate: np.ndarray, truth: np.ndarray, w_avg: np.ndarray, w_std: float) -> tuple[np.ndarray, np.ndarray]:
    """([n] mean over layers of |w_hat - w| / w_std, [n] the same for the mean latent, the start)."""
    err = np.linalg.norm(estimate - truth, axis=2).mean(axis=1) / w_std
    start = np.linalg.norm(w_avg[None, None, :] - truth, axis=2).mean(axis=1) / w_std
    return err, start


def summarise(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)),
            "p90": float(np.quantile(v, 0.9)), "n": int(len(v))} if len(v) else {"n": 0}


def top2_margins(probs: np.ndarray) -> np.ndarray:
    """[N] gap between the judge's two most probable emotions, from its probabilities [N, K]."""
    ranked = np.sort(probs, axis=1)
    return ranked[:, -1] - ranked[:, -2]


def agreement_by_margin(margins: np.ndarray, agree: np.ndarray) -> dict:
    """Emotion agreement among the faces whose input label the judge decided by at least each margin,
    and the median margin where the label held and where it changed: near-ties (a small margin on
    the input) change label under any small reconstruction error, so this says whether the misses
    are the judge's boundary cases or lost expressions."""
    def median(x):
        return float(np.median(x)) if len(x) else None
    return {"by_min_margin": [{"min_margin": th, "faces": int((margins >= th).sum()),
                               "agreement": float(agree[margins >= th].mean()) if (margins >= th).any() else None}
                              for th in MARGINS],
            "median_margin_agreed": median(margins[agree]), "median_margin_changed": median(margins[~agree])}


def check_metrics(table, truth: np.ndarray, w_avg: np.ndarray, w_std: float, n_latent: int, w_dim: int) -> dict:
    cols = table.to_pydict()
    ok = np.array([s == "ok" for s in cols["status"]])
    index = np.asarray(cols["source_index"])[ok]
    est = np.array([w for w, k in zip(cols["wplus"], ok) if k], np.float32).reshape(-1, n_latent, w_dim)
    err, start = latent_errors(est, truth[index], w_avg, w_std) if ok.any() else (np.zeros(0), np.zeros(0))
    ident = np.asarray([v for v, k in zip(cols["identity_cosine"], ok) if k], np.float64)
    agree = np.asarray([v for v, k in zip(cols["emotion_agreement"], ok) if k], bool)
    written = np.asarray([a == b for a, b, k in zip(cols["emotion_label"], cols["reconstruction_emotion_label"], ok) if k])
    probs = [p for p, k in zip(cols["source_emotion"], ok) if k]
    margins = top2_margins(np.asarray(probs, np.float64)) if probs else np.zeros(0)
    share = float((ident >= IDENTITY_TARGET).mean()) if len(ident) else 0.0
    agreement = float(agree.mean()) if len(agree) else 0.0
    return {
        "faces": int(len(ok)), "found": int(ok.sum()),
        "no_face": int(sum(s == "no_face" for s in cols["status"])),
        "identity_cosine": summarise(ident), f"identity_cosine_ge_{IDENTITY_TARGET}": share,
        "landmark_error": summarise(np.asarray([v for v, k in zip(cols["landmark_error"], ok) if k])),
        "emotion_agreement_aligned": agreement,
        "emotion_agreement_generated": float(written.mean()) if len(written) else 0.0,
        "emotion_agreement_by_input_margin": agreement_by_margin(margins, agree),
        "psnr": summarise(np.asarray([v for v, k in zip(cols["psnr"], ok) if k])),
        "latent_error": summarise(err), "latent_error_at_start": summarise(start),
        "targets": {"identity": f">= {IDENTITY_TARGET} for >= {SHARE_TARGET:.0%} of faces",
                    "identity_met": share >= SHARE_TARGET,
                    "emotion": f"agreement >= {AGREEMENT_TARGET:.0%}", "emotion_met": agreement >= AGREEMENT_TARGET},
    }


def markdown(cfg: InvertCheckConfig, m: dict, facts, alignment: str) -> str:
    def row(name, s):
        return (f"| {name} | {s['mean']:.4f} | {s['median']:.4f} | {s['p10']:.4f} | {s['p90']:.4f} |"
                if s.get("n") else f"| {name} | - | - | - | - |")
    t = m["targets"]
    return "\n".join([
        f"# Inversion check: preset {cfg.invert.model.preset}, {cfg.n_faces} held-out faces (seed {cfg.seed})", "",
        f"Generator {facts.generator_id} ({facts.latent_space} latents [{facts.n_latent}, {facts.w_dim}]); alignment "
        f"{alignment}; {cfg.invert.projection.steps} steps; identity by {facts.heldout_identity} "
        f"(not in the loss), emotion by {facts.emotion_judge}"
        + (f"; expression term {facts.expression_term} (in the loss, weight {cfg.invert.projection.losses.expression:g}, "
           f"{cfg.invert.projection.losses.expression_kind})" if facts.expression_term else "") + ".", "",
        f"Faces found: {m['found']} of {m['faces']} (no face: {m['no_face']}).", "",
        "| measure | mean | median | p10 | p90 |", "|---|---|---|---|---|",
        row("identity cosine (held-out descriptor)", m["identity_cosine"]),
        row("landmark error (inter-ocular units)" if eye_groups(facts.landmark_groups) else
            "landmark error (image sides: no eye groups)", m["landmark_error"]),
        row("PSNR (dB)", m["psnr"]),
        row("latent recovery error (/ w_std)", m["latent_error"]),
        row("... of the mean latent (the start)", m["latent_error_at_start"]), "",
        f"- identity cosine >= {IDENTITY_TARGET}: {m[f'identity_cosine_ge_{IDENTITY_TARGET}']:.1%} of found faces "
        f"(target {t['identity']}: {'met' if t['identity_met'] else 'NOT met'})",
        f"- emotion agreement, aligned input vs reconstruction: {m['emotion_agreement_aligned']:.1%} "
        f"(target {t['emotion']}: {'met' if t['emotion_met'] else 'NOT met'})",
        f"- emotion agreement, generated face as written vs reconstruction: {m['emotion_agreement_generated']:.1%}",
        margin_line(m["emotion_agreement_by_input_margin"]), ""])


def margin_line(by: dict) -> str:
    """The report's line on agreement by the judge's top-2 margin on the input (an extra, not a target)."""
    if by["median_margin_changed"] is None:
        return "- (extra) no face changed its emotion label"
    parts = [f"{b['agreement']:.1%} of {b['faces']} with margin >= {b['min_margin']:g}" for b in by["by_min_margin"]
             if b["agreement"] is not None]
    held = "-" if by["median_margin_agreed"] is None else f"{by['median_margin_agreed']:.3f}"
    return (f"- (extra, not the target) the judge's top-2 probability margin on the input: median "
            f"{by['median_margin_changed']:.3f} where the label changed, {held} where it held; agreement "
            + ("; ".join(parts) if parts else "-"))


def run_invert_check(cfg: InvertCheckConfig, *, tracker: Tracker | None = None, print_fn=print) -> InvertCheckResult:
    """Generate, invert and score held-out faces (see the module docstring)."""
    import pyarrow.parquet as pq
    out = cfg.out_dir
    check_output_locations({"output_dir": out})
    with stage_run(cfg.invert.tracking, tracker, work_dir=cfg.invert.work_dir,
                   run_name=f"invert-check-{cfg.invert.model.preset}", stage="invert-check",
                   tags={"preset": cfg.invert.model.preset}) as run:
        print_fn(f"[invert-check] generating {cfg.n_faces} held-out faces (seed {cfg.seed}) -> {out / 'faces'}")
        csv, truth = write_faces(cfg, out / "faces")
        inv = dataclasses.replace(
            cfg.invert, output_dir=str(out / "inverted"),
            input=InputConfig(path=str(csv), kind="csv", image_column="file", id_column="face_id",
                              label_columns=("emotion_label",)))
        job = prepare(inv)
        run_invert(inv, tracker=run, job=job, print_fn=print_fn)
        table = pq.read_table(sorted((out / "inverted").glob("part-*.parquet")),
                              columns=["source_index", "status", "wplus", "identity_cosine", "landmark_error",
                                       "emotion_agreement", "emotion_label", "reconstruction_emotion_label", "psnr",
                                       "source_emotion"])
        bundle = build_bundle(cfg.invert.model, "cpu")
        projector = Projector(bundle, cfg.invert.projection, w_std_seed=cfg.invert.seed)
        f = job.facts
        metrics = check_metrics(table, truth, projector.w_avg.numpy(), projector.w_std, f.n_latent, f.w_dim)
        metrics["config"] = to_dict(cfg)
        report_json = atomic_write_bytes(out / "report.json", json.dumps(metrics, indent=1, sort_keys=True).encode())
        text = markdown(cfg, metrics, f, job.alignment.method)
        report_md = atomic_write_bytes(out / "report.md", text.encode())
        print_fn(text)
        if run:
            run.log_metrics({"identity_cosine_mean": metrics["identity_cosine"].get("mean", 0.0),
                             f"identity_cosine_ge_{IDENTITY_TARGET}": metrics[f"identity_cosine_ge_{IDENTITY_TARGET}"],
                             "emotion_agreement": metrics["emotion_agreement_aligned"],
                             "latent_error_mean": metrics["latent_error"].get("mean", 0.0),
                             "landmark_error_mean": metrics["landmark_error"].get("mean", 0.0),
                             "found": metrics["found"]})
            run.log_artifact(report_md)
            run.log_artifact(report_json)
        return InvertCheckResult(out, report_json, report_md, metrics, run.run_id)
