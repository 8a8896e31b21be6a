"""Text-to-video training pieces the trainer calls (GenTron Sec. 3.3).

* :func:`init_from_t2i` — ``gentron train video.yaml --init-from T2I_DIR``: load every weight the T2V
  model shares with a trained T2I model; the new TempSelfAttn layers keep their zero-initialised output
  projections, so the T2V model starts as the T2I model applied frame by frame.
* :func:`make_video_plan` / :func:`video_motion_free` — joint image-video batches with per-sample
  motion-free flags (see :class:`gentron.data.video.VideoBatchPlan`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

TEMPORAL_KEYS = ("temporal_attn.", "norm_temporal.", "temporal_conv.")


def _is_temporal(key: str) -> bool:
    return any(part in key for part in TEMPORAL_KEYS)


def find_t2i_weights(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], str]:
    """The transformer weights in a T2I run dir, pipeline dir, transformer dir or checkpoint dir.

    Prefers the exported pipeline (EMA weights) of a run dir; falls back to the newest checkpoint's
    EMA (or raw) weights.
    """
    from safetensors.torch import load_file

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--init-from: {root} does not exist")
    for cand in (root / "pipeline" / "transformer", root / "transformer", root):
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            f = cand / name
            if f.is_file() and (cand / "config.json").is_file():
                return load_file(f), str(f)
    from gentron.train import checkpoint as ckpt

    found = ckpt.find_resumable(root) if not (root / "model.safetensors").is_file() else None
    state = found[1] if found is not None else ckpt.load_checkpoint(root)
    where = str(found[0]) if found is not None else str(root)
    weights = state.get("ema") or state["model"]
    weights = {k: v for k, v in weights.items() if not k.startswith("text.")}
    return weights, where


@torch.no_grad()
def init_from_t2i(model: torch.nn.Module, path: Union[str, Path], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the shared weights of a T2I model into ``model`` (a T2V model); zero-init the new layers.

    Every non-temporal parameter must be present with the same shape (a different architecture is an
    error, not a silent partial load); temporal parameters absent from the source are initialised as
    GenTron Sec. 3.3.1 says: TempSelfAttn output projection weight and bias zero, LayerNorm identity.
    """
    weights, where = find_t2i_weights(path)
    source = Path(where).parent / "config.json"  # a transformer dir's config (checkpoints have none beside them)
    if source.is_file() and hasattr(model, "config"):
        # the weights cannot tell this option: a conv trained at one gain computes another function at another
        theirs = float(json.loads(source.read_text()).get("mlp_token_conv_gain", 1.0))
        mine = float(getattr(model.config, "mlp_token_conv_gain", 1.0))
        if theirs != mine:
            raise ValueError(f"--init-from {where}: its model has mlp_token_conv_gain {theirs:g}, this model "
                             f"{mine:g}; "
                             f"set model.overrides.mlp_token_conv_gain={theirs:g}")
    own = model.state_dict()
    unexpected = [k for k in weights if k not in own]
    if unexpected:
        raise ValueError(f"--init-from {where}: weight {unexpected[0]!r} has no place in this model "
                         f"({len(unexpected)} unexpected); is it the same architecture?")
    for k, v in weights.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"--init-from {where}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in weights]
    shared_missing = [k for k in missing if not _is_temporal(k)]
    if shared_missing:
        raise ValueError(f"--init-from {where}: shared weight {shared_missing[0]!r} is missing "
                         f"({len(shared_missing)} missing)")
    model.load_state_dict(weights, strict=False)
    new_layers = 0
    for block in getattr(model, "blocks", []):
        if getattr(block, "temporal_attn", None) is None:
            continue
        prefix_missing = any(k.startswith(f"blocks.{list(model.blocks).index(block)}.temporal_attn.") for k in missing)
        if prefix_missing:
            torch.nn.init.zeros_(block.temporal_attn.proj.weight)
            torch.nn.init.zeros_(block.temporal_attn.proj.bias)
            torch.nn.init.ones_(block.norm_temporal.weight)
            torch.nn.init.zeros_(block.norm_temporal.bias)
            if getattr(block, "temporal_conv", None) is not None:  # model.overrides.temporal_conv (docs/video.md)
                torch.nn.init.zeros_(block.temporal_conv.weight)
                torch.nn.init.zeros_(block.temporal_conv.bias)
            new_layers += 1
    log(f"init-from {where}: loaded {len(weights)} shared tensors; {new_layers} new TempSelfAttn layers "
        f"zero-initialised ({len(missing)} new tensors)")
    return {"source": where, "loaded": len(weights), "new_tensors": len(missing), "new_layers": new_layers}


def make_video_plan(cfg, dataset, world: int = 1):
    """A :class:`VideoBatchPlan` for video runs (``video.num_frames > 1``), else None."""
    v = getattr(cfg, "video", None)
    if v is None or v.num_frames <= 1:
        return None
    from gentron.data.video import VideoBatchPlan

    return VideoBatchPlan(dataset.num_videos, dataset.num_images, cfg.train.batch_size * world, v.p_motion_free,
                          v.motion_free_source, cfg.train.seed)


def video_motion_free(trainer, micro: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """This rank's (B,) motion-free flags for micro-batch ``micro`` of the current step (None for images)."""
    plan = getattr(trainer, "video_plan", None)
    if plan is None:
        return None
    _, mf = plan.draw(trainer.step * trainer.cfg.train.grad_accum + micro)
    ctx = getattr(trainer, "ctx", None)
    if ctx is not None and getattr(ctx, "world", 1) > 1:
        b = trainer.cfg.train.batch_size
        mf = mf[ctx.rank * b : (ctx.rank + 1) * b]
    return mf.to(device or trainer.device)
