"""Feature cache: VAE latents and text-encoder outputs computed once, stored as safetensors shards.

With a frozen VAE and frozen text encoders, every training step would otherwise re-run both on the same
inputs. ``gentron cache`` runs them once. Latents are stored as the VAE posterior's **mean and std**
(not one sample), so training still draws a fresh latent sample every step; text is stored as tokens,
padding mask and pooled embedding per encoder.

Layout: ``CACHE/shard_00000.safetensors …`` (each with ``index.json`` metadata) plus ``CACHE/meta.json``.
A shard is written to a temporary name and renamed when complete, so an interrupted run resumes at the
first missing shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

CACHE_VERSION = 1


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


@torch.no_grad()
def write_feature_cache(dataset, out_dir: str | Path, vae=None, text_encoders: Sequence = (), shard_size: int = 1024,
                        batch_size: int = 32, show_progress: bool = True) -> Path:
    """Encode ``dataset`` (items with ``pixel_values`` in [-1, 1] and ``caption``) into shards under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": CACHE_VERSION,
        "num": len(dataset),
        "shard_size": shard_size,
        "latent": vae is not None,
        "scaling_factor": float(vae.config.scaling_factor) if vae is not None else None,
        "encoders": [e.to_dict() for e in text_encoders],
    }
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"{out} holds a cache made with other settings; use another --out or delete it")
    meta_path.write_text(json.dumps(meta, indent=1))
    num_shards = (len(dataset) + shard_size - 1) // shard_size
    todo = [i for i in range(num_shards) if not (out / shard_name(i)).is_file()]
    bar = tqdm(total=len(dataset), initial=len(dataset) - sum(min(shard_size, len(dataset) - i * shard_size) for i in todo),
               desc="caching", disable=not show_progress)
    for s in todo:
        start, stop = s * shard_size, min(len(dataset), (s + 1) * shard_size)
        tensors: dict[str, list[torch.Tensor]] = {}
        captions: list[str] = []
        for b in range(start, stop, batch_size):
            items = [dataset[i] for i in range(b, min(stop, b + batch_size))]
            pixels = torch.stack([it["pixel_values"] for it in items])
            captions += [it["caption"] for it in items]
            if vae is not None:
                dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
                tensors.setdefault("latent_mean", []).append(dist.mean.float().cpu())
                tensors.setdefault("latent_std", []).append(dist.std.float().cpu())
            else:
                tensors.setdefault("pixels", []).append(pixels.float())
            for k, enc in enumerate(text_encoders):
                emb = enc.encode([it["caption"] for it in items])
                tensors.setdefault(f"text{k}_tokens", []).append(emb.tokens.float().cpu())
                tensors.setdefault(f"text{k}_mask", []).append(emb.mask.cpu())
                tensors.setdefault(f"text{k}_pooled", []).append(emb.pooled.float().cpu())
            bar.update(len(items))
        flat = {k: torch.cat(v).contiguous() for k, v in tensors.items()}
        tmp = out / (shard_name(s) + ".tmp")
        save_file(flat, str(tmp), metadata={"captions": json.dumps(captions), "start": str(start)})
        os.replace(tmp, out / shard_name(s))
    bar.close()
    return out


class FeatureCache(torch.utils.data.Dataset):
    """Reads a cache written by `write_feature_cache`; items hold latents (sampled from mean/std with the
    caller's generator, times the VAE scaling factor) or pixels, the caption, and per-encoder text features
    ``textK = (tokens, mask, pooled)``.

    Rows are read through safetensors' memory map (``safe_open(...).get_slice``), so random access over
    many shards reads only the rows asked for; handles open lazily, per process (DataLoader workers too).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a gentron feature cache (no meta.json); run `gentron cache` first")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache {self.root} has version {self.meta.get('version')}, this gentron reads {CACHE_VERSION}")
        self.shard_size = self.meta["shard_size"]
        n_shards = (self.meta["num"] + self.shard_size - 1) // self.shard_size
        missing = [i for i in range(n_shards) if not (self.root / shard_name(i)).is_file()]
        if missing:
            raise ValueError(f"cache {self.root} is incomplete: shard {missing[0]} missing; re-run `gentron cache` to resume")
        self._open: dict[int, tuple[Any, list[str]]] = {}
        self.skipped: dict[str, int] = {}

    def __len__(self) -> int:
        return self.meta["num"]

    @property
    def is_latent(self) -> bool:
        return bool(self.meta["latent"])

    @property
    def num_encoders(self) -> int:
        return len(self.meta["encoders"])

    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of a stored latent or image."""
        f, _ = self._shard(0)
        return tuple(f.get_slice("latent_mean" if self.is_latent else "pixels").get_shape()[1:])

    def token_width(self, k: int) -> int:
        """Width of encoder ``k``'s stored token features."""
        return self._shard(0)[0].get_slice(f"text{k}_tokens").get_shape()[-1]

    def _shard(self, s: int) -> tuple[Any, list[str]]:
        if s not in self._open:
            from safetensors import safe_open

            f = safe_open(str(self.root / shard_name(s)), "pt")
            self._open[s] = (f, json.loads(f.metadata()["captions"]))
        return self._open[s]

    @property
    def captions(self) -> list[str]:
        n_shards = (len(self) + self.shard_size - 1) // self.shard_size
        return [c for s in range(n_shards) for c in self._shard(s)[1]]

    def __getitem__(self, i: int, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        f, captions = self._shard(i // self.shard_size)
        j = i % self.shard_size

        def row(name: str) -> torch.Tensor:
            return f.get_slice(name)[j]

        item: dict[str, Any] = {"caption": captions[j], "index": i}
        if self.is_latent:
            mean, std = row("latent_mean"), row("latent_std")
            item["latents"] = (mean + std * torch.randn(mean.shape, generator=generator)) * self.meta["scaling_factor"]
        else:
            item["pixel_values"] = row("pixels")
        for k in range(self.num_encoders):
            item[f"text{k}"] = (row(f"text{k}_tokens"), row(f"text{k}_mask"), row(f"text{k}_pooled"))
        return item


def add_cache_parser(subparsers) -> None:
    """``gentron cache DATA --out CACHE [--vae DIR] [--text-encoder KIND=PATH]…``"""
    p = subparsers.add_parser("cache", help="precompute VAE latents and text features into safetensors shards")
    p.add_argument("data", help="image folder (captions.jsonl or sidecar .txt)")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--vae", help="local diffusers AutoencoderKL folder (omit to cache pixels)")
    p.add_argument("--text-encoder", action="append", default=[], metavar="KIND=PATH",
                   help="e.g. clip=/models/clip-l, t5=/models/flan-t5-xxl, or minilm (repeatable, in model order)")
    p.add_argument("--max-length", type=int, action="append", default=[], help="per encoder, in the same order")
    p.add_argument("--hidden-layer", type=int, action="append", default=[],
                   help="per encoder: hidden state used as tokens (-1 last, -2 penultimate, 0 embeddings)")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args) -> int:
    from gentron.data.folder import ImageCaptionFolder
    from gentron.models.vae import load_vae
    from gentron.text import load_text_encoder

    specs = []
    for i, spec in enumerate(args.text_encoder or ["minilm"]):
        kind, _, path = spec.partition("=")
        entry = {"kind": kind, "path": path or None}
        if i < len(args.max_length):
            entry["max_length"] = args.max_length[i]
        if i < len(args.hidden_layer):
            entry["hidden_layer"] = args.hidden_layer[i]
        specs.append(entry)
    data = ImageCaptionFolder(args.data, resolution=args.resolution)
    vae = load_vae(args.vae, device=args.device) if args.vae else None
    encoders = [load_text_encoder(s, device=args.device) for s in specs]
    out = write_feature_cache(data, args.out, vae=vae, text_encoders=encoders, shard_size=args.shard_size,
                              batch_size=args.batch_size)
    skipped = {k: v for k, v in getattr(data, "skipped", {}).items() if v}
    print(f"cached {len(data)} items into {out}" + (f" (skipped: {skipped})" if skipped else ""))
    return 0
