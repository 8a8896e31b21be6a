"""Classifier-free guidance (Ho & Salimans 2022) as pure tensor functions, shared by the pipeline and eval."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """ε̃ = ε_u + s (ε_c − ε_u) (Ho & Salimans 2022, Eq. 6; s = 1 + w). s = 1 returns ε_c unchanged."""
    if scale == 1.0:
        return eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)


def concat_conditioning(cond: Any, uncond: Any) -> Any:
    """Stack two conditionings along the batch: tensors, None, and tuples / lists / dicts of them.

    Non-tensor leaves (flags, ints) must agree between the branches and are passed through.
    """
    if isinstance(cond, Tensor):
        if not isinstance(uncond, Tensor):
            raise TypeError("conditional branch is a tensor but the unconditional branch is not")
        return torch.cat([cond, uncond], dim=0)
    if cond is None:
        if uncond is not None:
            raise TypeError("conditional branch is None but the unconditional branch is not")
        return None
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or cond.keys() != uncond.keys():
            raise TypeError("conditional and unconditional dicts must have the same keys")
        return {k: concat_conditioning(cond[k], uncond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        if not isinstance(uncond, (tuple, list)) or len(cond) != len(uncond):
            raise TypeError("conditional and unconditional sequences must have the same length")
        return type(cond)(concat_conditioning(c, u) for c, u in zip(cond, uncond))
    if cond != uncond:
        raise TypeError(f"cannot batch differing non-tensor conditionings {cond!r} and {uncond!r}")
    return cond


def guided_model_output(
    model_fn: Callable[[Tensor, Tensor, Any], Tensor],
    x: Tensor,
    t: Tensor,
    cond: Any,
    uncond: Any,
    scale: float,
    learn_sigma: bool,
) -> Tensor:
    """Guided raw model output for ``x`` (B, C, ...) at ``t``: ``model_fn(x, t, conditioning) -> output``.

    Both branches run in one batched forward (conditional first). Guidance mixes only the first C
    prediction channels; the variance channels are the conditional branch's, as in DiT's
    ``forward_with_cfg`` (which, unlike this, guides only 3 channels). Guiding a v- or x0-prediction
    directly is equivalent to guiding ε, since each is affine in ε at fixed (x_t, t).
    scale = 1 runs the conditional branch alone.
    """
    b, c = x.shape[0], x.shape[1]
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(b) if t.ndim == 0 else t
    if scale == 1.0:
        return model_fn(x, t, cond)
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), concat_conditioning(cond, uncond))
    out_cond, out_uncond = out[:b], out[b:]
    if not learn_sigma:
        return cfg_combine(out_cond, out_uncond, scale)
    if out.shape[1] != 2 * c:
        raise ValueError(f"learn_sigma: expected {2 * c} output channels, got {out.shape[1]}")
    guided = cfg_combine(out_cond[:, :c], out_uncond[:, :c], scale)
    return torch.cat([guided, out_cond[:, c:]], dim=1)
