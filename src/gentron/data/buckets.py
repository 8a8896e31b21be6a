"""Multi-aspect-ratio buckets (PixArt-α App. A.5, after SDXL): 40 (height, width) sizes with aspect ratios from
0.25 to 4 and about the same area as the square base size; every batch comes from one bucket.

The bucket tables are generated, not copied: sides are multiples of ``base / 16`` (64 px at 1024, the
VAE-and-patch-friendly granularity), the area stays within 15% of ``base²`` (as in PixArt-α's own tables), and 40 ratios are
picked evenly in log-ratio including 1.0 and both ends. PixArt-α 1024-MS feeds each image's original
size and its bucket's aspect ratio to the model as micro-conditions (`GenTronTransformer(micro_conditions=True)`,
``added_cond_kwargs={"resolution", "aspect_ratio"}``).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm


def aspect_ratio_buckets(base: int = 1024, num: int = 40, min_ratio: float = 0.25,
                         max_ratio: float = 4.0, multiple: int = 1) -> list[tuple[int, int]]:
    """Up to ``num`` (height, width) buckets of area ≈ base², sorted by aspect ratio h / w.

    Sides are multiples of ``base / 16`` rounded up to ``multiple`` (patch size × VAE factor, so every
    bucket patchifies exactly). Small bases have fewer distinct ratios than ``num``; all are returned then."""
    step = max(base // 16, 1)
    step = -(-step // multiple) * multiple
    candidates: dict[float, tuple[int, int]] = {}
    sides = range(step, int(base * math.sqrt(max_ratio)) + 2 * step, step)
    for h in sides:
        for w in sides:
            ratio, area = h / w, h * w / base**2
            if not (min_ratio - 1e-9 <= ratio <= max_ratio + 1e-9) or abs(area - 1) > 0.15:
                continue
            key = round(ratio, 4)  # per ratio keep the pair whose area is closest to base²
            if key not in candidates or abs(area - 1) < abs(candidates[key][0] * candidates[key][1] / base**2 - 1):
                candidates[key] = (h, w)
    ratios = sorted(candidates)
    num = min(num, len(ratios))
    logs = [math.log(r) for r in ratios]
    picks: list[float] = []
    for k in range(num):  # evenly spaced targets in log-ratio; take the nearest unused candidate
        target = math.log(min_ratio) + (math.log(max_ratio) - math.log(min_ratio)) * k / (num - 1)
        order = sorted(range(len(ratios)), key=lambda i: abs(logs[i] - target))
        picks.append(next(ratios[i] for i in order if ratios[i] not in picks))
    if 1.0 not in picks and 1.0 in candidates:  # the square bucket always exists
        picks[min(range(num), key=lambda i: abs(math.log(picks[i])))] = 1.0
    return [candidates[r] for r in sorted(set(picks))]


def nearest_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest (in log space) to ``height / width``."""
    r = math.log(height / width)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - r))


def resize_to_bucket(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so the image covers the bucket, then center-crop to it exactly."""
    h, w = size
    scale = max(h / image.height, w / image.width)
    nh, nw = max(h, round(image.height * scale)), max(w, round(image.width * scale))
    image = image.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - h) // 2, (nw - w) // 2
    return image.crop((left, top, left + w, top + h))


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share a bucket, shuffled per epoch from the seed (deterministic, resumable).

    Each epoch shuffles the items inside every bucket, cuts full batches (a bucket's remainder is dropped
    for that epoch), and shuffles the order of all batches, so consecutive steps alternate buckets.
    """

    def __init__(self, bucket_of_item: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0):
        self.bucket_of_item = list(bucket_of_item)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(self.bucket_of_item):
            groups.setdefault(b, []).append(i)
        out = []
        for b in sorted(groups):
            items = [groups[b][j] for j in torch.randperm(len(groups[b]), generator=g).tolist()]
            out += [items[k : k + self.batch_size] for k in range(0, len(items) - self.batch_size + 1, self.batch_size)]
        return [out[j] for j in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


class BucketedImages(torch.utils.data.Dataset):
    """An image-caption dataset whose items are resized to their aspect-ratio bucket (PixArt-α multi-aspect
    training) and carry the micro-conditions ``original_size`` (h, w) and the bucket's ``aspect_ratio``.

    The wrapped dataset provides ``image_size(i) -> (h, w)`` (a header read, no decode) and
    ``raw_image(i) -> PIL.Image`` (full decode, raising OSError on corrupt files) and ``caption(i)``:
    `ImageCaptionFolder` and `TarShardDataset` do. Sizes are read once at construction; an unreadable header puts the item in no
    bucket (counted as ``corrupt_image``). A corrupt file found later is replaced by the next readable item
    of the *same bucket*, so a batch always stacks."""

    def __init__(self, dataset: Any, base: int, multiple: int = 1, num: int = 40, show_progress: bool = True):
        self.dataset = dataset
        self.buckets = aspect_ratio_buckets(base, num, multiple=multiple)
        self.skipped: dict[str, int] = dict(getattr(dataset, "skipped", {}) or {})
        self.skipped.setdefault("corrupt_image", 0)
        self.original_sizes: list[tuple[int, int]] = []
        self.bucket_of_item: list[int] = []
        for i in tqdm(range(len(dataset)), desc="bucketing", disable=not show_progress, leave=False):
            try:
                h, w = dataset.image_size(i)
                b = nearest_bucket(h, w, self.buckets)
            except (OSError, ValueError):
                h, w, b = 0, 0, -1
                self.skipped["corrupt_image"] += 1
            self.original_sizes.append((h, w))
            self.bucket_of_item.append(b)
        self._members: dict[int, list[int]] = {}
        self._position: list[int] = []  # index of item i within its bucket's member list
        for i, b in enumerate(self.bucket_of_item):
            self._position.append(len(self._members.setdefault(b, [])))
            self._members[b].append(i)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def captions(self) -> list[str]:
        return self.dataset.captions

    def __getitem__(self, index: int) -> dict[str, Any]:
        from gentron.data.folder import to_tensor

        b = self.bucket_of_item[index]
        members = self._members[b]
        start = self._position[index]
        for k in range(len(members)):
            i = members[(start + k) % len(members)]
            if i in self._bad or b < 0:
                continue
            try:
                image = self.dataset.raw_image(i)
            except OSError:
                self._bad.add(i)
                self.skipped["corrupt_image"] += 1
                continue
            h, w = self.buckets[b]
            return {"pixel_values": to_tensor(resize_to_bucket(image, (h, w))), "caption": self.dataset.caption(i),
                    "index": i, "original_size": (image.height, image.width), "aspect_ratio": h / w}
        raise RuntimeError(f"no readable image left in bucket {self.buckets[b] if b >= 0 else 'none'}")
