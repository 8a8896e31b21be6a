"""Video data: a folder of clips with captions, decoded with PyAV; and the joint image-video source.

Layouts (the first wins when both are present), mirroring :mod:`gentron.data.folder`:

* ``ROOT/captions.jsonl`` — one JSON object per line with ``"file"`` (relative to ROOT, or absolute)
  and ``"caption"`` (or ``"text"``). :func:`gentron.data.shapes.write_shapes_video_dataset` writes this.
* sidecar captions — ``ROOT/**/NAME.mp4`` (mp4/webm/gif/mov/mkv/avi) with ``NAME.txt`` beside it.

Each item is ``T`` frames (default 8) sampled at a target frame rate (default 4 fps) from the source
frame rate, centred in the clip, each frame resized (shorter side) and centre-cropped. Videos that fail
to decode or are too short for ``T`` frames at that rate are skipped and counted in
:attr:`VideoCaptionFolder.skipped` — never a crash.

Joint image-video training (GenTron Sec. 3.3.2): :class:`JointImageVideoData` puts the real clips and
the image-text pairs (each repeated ``T`` times as a pseudo-video) into one index; :class:`VideoBatchPlan`
draws every micro-batch with a per-sample motion-free flag (probability ``p_motion_free``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gentron.data.folder import read_captions_jsonl, read_sidecar_captions, resize_and_crop, to_tensor

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
VIDEO_SKIP_REASONS: tuple[str, ...] = ("missing_caption", "missing_file", "bad_record", "corrupt_video",
                                       "too_short")


class VideoLoadError(OSError):
    """A video file exists but cannot be decoded."""


class VideoTooShort(ValueError):
    """A readable video has too few frames for the requested clip."""


# ------------------------------------------------------------------------------------------------
# Encode / decode
# ------------------------------------------------------------------------------------------------


def _as_rgb_arrays(frames: Sequence[Union[Image.Image, np.ndarray]]) -> list[np.ndarray]:
    out = []
    for f in frames:
        a = np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


def write_video(path: Union[str, Path], frames: Sequence[Union[Image.Image, np.ndarray]], fps: float = 8) -> Path:
    """Write frames (PIL or uint8 HxWx3) as ``.mp4`` (lossless RGB H.264), ``.webm`` (VP9) or ``.gif``."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _as_rgb_arrays(frames)
    if not arrays:
        raise ValueError("no frames to write")
    ext = path.suffix.lower()
    if ext == ".gif":  # PIL: adaptive palette, exact for flat renders
        ims = [Image.fromarray(a) for a in arrays]
        # GIF delays are whole centiseconds: round the cumulative time so the average rate is exact.
        ends = [int(round((k + 1) * 100 / fps)) for k in range(len(ims))]
        durations = [10 * (e - b) for b, e in zip([0] + ends[:-1], ends)]
        ims[0].save(path, save_all=True, append_images=ims[1:], duration=durations, loop=0, optimize=False)
        return path
    h, w = arrays[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        if ext == ".webm":
            stream = container.add_stream("libvpx-vp9", rate=int(round(fps)))
            stream.pix_fmt = "yuv444p"
            stream.options = {"lossless": "1"}
        elif ext in (".mp4", ".mov", ".mkv"):
            stream = container.add_stream("libx264rgb", rate=int(round(fps)))
            stream.pix_fmt = "rgb24"
            stream.options = {"crf": "0", "preset": "ultrafast"}
        else:
            raise ValueError(f"unsupported video extension {ext!r}; use .mp4, .webm or .gif")
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        for a in arrays:
            if a.shape[0] != stream.height or a.shape[1] != stream.width:
                a = np.pad(a, ((0, stream.height - a.shape[0]), (0, stream.width - a.shape[1]), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Union[str, Path], max_frames: int = 10000) -> tuple[list[np.ndarray], float]:
    """All frames (uint8 HxWx3 RGB) and the source frame rate, decoded with PyAV."""
    frames, fps, _, _ = read_video_timed(path, max_frames)
    return frames, fps


def read_video_timed(
    path: Union[str, Path], max_frames: int = 10000
) -> tuple[list[np.ndarray], float, Optional[list[float]], Optional[float]]:
    """Frames, frame rate and each frame's presentation time in seconds from the first (None when the
    container has no usable timestamps). GIF writers merge identical consecutive frames into one longer
    frame, so sampling by time (not index) keeps the motion's speed right. Also returns the clip duration
    (end of the last frame's display interval) when known."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    frames: list[np.ndarray] = []
    times: list[Optional[float]] = []
    last_duration: Optional[float] = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoLoadError(f"no video stream in {path}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else None)
                if frame.duration and frame.time_base is not None:
                    last_duration = float(frame.duration * frame.time_base)
                if len(frames) >= max_frames:
                    break
    except VideoLoadError:
        raise
    except Exception as e:  # av.error.*, InvalidDataError, ...
        raise VideoLoadError(f"could not decode video {path}: {e}") from e
    if not frames:
        raise VideoLoadError(f"no frames decoded from {path}")
    if not fps > 0 or not math.isfinite(fps):
        fps = 8.0 if path.suffix.lower() != ".gif" else 10.0
    rel: Optional[list[float]] = None
    if all(t is not None for t in times) and all(b > a for a, b in zip(times, times[1:])):
        rel = [t - times[0] for t in times]  # type: ignore[operator]
        if len(rel) > 1:
            fps = 1.0 / float(np.median(np.diff(rel)))  # the nominal rate of a (possibly merged) stream
    duration = None
    if rel is not None:
        duration = rel[-1] + (last_duration if last_duration and last_duration > 0 else 1.0 / fps)
    return frames, fps, rel, duration


def sample_frame_indices(num_source: int, source_fps: float, num_frames: int, fps: float,
                         times: Optional[Sequence[float]] = None, duration: Optional[float] = None) -> list[int]:
    """Indices of ``num_frames`` frames ``1/fps`` seconds apart, centred in a ``num_source``-frame clip
    recorded at ``source_fps`` (or with per-frame ``times`` in seconds, for variable-rate sources such as
    GIFs). Raises :class:`VideoTooShort` when the clip is shorter than that."""
    if times is None or len(times) != num_source:
        times = [i / source_fps for i in range(num_source)]
    # the time of the last frame of an equivalent constant-rate clip (merged GIF frames included)
    last = max(times[-1], (duration - 1.0 / source_fps) if duration else times[-1])
    span = (num_frames - 1) / fps
    if num_source < 1 or span > last + 0.25 / source_fps:
        raise VideoTooShort(f"{num_source} frames ({last:.2f} s) are too few for {num_frames} frames at {fps:g} fps")
    start = (last - span) / 2
    half = 0.5 / source_fps
    out, i = [], 0
    for k in range(num_frames):
        target = start + k / fps + half  # nearest source frame (last one shown at the target time)
        while i + 1 < num_source and times[i + 1] <= target + 0.25 / source_fps:  # container time rounding
            i += 1
        out.append(i)
    return out


def load_clip(path: Union[str, Path], num_frames: int = 8, fps: float = 4.0, resolution: Optional[int] = None,
              center_crop: bool = True) -> list[Image.Image]:
    """``num_frames`` PIL frames of a video file at ``fps``, resized/cropped to ``resolution``."""
    frames, src_fps, times, duration = read_video_timed(path)
    idx = sample_frame_indices(len(frames), src_fps, num_frames, fps, times, duration)
    out = [Image.fromarray(frames[i]) for i in idx]
    if resolution is not None:
        out = [resize_and_crop(f, resolution, center_crop=True) for f in out]
    return out


def clip_to_tensor(frames: Sequence[Image.Image]) -> torch.Tensor:
    """PIL frames → (3, T, H, W) in [-1, 1]."""
    return torch.stack([to_tensor(f) for f in frames], dim=1)


def tensor_to_frames(video: torch.Tensor) -> list[Image.Image]:
    """(3, T, H, W) in [-1, 1] → PIL frames."""
    arr = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(arr[:, t].permute(1, 2, 0).cpu().numpy()) for t in range(arr.shape[1])]


# ------------------------------------------------------------------------------------------------
# The folder data set
# ------------------------------------------------------------------------------------------------


class VideoCaptionFolder(Dataset):
    """Video clips with captions. Items: ``pixel_values`` (3, T, H, W) in [-1, 1], ``caption``, ``path``.

    Unreadable or too-short videos are replaced by the next readable item and counted in ``skipped``.
    """

    def __init__(self, root: Union[str, Path], resolution: int, num_frames: int = 8, fps: float = 4.0,
                 center_crop: bool = True):
        self.root = Path(root)
        self.resolution, self.num_frames, self.fps = int(resolution), int(num_frames), float(fps)
        self.center_crop = center_crop
        self.skipped: dict[str, int] = {reason: 0 for reason in VIDEO_SKIP_REASONS}
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder not found: {self.root}")
        jsonl = self.root / "captions.jsonl"
        rows = (read_captions_jsonl(jsonl, self.root, self.skipped) if jsonl.is_file()
                else read_sidecar_captions(self.root, VIDEO_EXTENSIONS, self.skipped))
        self.items: list[tuple[Path, str]] = [(path, caption) for path, caption, _ in rows]  # sizes unused here
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self.items]

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.items)
        if n == 0:
            raise IndexError("empty video folder")
        cache = getattr(self, "_cache", None)
        if cache is not None and 0 <= index < len(cache):
            path, caption = self.items[index]
            return {"pixel_values": cache[index].float() / 127.5 - 1.0, "caption": caption, "path": str(path)}
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            path, caption = self.items[i]
            try:
                frames = load_clip(path, self.num_frames, self.fps, self.resolution, self.center_crop)
            except VideoTooShort:
                self.skipped["too_short"] += 1
                self._bad.add(i)
                continue
            except FileNotFoundError:
                self.skipped["missing_file"] += 1
                self._bad.add(i)
                continue
            except (VideoLoadError, OSError, ValueError):
                self.skipped["corrupt_video"] += 1
                self._bad.add(i)
                continue
            return {"pixel_values": clip_to_tensor(frames), "caption": caption, "path": str(path)}
        raise RuntimeError(f"no readable video in {self.root} (skipped {self.skipped})")

    def readable(self, cache: bool = True) -> "VideoCaptionFolder":
        """Decode every item once, dropping the unreadable ones (counted in ``skipped``); with ``cache``
        the decoded clips are kept (uint8) so a following pass (the trainer's preload) does not decode
        again."""
        keep, clips = [], []
        for i in range(len(self.items)):
            before = sum(self.skipped.values())
            item = self[i]
            if sum(self.skipped.values()) == before and item["path"] == str(self.items[i][0]):
                keep.append(self.items[i])
                if cache:
                    clips.append(((item["pixel_values"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        self.items, self._bad = keep, set()
        self._cache = clips if cache else None
        return self


# ------------------------------------------------------------------------------------------------
# Joint image-video training
# ------------------------------------------------------------------------------------------------


class JointImageVideoData(Dataset):
    """Clips first (indices ``[0, num_videos)``), then images repeated ``T`` times as pseudo-videos."""

    def __init__(self, videos: VideoCaptionFolder, images: Optional[Dataset] = None):
        self.videos = videos.readable()
        if len(self.videos) == 0:
            raise ValueError(f"no readable videos in {videos.root} (skipped {videos.skipped})")
        self.images = images
        self.num_videos = len(self.videos)
        self.num_images = len(images) if images is not None else 0
        self.num_frames = videos.num_frames

    @property
    def skipped(self) -> dict[str, int]:
        out = {f"video_{k}": v for k, v in self.videos.skipped.items() if v}
        if self.images is not None:
            out.update({f"image_{k}": v for k, v in (getattr(self.images, "skipped", {}) or {}).items() if v})
        return out

    def __len__(self) -> int:
        return self.num_videos + self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.num_videos:
            return self.videos[index]
        item = dict(self.images[index - self.num_videos])
        x = item["pixel_values"]
        item["pixel_values"] = x[:, None].expand(-1, self.num_frames, -1, -1).contiguous()
        return item


class VideoBatchPlan:
    """Which items and which motion-free flags make up each micro-batch (deterministic per step).

    Each sample is motion-free with probability ``p_motion_free``. With ``motion_free_source="image"``
    (GenTron's joint image-video training) a motion-free sample is an image-text pair repeated T times;
    with ``"video"`` it is a real clip whose temporal attention uses the identity mask. Non-motion-free
    samples are always real clips with full temporal attention.
    """

    def __init__(self, num_videos: int, num_images: int, batch_size: int, p_motion_free: float,
                 motion_free_source: str, seed: int):
        if motion_free_source not in ("image", "video"):
            raise ValueError(f"motion_free_source must be image or video, got {motion_free_source!r}")
        if motion_free_source == "image" and p_motion_free > 0 and num_images == 0:
            raise ValueError("video.motion_free_source=image needs image data (data.path)")
        self.num_videos, self.num_images = num_videos, num_images
        self.batch_size, self.p, self.source, self.seed = batch_size, float(p_motion_free), motion_free_source, seed
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def draw(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into `JointImageVideoData`, motion_free bool) for micro-batch number ``position``."""
        if position in self._cache:
            return self._cache[position]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + position * 7_919 + 11 * 104_729) % (2**63 - 1))
        b = self.batch_size
        mf = torch.rand(b, generator=g) < self.p
        vid = torch.randint(0, self.num_videos, (b,), generator=g)
        idx = vid.clone()
        if self.source == "image" and self.num_images > 0:
            img = torch.randint(0, self.num_images, (b,), generator=g) + self.num_videos
            idx = torch.where(mf, img, vid)
        self._cache = {position: (idx, mf)}
        return idx, mf


def prepare_video_data(cfg, log=print) -> JointImageVideoData:
    """The joint data set a run config with ``video.num_frames > 1`` describes (shapes clips generated
    on first use; the image data of ``data:`` is loaded only when motion-free samples come from it)."""
    v = cfg.video
    path = Path(v.path)
    if v.kind == "shapes" and not (path / "captions.jsonl").is_file():
        from gentron.data.shapes import write_shapes_video_dataset

        log(f"generating {v.num} moving-shapes clips at {cfg.model.resolution}px into {path} ...")
        write_shapes_video_dataset(path, num=v.num, resolution=cfg.model.resolution, seed=v.seed)
    videos = VideoCaptionFolder(path, resolution=cfg.model.resolution, num_frames=v.num_frames, fps=v.fps)
    images = None
    if v.motion_free_source == "image" and v.p_motion_free > 0:
        import dataclasses

        from gentron.train.trainer import prepare_dataset

        image_cfg = dataclasses.replace(cfg, video=dataclasses.replace(v, num_frames=1))
        images = prepare_dataset(image_cfg, log)
    return JointImageVideoData(videos, images)
