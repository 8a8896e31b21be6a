"""Training-step speedup from the feature cache (`gentron cache` → `data.kind: cache`).

Two trainers on the same images and the same small latent model: one encodes every batch with the VAE
on the fly (images preloaded in RAM, caption features from the in-memory text bank — the trainer's
fastest uncached path), one reads `gentron cache` shards (VAE posterior mean/std + text features).
The VAE has Stable Diffusion's architecture (diffusers `AutoencoderKL` defaults with SD's 4 × 2 blocks,
83.7 M parameters) and random weights: encode cost depends on the architecture, not the weights.
Interleaved A/B rounds of a few steps each, median seconds per step.

    python bench/cache_speedup.py [--resolution 128] [--batch 8] [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def sd_vae_architecture():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, scaling_factor=0.18215,
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--model", default="GenTron-S/2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="train steps per round and arm")
    args = ap.parse_args()

    from gentron.data.cache import write_feature_cache
    from gentron.data.folder import ImageCaptionFolder
    from gentron.data.shapes import write_shapes_dataset
    from gentron.text import load_text_encoder
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="gentron-cache-bench-"))
    write_shapes_dataset(tmp / "data", num=args.images, resolution=args.resolution, seed=0)
    torch.manual_seed(0)
    vae = sd_vae_architecture()
    vae.save_pretrained(tmp / "vae")
    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M params (SD architecture, random weights)")
    enc = load_text_encoder({"kind": "minilm", "max_length": 24})
    t0 = time.perf_counter()
    write_feature_cache(ImageCaptionFolder(tmp / "data", args.resolution), tmp / "cache", vae=vae, text_encoders=[enc],
                        shard_size=32, batch_size=args.batch, show_progress=False)
    cache_s = time.perf_counter() - t0

    common = [f"model.name={args.model}", f"model.resolution={args.resolution}", "model.in_channels=4",
              f"vae.path={tmp / 'vae'}", "text.encoders=[{kind: minilm, max_length: 24}]",
              "diffusion.learn_sigma=false", f"train.batch_size={args.batch}", "train.steps=100000",
              "train.checkpoint_every=100000", "train.ema_decay=0.99"]
    arms = {
        "VAE on the fly": common + ["data.kind=folder", f"data.path={tmp / 'data'}"],
        "feature cache": common + ["data.kind=cache", f"data.path={tmp / 'cache'}"],
    }
    trainers = {name: Trainer(load_config(None, sets), tmp / name.replace(" ", "_"), log=lambda s: None,
                              show_progress=False) for name, sets in arms.items()}
    for t in trainers.values():  # warm-up
        t.train_step()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                t.train_step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"\n{args.model} at {args.resolution}px (latent {args.resolution // 8}²), batch {args.batch}, "
          f"{torch.get_num_threads()} threads; caching {args.images} images took {cache_s:.1f} s\n")
    print("| data path | s/step (median) | speedup |\n|---|---|---|")
    base = med["VAE on the fly"]
    for name, v in med.items():
        print(f"| {name} | {v:.3f} | {base / v:.2f}× |")


if __name__ == "__main__":
    main()
