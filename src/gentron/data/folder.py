"""The user data path: a folder of images with captions, as a PyTorch data set.

Three layouts are read (the first present wins):

* ``ROOT/captions.jsonl`` — one JSON object per line with ``"file"`` (relative to ROOT, or absolute) and
  ``"caption"`` (or ``"text"``); other keys are ignored. This is what
  :func:`gentron.data.shapes.write_shapes_dataset` writes, so the built-in data goes through this code.
* ``ROOT/captions.csv`` — a header with ``file`` (or ``file_name``) and ``caption`` (or ``text``) columns.
* sidecar captions — ``ROOT/**/NAME.png`` (png/jpg/jpeg/webp/bmp) with its caption in ``NAME.txt`` beside it.

Real data is messy, so nothing here crashes a long training run: records without a caption or file are
skipped when the index is built, and images that fail to decode are found lazily in ``__getitem__`` and
replaced by the next readable item. Every skip is counted in :attr:`ImageCaptionFolder.skipped`.
"""

from __future__ import annotations

import abc
import io
import json
import random
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SKIP_REASONS: tuple[str, ...] = ("missing_caption", "missing_file", "bad_record", "corrupt_image")


class ImageLoadError(OSError):
    """An image file exists but cannot be decoded."""


def load_image(source: Union[str, Path, bytes, BinaryIO], name: Optional[str] = None) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later) as RGB.

    ``source`` is a path, the file's bytes, or a readable binary file object — the latter two let tar
    shards (:mod:`gentron.data.shards`) decode members without extracting them; ``name`` labels errors.
    Transparent images are composited onto white, the usual convention for cut-out pictures."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"image file not found: {source}")
        label = name or str(source)
    else:
        label = name or "<image bytes>"
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"could not decode image {label}: {e}") from e


def resize_and_crop(image: Image.Image, resolution: int, center_crop: bool = True,
                    rng: random.Random | None = None) -> Image.Image:
    """Resize the shorter side to ``resolution`` and crop a square.

    An image whose shorter side already equals ``resolution`` is not resampled, so crisp renders stay
    crisp. Downscaling uses Lanczos (sharp, little aliasing), upscaling bicubic. Without ``center_crop``
    the crop offset is drawn from ``rng``."""
    w, h = image.size
    if min(w, h) != resolution:
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        resample = Image.LANCZOS if scale < 1 else Image.BICUBIC
        image = image.resize(size, resample=resample)
        w, h = image.size
    if (w, h) == (resolution, resolution):
        return image
    if center_crop or rng is None:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float tensor in [-1, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class CaptionedImages(Dataset, abc.ABC):
    """What every image-caption data set shares: items ``{"pixel_values", "caption", "index"}`` as a square
    crop at ``resolution``, and unreadable images skipped, counted and replaced by the next readable item.

    Subclasses say where images come from: ``raw_image(i)`` (full decode; raises `ImageLoadError` or
    `FileNotFoundError`), ``caption(i)``, ``__len__`` and, for aspect-ratio buckets, ``image_size(i)``
    (a header read). ``index`` in an item is the position actually returned (it differs from the one asked
    for when a corrupt image was skipped). Non-centre crops are seeded by the item's index, so a given index
    always yields the same pixels (exact resume); ``random_flip`` uses torch's global generator. Skip
    counters live in the process that reads the item (DataLoader workers keep their own).
    """

    resolution: int
    center_crop: bool
    random_flip: bool
    skipped: dict[str, int]
    _bad: set[int]

    @abc.abstractmethod
    def raw_image(self, index: int) -> Image.Image:
        """Item ``index`` fully decoded as RGB."""

    @abc.abstractmethod
    def caption(self, index: int) -> str:
        """Item ``index``'s caption."""

    @abc.abstractmethod
    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` without decoding the pixels."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of indexed items."""

    def _require_items(self, where: str, expected: str) -> None:
        """An index with nothing usable is an error saying what was expected (and what was skipped)."""
        if len(self) == 0:
            found = {k: v for k, v in self.skipped.items() if v}
            raise ValueError(f"no images with captions found in {where}: expected {expected}"
                             + (f"; skipped {found}" if found else ""))

    def _load(self, index: int) -> Image.Image:
        image = self.raw_image(index)
        rng = None if self.center_crop else random.Random(index)
        image = resize_and_crop(image, self.resolution, self.center_crop, rng)
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):  # the next readable item, deterministically
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                image = self._load(i)
            except (ImageLoadError, FileNotFoundError) as e:  # a file may also vanish after indexing
                self._bad.add(i)
                self.skipped["corrupt_image" if isinstance(e, ImageLoadError) else "missing_file"] += 1
                continue
            return {"pixel_values": to_tensor(image), "caption": self.caption(i), "index": i}
        raise RuntimeError(f"none of the {n} images of {self!r} could be decoded")


def image_size_of(source: Union[str, Path, bytes], name: str) -> tuple[int, int]:
    """(height, width) from an image header (no pixel decode); `ImageLoadError` when unreadable."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"could not read the image header of {name}: {e}") from e


class ImageCaptionFolder(CaptionedImages):
    """Images with captions from a folder (``captions.jsonl`` or sidecar ``.txt`` files); see `CaptionedImages`."""

    def __init__(self, root: Union[str, Path], resolution: int, center_crop: bool = True,
                 random_flip: bool = False):
        self.root = Path(root)
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.skipped: dict[str, int] = {reason: 0 for reason in SKIP_REASONS}
        self._bad: set[int] = set()
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if not self.root.exists():
            raise FileNotFoundError(f"data folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"data path {self.root} is not a folder")
        jsonl, csv_index = self.root / "captions.jsonl", self.root / "captions.csv"
        if jsonl.is_file():
            self.source = "captions.jsonl"
            rows = read_captions_jsonl(jsonl, self.root, self.skipped)
        elif csv_index.is_file():
            self.source = "captions.csv"
            rows = read_captions_csv(csv_index, self.root, self.skipped)
        else:
            self.source = "sidecar"
            rows = read_sidecar_captions(self.root, IMAGE_EXTENSIONS, self.skipped)
        self.entries: list[tuple[Path, str]] = [(path, caption) for path, caption, _ in rows]
        self.stated_sizes: dict[int, tuple[int, int]] = {i: size for i, (_, _, size) in enumerate(rows) if size}
        self._require_items(str(self.root), "captions.jsonl (lines like "
                            '{"file": "images/0.png", "caption": "..."}), captions.csv (file,caption columns) or '
                            f"IMG.txt caption files beside images ({', '.join(IMAGE_EXTENSIONS)})")

    # -- access -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self.entries]

    def raw_image(self, index: int) -> Image.Image:
        return load_image(self.entries[index][0])

    def caption(self, index: int) -> str:
        return self.entries[index][1]

    def image_size(self, index: int) -> tuple[int, int]:
        if index in self.stated_sizes:  # "height"/"width" in the index: no file access
            return self.stated_sizes[index]
        return image_size_of(self.entries[index][0], str(self.entries[index][0]))

    def __repr__(self) -> str:
        skipped = {k: v for k, v in self.skipped.items() if v}
        return (f"ImageCaptionFolder({str(self.root)!r}, {len(self)} items from {self.source}, "
                f"resolution={self.resolution}, skipped={skipped})")


__all__ = ["CaptionedImages", "ImageCaptionFolder", "image_size_of", "ImageLoadError", "load_image", "resize_and_crop", "to_tensor", "IMAGE_EXTENSIONS"]


Row = tuple[Path, str, Optional[tuple[int, int]]]  # (file, caption, (height, width) when the index states it)


def read_sidecar_captions(root: Path, extensions, skipped: dict) -> list[Row]:
    """(file, caption, None) for every file under ``root`` with one of ``extensions`` and a non-empty ``FILE.txt``
    beside it; files without a caption are counted in ``skipped["missing_caption"]``."""
    entries = []
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in extensions and p.is_file()):
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else ""
        if not caption:
            skipped["missing_caption"] += 1
            continue
        entries.append((path, caption, None))
    return entries


def _stated_size(rec: dict) -> Optional[tuple[int, int]]:
    """(height, width) from optional ``height``/``width`` fields (as in PixArt-α's data-info files), so
    aspect-ratio bucketing needs no header read per image; None when absent or not positive integers."""
    try:
        h, w = int(rec["height"]), int(rec["width"])
    except (KeyError, TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _entry_from_record(rec: Any, root: Path, skipped: dict) -> Optional[Row]:
    """(file, caption, size) from one index record ({"file" or "file_name", "caption" or "text", optional
    "height" and "width"}), or None with the reason counted in ``skipped``."""
    if not isinstance(rec, dict):
        skipped["bad_record"] += 1
        return None
    file = rec.get("file", rec.get("file_name"))
    caption = rec.get("caption", rec.get("text"))
    if not isinstance(file, str) or not file:
        skipped["bad_record"] += 1
        return None
    if not isinstance(caption, str) or not caption.strip():
        skipped["missing_caption"] += 1
        return None
    image = Path(file) if Path(file).is_absolute() else root / file
    if not image.is_file():
        skipped["missing_file"] += 1
        return None
    return image, caption.strip(), _stated_size(rec)


def read_captions_jsonl(path: Path, root: Path, skipped: dict) -> list[Row]:
    """(file, caption, size) per line of a ``captions.jsonl`` ({"file" or "file_name", "caption" or "text"});
    bad lines, empty captions and missing files are counted in ``skipped`` instead of raising."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped["bad_record"] += 1
                continue
            entry = _entry_from_record(rec, root, skipped)
            if entry is not None:
                entries.append(entry)
    return entries


def read_captions_csv(path: Path, root: Path, skipped: dict) -> list[Row]:
    """(file, caption, size) per row of a ``captions.csv`` with a header naming ``file`` (or ``file_name``) and
    ``caption`` (or ``text``) columns; other columns are ignored, bad rows counted as in the JSONL reader."""
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not fields & {"file", "file_name"} or not fields & {"caption", "text"}:
            raise ValueError(f"{path}: the header must name a file column (file or file_name) and a caption column "
                             f"(caption or text); found {sorted(fields)}")
        entries = []
        for row in reader:
            entry = _entry_from_record(row, root, skipped)
            if entry is not None:
                entries.append(entry)
    return entries
