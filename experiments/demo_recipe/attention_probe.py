"""How sharp is a trained model's cross-attention over the caption tokens, and where does it look?
(docs/demo-recipe.md, fifth round)

Prints, per block at t = 950 and 500, the entropy of the cross-attention weights (uniform over L tokens = log L,
i.e. a bag of words), the logit spread and the key RMS; then, for two captions with the objects swapped, the
attention mass per token seen from the left and from the right half of the image at t = 950.

    OMP_NUM_THREADS=1 python experiments/demo_recipe/attention_probe.py RUN_DIR
"""

from __future__ import annotations

import math
import sys

import torch

from gentron.cli.main import load_pipeline
from gentron.models.transformer import Attention

CAPTIONS = ["a red square to the left of a blue triangle", "a blue triangle to the left of a red square"]


def main(run: str) -> None:
    torch.set_num_threads(1)
    pipe = load_pipeline(run, "cpu", None)
    model, encoder = pipe.transformer.eval(), pipe.text_encoders[0]
    weights: list[torch.Tensor] = []

    def record(mod: Attention, args, kwargs, out) -> None:  # recompute the softmax SDPA does internally
        x, context, bias = args[0], kwargs.get("context", args[1] if len(args) > 1 else None), kwargs.get("bias")
        q, (k, _) = mod.queries(x, kwargs.get("pos")), mod.project_kv(context)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + (0 if bias is None else bias)
        weights.append((logits.softmax(-1), logits, k))

    for m in model.modules():
        if isinstance(m, Attention) and m.is_cross:
            m.register_forward_hook(record, with_kwargs=True)
    e = encoder.encode(CAPTIONS)
    lengths = e.mask.sum(1)
    x = torch.randn(len(CAPTIONS), model.config.in_channels, model.config.sample_size, model.config.sample_size,
                    generator=torch.Generator().manual_seed(0))

    def run_at(t: int) -> None:
        weights.clear()
        with torch.no_grad():
            model(x, torch.full((len(CAPTIONS),), t), encoder_hidden_states=e.tokens.float(),
                  encoder_attention_mask=e.mask, pooled_projections=e.pooled.float())

    for t in (950, 500):
        run_at(t)
        L = int(lengths[0])
        for i, (p, logits, k) in enumerate(weights):
            pp = p[0, :, :, :L]
            entropy = -(pp.clamp_min(1e-9).log() * pp).sum(-1).mean().item()
            print(f"t={t} block {i}: entropy {entropy:.3f} (uniform {math.log(L):.3f}), logit std "
                  f"{logits[0, :, :, :L].std().item():.3f}, max weight {pp.max().item():.3f}, key RMS "
                  f"{k.pow(2).mean().sqrt().item():.3f}")
    run_at(950)
    grid = model.config.sample_size // model.config.patch_size
    for b, caption in enumerate(CAPTIONS):
        L = int(lengths[b])
        print(" ".join(encoder.tokenizer.convert_ids_to_tokens(encoder.tokenize([caption])["input_ids"][0][:L])))
        for i, (p, _, _) in enumerate(weights):
            pp = p[b, :, :, :L].mean(0).view(grid, grid, L)
            for side, half in (("left ", pp[:, : grid // 2]), ("right", pp[:, grid // 2 :])):
                print(f"  block {i} {side}:", " ".join(f"{v:.2f}" for v in half.reshape(-1, L).mean(0).tolist()))


if __name__ == "__main__":
    main(sys.argv[1])
