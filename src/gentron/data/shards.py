"""Webdataset-format tar shards as a map-style training data set, read by seeking into the tars.

A shard is an uncompressed tar whose members are grouped into samples by key, webdataset style: the key
is the member path up to the first dot of its file name and the rest is the extension, so
``dir/000123.jpg`` + ``dir/000123.txt`` are the image and caption of sample ``dir/000123``. A sample
needs one image (png/jpg/jpeg/webp/bmp; the first in member order wins) and a caption: the ``.txt``
member, else the ``"caption"`` (or ``"text"``) field of the ``.json`` member. Other members are ignored.

Why map-style rather than streaming: the trainer picks each step's global indices from ``(seed, step)``
and gives every rank its slice, so random access is what buys per-rank splitting and exact resume. To
make random access cheap each shard is indexed once — image member data offset and size, and the caption
text itself (read at index time, so :attr:`TarShardDataset.captions` never touches the tars) — and the
index is cached beside the shard in ``SHARD.tar.idx.json``::

    {"format": "gentron.tar-index", "version": 1,
     "tar_size": 123456, "tar_mtime_ns": 1700000000000000000,   # staleness check: both must match
     "complete": true,                                          # false: the tar is truncated/corrupt
     "skipped": {"missing_caption": 0, "missing_file": 0, "bad_record": 0, "corrupt_shard": 0},
     "columns": ["key", "ext", "offset", "size", "caption"],
     "samples": [["000000", "png", 1536, 211, "a red circle"], ...]}

``offset`` is the byte position of the image member's data in the tar. A sidecar that cannot be written
(read-only folder) is not an error: the index then lives in memory only.

Item order is shard order (as resolved, see :func:`resolve_shards`), then the order in which each
sample's key first appears in the tar. :func:`write_tar_shards` writes samples in
:class:`~gentron.data.folder.ImageCaptionFolder` order, so a converted folder reads back item for item.

Like the folder data set, bad data never crashes a run; every skip is counted in
:attr:`TarShardDataset.skipped`: samples without caption or image are dropped at index time
(``missing_caption``, ``missing_file``; an unparsable ``.json`` caption is a ``bad_record``), a tar that
is truncated or corrupt part way keeps the samples before the damage (``corrupt_shard``), and images that
fail to decode are found lazily and replaced by the next readable item (``corrupt_image``).
"""

from __future__ import annotations

import bisect
import glob
import io
import json
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image

from gentron.data.folder import (
    SKIP_REASONS,
    CaptionedImages,
    ImageCaptionFolder,
    ImageLoadError,
    image_size_of,
    load_image,
)

IMAGE_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "bmp")
SHARD_SKIP_REASONS: tuple[str, ...] = SKIP_REASONS + ("corrupt_shard",)
INDEX_FORMAT = "gentron.tar-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".idx.json"
_INDEX_COLUMNS = ["key", "ext", "offset", "size", "caption"]
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}

_GLOB_MAGIC = re.compile(r"[*?[]")

ShardSpec = Union[str, Path, Sequence[Union[str, Path]]]


# ------------------------------------------------------------------------------------------------
# Naming shards: directories, globs, brace ranges, lists
# ------------------------------------------------------------------------------------------------


def _matching_brace(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced '{{' in shard pattern {s!r}")


def _split_top_level(body: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def expand_braces(pattern: str) -> list[str]:
    """Expand shell/webdataset braces: ``a-{000..002}.tar`` → ``a-000.tar, a-001.tar, a-002.tar`` (zero
    padding follows the written bounds; ``{5..1}`` counts down) and ``{x,y}`` alternatives, nested or
    several per pattern, in written order. Text without braces is returned unchanged."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = _matching_brace(pattern, start)
    head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    tails = expand_braces(tail)
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    parts = _split_top_level(body)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        padded = any(len(g.lstrip("-")) > 1 and g.lstrip("-").startswith("0") for g in m.groups())
        width = max(len(m.group(1)), len(m.group(2))) if padded else 0
        step = 1 if b >= a else -1
        alternatives = [f"{n:0{width}d}" for n in range(a, b + step, step)]
    elif len(parts) > 1:
        alternatives = [alt for part in parts for alt in expand_braces(part)]
    else:  # "{x}" is literal text in the shell; keep it so glob/literal lookup sees what the user wrote
        return [head + "{" + b + "}" + t for b in expand_braces(body) for t in tails]
    return [head + alt + t for alt in alternatives for t in tails]


def _is_shard_file(path: Path) -> bool:
    return path.is_file() and not path.name.endswith((INDEX_SUFFIX, ".tmp"))


def resolve_shards(shards: ShardSpec) -> list[Path]:
    """The shard files named by ``shards``: a directory (its ``*.tar``, sorted by name), a glob pattern
    (matches sorted, sidecar indexes ignored), a brace pattern like ``train-{000000..000099}.tar`` (expansion
    order; every named file must exist), a literal path, or a list of any of these (concatenated in order).

    Raises :class:`FileNotFoundError` naming the pattern when it resolves to no files, or when a literal or
    brace-expanded shard is missing — a typo in a data path should fail at start-up, not hours in."""
    if isinstance(shards, (str, Path)):
        specs = [str(shards)]
    else:
        specs = [str(s) for s in shards]
        if not specs:
            raise FileNotFoundError("empty list of tar shards")
    out: list[Path] = []
    for spec in specs:
        found: list[Path] = []
        missing: list[str] = []
        if Path(spec).is_dir():
            found = sorted(p for p in Path(spec).glob("*.tar") if p.is_file())
        else:
            for name in expand_braces(os.path.expanduser(spec)):
                if _GLOB_MAGIC.search(name):
                    found.extend(sorted(p for p in map(Path, glob.glob(name)) if _is_shard_file(p)))
                elif Path(name).is_file():
                    found.append(Path(name))
                else:
                    missing.append(name)
        if not found:
            what = "no *.tar files in folder" if Path(spec).is_dir() else "no tar shards match"
            raise FileNotFoundError(f"{what} {spec!r}")
        if missing:
            raise FileNotFoundError(f"{len(missing)} tar shard(s) named by {spec!r} do not exist, e.g. {missing[0]}")
        out.extend(found)
    return out


# ------------------------------------------------------------------------------------------------
# Indexing one shard
# ------------------------------------------------------------------------------------------------


def index_path(shard: Union[str, Path]) -> Path:
    """Where the index of ``shard`` is cached: ``SHARD.tar.idx.json`` beside it."""
    shard = Path(shard)
    return shard.with_name(shard.name + INDEX_SUFFIX)


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) the webdataset way: the file name is split at its first dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def _caption_from(members: dict[str, bytes]) -> tuple[Optional[str], bool]:
    """(caption or None, whether a .json caption member was unparsable)."""
    txt = members.get("txt")
    if txt is not None:
        caption = txt.decode("utf-8", errors="replace").strip()
        if caption:
            return caption, False
    raw = members.get("json")
    if raw is None:
        return None, False
    try:
        rec = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None, True
    if not isinstance(rec, dict):
        return None, True
    caption = rec.get("caption", rec.get("text"))
    return (caption.strip() or None, False) if isinstance(caption, str) else (None, False)


def _check_not_compressed(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"tar shard {path} is {kind}-compressed; shards are read by seeking, which needs "
                             f"plain .tar files (decompress it, e.g. `{kind} -d`, or rewrite without compression)")


def scan_shard(path: Union[str, Path]) -> dict[str, Any]:
    """Read a tar's headers (and its small caption members) into an index record (the sidecar format).

    A tar that ends early or has a damaged header keeps the samples before the damage and sets
    ``corrupt_shard`` to 1; a sample whose member was cut off is dropped (counted only as the corrupt
    shard). Every member that is indexed was checked to lie wholly inside the file."""
    path = Path(path)
    _check_not_compressed(path)
    st = path.stat()
    size_on_disk = st.st_size
    skipped = {"missing_caption": 0, "missing_file": 0, "bad_record": 0, "corrupt_shard": 0}
    groups: "OrderedDict[str, dict[str, Any]]" = OrderedDict()  # key -> {"image": (ext, off, size), ext: bytes}
    complete = True
    damaged_key: Optional[str] = None
    try:
        with tarfile.open(path, mode="r:") as tf:
            while True:
                member = tf.next()
                if member is None:
                    break
                if not member.isreg() or member.issparse():
                    continue
                key, ext = _split_member(member.name)
                if member.offset_data + member.size > size_on_disk:  # data cut off by truncation
                    complete, damaged_key = False, key
                    break
                group = groups.setdefault(key, {})
                if ext in IMAGE_EXTS:
                    group.setdefault("image", (ext, member.offset_data, member.size))
                elif ext in ("txt", "json") and ext not in group:
                    fobj = tf.extractfile(member)
                    data = fobj.read() if fobj is not None else b""
                    if len(data) != member.size:
                        complete, damaged_key = False, key
                        break
                    group[ext] = data
            if complete:  # tarfile stops quietly at a bad header mid-file; a real end is a zero block
                with open(path, "rb") as f:
                    f.seek(tf.offset)
                    end = f.read(tarfile.BLOCKSIZE)
                complete = len(end) == tarfile.BLOCKSIZE and not any(end)
    except (tarfile.TarError, EOFError, OSError):
        complete = False
    if not complete:
        skipped["corrupt_shard"] = 1
        if damaged_key is not None:
            groups.pop(damaged_key, None)
    samples = []
    for key, group in groups.items():
        image = group.get("image")
        caption, bad = _caption_from(group)
        if image is None:
            skipped["missing_file"] += 1
        elif caption is None:
            skipped["bad_record" if bad else "missing_caption"] += 1
        else:
            samples.append([key, image[0], image[1], image[2], caption])
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "tar_size": st.st_size,
            "tar_mtime_ns": st.st_mtime_ns, "complete": complete, "skipped": skipped,
            "columns": list(_INDEX_COLUMNS), "samples": samples}


def _read_cached_index(path: Path) -> Optional[dict[str, Any]]:
    """The sidecar index if it is present, well formed and matches the shard's size and mtime."""
    try:
        st = path.stat()
        with open(index_path(path), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(index, dict) or index.get("format") != INDEX_FORMAT
            or index.get("version") != INDEX_VERSION or index.get("columns") != _INDEX_COLUMNS
            or index.get("tar_size") != st.st_size or index.get("tar_mtime_ns") != st.st_mtime_ns
            or not isinstance(index.get("samples"), list) or not isinstance(index.get("skipped"), dict)):
        return None
    return index


def _write_cached_index(path: Path, index: dict[str, Any]) -> bool:
    """Write the sidecar atomically; False (index stays in memory only) when the folder is not writable."""
    target = index_path(path)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, separators=(",", ":"), ensure_ascii=False)
        os.replace(tmp, target)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def load_shard_index(path: Union[str, Path], cache: bool = True) -> dict[str, Any]:
    """The index of one shard: the cached sidecar when fresh, else a scan (cached afterwards if ``cache``)."""
    path = Path(path)
    if cache:
        index = _read_cached_index(path)
        if index is not None:
            return index
    index = scan_shard(path)
    if cache:
        _write_cached_index(path, index)
    return index


# ------------------------------------------------------------------------------------------------
# The data set
# ------------------------------------------------------------------------------------------------


class TarShardDataset(CaptionedImages):
    """Images with captions from webdataset tar shards; items are ``{"pixel_values", "caption", "index"}``,
    exactly as :class:`~gentron.data.folder.ImageCaptionFolder`'s.

    ``index`` is the position of the item actually returned (it differs from the requested one when a
    corrupt image was skipped). Non-centre crops are seeded by the item's index (exact resume);
    ``random_flip`` uses torch's global generator. Each process opens its own file handle per shard
    lazily (at most :attr:`max_open_shards` at a time), so the data set can be shared with forked or
    spawned DataLoader workers. Skip counters live in the process that reads the item (workers keep their
    own); the index-time counters (missing caption/file, bad record, corrupt shard) are set on construction.
    """

    #: Open file handles kept per process; beyond this the least recently used is closed (fd limits).
    max_open_shards: int = 128

    def __init__(self, shards: ShardSpec, resolution: int, center_crop: bool = True, random_flip: bool = False,
                 index_cache: bool = True):
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.spec = shards
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.skipped: dict[str, int] = {reason: 0 for reason in SHARD_SKIP_REASONS}
        self._bad: set[int] = set()
        self.shards: list[Path] = resolve_shards(shards)
        captions: list[str] = []
        offsets: list[int] = []
        sizes: list[int] = []
        starts: list[int] = []  # first global index of each shard
        for path in self.shards:
            index = load_shard_index(path, cache=index_cache)
            for reason, n in index["skipped"].items():
                self.skipped[reason] = self.skipped.get(reason, 0) + int(n)
            starts.append(len(captions))
            for _key, _ext, offset, size, caption in index["samples"]:
                offsets.append(offset)
                sizes.append(size)
                captions.append(caption)
        self._captions = captions
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._starts = starts
        self._handles: "OrderedDict[int, BinaryIO]" = OrderedDict()
        self._pid = os.getpid()
        self._require_items(f"{len(self.shards)} tar shard(s) from {shards!r}",
                            'webdataset samples like KEY.jpg + KEY.txt (or KEY.json with a "caption" field), image '
                            f"extensions {', '.join(IMAGE_EXTS)}")

    # -- access -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._captions)

    @property
    def captions(self) -> list[str]:
        return list(self._captions)

    def shard_of(self, index: int) -> Path:
        """The shard file holding item ``index``."""
        return self.shards[bisect.bisect_right(self._starts, index) - 1]

    def _handle(self, shard: int) -> BinaryIO:
        if self._pid != os.getpid():  # a forked worker: the parent's handles share its file offsets
            self._handles = OrderedDict()
            self._pid = os.getpid()
        f = self._handles.get(shard)
        if f is None:
            f = open(self.shards[shard], "rb")
            self._handles[shard] = f
            while len(self._handles) > max(1, self.max_open_shards):
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(shard)
        return f

    def read_bytes(self, index: int) -> bytes:
        """The raw bytes of item ``index``'s image member."""
        shard = bisect.bisect_right(self._starts, index) - 1
        size = int(self._sizes[index])
        f = self._handle(shard)
        f.seek(int(self._offsets[index]))
        data = f.read(size)
        if len(data) != size:
            raise ImageLoadError(f"image of item {index} is cut short in {self.shards[shard]} "
                                 f"(the shard changed after it was indexed?)")
        return data

    def raw_image(self, index: int) -> Image.Image:
        return load_image(self.read_bytes(index), name=f"item {index} in {self.shard_of(index)}")

    def caption(self, index: int) -> str:
        return self._captions[index]

    def image_size(self, index: int) -> tuple[int, int]:
        return image_size_of(self.read_bytes(index), f"item {index} in {self.shard_of(index)}")

    def close(self) -> None:
        """Close this process's shard file handles (they reopen on the next access)."""
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:  # spawned workers and pickling: file handles do not travel
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state

    def __del__(self) -> None:
        try:
            if getattr(self, "_pid", None) == os.getpid():
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        skipped = {k: v for k, v in self.skipped.items() if v}
        return (f"TarShardDataset({len(self)} items from {len(self.shards)} shard(s), "
                f"resolution={self.resolution}, skipped={skipped})")


# ------------------------------------------------------------------------------------------------
# Writing shards
# ------------------------------------------------------------------------------------------------


def write_tar_shards(folder_dataset_root: Union[str, Path], out_dir: Union[str, Path],
                     shard_size: int = 1000) -> list[Path]:
    """Convert an image folder (anything :class:`~gentron.data.folder.ImageCaptionFolder` reads) into
    webdataset shards ``out_dir/shard-000000.tar, …`` of ``shard_size`` samples each.

    Images are stored as their original file bytes (no re-encoding) under keys numbering the folder's
    items (``000000.png`` + ``000000.txt``), in the folder's order, so :class:`TarShardDataset` over the
    result returns the same items in the same order. Each tar is written under a temporary name and renamed
    when complete, so a finished ``shard-*.tar`` is never partial. Refuses to write into a folder that
    already holds ``shard-*.tar`` files, since stale extra shards would silently join the data set."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    entries = ImageCaptionFolder(folder_dataset_root, resolution=1).entries
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("shard-*.tar"))
    if existing:
        raise FileExistsError(f"{out} already holds tar shards (e.g. {existing[0].name}); write into an empty folder")
    width = max(6, len(str(len(entries) - 1)))
    written: list[Path] = []
    for shard_no, start in enumerate(range(0, len(entries), shard_size)):
        final = out / f"shard-{shard_no:06d}.tar"
        tmp = final.with_name(final.name + ".tmp")
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for i in range(start, min(start + shard_size, len(entries))):
                image_path, caption = entries[i]
                key = f"{i:0{width}d}"
                mtime = int(image_path.stat().st_mtime)
                _add_bytes(tf, key + image_path.suffix.lower(), image_path.read_bytes(), mtime)
                _add_bytes(tf, key + ".txt", caption.encode("utf-8"), mtime)
        os.replace(tmp, final)
        written.append(final)
    return written


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


__all__ = ["TarShardDataset", "write_tar_shards", "resolve_shards", "expand_braces", "scan_shard",
           "load_shard_index", "index_path", "IMAGE_EXTS", "SHARD_SKIP_REASONS"]
