"""Crash-safe training checkpoints: ``RUN_DIR/checkpoints/step_XXXXXXX/``.

A checkpoint is written to a temporary directory, every file is flushed and fsync'ed, the directory is
renamed into place, and only then a ``COMPLETE`` marker is written. A directory without the marker is
never trusted. Old checkpoints are deleted only after a newer one is complete (keep-last-K). Nothing is
loaded by unpickling arbitrary objects: tensors go through safetensors, optimizer state through
``torch.load(weights_only=True)``, metadata through JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: Optional[dict[str, torch.Tensor]],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one complete checkpoint atomically and prune older ones; returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp_{step_dir_name(step)}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / "model.safetensors")
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, tmp / "ema.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():  # a stale, incomplete directory of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    marker = final / MARKER
    marker.write_text(json.dumps({"step": step}))
    _fsync_file(marker)
    _fsync_dir(final)
    prune_checkpoints(root, keep)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and (d / MARKER).is_file():
            try:
                out.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(out)]


def prune_checkpoints(root: Path, keep: int) -> None:
    complete = list_checkpoints(root.parent)
    for d in complete[: max(0, len(complete) - max(keep, 1))]:
        shutil.rmtree(d, ignore_errors=True)
    for d in root.iterdir():  # leftovers of writes that were killed
        if d.name.startswith(".tmp_") and str(os.getpid()) not in d.name:
            shutil.rmtree(d, ignore_errors=True)


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Read a checkpoint directory; raises ValueError with the file name if anything is unreadable."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MARKER).is_file():
        raise ValueError(f"checkpoint {ckpt_dir} is incomplete (no {MARKER} marker)")
    try:
        out: dict[str, Any] = {
            "model": load_file(ckpt_dir / "model.safetensors"),
            "optimizer": torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True),
            "meta": json.loads((ckpt_dir / "trainer_state.json").read_text()),
        }
        if (ckpt_dir / "ema.safetensors").is_file():
            out["ema"] = load_file(ckpt_dir / "ema.safetensors")
    except Exception as e:  # noqa: BLE001 — any decode error means "corrupt"
        raise ValueError(f"checkpoint {ckpt_dir} is corrupt: {type(e).__name__}: {e}") from e
    return out


def find_resumable(run_dir: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """Newest complete checkpoint that loads; incomplete or corrupt ones are skipped with a warning."""
    for d in reversed(list_checkpoints(run_dir)):
        try:
            return d, load_checkpoint(d)
        except ValueError as e:
            warnings.warn(f"skipping checkpoint: {e}")
    return None
