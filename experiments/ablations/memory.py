"""Training memory of each arm of an ablation study, counted exactly (docs/results.md, "Memory").

For each arm the model is built from the arm's own training config (``run.py``'s BASE + arm overrides) and one
training forward runs at the study's batch size on real caption tokens. What a training step has to hold:

* weights, gradients and AdamW's two moments: 4 × parameters × 4 bytes (fp32);
* activations: every tensor autograd saves for the backward pass, counted once per storage
  (``torch.autograd.graph.saved_tensors_hooks``), in the dtype it is saved in; weights saved by a backward
  are not counted twice.

Counting tensors instead of reading the process RSS makes the numbers exact and independent of the allocator
and the machine. ``--paper-scale`` counts the same for the GenTron-XL/2 sizes at 256² (latent 32², T5-XXL-wide
120-token text) on the meta device: no memory is allocated, so it runs on a laptop.

    OMP_NUM_THREADS=1 python experiments/ablations/memory.py --study conditioning
    python experiments/ablations/memory.py --study conditioning --paper-scale --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

CAPTION = "a red circle to the left of a blue square"


def training_memory(model, batch: dict, dtype_bytes: int = 4) -> dict[str, float]:
    """MiB of (weights + grads + AdamW moments) and of saved activations for one forward of ``model(**batch)``."""
    import torch

    params = sum(p.numel() for p in model.parameters())
    # Storages are told apart by their C++ StorageImpl (``_cdata``), which also works on the meta device.
    # Weights that a backward saves (e.g. a linear's) are already counted in the optimizer state.
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            seen.setdefault(storage._cdata, storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch).sample
    del out
    mib = 2.0**20
    return {"params_m": params / 1e6, "state_mib": 4 * params * dtype_bytes / mib,
            "activations_mib": sum(seen.values()) / mib}


def arm_model(study: str, arm: str, args):
    """The arm's transformer as its training run builds it, plus one batch of inputs at the study's shapes."""
    import torch

    from gentron.text import load_text_encoders
    from gentron.train.config import load_config
    from gentron.train.trainer import _entry_dict, build_transformer
    from run import STUDIES, base_overrides

    cfg = load_config(None, base_overrides(args) + STUDIES[study][arm])
    encoders = load_text_encoders([_entry_dict(e) for e in cfg.text.encoders])
    model = build_transformer(cfg, encoders).train()
    size, ch = model.config.sample_size, model.config.in_channels
    embs = [enc.encode([CAPTION] * args.batch_size) for enc in encoders]
    batch = {"hidden_states": torch.randn(args.batch_size, ch, size, size),
             "timestep": torch.randint(0, 1000, (args.batch_size,)),
             "encoder_hidden_states": tuple(e.tokens.float() for e in embs),
             "encoder_attention_mask": tuple(e.mask for e in embs),
             "pooled_projections": tuple(e.pooled.float() for e in embs)}
    if len(embs) == 1:
        batch = {k: (v[0] if isinstance(v, tuple) else v) for k, v in batch.items()}
    return model, batch


def paper_scale_model(mode: str, batch_size: int):
    """GenTron-XL/2 in ``mode`` at 256² (latent 32², 4 channels), 120 text tokens of width 4096, on meta."""
    import torch

    from gentron.models.transformer import GenTronTransformer, zoo_config

    text = {} if mode == "class" else {"text_dims": [4096], "pooled_dims": [] if mode == "adaln-single" else [4096]}
    with torch.device("meta"):
        model = GenTronTransformer(**zoo_config("GenTron-XL/2", conditioning=mode, sample_size=32, in_channels=4,
                                                learn_sigma=True, **text)).train()
        batch = {"hidden_states": torch.randn(batch_size, 4, 32, 32), "timestep": torch.randint(0, 1000, (batch_size,)),
                 "encoder_hidden_states": torch.randn(batch_size, 120, 4096)}
        if mode != "adaln-single":
            batch["pooled_projections"] = torch.randn(batch_size, 4096)
    return model, batch


def main(argv=None) -> int:
    from run import STUDIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, choices=list(STUDIES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--paper-scale", action="store_true", help="GenTron-XL/2 at 256² on the meta device instead")
    # the shapes of run.py's BASE (only what the model's construction reads matters here)
    p.add_argument("--model", default="GenTron-T/4")
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--data-num", type=int, default=5000)
    args = p.parse_args(argv)
    for key, value in dict(steps=1, minutes=0.0, lr=5e-4, precision="fp32", threads=1).items():
        setattr(args, key, value)

    import torch

    torch.manual_seed(0)
    scale = "GenTron-XL/2, 256² (latent 32²), 120 × 4096 text" if args.paper_scale else f"{args.model} study shapes"
    print(f"training memory per step, {scale}, batch {args.batch_size}, fp32\n")
    print("| arm | params | weights + grads + AdamW | saved activations | total |")
    print("|---|---|---|---|---|")
    for arm in STUDIES[args.study]:
        if args.paper_scale:
            mode = STUDIES[args.study][arm][0].split("=", 1)[1] if args.study == "conditioning" else None
            if mode is None:
                raise SystemExit("--paper-scale is for the conditioning study")
            model, batch = paper_scale_model(mode, args.batch_size)
        else:
            model, batch = arm_model(args.study, arm, args)
        m = training_memory(model, batch)
        total = m["state_mib"] + m["activations_mib"]
        unit, div = ("GiB", 1024.0) if total > 4096 else ("MiB", 1.0)
        print(f"| {arm} | {m['params_m']:.2f}M | {m['state_mib'] / div:.1f} {unit} | "
              f"{m['activations_mib'] / div:.1f} {unit} | {total / div:.1f} {unit} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
