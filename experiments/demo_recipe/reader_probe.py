"""Is "which object is on the left/top" readable from frozen MiniLM tokens? (docs/demo-recipe.md, fourth round)

A reader — the token projection, optionally a text refiner, then one cross-attention from a single learned
query — is trained to name the colour of the object that comes first along the caption's relation axis
(left for left/right, top for above/below), on shapes-world spatial captions. The control reads the masked
mean of the tokens (a bag of contextual words) through an MLP. Held-out arrangements are the shapes world's
HELDOUT_SPATIAL ones, whose mirror image is the only layout of that colour pair in training.

    OMP_NUM_THREADS=1 python experiments/demo_recipe/reader_probe.py [--hidden-layer -1]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from gentron.data.shapes import COLORS, ShapesWorld
from gentron.models.transformer import Attention, TextRefiner, TokenProjection, _attention_bias
from gentron.text.encoders import TextEncoderConfig, load_text_encoder, masked_mean

COLOR_NAMES = list(COLORS)


def spatial_captions(world: ShapesWorld, split: str, n: int, salt: str) -> tuple[list[str], torch.Tensor]:
    captions, labels = [], []
    for i in range(n):
        rng = random.Random(f"{salt}:{i}")
        scene = world.sample_scene(rng, split, "spatial")
        a, b = scene.objects
        axis = 0 if scene.relation[1] in ("left of", "right of") else 1
        first = a if (a.cx, a.cy)[axis] < (b.cx, b.cy)[axis] else b
        captions.append(world.caption(scene, rng))
        labels.append(COLOR_NAMES.index(first.color))
    return captions, torch.tensor(labels)


class CrossAttentionReader(nn.Module):
    def __init__(self, text_dim: int, width: int = 128, refiner_layers: int = 0):
        super().__init__()
        self.proj = TokenProjection(text_dim, width)
        self.refiner = TextRefiner(width, 2, refiner_layers) if refiner_layers else None
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.5)
        self.attn = Attention(width, 2, context_dim=width)
        self.head = nn.Linear(width, len(COLOR_NAMES))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context, bias = self.proj(tokens), _attention_bias(mask, tokens.dtype)
        if self.refiner is not None:
            context = self.refiner(context, bias)
        return self.head(self.attn(self.query.expand(len(context), 1, -1), context, bias)[:, 0])


class BagReader(nn.Module):
    def __init__(self, text_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, 256), nn.GELU(), nn.Linear(256, len(COLOR_NAMES)))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean(tokens, mask))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden-layer", type=int, default=-1)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = ShapesWorld(resolution=32, seed=0)
    encoder = load_text_encoder(TextEncoderConfig(kind="minilm", max_length=24, hidden_layer=args.hidden_layer))

    def encoded(split: str, n: int, salt: str):
        captions, labels = spatial_captions(world, split, n, salt)
        e = encoder.encode(captions)
        return e.tokens.float(), e.mask, labels

    train, seen, heldout = encoded("train", 3000, "train"), encoded("train", 500, "seen"), encoded("heldout", 500, "heldout")
    dim = train[0].shape[-1]
    print(f"| reader (MiniLM hidden state {args.hidden_layer}) | steps | seen arrangements | held-out arrangements |")
    print("|---|---|---|---|")
    for name, make in (("cross-attention, linear keys", lambda: CrossAttentionReader(dim)),
                       ("cross-attention after a 2-layer refiner", lambda: CrossAttentionReader(dim, refiner_layers=2)),
                       ("bag of words: MLP on the masked mean", lambda: BagReader(dim))):
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(train[2]), (64,))
            loss = F.cross_entropy(model(train[0][idx], train[1][idx]), train[2][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in (300, 1000, args.steps):
                with torch.no_grad():
                    acc = [(model(t, m).argmax(1) == y).float().mean().item() for t, m, y in (seen, heldout)]
                print(f"| {name} | {step} | {acc[0]:.3f} | {acc[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
