"""A feature extractor gentron trains itself, for an FID-like distance on the shapes world ("shapes-FID").

Inception features know nothing about 32×32 flat-colour shapes, and their weights have to come from
elsewhere. :class:`ShapesFeatureNet` is a small CNN trained in about a minute on a CPU to read shapes-world
renders: which (colour, shape) pairs are present, how many objects, the scene kind, and the size and
coarse position of the largest object. Its penultimate layer (:data:`FEATURE_DIM` wide) is the feature
space; the Fréchet distance in it is computed exactly as FID (:func:`gentron.eval.fid.fid_from_features`).

Training uses both splits of the world (held-out colour–shape pairs included), so the features can
represent everything a model might draw; half of the images are passed through
:func:`gentron.eval.detector.degrade` so model-like imperfections do not look out of distribution.
Numbers are comparable only between runs that use the *same* feature file (record its fingerprint).
"""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentron.data.shapes import COLORS, KINDS, SHAPES, SPLITS, ShapesWorld

FEATURE_DIM = 128
PAIRS = [(c, s) for c in COLORS for s in SHAPES]
INPUT_SIZE = 32


class ShapesFeatureNet(nn.Module):
    """uint8 (N, 3, H, W) images → (N, :data:`FEATURE_DIM`) features (images are resized to 32×32)."""

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        w = width
        self.config = {"width": width, "feature_dim": feature_dim}
        self.num_features = feature_dim  # read by torchmetrics
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 16
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),  # 8
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),  # 4
            nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim),
        )
        self.heads = nn.ModuleDict({
            "pairs": nn.Linear(feature_dim, len(PAIRS)),  # multi-label presence
            "count": nn.Linear(feature_dim, 4),  # 0..3 objects
            "kind": nn.Linear(feature_dim, len(KINDS)),
            "size": nn.Linear(feature_dim, 2),  # largest object small / large
            "cell": nn.Linear(feature_dim, 9),  # largest object's 3×3 grid cell
        })

    def features(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return self.body(x * 2 - 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)

    def logits(self, images: Tensor) -> dict[str, Tensor]:
        f = F.gelu(self.features(images))
        return {k: head(f) for k, head in self.heads.items()}


def _targets(scene) -> dict[str, Any]:
    pairs = np.zeros(len(PAIRS), dtype=np.float32)
    for o in scene.objects:
        pairs[PAIRS.index((o.color, o.shape))] = 1
    big = max(scene.objects, key=lambda o: o.radius)
    cell = min(int(big.cy * 3), 2) * 3 + min(int(big.cx * 3), 2)
    return {"pairs": pairs, "count": len(scene.objects), "kind": KINDS.index(scene.kind),
            "size": int(big.size == "large"), "cell": cell}


def make_batch(world: ShapesWorld, rng: random.Random, n: int, augment: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    from gentron.eval.detector import degrade

    imgs, tg = [], []
    for _ in range(n):
        scene = world.sample_scene(rng, rng.choice(SPLITS))
        img = world.render(scene)
        if augment and rng.random() < 0.5:
            img = degrade(img, rng)
        imgs.append(np.asarray(img, dtype=np.uint8))
        tg.append(_targets(scene))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    y = {"pairs": torch.from_numpy(np.stack([t["pairs"] for t in tg]))}
    for k in ("count", "kind", "size", "cell"):
        y[k] = torch.tensor([t[k] for t in tg])
    return x, y


def _loss(out: dict[str, Tensor], y: dict[str, Tensor]) -> Tensor:
    loss = F.binary_cross_entropy_with_logits(out["pairs"], y["pairs"]) * 4
    for k in ("count", "kind", "size", "cell"):
        loss = loss + F.cross_entropy(out[k], y[k])
    return loss


@torch.no_grad()
def evaluate_features_net(model: ShapesFeatureNet, n: int = 512, seed: int = 999, resolution: int = 32) -> dict[str, float]:
    """Attribute accuracies on fresh degraded/clean renders (pairs: exact set match)."""
    model.eval()
    x, y = make_batch(ShapesWorld(resolution=resolution, seed=seed), random.Random(f"features-val:{seed}"), n)
    out = model.logits(x)
    acc = {"pairs_exact": float(((out["pairs"] > 0).float() == y["pairs"]).all(1).float().mean())}
    for k in ("count", "kind", "size", "cell"):
        acc[k] = float((out[k].argmax(1) == y[k]).float().mean())
    return acc


def train_shapes_features(out: Optional[Union[str, Path]] = None, steps: int = 1500, batch_size: int = 64,
                          lr: float = 2e-3, resolution: int = 32, seed: int = 0, max_minutes: float = 0.0,
                          log: Optional[Any] = print) -> tuple[ShapesFeatureNet, dict[str, Any]]:
    """Train the extractor on freshly rendered scenes (deterministic for a seed on one machine) and save
    it to ``out`` (a ``.pt`` file: config, state dict, validation accuracies, fingerprint)."""
    torch.manual_seed(seed)
    model = ShapesFeatureNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    world = ShapesWorld(resolution=resolution, seed=seed)
    rng = random.Random(f"features-train:{seed}")
    t0 = time.time()
    done = 0
    for step in range(steps):
        model.train()
        x, y = make_batch(world, rng, batch_size)
        loss = _loss(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if log and (step % 200 == 0 or step == steps - 1):
            log(f"features step {step + 1}/{steps} loss {loss.item():.4f}")
        if max_minutes and time.time() - t0 > max_minutes * 60:
            break
    model.eval()
    info = {"steps": done, "batch_size": batch_size, "seed": seed, "resolution": resolution,
            "seconds": round(time.time() - t0, 1), "val_accuracy": evaluate_features_net(model, resolution=resolution)}
    info["fingerprint"] = fingerprint(model)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "gentron-shapes-features-v1", "config": model.config, "info": info,
                    "state_dict": model.state_dict()}, out)
    return model, info


def fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_shapes_features(path: Union[str, Path]) -> tuple[ShapesFeatureNet, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shapes feature file {path} not found; train one with "
                                f"`gentron eval shapes-features --out {path}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "gentron-shapes-features-v1":
        raise ValueError(f"{path} is not a gentron shapes feature file")
    model = ShapesFeatureNet(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob.get("info", {})


__all__ = ["ShapesFeatureNet", "FEATURE_DIM", "train_shapes_features", "load_shapes_features",
           "evaluate_features_net", "fingerprint"]
