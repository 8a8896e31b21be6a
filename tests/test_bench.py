"""`gentron bench`: a non-timed smoke test at tiny sizes, and the peers' shapes (no timed assertions)."""

from __future__ import annotations

import argparse

import torch

from gentron.bench import (
    add_bench_parser,
    build_gentron,
    build_peer,
    config_from_args,
    describe,
    format_table,
    gentron_forward,
    make_inputs,
    peer_forward,
    quick_config,
    run_bench,
)
from gentron.models.transformer import count_parameters

TINY = dict(model="GenTron-T/4", overrides={}, resolution=16, text_len=8, text_dim=32, batch=2, sample_steps=2, rounds=1,
            warmup=1, train_iters=1)


def _parse(argv):
    p = argparse.ArgumentParser()
    add_bench_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["bench", *argv])


def test_bench_quick_runs_and_prints_ratio_table(capsys):
    args = _parse(["--quick", "--model", "GenTron-T/4", "--resolution", "16", "--text-dim", "32", "--text-len", "8",
                   "--batch", "2", "--steps", "2", "--rounds", "1", "--modes", "adaln-single", "class"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train ratio" in out and "sample ratio" in out
    assert "| adaln-single | fp32 | PixArt" in out and "| class | fp32 | DiT" in out


def test_bench_rows_have_both_models_and_ratios():
    cfg = quick_config(**TINY, modes=("cross-attn",), precisions=("fp32", "bf16"))
    rows = run_bench(cfg, log=lambda s: None)
    assert [(r.mode, r.precision) for r in rows] == [("cross-attn", "fp32"), ("cross-attn", "bf16")]
    for r in rows:
        assert r.train_ratio > 0 and r.sample_ratio > 0
    assert "train ratio" in format_table(rows, cfg)


def test_quick_defaults_are_ci_sized():
    cfg = config_from_args(_parse(["--quick"]))
    assert cfg.precisions == ("fp32",) and cfg.rounds <= 3 and cfg.batch <= 8 and cfg.device == "cpu"


def test_adaln_single_peer_is_the_same_pixart():
    cfg = quick_config(**TINY)
    g = build_gentron(cfg, "adaln-single")
    p = build_peer(cfg, "adaln-single", g)
    assert type(p).__name__ == "PixArtTransformer2DModel"
    assert count_parameters(g) == count_parameters(p)
    # identical weights → identical outputs: the benchmark compares the same function
    inp = make_inputs(cfg, "adaln-single", 2, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(gentron_forward(g.eval(), inp), peer_forward(p.eval(), inp), atol=1e-4, rtol=1e-4)


def test_every_mode_builds_at_the_demo_recipe():
    """The bench reads the recipe's `model.overrides` (text whitening included); every mode and peer must build."""
    cfg = quick_config()
    assert cfg.overrides  # the recipe has overrides; this test is about them
    # layers diffusers has no counterpart for are left out of both sides, and the description says so
    assert "mlp_token_conv" not in cfg.overrides and "mlp_token_conv" in describe(cfg)
    for mode in ("cross-attn", "adaln-single", "class"):
        g = build_gentron(cfg, mode)
        p = build_peer(cfg, mode, g)
        inp = make_inputs(cfg, mode, 2, torch.device("cpu"))
        with torch.no_grad():
            assert gentron_forward(g.eval(), inp).shape == peer_forward(p.eval(), inp).shape


def test_peers_have_gentron_shapes():
    cfg = quick_config(**TINY)
    g = build_gentron(cfg, "cross-attn")
    p = build_peer(cfg, "cross-attn")
    # same blocks: self-attention, cross-attention and MLP weights of the same sizes
    ours = sorted(w.numel() for n, w in g.blocks[0].named_parameters() if "adaLN" not in n)
    theirs = sorted(w.numel() for n, w in p.transformer_blocks[0].named_parameters() if "scale_shift" not in n)
    assert sum(ours) == sum(theirs)
    assert p.config.num_layers == g.config.depth and p.config.patch_size == g.config.patch_size

    g = build_gentron(cfg, "class")
    d = build_peer(cfg, "class")
    assert type(d).__name__ == "DiTTransformer2DModel"
    # diffusers DiT repeats the timestep/class embedder in every block (norm1.emb); the rest matches
    def core(model):
        return sum(w.numel() for n, w in model.named_parameters() if ".emb." not in n)

    shared = sum(w.numel() for n, w in d.named_parameters() if n.startswith("transformer_blocks.0.norm1.emb."))
    assert core(d) + shared == count_parameters(g)
