"""FID with local weights only: an Inception-v3 that loads the standard FID weights file, or any feature
extractor (e.g. gentron's self-trained shapes network, :mod:`gentron.eval.features`).

Published FID numbers (ADM / DiT / PixArt-α / GenTron's FID-30K) come from the TensorFlow Inception graph
of 2015-12-05. :class:`FIDInceptionV3` is that network in PyTorch, with the parameter names of the
converted weights shipped by ``pytorch-fid`` (``pt_inception-2015-12-05-6726825d.pth``) and
``torch-fidelity`` (``weights-inception-2015-12-05-6726825d.pth``) — pass either file as
``--inception-weights``. Nothing is ever downloaded.

**Resizing decides comparability.** The TF graph resizes to 299×299 with TF1 bilinear interpolation
(``align_corners=False``, *no antialiasing*), then maps ``[0, 255]`` to ``[-1, 1]`` as ``(x - 128) / 128``.
``resize="tf1"`` (the default) reproduces that and is what matches published numbers (torch-fidelity and
torchmetrics' ``antialias=False`` do the same). torchmetrics' default ``antialias=True`` and
pytorch-fid's ``F.interpolate`` (``resize="bilinear"``) give slightly different values — fine for relative
comparisons inside one study, not for comparing against papers. Clean-FID (PIL bicubic) is yet another
protocol. Report which one you used; gentron records it in every FID report.

The Fréchet distance is computed by torchmetrics' ``FrechetInceptionDistance`` (with this network as its
custom feature extractor) when torchmetrics is installed (``pip install torchmetrics``, the ``eval``
extra), else by the same formula in plain torch (:func:`frechet_distance`); the two agree to float64
precision (tested).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

INCEPTION_SIZE = 299
RESIZE_MODES = ("tf1", "antialias", "bilinear")
#: Feature taps: the pooled outputs after the first/second max-pool, the 17×17 blocks and the final pool.
FEATURE_DIMS = (64, 192, 768, 2048)


# ------------------------------------------------------------------------------------------------
# Resizing
# ------------------------------------------------------------------------------------------------


def _tf1_axis(x: Tensor, out: int, dim: int) -> Tensor:
    n = x.shape[dim]
    src = torch.arange(out, dtype=torch.float64) * (n / out)  # TF1 half_pixel_centers=False
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (src - i0.double()).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = out
    return x.index_select(dim, i0) * (1 - w).view(shape) + x.index_select(dim, i1) * w.view(shape)


def resize_tf1(x: Tensor, size: int) -> Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)`` of an (N, C, H, W) float tensor."""
    return _tf1_axis(_tf1_axis(x, size, 2), size, 3)


def resize_images(x: Tensor, size: int, mode: str = "tf1") -> Tensor:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    if x.shape[-2:] == (size, size):
        return x
    if mode == "tf1":
        return resize_tf1(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=mode == "antialias")


# ------------------------------------------------------------------------------------------------
# The FID Inception-v3 (TF 2015-12-05 graph; torchvision parameter names)
# ------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor) -> Tensor:  # the TF graph's average pools exclude padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool=False``: Mixed_7b (average pool); ``True``: Mixed_7c, whose pool is a max pool in the TF
    graph (a quirk every FID implementation reproduces)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
            torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1),
            self.branch_pool(pool),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID. ``forward`` takes uint8 images (N, 3, H, W) in [0, 255] (any size;
    resized per ``resize``) and returns the ``dims``-wide pooled features. Always in eval mode."""

    def __init__(self, dims: int = 2048, resize: str = "tf1"):
        super().__init__()
        if dims not in FEATURE_DIMS:
            raise ValueError(f"dims must be one of {FEATURE_DIMS}, got {dims}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.dims, self.resize = dims, resize
        self.num_features = dims  # read by torchmetrics
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # TF graph's 1008 logits; present so weight files load strictly
        self.eval()

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        x = resize_images(x, INCEPTION_SIZE, self.resize)
        x = (x - 128) / 128

        def pooled(t: Tensor) -> Tensor:
            return F.adaptive_avg_pool2d(t, 1).flatten(1)

        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        if self.dims == 64:
            return pooled(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        if self.dims == 192:
            return pooled(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        if self.dims == 768:
            return pooled(x)
        return pooled(self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))))


def load_inception(path: Union[str, Path], dims: int = 2048, resize: str = "tf1") -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with weights from a local file (pytorch-fid / torch-fidelity ``.pth``, or a
    ``.safetensors`` with the same names). Every network parameter must be present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} not found (gentron never downloads weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    model = FIDInceptionV3(dims=dims, resize=resize)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} is not an FID Inception-v3 weights file: missing {missing[:5]}"
                         f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------


def images_to_uint8(images: Sequence[Image.Image]) -> Tensor:
    """(N, 3, H, W) uint8 tensor; every image must have the same size."""
    arrs = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    if len({a.shape for a in arrs}) > 1:
        raise ValueError("images must all have the same size (resize them first)")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Iterable[Image.Image], batch_size: int = 50) -> Tensor:
    feats, batch = [], []
    for im in images:
        batch.append(im)
        if len(batch) == batch_size:
            feats.append(extractor(images_to_uint8(batch)).double())
            batch = []
    if batch:
        feats.append(extractor(images_to_uint8(batch)).double())
    if not feats:
        raise ValueError("no images")
    return torch.cat(feats)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """‖μ_r − μ_f‖² + tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½) of two (N, D) feature sets (float64; the trace of the
    matrix square root via the eigenvalues of Σ_r Σ_f, as torchmetrics computes it)."""
    real, fake = real.double(), fake.double()
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError("need at least two images per set")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    eig = torch.linalg.eigvals(cov_r @ cov_f).sqrt().real.sum()
    return float((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * eig)


def fid_from_features(real: Tensor, fake: Tensor, backend: str = "auto") -> tuple[float, str]:
    """FID of two feature sets; ``backend`` auto (torchmetrics if installed) | torchmetrics | torch."""
    if backend not in ("auto", "torchmetrics", "torch"):
        raise ValueError(f"backend must be auto, torchmetrics or torch, got {backend!r}")
    if backend in ("auto", "torchmetrics"):
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError:
            if backend == "torchmetrics":
                raise ImportError("the torchmetrics FID backend needs `pip install torchmetrics` "
                                  "(gentron's `eval` extra)") from None
        else:
            ident = _Identity(real.shape[1])
            metric = FrechetInceptionDistance(feature=ident, reset_real_features=False)
            metric.update(real, real=True)
            metric.update(fake, real=False)
            return float(metric.compute()), "torchmetrics"
    return frechet_distance(real, fake), "torch"


class _Identity(nn.Module):
    """Features are computed once by gentron; torchmetrics only accumulates statistics."""

    def __init__(self, dims: int):
        super().__init__()
        self.num_features = dims

    def forward(self, x: Tensor) -> Tensor:
        return x


def compute_fid(real_images: Iterable[Image.Image], fake_images: Iterable[Image.Image], extractor: nn.Module,
                batch_size: int = 50, backend: str = "auto") -> dict:
    """FID between two image collections under ``extractor`` (uint8 (N, 3, H, W) → (N, D))."""
    real = extract_features(extractor, real_images, batch_size)
    fake = extract_features(extractor, fake_images, batch_size)
    value, used = fid_from_features(real, fake, backend)
    if not math.isfinite(value):
        raise ValueError("FID is not finite (too few images for the feature width?)")
    return {"fid": value, "backend": used, "num_real": int(real.shape[0]), "num_fake": int(fake.shape[0]),
            "feature_dims": int(real.shape[1])}


# ------------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: Union[str, Path], limit: Optional[int] = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted for determinism)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files[:limit] if limit else files


def load_images(files: Sequence[Path], size: Optional[int] = None) -> Iterable[Image.Image]:
    """Open images lazily as RGB; ``size`` center-crops to a square and resizes (bicubic) — only needed
    when a folder mixes sizes; FID's own resize to the network input happens inside the extractor."""
    for f in files:
        im = Image.open(f).convert("RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((size, size), Image.BICUBIC)
        yield im


def read_captions(folder: Union[str, Path]) -> Optional[list[tuple[str, str]]]:
    """(file, caption) pairs from a folder data set's ``captions.jsonl`` (None when there is none)."""
    import json

    path = Path(folder) / "captions.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append((rec["file"], rec["caption"]))
    return out


__all__ = [
    "FIDInceptionV3", "load_inception", "resize_tf1", "resize_images", "RESIZE_MODES", "FEATURE_DIMS",
    "frechet_distance", "fid_from_features", "compute_fid", "extract_features", "images_to_uint8",
    "list_images", "load_images", "read_captions",
]
