"""Exponential moving average of model weights (DiT samples from the EMA model)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from gentron.train.distributed import is_dtensor, local


class EMA:
    """fp32 shadow of every trainable parameter, updated with one fused lerp per step.

    With ``warmup`` the decay ramps as min(decay, (1 + n) / (10 + n)) so that short runs (the CPU demo)
    get an average of the recent weights instead of one dominated by the random init.

    Works with FSDP2-sharded parameters: the shadow of a DTensor parameter is a DTensor with the same
    sharding, and the lerp runs on the local shards (no communication). Sharded shadows are saved with
    `torch.distributed.checkpoint`; `full_state_dict` all-gathers them (collective) for export.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().float().clone() for n in self.names]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, skip: Optional[torch.Tensor] = None) -> None:
        """One EMA step; ``skip`` (a 0-dim bool tensor, on the device) turns it into a no-op without a host sync.
        The warm-up counter advances either way (a skipped step shifts the warm-up by one step)."""
        params = dict(model.named_parameters())
        live = [local(params[n].detach()).float() for n in self.names]
        shadow = [local(s) for s in self.shadow]
        weight = 1.0 - self.current_decay()
        if skip is None:
            torch._foreach_lerp_(shadow, live, weight)
        else:
            torch._foreach_lerp_(shadow, live, (~skip).to(shadow[0].dtype) * weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, s in zip(self.names, self.shadow):
            params[n].copy_(s.to(params[n].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s for n, s in zip(self.names, self.shadow)}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded fp32 shadow (all-gathers DTensors: every rank must call it)."""
        return {n: (s.full_tensor() if is_dtensor(s) else s) for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int, new: Sequence[str] = ()) -> None:
        """``new``: parameters the state may lack (layers added on resume); their shadows keep the live weights."""
        missing = [n for n in self.names if n not in state and n not in set(new)]
        if missing:
            raise ValueError(f"EMA state is missing {len(missing)} parameter(s), first: {missing[0]!r}")
        for i, n in enumerate(self.names):
            if n not in state:
                continue
            if state[n].shape != self.shadow[i].shape:
                raise ValueError(f"EMA tensor {n!r} has shape {tuple(state[n].shape)}, model has {tuple(self.shadow[i].shape)}")
            self.shadow[i].copy_(state[n])
        self.num_updates = num_updates
