"""Does a grounding loss on the cross-attention maps teach the demo model "left of / right of"?

The fourth round's reader learns the binding from frozen MiniLM tokens in ≤ 1000 steps with a classification
loss; the diffusion loss pays for it only at high noise, through a blurred average of layouts, and five rounds of
probes never got the model past a bag of words. This probe adds the reader's kind of signal to training, in the
spirit of TokenCompose (Wang et al., CVPR 2024: a token-level grounding loss on cross-attention maps). For every
image with two or more differently coloured objects, each image token inside an object's disc should put more of
its cross-attention on *that* object's words ("red circle") than on the other objects' words:

    L_ground = mean over blocks, over image tokens n inside object o of  −log( m_o(n) / Σ_o' m_o'(n) ),
    m_o(n)   = Σ_{l ∈ tokens of o} A(n, l)          (A = cross-attention weights, averaged over heads)

At high noise an image token knows little more than its position, so the only way to lower this loss is to read
from the caption which object goes where: exactly the binding the diffusion loss fails to teach. Samples whose
caption was dropped (CFG) get no grounding term. The loss uses the scene records that ``gentron data shapes``
writes into ``captions.jsonl``; it is a training-time probe only, nothing in the library changes.

    OMP_NUM_THREADS=1 python experiments/demo_recipe/grounding_probe.py NAME STEPS --weight 0.1 [--min-t T] [--set k=v ...]

Then ``spatial_probe.py NAME STEPS --eval-only`` and ``binding_score.py /tmp/runs/NAME`` read the result, and

    python experiments/demo_recipe/grounding_probe.py --diagnose /tmp/runs/NAME DATA_DIR

prints L_ground per noise level (does the attention bind at high noise, where the layout is decided?).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

MAX_GROUPS = 3


def grounding_targets(records: list[dict], tokenizer, max_length: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``token_group`` (N, L) and ``patch_group`` (N, grid²), int8, the object group (one per distinct
    colour) of each caption token / image patch, −1 for none. Images with fewer than two groups get all −1."""
    n = len(records)
    token_group = torch.full((n, max_length), -1, dtype=torch.int8)
    patch_group = torch.full((n, grid * grid), -1, dtype=torch.int8)
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    py, px = torch.meshgrid(centres, centres, indexing="ij")
    for i, rec in enumerate(records):
        objects = (rec.get("scene") or {}).get("objects") or []
        colours = list(dict.fromkeys(o["color"] for o in objects))
        if not 2 <= len(colours) <= MAX_GROUPS:
            continue
        enc = tokenizer(rec["caption"], max_length=max_length, truncation=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        for g, colour in enumerate(colours):
            m = re.search(rf"\b{colour}\s+\w+", rec["caption"])
            if m is None:
                continue
            for k, (a, b) in enumerate(offsets):
                if b > a and a >= m.start() and b <= m.end():
                    token_group[i, k] = g
            for o in objects:
                if o["color"] == colour:
                    inside = (px - o["cx"]) ** 2 + (py - o["cy"]) ** 2 <= o["radius"] ** 2
                    patch_group[i][inside.reshape(-1)] = g
    return token_group, patch_group


class CrossAttentionRecorder:
    """Forward hooks that keep every block's head-averaged cross-attention weights (B, N, L) while grad is on."""

    def __init__(self, model):
        self.maps: list[torch.Tensor] = []
        self.handles = [b.cross_attn.register_forward_hook(self._hook, with_kwargs=True)
                        for b in model.blocks if b.cross_attn is not None]

    def _hook(self, mod, args, kwargs, output):
        if not torch.is_grad_enabled():
            return
        x, context = args[0], args[1]
        q = mod.queries(x, kwargs.get("pos"))
        k, _ = mod.project_kv(context)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        bias = kwargs.get("bias")
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        self.maps.append(logits.float().softmax(-1).mean(1))

    def pop(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def grounding_loss(maps: list[torch.Tensor], token_group: torch.Tensor, patch_group: torch.Tensor,
                   keep: torch.Tensor) -> torch.Tensor:
    """Per-sample L_ground (B,), zero for samples without targets or with a dropped caption (``keep`` False)."""
    onehot = torch.stack([(token_group == g) for g in range(MAX_GROUPS)], -1).float()  # (B, L, G)
    present = onehot.sum(1) > 0  # (B, G)
    target = patch_group.long()  # (B, N)
    inside = (target >= 0) & keep[:, None]
    total = torch.zeros(target.shape[0])
    for a in maps:
        mass = (a @ onehot).clamp_min(1e-8)  # (B, N, G)
        mass = mass.masked_fill(~present[:, None], 0.0)
        p = mass.gather(-1, target.clamp_min(0)[..., None])[..., 0] / mass.sum(-1).clamp_min(1e-8)
        nll = -(p.clamp_min(1e-8).log()) * inside
        total = total + nll.sum(1) / inside.sum(1).clamp_min(1)
    return total / max(len(maps), 1)


def diagnose(run: str, data: str, n: int = 192, timesteps=(50, 300, 600, 800, 900, 950, 990)) -> None:
    """L_ground of a trained run's EMA model per noise level, per block: does attention bind where the layout
    is decided (high noise), or only once the noisy image shows the colours?"""
    from gentron.cli.main import load_pipeline
    from gentron.data.folder import ImageCaptionFolder
    from gentron.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
    from gentron.train.config import load_config

    pipe = load_pipeline(run, "cpu", None)
    model, enc = pipe.transformer.eval(), pipe.text_encoders[0]
    cfg = load_config(Path(run) / "config.yaml", [])
    records = [json.loads(line) for line in open(Path(data) / "captions.jsonl") if line.strip()][:n]
    images = ImageCaptionFolder(data, model.config.sample_size)
    x0 = torch.stack([images[i]["pixel_values"] for i in range(len(records))])
    token_group, patch_group = grounding_targets(records, enc.tokenizer, enc.max_length,
                                                 model.config.sample_size // model.config.patch_size)
    emb = enc.encode([r["caption"] for r in records])
    diffusion = GaussianDiffusion(DiffusionConfig(beta_schedule=cfg.diffusion.beta_schedule))
    recorder, g = CrossAttentionRecorder(model), torch.Generator().manual_seed(0)
    keep = torch.ones(len(records), dtype=torch.bool)
    for t in timesteps:
        tt = torch.full((len(records),), t)
        x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        with torch.enable_grad():  # the recorder only records while grad is on
            model(x_t, tt, encoder_hidden_states=(emb.tokens,), encoder_attention_mask=(emb.mask,),
                  pooled_projections=(emb.pooled,))
        per_block = [grounding_loss([m.detach()], token_group, patch_group, keep).mean().item() for m in recorder.pop()]
        print(f"t={t}: L_ground {sum(per_block) / len(per_block):.3f} (chance {math.log(2):.3f} for two objects); "
              "per block " + " ".join(f"{v:.2f}" for v in per_block), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--diagnose":
        diagnose(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("steps", type=int)
    ap.add_argument("--weight", type=float, required=True)
    ap.add_argument("--min-t", type=int, default=0, help="grounding term only for samples with t >= this")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="/tmp/runs")
    args = ap.parse_args()

    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config("src/gentron/configs/demo.yaml", ["train.max_minutes=0", f"train.steps={args.steps}",
                                                       "train.threads=1", *args.set])
    trainer = Trainer(cfg, Path(args.out) / args.name, show_progress=False)
    data = trainer.data
    records = [json.loads(line) for line in open(Path(cfg.data.path) / "captions.jsonl") if line.strip()]
    if [r["caption"] for r in records] != [data.captions[i] for i in data.caption_ids.tolist()]:
        sys.exit("captions.jsonl does not line up with the preloaded data")
    enc = trainer.text_encoders[0]
    grid = cfg.model.resolution // trainer.model.config.patch_size
    token_group, patch_group = grounding_targets(records, enc.tokenizer, enc.max_length, grid)
    print(f"grounding targets for {(patch_group >= 0).any(1).sum().item()} of {len(records)} images", flush=True)

    recorder = CrossAttentionRecorder(trainer.model)
    state: dict = {}
    batch_indices, sample_randomness = trainer.batch_indices, trainer.sample_randomness
    training_losses = trainer.diffusion.training_losses

    def record_indices(step, micro):
        state["idx"] = batch_indices(step, micro)
        return state["idx"]

    def record_drop(step, micro, shape):
        drop, t, noise = sample_randomness(step, micro, shape)
        state["drop"], state["t"] = drop, t
        return drop, t, noise

    def with_grounding(*a, **kw):
        losses = training_losses(*a, **kw)
        idx = state["idx"].cpu()
        ground = grounding_loss(recorder.pop(), token_group[idx], patch_group[idx], ~state["drop"].cpu() & (state["t"].cpu() >= args.min_t))
        state.setdefault("log", []).append(ground.mean().item())
        losses["loss"] = losses["loss"] + args.weight * ground.to(losses["loss"].device)
        return losses

    trainer.batch_indices, trainer.sample_randomness = record_indices, record_drop
    trainer.diffusion.training_losses = with_grounding
    summary = trainer.fit()
    log = state.get("log", [])
    for s in range(0, len(log), max(1, len(log) // 10)):
        print(f"step {s}: L_ground {sum(log[s:s + 50]) / len(log[s:s + 50]):.3f}", flush=True)
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min", flush=True)


if __name__ == "__main__":
    main()
