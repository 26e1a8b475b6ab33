"""Benchmark: image-embedding throughput of ``load_embedder(...).embed_images_iter`` against a bare transformers
loop over the same CLIP model, the same JPEGs and the same batch size.

- ``bare``: per batch, ``PIL.Image.open(...).convert("RGB")`` for each image, ``CLIPImageProcessorPil`` over the
  batch, ``model.get_image_features`` (``torch.inference_mode``), L2 normalisation; no prefetch.
- ``ours``: ``curation.models.load_embedder(ModelSpec(dir, device, dtype)).embed_images_iter(batches)``: bounded
  decoding per image, the directory's processor per image in a thread pool, batch k+1 prepared while the model
  runs batch k.

The model is a random CLIP built by ``curation.models.tiny.make_tiny_clip``, sized so a batch's forward costs
clearly more than decoding it (``--model-size small``: 96 px, patch 16, width 256, 4 layers); ``--model-size
vit-b16`` builds a ViT-B/16-sized one (224 px, patch 16, width 768, 12 layers) for a GPU run. The images are
``--images`` photo-like 256x256 JPEGs (fixed seed). Before timing, both sides' vectors are compared (they must
agree: the same work is timed). Both variants run once untimed, then ``--rounds`` interleaved rounds, medians
reported, with each run's process CPU seconds (less swayed by other load on the machine); informational:
decode+preprocess alone and the forward alone (one thread, no overlap).

On the CPU torch's threads normally take every core, so ``ours`` prepares a batch with the pool between
forwards (no overlap); on a GPU, or with ``--torch-threads`` below the core count, it prepares batch k+1
during batch k's forward (``prefetch`` in the results).

Target: ours >= 0.9x bare images/s. Results: ``tests/perf/results/bench_embed.json``.

Run: ``python tests/perf/bench_embed.py [--images 2000] [--rounds 3] [--device cpu] [--dtype auto]``
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import environment, loadavg, median, write_result
from PIL import Image

from curation.models import ModelSpec, load_embedder
from curation.models.devices import resolve_device, resolve_dtype
from curation.models.tiny import make_tiny_clip
from curation.sample import Sample
from schemas import PairRecord
from shards.imageinfo import probe_image

TARGET_RATIO = 0.9
MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": {"image_size": 96, "patch_size": 16, "hidden_size": 256, "layers": 4, "heads": 4, "mlp_ratio": 4},
    "vit-b16": {"image_size": 224, "patch_size": 16, "hidden_size": 768, "layers": 12, "heads": 12, "mlp_ratio": 4},
}
PROJECTION = {"small": 128, "vit-b16": 512}


def photo_jpeg(seed: int, side: int) -> bytes:
    """A photo-like JPEG: a smooth colour field, a few discs, grain (distinct per seed)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:side, 0:side]
    for _ in range(5):
        cx, cy = rng.uniform(0, side, 2)
        r = rng.uniform(side / 20, side / 4)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        base[mask] = 0.3 * base[mask] + 0.7 * rng.uniform(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


class Bare:
    """The plain transformers loop: decode, processor, get_image_features, normalise."""

    def __init__(self, model_dir: Path, device: str, dtype: str) -> None:
        import torch
        from transformers import CLIPImageProcessorPil, CLIPModel

        torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.torch = torch
        self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype).to(device).eval()
        self.processor = CLIPImageProcessorPil.from_pretrained(model_dir, local_files_only=True)
        self.device, self.dtype = device, torch_dtype

    def preprocess(self, batch: list[bytes]) -> Any:
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in batch]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: Any) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.dtype))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def run(self, batches: list[list[bytes]]) -> list[np.ndarray]:
        return [self.forward(self.preprocess(batch)) for batch in batches]


def embed_stage(model_dir: Path, device: str, dtype: str, batch_size: int) -> Any:
    """The ``embed`` step of a recipe naming this model, built as a partition builds it."""
    from curation.recipe.models import EmbedStep, ModelConfig
    from curation.steps.contract import StepContext
    from curation.steps.embed import Embed

    model = ModelConfig(path=str(model_dir), device=device, dtype=dtype, batch_size=batch_size, cache=False)
    cfg = EmbedStep(step="embed", model="clip")
    return Embed(cfg, StepContext("embed", Path(tempfile.gettempdir()), models={"clip": model}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--image-side", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16, ...")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="small")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed run of each variant")
    ap.add_argument("--tmp", default=None, help="directory for the model (default: system temp dir)")
    args = ap.parse_args()

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    images = [photo_jpeg(seed, args.image_side) for seed in range(args.images)]
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    setup_images_s = time.perf_counter() - t0
    size = MODEL_SIZES[args.model_size]

    with tempfile.TemporaryDirectory(prefix="bench_embed-", dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        model_dir = make_tiny_clip(Path(tmp) / "clip", dim=PROJECTION[args.model_size], **size)
        build_s = time.perf_counter() - t0
        embedder = load_embedder(ModelSpec(str(model_dir), device=device, dtype=dtype))
        bare = Bare(model_dir, device, dtype)
        print(
            f"setup: {args.images:,} JPEGs of {args.image_side}px ({sum(map(len, images)) / 1e6:.1f} MB, "
            f"{setup_images_s:.1f}s), CLIP {args.model_size} {size} built in {build_s:.1f}s, "
            f"device {device}, dtype {dtype}, batch {args.batch_size}",
            flush=True,
        )

        # the same work: both sides' vectors agree (on the first batches)
        check = batches[:2]
        ours_vecs = np.concatenate([r.vectors for r in embedder.embed_images_iter(check)])
        bare_vecs = np.concatenate(bare.run(check))
        max_diff = float(np.abs(ours_vecs - bare_vecs).max())
        tolerance = 1e-4 if dtype == "float32" else 2e-2
        if ours_vecs.shape != bare_vecs.shape or max_diff > tolerance:
            raise SystemExit(f"ours and bare vectors differ (max |diff| {max_diff:.2e}): the comparison is unfair")

        def run_ours() -> int:
            return sum(r.vectors.shape[0] for r in embedder.embed_images_iter(batches))

        def run_bare() -> int:
            return sum(v.shape[0] for v in bare.run(batches))

        stage = embed_stage(model_dir, device, dtype, args.batch_size)

        def run_stage() -> int:
            """The build's embed step as a worker runs it: header probe, then one process_batch per batch
            (cache off, so every image is decoded and embedded)."""
            n = 0
            for batch in batches:
                samples = [
                    Sample(PairRecord(key=f"k{i}", source="s", image=b, caption="c"), "o", [probe_image(b)])
                    for i, b in enumerate(batch)
                ]
                n += sum(1 for r in stage.process_batch(samples) if not isinstance(r, str))
            return n

        variants = {"bare": run_bare, "ours": run_ours, "stage": run_stage}
        names = list(variants)
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}  # process CPU seconds: less swayed by other load
        load_before = loadavg()
        for name in names if args.warmup else []:
            variants[name]()
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                t, c = time.perf_counter(), time.process_time()
                count = variants[name]()
                elapsed = time.perf_counter() - t
                cpu[name].append(time.process_time() - c)
                assert count == args.images, (name, count)
                times[name].append(elapsed)
                rate = args.images / elapsed
                print(f"  round {rnd + 1} {name:<5} {elapsed:7.2f}s  {rate:8,.1f} images/s", flush=True)

        # informational: the two halves of the bare loop, one after the other
        t = time.perf_counter()
        prepared = [bare.preprocess(batch) for batch in batches]
        prep_s = time.perf_counter() - t
        t = time.perf_counter()
        for pixels in prepared:
            bare.forward(pixels)
        forward_s = time.perf_counter() - t

    results: dict[str, Any] = {}
    for name in names:
        med = median(times[name])
        results[name] = {
            "seconds": [round(x, 4) for x in times[name]],
            "median_s": round(med, 4),
            "images_per_s": round(args.images / med, 1),
            "cpu_seconds": [round(x, 4) for x in cpu[name]],
            "median_cpu_s": round(median(cpu[name]), 4),
        }
    ratio = results["bare"]["median_s"] / results["ours"]["median_s"]
    stage_ratio = results["bare"]["median_s"] / results["stage"]["median_s"]
    doc: dict[str, Any] = {
        "benchmark": "bench_embed",
        "description": "load_embedder(...).embed_images_iter vs a bare transformers CLIP loop, same images and batch",
        "params": {
            "images": args.images,
            "image_side": args.image_side,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "device": device,
            "dtype": dtype,
            "model_size": args.model_size,
            "torch_threads": args.torch_threads,
            "prefetch": embedder.prefetch,
            "model": {**size, "projection_dim": PROJECTION[args.model_size]},
            "jpeg_bytes_total": sum(map(len, images)),
            "warmup": args.warmup,
            "loadavg_before": load_before,
        },
        "variants": results,
        "ratio_ours_over_bare": round(ratio, 3),
        "ratio_stage_over_bare": round(stage_ratio, 3),
        "cpu_ratio_bare_over_ours": round(results["bare"]["median_cpu_s"] / results["ours"]["median_cpu_s"], 3),
        "target": {
            "metric": "ratio_stage_over_bare (throughput of the embed step, as a build runs it)",
            "min": TARGET_RATIO,
            "met": stage_ratio >= TARGET_RATIO,
        },
        "checks": {"max_abs_vector_diff": max_diff, "tolerance": tolerance},
        "components": {
            "bare_decode_preprocess_s": round(prep_s, 4),
            "bare_forward_s": round(forward_s, 4),
            "forward_share": round(forward_s / (prep_s + forward_s), 3),
        },
        "environment": environment(),
    }
    if device.startswith("cuda"):
        import torch

        doc["environment"]["gpu"] = torch.cuda.get_device_name(torch.device(device))
    path = write_result("bench_embed", doc)

    print()
    for name in names:
        r = results[name]
        print(
            f"{name:<5} median {r['median_s']:7.2f}s  {r['images_per_s']:8,.1f} images/s  "
            f"(process CPU {r['median_cpu_s']:.2f}s)"
        )
    print(
        f"ours/bare throughput ratio: {ratio:.3f} (target >= {TARGET_RATIO}: "
        f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}); bare halves: decode+preprocess {prep_s:.2f}s, "
        f"forward {forward_s:.2f}s"
    )
    print(f"embed step/bare throughput ratio: {stage_ratio:.3f} (target >= {TARGET_RATIO})")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
