"""Checkpoint conversion (DiT / PixArt-α / diffusers ↔ GenTron) and re-parameterised init from DiT.

Every equivalence test compares outputs of independently implemented models on the same inputs
(unit-scale inputs, weights randomised so outputs are O(1)); tolerances are fp32 round-off.
"""

import argparse
import math

import pytest
import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

from gentron.models.convert import (
    NULL_CAPTION_FILE,
    add_convert_parser,
    build_model,
    convert_diffusers_dit,
    convert_diffusers_pixart,
    convert_dit_state_dict,
    convert_pixart_state_dict,
    detect_layout,
    diffusers_dit_to_official,
    diffusers_pixart_to_official,
    export_diffusers_pixart,
    export_dit_state_dict,
    export_pixart_state_dict,
    load_checkpoint_file,
    reparam_init_from_dit,
)
from gentron.models.transformer import GenTronTransformer, sincos_2d, zoo_config

TOL = 1e-5  # max-abs, fp32, unit-scale inputs and O(1) outputs (measured ≤ 1.5e-6)


def randomize_(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Unit-gain random weights everywhere (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() >= 2 else 1
            std = 1.0 / math.sqrt(fan_in) if p.dim() >= 2 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------
# fixtures: tiny random diffusers models
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_dit():
    torch.manual_seed(0)
    d = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
    ).eval()
    randomize_(d)
    with torch.no_grad():  # converted DiT checkpoints hold one embedder, copied into every block
        for blk in d.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(d.transformer_blocks[0].norm1.emb.state_dict())
    return d


def official_dit_from(d: DiTTransformer2DModel) -> dict:
    sd = diffusers_dit_to_official(d.state_dict())
    sd["pos_embed"] = d.pos_embed.pos_embed.clone()  # the fixed buffer official checkpoints carry
    return sd


@pytest.fixture(scope="module")
def gentron_dit(diffusers_dit):
    return convert_diffusers_dit(diffusers_dit)


def dit_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=g), torch.tensor([3, 500, 999]), torch.tensor([0, 7, 10])


PIXART_SIZES = {
    # name: (depth, heads, head_dim, caption_channels, sample_size, micro-conditions)
    "small": (2, 2, 16, 24, 8, False),
    "deeper": (3, 4, 8, 32, 16, False),
    "1024-MS-like": (2, 2, 24, 32, 16, True),
}


def make_pixart(depth, heads, head_dim, caption, sample, micro, interpolation_scale=None):
    torch.manual_seed(0)
    p = PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8, num_layers=depth,
        cross_attention_dim=heads * head_dim, sample_size=sample, patch_size=2, caption_channels=caption,
        use_additional_conditions=micro, norm_eps=1e-6, interpolation_scale=interpolation_scale,
    ).eval()
    return randomize_(p, seed=depth)


def pixart_inputs(spec, seed=0):
    _, _, _, caption, sample, micro = spec
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, sample, sample, generator=g)
    tok = torch.randn(2, 5, caption, generator=g)
    mask = torch.ones(2, 5)
    mask[1, 2:] = 0
    cond = None
    if micro:
        cond = {"resolution": torch.tensor([[64.0, 64.0], [48.0, 80.0]]), "aspect_ratio": torch.tensor([[1.0], [0.6]])}
    return x, torch.tensor([10, 700]), tok, mask, cond


def run_diffusers_pixart(p, x, t, tok, mask, cond):
    cond = cond or {"resolution": None, "aspect_ratio": None}
    return p(x, encoder_hidden_states=tok, timestep=t, added_cond_kwargs=cond, encoder_attention_mask=mask).sample


def run_ours(m, x, t, tok, mask, cond):
    return m(x, t, encoder_hidden_states=tok, encoder_attention_mask=None if mask is None else mask.bool(),
             added_cond_kwargs=cond).sample


# ----------------------------------------------------------------------------------------------
# load_checkpoint_file
# ----------------------------------------------------------------------------------------------


def test_load_checkpoint_file_formats_and_wrappers(tmp_path):
    from safetensors.torch import save_file

    raw, ema = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    save_file(raw, tmp_path / "a.safetensors")
    assert torch.equal(load_checkpoint_file(tmp_path / "a.safetensors")["w"], raw["w"])
    torch.save(raw, tmp_path / "plain.pt")
    assert torch.equal(load_checkpoint_file(tmp_path / "plain.pt")["w"], raw["w"])
    # DiT training checkpoint: args is an argparse.Namespace; EMA preferred unless told otherwise
    torch.save({"model": raw, "ema": ema, "opt": {"state": {}}, "args": argparse.Namespace(lr=1e-4)},
               tmp_path / "train.pt")
    assert torch.equal(load_checkpoint_file(tmp_path / "train.pt")["w"], ema["w"])
    assert torch.equal(load_checkpoint_file(tmp_path / "train.pt", prefer_ema=False)["w"], raw["w"])
    # PixArt-style {"state_dict": ...} with a DDP prefix
    torch.save({"state_dict": {"module.w": raw["w"]}, "epoch": 3}, tmp_path / "pixart.pth")
    assert list(load_checkpoint_file(tmp_path / "pixart.pth")) == ["w"]


def test_load_checkpoint_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint_file(tmp_path / "bad.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "trunc.pt")
    data = (tmp_path / "trunc.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint_file(tmp_path / "trunc.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint_file(tmp_path / "bad.safetensors")
    torch.save({"w": torch.ones(1), "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="never unpickles"):
        load_checkpoint_file(tmp_path / "evil.pt")
    assert not _Evil.called
    (tmp_path / "x.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="extension"):
        load_checkpoint_file(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="directory"):
        load_checkpoint_file(tmp_path)
    torch.save({"epoch": 1, "step": 2}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint_file(tmp_path / "nostate.pt")


class _Evil:
    called = False

    def __reduce__(self):
        return (_mark_called, ())


def _mark_called():
    _Evil.called = True
    return None


# ----------------------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------------------


def test_diffusers_dit_matches(diffusers_dit, gentron_dit):
    """Same outputs as diffusers' DiT once diffusers uses DiT's timestep frequencies."""
    cfg = gentron_dit.config
    assert (cfg.conditioning, cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_classes) == ("class", 2, 64, 2, 10)
    assert gentron_dit.out_channels == 8 and cfg.learn_sigma and cfg.sample_size == 8
    x, t, y = dit_inputs()
    with torch.no_grad():
        ours = gentron_dit(x, t, class_labels=y).sample
        shifts = [b.norm1.emb.time_proj.downscale_freq_shift for b in diffusers_dit.transformer_blocks]
        try:
            for b in diffusers_dit.transformer_blocks:  # diffusers' DiT deviates from DiT here (shift 1)
                b.norm1.emb.time_proj.downscale_freq_shift = 0
            ref = diffusers_dit(x, t, class_labels=y).sample
        finally:
            for b, s in zip(diffusers_dit.transformer_blocks, shifts):
                b.norm1.emb.time_proj.downscale_freq_shift = s
    assert 0.3 < ref.abs().max() < 30
    err = max_err(ours, ref)
    print(f"diffusers DiT → GenTron max-abs {err:.2e} (output max {ref.abs().max():.2f})")
    assert err <= TOL


def test_official_dit_file_round_trip(tmp_path, diffusers_dit, gentron_dit):
    official = official_dit_from(diffusers_dit)
    assert detect_layout(official) == "dit"
    torch.save(official, tmp_path / "DiT-T-2-16x16.pt")
    config, sd = convert_dit_state_dict(load_checkpoint_file(tmp_path / "DiT-T-2-16x16.pt"), num_heads=2)
    assert config["sample_size"] == 8 and config["num_classes"] == 10  # from pos_embed / 11 rows
    model = build_model(config, sd)
    x, t, y = dit_inputs(1)
    with torch.no_grad():
        assert torch.equal(model(x, t, class_labels=y).sample, gentron_dit(x, t, class_labels=y).sample)
    back = export_dit_state_dict(model)
    assert back.keys() == official.keys()
    for k in official:
        tol = 1e-6 if k == "pos_embed" else 0
        assert torch.allclose(back[k], official[k], atol=tol, rtol=0), k


def test_dit_converter_validates(diffusers_dit):
    official = official_dit_from(diffusers_dit)
    with pytest.raises(ValueError, match="'blocks.0.attn.rel_pos_h'"):
        convert_dit_state_dict({**official, "blocks.0.attn.rel_pos_h": torch.zeros(3)}, num_heads=2)
    bad = dict(official)
    bad["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    with pytest.raises(ValueError, match=r"'blocks.1.mlp.fc1.weight'.*\(100, 64\).*\(256, 64\)"):
        convert_dit_state_dict(bad, num_heads=2)
    missing = {k: v for k, v in official.items() if k != "blocks.1.attn.proj.bias"}
    with pytest.raises(ValueError, match="'blocks.1.attn.proj.bias'"):
        convert_dit_state_dict(missing, num_heads=2)
    with pytest.raises(ValueError, match="pos_embed does not match"):
        convert_dit_state_dict({**official, "pos_embed": official["pos_embed"] * 2}, num_heads=2)
    no_pos = {k: v for k, v in official.items() if k != "pos_embed"}
    with pytest.raises(ValueError, match="sample_size"):
        convert_dit_state_dict(no_pos, num_heads=2)
    assert convert_dit_state_dict(no_pos, num_heads=2, sample_size=8)[0]["sample_size"] == 8
    with pytest.raises(ValueError, match="num_heads=5"):
        convert_dit_state_dict(official, num_heads=5)
    # a PixArt checkpoint is not a DiT one: the first key DiT does not know is named
    pixart = diffusers_pixart_to_official(make_pixart(*PIXART_SIZES["small"]).state_dict())
    with pytest.raises(ValueError, match=r"unexpected key 'y_embedder.y_proj.fc1.weight'.*PixArt"):
        convert_dit_state_dict(pixart)


def test_diffusers_dit_needs_shared_embedder_and_warns_on_eps():
    torch.manual_seed(0)
    d = randomize_(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, num_layers=2, sample_size=4,
                                         num_embeds_ada_norm=3))  # diffusers' default norm_eps=1e-5
    with pytest.raises(ValueError, match="differs from block 0"):
        convert_diffusers_dit(d)
    with pytest.warns(UserWarning, match="norm_eps"):
        m = convert_diffusers_dit(d, require_shared_embedding=False)
    assert m.config.depth == 2 and m.config.norm_eps == 1e-6


# ----------------------------------------------------------------------------------------------
# PixArt-α
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PIXART_SIZES))
def test_diffusers_pixart_matches_and_exports(name):
    spec = PIXART_SIZES[name]
    p = make_pixart(*spec)
    m = convert_diffusers_pixart(p)
    cfg = m.config
    assert cfg.conditioning == "adaln-single" and cfg.micro_conditions == spec[5] and cfg.learn_sigma
    assert cfg.pos_embed_base_size == spec[4] // 2 and cfg.pos_embed_interpolation_scale == 1.0
    x, t, tok, mask, cond = pixart_inputs(spec)
    with torch.no_grad():
        for use_mask in (False, True):
            ref = run_diffusers_pixart(p, x, t, tok, mask if use_mask else None, cond)
            ours = run_ours(m, x, t, tok, mask if use_mask else None, cond)
            err = max_err(ours, ref)
            print(f"PixArt {name} mask={use_mask}: max-abs {err:.2e} (output max {ref.abs().max():.2f})")
            assert 0.3 < ref.abs().max() < 30
            assert err <= TOL
        # padding matters: the masked output differs from the unmasked one
        assert max_err(run_ours(m, x, t, tok, mask, cond), run_ours(m, x, t, tok, None, cond)) > 1e-3
        exported = export_diffusers_pixart(m)
        again = convert_diffusers_pixart(exported)
        ours = run_ours(m, x, t, tok, mask, cond)
        assert torch.equal(run_ours(again, x, t, tok, mask, cond), ours)  # ours → diffusers → ours
        err = max_err(run_diffusers_pixart(exported, x, t, tok, mask, cond), ours)
        print(f"PixArt {name} export: diffusers(exported) vs ours max-abs {err:.2e}")
        assert err <= TOL
    for k, v in exported.state_dict().items():
        assert torch.equal(v, p.state_dict()[k]), k


def test_pixart_export_folds_text_whitening():
    """A model with whitened text tokens (the demo recipe) exports to diffusers with the same outputs: the fixed
    whitening is folded into the caption projection's first linear layer."""
    spec = PIXART_SIZES["small"]
    plain = convert_diffusers_pixart(make_pixart(*spec))
    m = GenTronTransformer(**{**plain.config, "text_whitening": True})
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("feature_" in k or "whitening" in k for k in missing)
    g = torch.Generator().manual_seed(5)
    scales = torch.logspace(-2, 1, spec[3])  # badly conditioned features, as a frozen encoder's are
    m.token_projections[0].fit_whitening(torch.randn(64, 5, spec[3], generator=g) * scales + 0.3)
    x, t, tok, mask, cond = pixart_inputs(spec)
    tok = tok * scales + 0.3
    exported = export_diffusers_pixart(m)
    assert not any("feature_" in k for k in exported.state_dict())
    with torch.no_grad():
        ours = run_ours(m, x, t, tok, mask, cond)
        assert max_err(ours, run_ours(plain, x, t, tok, mask, cond)) > 1e-2  # the whitening matters
        err = max_err(run_diffusers_pixart(exported, x, t, tok, mask, cond), ours)
    assert err <= 1e-4, err


@pytest.mark.parametrize("option", ["mlp_token_conv", "pos_query"])
def test_export_refuses_gentron_only_layers_by_name(option):
    """Layers with no official/diffusers counterpart: a clear error naming them, not an unknown-key error later."""
    plain = convert_diffusers_pixart(make_pixart(*PIXART_SIZES["small"]))
    m = GenTronTransformer(**{**plain.config, option: True})
    for export in (export_diffusers_pixart, export_pixart_state_dict):
        with pytest.raises(ValueError, match=f"{option} has no counterpart in the PixArt-α layout"):
            export(m)
    if option == "mlp_token_conv":  # pos_query needs cross-attention, which DiT's class mode has not
        dit = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="class", text_dims=[], mlp_token_conv=True))
        with pytest.raises(ValueError, match="mlp_token_conv has no counterpart in the official DiT layout"):
            export_dit_state_dict(dit)


def test_official_pixart_file_with_null_caption(tmp_path):
    spec = PIXART_SIZES["1024-MS-like"]
    p = make_pixart(*spec)
    official = diffusers_pixart_to_official(p.state_dict())
    official["pos_embed"] = p.pos_embed.pos_embed.clone()
    null = torch.randn(7, spec[3])
    official["y_embedder.y_embedding"] = null
    assert detect_layout(official) == "pixart"
    torch.save({"state_dict": official}, tmp_path / "PixArt-T-2-MS.pth")
    config, sd, extras = convert_pixart_state_dict(load_checkpoint_file(tmp_path / "PixArt-T-2-MS.pth"), num_heads=2)
    assert torch.equal(extras["null_caption_embedding"], null)
    assert config["micro_conditions"] and config["text_dims"] == [spec[3]] and config["sample_size"] == 16
    model = build_model(config, sd)
    x, t, tok, mask, cond = pixart_inputs(spec, seed=3)
    with torch.no_grad():
        assert max_err(run_ours(model, x, t, tok, mask, cond), run_diffusers_pixart(p, x, t, tok, mask, cond)) <= TOL
    back = export_pixart_state_dict(model, null_caption_embedding=null)
    assert back.keys() == official.keys()
    for k in official:
        assert torch.allclose(back[k], official[k], atol=1e-6 if k == "pos_embed" else 0, rtol=0), k


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_pixart_interpolation_scale_from_pos_embed(scale):
    p = make_pixart(2, 2, 16, 24, 16, False, interpolation_scale=scale)
    official = diffusers_pixart_to_official(p.state_dict())
    official["pos_embed"] = p.pos_embed.pos_embed.clone()
    config, sd, _ = convert_pixart_state_dict(official, num_heads=2)
    assert config["pos_embed_interpolation_scale"] == scale and config["pos_embed_base_size"] == 8
    assert convert_diffusers_pixart(p).config.pos_embed_interpolation_scale == scale
    with pytest.raises(ValueError, match="pos_embed does not match"):
        convert_pixart_state_dict(official, num_heads=2, interpolation_scale=scale * 3)


def test_pixart_converter_validates():
    official = diffusers_pixart_to_official(make_pixart(*PIXART_SIZES["small"]).state_dict())
    with pytest.raises(ValueError, match=r"unexpected key 'y_embedder.extra'"):
        convert_pixart_state_dict({**official, "y_embedder.extra": torch.zeros(1)}, num_heads=2, sample_size=8)
    bad = {**official, "blocks.1.cross_attn.kv_linear.weight": torch.zeros(64, 16)}
    with pytest.raises(ValueError, match=r"'blocks.1.cross_attn.kv_linear.weight'.*\(64, 16\).*\(64, 32\)"):
        convert_pixart_state_dict(bad, num_heads=2, sample_size=8)
    with pytest.raises(ValueError, match="unexpected key .* diffusers DiT.*looks like a diffusers PixArt"):
        diffusers_dit_to_official(make_pixart(*PIXART_SIZES["small"]).state_dict())
    m = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="cross-attn", text_dims=[8], sample_size=8))
    with pytest.raises(ValueError, match="adaln-single"):
        export_diffusers_pixart(m)


# ----------------------------------------------------------------------------------------------
# Re-parameterised init (PixArt-α Sec. 2.3)
# ----------------------------------------------------------------------------------------------


def _null(dit, b=1):
    return torch.full((b,), dit.config.num_classes, dtype=torch.long)


@pytest.mark.parametrize("t_block_init", ["mean", "block0"])
def test_reparam_adaln_single_identity_at_t500(gentron_dit, t_block_init):
    before = {k: v.clone() for k, v in gentron_dit.state_dict().items()}
    new = reparam_init_from_dit(gentron_dit, text_dims=[24], t_block_init=t_block_init)
    assert all(torch.equal(v, before[k]) for k, v in gentron_dit.state_dict().items())  # DiT untouched
    assert new.config.conditioning == "adaln-single" and new.config.pos_embed_base_size == 4
    t = torch.tensor([500])
    with torch.no_grad():
        cond, t_emb = new.conditioning_vector(t, (), None, None, 1)
        c_dit, _ = gentron_dit.conditioning_vector(t, (), _null(gentron_dit), None, 1)
        for nb, db in zip(new.blocks, gentron_dit.blocks):  # S^(i) identity
            for a, b in zip(nb.modulation(cond), db.modulation(c_dit)):
                assert torch.allclose(a, b, atol=1e-6, rtol=0)
            assert not nb.cross_attn.proj.weight.any() and not nb.cross_attn.proj.bias.any()
        final = (new.final_layer.scale_shift_table[None] + t_emb[:, None]).flatten(1)
        assert torch.allclose(final, gentron_dit.final_layer.adaLN_modulation(c_dit), atol=1e-6, rtol=0)
        x, _, _ = dit_inputs(2)
        tok = torch.randn(3, 6, 24)
        mask = torch.ones(3, 6, dtype=torch.bool)
        mask[0, 3:] = False
        out = new(x, torch.full((3,), 500), encoder_hidden_states=tok, encoder_attention_mask=mask).sample
        ref = gentron_dit(x, torch.full((3,), 500), class_labels=_null(gentron_dit, 3)).sample
        err = max_err(out, ref)
        print(f"re-param adaln-single ({t_block_init}) vs DiT(null) at t=500: max-abs {err:.2e}")
        assert err <= TOL
        # away from t_ref the time dependence comes from the shared t_block (close, not equal)
        far = new(x, torch.full((3,), 100), encoder_hidden_states=tok, encoder_attention_mask=mask).sample
        assert max_err(far, gentron_dit(x, torch.full((3,), 100), class_labels=_null(gentron_dit, 3)).sample) > 1e-4


def test_reparam_from_official_file_with_micro_conditions(tmp_path):
    dit = randomize_(GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="class", text_dims=[], sample_size=8,
                                                     hidden_size=48, num_heads=2, mlp_hidden_size=192,
                                                     num_classes=5)), seed=4)
    torch.save(export_dit_state_dict(dit), tmp_path / "dit.pt")
    new = reparam_init_from_dit(tmp_path / "dit.pt", text_dims=[16], num_heads=2, micro_conditions=True)
    x = torch.randn(2, 4, 8, 8)
    cond = {"resolution": torch.tensor([[8.0, 8.0], [6.0, 10.0]]), "aspect_ratio": torch.tensor([[1.0], [0.6]])}
    with torch.no_grad():
        out = new(x, 500, encoder_hidden_states=torch.randn(2, 3, 16), added_cond_kwargs=cond).sample
        ref = dit(x, 500, class_labels=_null(dit, 2)).sample
    assert max_err(out, ref) <= TOL


@pytest.mark.parametrize("mode", ["cross-attn", "adaln-zero"])
def test_reparam_gentron_modes_equal_dit_null_class(gentron_dit, mode):
    new = reparam_init_from_dit(gentron_dit, text_dims=[24], conditioning=mode)
    x, _, _ = dit_inputs(5)
    tok = torch.randn(3, 4, 24)
    with torch.no_grad():
        for step in (500, 37):
            ts = torch.full((3,), step)
            kw = dict(encoder_hidden_states=tok, pooled_projections=torch.randn(3, 24))
            out = new(x, ts, **kw).sample
            ref = gentron_dit(x, ts, class_labels=_null(gentron_dit, 3)).sample
            assert max_err(out, ref) <= TOL, step


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="gentron")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *map(str, argv)])
    return args.func(args)


def test_cli_convert(tmp_path, diffusers_dit, gentron_dit, capsys):
    torch.save({"ema": official_dit_from(diffusers_dit)}, tmp_path / "dit.pt")
    assert run_cli(["--from", "dit", tmp_path / "dit.pt", "--out", tmp_path / "g", "--num-heads", 2]) == 0
    assert (tmp_path / "g" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = GenTronTransformer.from_pretrained(tmp_path / "g")
    x, t, y = dit_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, class_labels=y).sample, gentron_dit(x, t, class_labels=y).sample)

    # official PixArt → diffusers PixArt (null caption saved next to it)
    spec = PIXART_SIZES["small"]
    p = make_pixart(*spec)
    official = diffusers_pixart_to_official(p.state_dict())
    official["y_embedder.y_embedding"] = torch.randn(4, spec[3])
    torch.save({"state_dict": official}, tmp_path / "pixart.pth")
    argv = ["--from", "pixart", tmp_path / "pixart.pth", "--sample-size", 8, "--num-heads", 2]
    assert run_cli([*argv, "--to", "diffusers-pixart", "--out", tmp_path / "d"]) == 0
    assert (tmp_path / "d" / NULL_CAPTION_FILE).is_file()
    exported = PixArtTransformer2DModel.from_pretrained(tmp_path / "d")
    for k, v in p.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k
    assert run_cli(["--from", "diffusers-pixart", tmp_path / "d", "--out", tmp_path / "g2"]) == 0
    assert GenTronTransformer.from_pretrained(tmp_path / "g2").config.conditioning == "adaln-single"
    assert "wrote" in capsys.readouterr().out

    with pytest.raises(ValueError, match=r"unexpected key 'y_embedder.y_proj.fc1.weight'"):
        run_cli(["--from", "dit", tmp_path / "pixart.pth", "--out", tmp_path / "x"])
    with pytest.raises(FileNotFoundError):
        run_cli(["--from", "dit", tmp_path / "nope.pt", "--out", tmp_path / "x"])
    with pytest.raises(ValueError, match="diffusers-pixart needs a PixArt"):
        run_cli(["--from", "dit", tmp_path / "dit.pt", "--out", tmp_path / "x", "--to", "diffusers-pixart"])


def test_cli_reparam(tmp_path, diffusers_dit):
    torch.save(official_dit_from(diffusers_dit), tmp_path / "dit.pt")
    argv = ["--from", "dit", tmp_path / "dit.pt", "--num-heads", 2, "--reparam", "adaln-single", "--text-dim", 24]
    assert run_cli([*argv, "--out", tmp_path / "r"]) == 0
    cfg = GenTronTransformer.load_config(tmp_path / "r")
    assert cfg["conditioning"] == "adaln-single" and cfg["text_dims"] == [24]
    with pytest.raises(ValueError, match="--text-dim"):
        run_cli(argv[:-2] + ["--out", tmp_path / "r2"])


def test_sincos_matches_diffusers_buffers(diffusers_dit):
    """GenTron's on-the-fly positions equal the buffers diffusers (and the official code) store."""
    pos = diffusers_dit.pos_embed.pos_embed[0]
    assert torch.allclose(sincos_2d(64, 4, 4), pos, atol=1e-6, rtol=0)
