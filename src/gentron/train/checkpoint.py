"""Crash-safe training checkpoints: ``RUN_DIR/checkpoints/step_NNNNNNN/``.

A checkpoint is written to a temporary directory, every file is flushed and fsync'ed, the directory is
renamed into place, and only then a ``COMPLETE`` marker is written. A directory without the marker is
never trusted. Old checkpoints are deleted only after a newer one is complete (keep-last-K). Nothing is
loaded by unpickling arbitrary objects: tensors go through safetensors, optimizer state through
``torch.load(weights_only=True)``, metadata through JSON. Sharded (FSDP2) checkpoints keep model,
EMA and optimizer shards in ``dcp/`` (`torch.distributed.checkpoint`, read with a restricted unpickler for
its metadata); per-rank RNG states are ``rng_rankNNNNN.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
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


def slow_checkpoint_delay() -> float:
    """Test-only hook: ``GENTRON_TEST_SLOW_CHECKPOINT=seconds`` sleeps while a checkpoint is half written
    (after the files, before the rename), so fault-injection tests can kill the trainer mid-write."""
    try:
        return float(os.environ.get("GENTRON_TEST_SLOW_CHECKPOINT", "0") or 0)
    except ValueError:
        return 0.0


def begin_checkpoint(run_dir: Path, step: int, tag: str | int | None = None) -> Path:
    """A fresh temporary directory for checkpoint ``step`` (``tag`` makes it unique per writer)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp_{step_dir_name(step)}_{tag if tag is not None else os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_rng_state(ckpt_dir: Path, rank: int, state: dict[str, list[int]]) -> None:
    """Per-rank RNG states as JSON (``rng_rank00000.json``)."""
    (Path(ckpt_dir) / f"rng_rank{rank:05d}.json").write_text(json.dumps(state))


def read_rng_state(ckpt_dir: Path, rank: int) -> Optional[dict[str, list[int]]]:
    f = Path(ckpt_dir) / f"rng_rank{rank:05d}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def commit_checkpoint(run_dir: Path, step: int, tmp: Path, keep: int = 2) -> Path:
    """fsync everything in ``tmp``, rename it to ``step_NNNNNNN``, write the COMPLETE marker, prune."""
    root = Path(run_dir) / "checkpoints"
    final = root / step_dir_name(step)
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            _fsync_file(f)
    for d in sorted(tmp.rglob("*")):
        if d.is_dir():
            _fsync_dir(d)
    _fsync_dir(tmp)
    delay = slow_checkpoint_delay()
    if delay > 0:
        time.sleep(delay)
    if final.exists():  # a stale, incomplete directory of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    marker = final / MARKER
    marker.write_text(json.dumps({"step": step}))
    _fsync_file(marker)
    _fsync_dir(final)
    prune_checkpoints(root, keep, current=tmp.name)
    return final


def write_state_files(
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    ema_state: Optional[dict[str, torch.Tensor]],
    optimizer_state: dict[str, Any],
) -> None:
    """Unsharded state: ``model.safetensors``, ``ema.safetensors``, ``optimizer.pt`` (tensors and plain types only)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / "model.safetensors")
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, tmp / "ema.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: Optional[dict[str, torch.Tensor]],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
    rng_state: Optional[dict[str, list[int]]] = None,
) -> Path:
    """Write one complete single-process checkpoint atomically and prune older ones; returns its directory."""
    tmp = begin_checkpoint(run_dir, step)
    write_state_files(tmp, model_state, ema_state, optimizer_state)
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    if rng_state is not None:
        write_rng_state(tmp, 0, rng_state)
    return commit_checkpoint(run_dir, step, tmp, keep)


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


def prune_checkpoints(root: Path, keep: int, current: Optional[str] = None) -> None:
    """Keep the newest ``keep`` complete checkpoints; remove incomplete leftovers of killed writes.

    Called only right after a checkpoint became complete, by the one process that writes it, so every
    other ``.tmp_*`` directory or marker-less ``step_*`` directory is debris from an earlier, killed run.
    """
    complete = list_checkpoints(root.parent)
    for d in complete[: max(0, len(complete) - max(keep, 1))]:
        # Renamed first (atomic), then deleted: a kill inside rmtree must not leave a ``step_*`` directory that
        # still has its COMPLETE marker but has lost its other files (the debris is removed at the next prune).
        doomed = root / f".tmp_delete_{d.name}"
        if doomed.exists():
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(d, doomed)
        _fsync_dir(root)
        shutil.rmtree(doomed, ignore_errors=True)
    for d in root.iterdir():
        if d.name.startswith(".tmp_") and d.name != current:
            shutil.rmtree(d, ignore_errors=True)
        elif d.is_dir() and d.name.startswith("step_") and not (d / MARKER).is_file():
            shutil.rmtree(d, ignore_errors=True)


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Read a checkpoint directory; raises ValueError with the file name if anything is unreadable."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MARKER).is_file():
        raise ValueError(f"checkpoint {ckpt_dir} is incomplete (no {MARKER} marker)")
    if (ckpt_dir / "dcp").is_dir():  # sharded (FSDP2): tensors are read later, collectively, by DCP
        try:
            from gentron.train.distributed import safe_load_metadata

            safe_load_metadata(ckpt_dir / "dcp" / ".metadata")
            return {"dcp": ckpt_dir / "dcp", "meta": json.loads((ckpt_dir / "trainer_state.json").read_text())}
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"checkpoint {ckpt_dir} is corrupt: {type(e).__name__}: {e}") from e
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
