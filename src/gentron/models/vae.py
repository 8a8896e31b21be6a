"""Latent space: a diffusers `AutoencoderKL` (e.g. the SD VAE) loaded from a local folder.

GenTron and PixArt-α train in the 4-channel latent space of the Stable-Diffusion VAE. Latents are scaled by
the VAE config's ``scaling_factor`` (0.18215 for SD) so that they have roughly unit variance, which is what
the diffusion schedule assumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch


def load_vae(path: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32):
    """Load an `AutoencoderKL` from a local diffusers folder (or a pipeline folder with ``vae/``)."""
    from diffusers import AutoencoderKL

    from gentron.models import offline_load_kwargs

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"VAE directory {p} not found (expected a diffusers AutoencoderKL folder with config.json)")
    if not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
        p = p / "vae"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} has no config.json: expected a diffusers AutoencoderKL folder")
    try:
        vae = AutoencoderKL.from_pretrained(str(p), torch_dtype=dtype, **offline_load_kwargs())
    except Exception as e:  # noqa: BLE001 — report which folder failed and why
        raise ValueError(f"could not load AutoencoderKL from {p}: {type(e).__name__}: {e}") from e
    vae.requires_grad_(False).eval()
    return vae.to(device)


def vae_downsample_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, sample: bool = True, generator: Optional[torch.Generator] = None,
                   batch_size: int = 32) -> torch.Tensor:
    """Pixels in [-1, 1] (B, 3, H, W) → scaled latents (B, C, H/f, W/f); video (B, 3, T, H, W) frame by frame."""
    if images.dim() == 5:
        b, c, t, h, w = images.shape
        flat = images.transpose(1, 2).reshape(b * t, c, h, w)
        lat = encode_latents(vae, flat, sample, generator, batch_size)
        return lat.view(b, t, *lat.shape[1:]).transpose(1, 2)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    for i in range(0, images.shape[0], batch_size):
        dist = vae.encode(images[i : i + batch_size].to(vae.device, vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        out.append(((z - shift) * scale).float())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Scaled latents → pixels in [-1, 1]; decoded in slices (and tiled if the VAE has tiling enabled) so
    large images and long videos fit in memory. Video latents (B, C, T, h, w) are decoded frame by frame."""
    if latents.dim() == 5:
        b, c, t, h, w = latents.shape
        flat = latents.transpose(1, 2).reshape(b * t, c, h, w)
        px = decode_latents(vae, flat, batch_size)
        return px.view(b, t, *px.shape[1:]).transpose(1, 2)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    for i in range(0, latents.shape[0], batch_size):
        z = latents[i : i + batch_size].to(vae.device, vae.dtype) / scale + shift
        out.append(vae.decode(z).sample.float())
    return torch.cat(out)
