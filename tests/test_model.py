"""GenTronTransformer: every conditioning mode, the zero-init identities, masks, save/load."""

import pytest
import torch

from gentron.models.transformer import (
    CONDITIONING_MODES,
    GenTronTransformer,
    _attention_bias,
    count_parameters,
    scaled_dot_product,
    sincos_2d,
    zoo_config,
)

TEXT_DIM = 24


def tiny(mode: str, **kw) -> GenTronTransformer:
    torch.manual_seed(0)
    cfg = zoo_config("GenTron-T/2", conditioning=mode, sample_size=8, in_channels=3,
                     text_dims=[] if mode == "class" else [TEXT_DIM], num_classes=5)
    cfg.update(kw)
    return GenTronTransformer(**cfg)


def randomize(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Give zero-initialised layers weights so tests exercise the whole network."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def inputs(b=2, frames=None, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, 3, 8, 8) if frames is None else (b, 3, frames, 8, 8)
    x = torch.randn(shape, generator=g)
    tok = torch.randn(b, L, TEXT_DIM, generator=g)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[1, 3:] = False
    return x, torch.tensor([3, 700])[:b], tok, mask


def call(model, x, t, tok, mask, **kw):
    mode = model.config.conditioning
    if mode == "class":
        return model(x, t, class_labels=torch.arange(x.shape[0]) % 5, **kw).sample
    return model(x, t, encoder_hidden_states=tok, encoder_attention_mask=mask,
                 pooled_projections=tok.mean(1), **kw).sample


@pytest.mark.parametrize("mode", CONDITIONING_MODES)
def test_output_shape_and_zero_init(mode):
    model = tiny(mode)
    x, t, tok, mask = inputs()
    out = call(model, x, t, tok, mask)
    assert out.shape == (2, 6, 8, 8)  # learned sigma doubles the channels
    assert torch.count_nonzero(out) == 0  # zero-initialised final layer (DiT / PixArt-α)
    out = call(randomize(model), x, t, tok, mask)
    assert out.abs().sum() > 0 and torch.isfinite(out).all()


@pytest.mark.parametrize("frames", [None, 3])
def test_blocks_see_a_contiguous_residual_stream(frames):
    """The patch tokens come out of a transpose; if the residual stream kept that memory order, every LayerNorm
    and linear of every block would copy its input (forward and backward): 26 copies of the activations per
    training step of the demo model, the gap to diffusers' PixArt on a CPU (docs/benchmarks.md, session 15)."""
    model = randomize(tiny("cross-attn", temporal_layers=frames is not None))
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    call(model, *inputs(frames=frames))
    assert seen == [True] * len(model.blocks)


@pytest.mark.parametrize("mode", ["adaln-zero", "cross-attn", "class"])
def test_adaln_zero_blocks_are_identity_at_init(mode):
    """adaLN-zero: every gate starts at 0, so each block returns its input unchanged."""
    model = tiny(mode)
    x = torch.randn(2, 16, 64)
    cond = torch.randn(2, 64)
    ctx = torch.randn(2, 5, 64)
    for block in model.blocks:
        assert torch.equal(block(x, cond, ctx), x)


def test_cross_attention_output_starts_at_zero():
    model = tiny("adaln-single")
    x = torch.randn(2, 16, 64)
    for block in model.blocks:
        assert torch.count_nonzero(block.cross_attn(x, torch.randn(2, 5, 64))) == 0


def test_padding_mask_is_honoured():
    """Changing padded text tokens must not change the output."""
    for mode in ("cross-attn", "adaln-single"):
        model = randomize(tiny(mode))
        x, t, tok, mask = inputs()
        pooled = tok.mean(1)
        ref = model(x, t, encoder_hidden_states=tok, encoder_attention_mask=mask, pooled_projections=pooled).sample
        tok2 = tok.clone()
        tok2[1, 3:] = 100.0
        out = model(x, t, encoder_hidden_states=tok2, encoder_attention_mask=mask, pooled_projections=pooled).sample
        torch.testing.assert_close(out, ref)
        out_nomask = model(x, t, encoder_hidden_states=tok, pooled_projections=pooled).sample
        torch.testing.assert_close(out_nomask[0], ref[0])  # sample 0 has no padding
        assert not torch.allclose(out_nomask[1], ref[1])


def test_text_changes_output_per_mode():
    for mode in ("adaln-zero", "cross-attn", "adaln-single"):
        model = randomize(tiny(mode))
        x, t, tok, mask = inputs()
        a = call(model, x, t, tok, mask)
        b = call(model, x, t, tok + 1.0, mask)
        assert not torch.allclose(a, b), mode


def test_adaln_zero_ignores_tokens_except_pooled():
    """adaLN-zero (GenTron Fig. 2a) sees text only through the pooled embedding."""
    model = randomize(tiny("adaln-zero"))
    x, t, tok, mask = inputs()
    pooled = tok.mean(1)
    a = model(x, t, encoder_hidden_states=tok, pooled_projections=pooled).sample
    b = model(x, t, encoder_hidden_states=tok * 3, pooled_projections=pooled).sample
    torch.testing.assert_close(a, b)
    assert not hasattr(model, "token_projections")


def test_interleaved_cross_attention_uses_encoder_i_mod_k():
    torch.manual_seed(0)
    model = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="cross-attn", sample_size=8,
                                            in_channels=3, text_dims=[TEXT_DIM, 10], depth=4))
    randomize(model)
    assert [model.encoder_for_block(i) for i in range(4)] == [0, 1, 0, 1]
    x, t, tok, mask = inputs()
    tok2 = torch.randn(2, 4, 10)
    pooled = (tok.mean(1), tok2.mean(1))
    ref = model(x, t, encoder_hidden_states=(tok, tok2), pooled_projections=pooled).sample
    # Record which context each block receives.
    seen = []
    hooks = [blk.cross_attn.register_forward_hook(lambda m, a, kw, o: seen.append(a[1].shape[1]), with_kwargs=True)
             for blk in model.blocks]
    model(x, t, encoder_hidden_states=(tok, tok2), pooled_projections=pooled)
    for h in hooks:
        h.remove()
    assert seen == [6, 4, 6, 4]
    out = model(x, t, encoder_hidden_states=(tok, tok2 + 1), pooled_projections=pooled).sample
    assert not torch.allclose(out, ref)
    with pytest.raises(ValueError, match="2 text encoder"):
        model(x, t, encoder_hidden_states=tok, pooled_projections=pooled)


@pytest.mark.parametrize("qk_norm", ["none", "cross", "all"])
def test_precomputed_text_kv_matches_forward(qk_norm):
    for mode in ("cross-attn", "adaln-single"):
        model = randomize(tiny(mode, qk_norm=qk_norm)).eval()
        x, t, tok, mask = inputs()
        ref = call(model, x, t, tok, mask)
        kv = model.precompute_text_kv(tok, mask)
        out = model(x, t, pooled_projections=tok.mean(1), added_cond_kwargs={"text_kv": kv}).sample
        torch.testing.assert_close(out, ref)


def test_batched_forward_equals_separate_calls():
    """CFG runs both branches in one batch: that must equal two separate calls."""
    model = randomize(tiny("cross-attn")).eval()
    x, t, tok, mask = inputs()
    both = call(model, x, t, tok, mask)
    for i in range(2):
        one = call(model, x[i : i + 1], t[i : i + 1], tok[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(one, both[i : i + 1], atol=2e-4, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    model = randomize(tiny("adaln-single", micro_conditions=False))
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    x, t, tok, mask = inputs()
    torch.testing.assert_close(call(loaded, x, t, tok, mask), call(model, x, t, tok, mask))


def test_qk_norm_makes_attention_weights_independent_of_key_scale(tmp_path):
    """With ``qk_norm`` the attention weights ignore the keys' magnitude: tiny text keys (PixArt's N(0, 0.02)
    caption projection) no longer mean near-uniform attention. Without it, scaling the keys sharpens it."""
    from gentron.models.transformer import Attention

    torch.manual_seed(0)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    for qk_norm in (True, False):
        attn = Attention(16, 2, context_dim=16, qk_norm=qk_norm)
        for lin in (attn.q, attn.kv, attn.proj):
            torch.nn.init.zeros_(lin.bias)  # out(c·context) = c·out(context) iff the weights ignore c
        scaled, ref = attn(x, 10 * context), attn(x, context)
        assert torch.allclose(scaled, 10 * ref, atol=1e-4) == qk_norm

    def normed(model):
        return {n for n, _ in model.named_parameters() if n.startswith("blocks.0.") and "_norm." in n}

    assert normed(tiny("cross-attn", qk_norm="cross")) == {"blocks.0.cross_attn.q_norm.weight",
                                                          "blocks.0.cross_attn.k_norm.weight"}
    model = randomize(tiny("cross-attn", qk_norm="all", temporal_layers=True))
    assert normed(model) == {f"blocks.0.{a}.{q}_norm.weight" for a in ("attn", "cross_attn", "temporal_attn") for q in "qk"}
    model.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config.qk_norm == "all"
    x, t, tok, mask = inputs(frames=2)
    torch.testing.assert_close(call(loaded, x, t, tok, mask), call(model, x, t, tok, mask))
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        tiny("cross-attn", qk_norm=True)


def test_text_refiner_starts_as_identity_and_sees_word_order(tmp_path):
    """A fresh refiner leaves the model's output unchanged (it can be added to a trained model); with
    non-zero weights it sees token order (permuting tokens changes the output, which plain cross-attention —
    a set operation over tokens — cannot notice), honours padding, and survives save/load."""
    plain = randomize(tiny("cross-attn"))
    refined = tiny("cross-attn", text_refiner_layers=2)
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("text_refiners.") for k in missing)
    x, t, tok, mask = inputs()
    assert torch.equal(call(refined, x, t, tok, mask), call(plain, x, t, tok, mask))

    randomize(refined.text_refiners)
    swapped = tok.clone()
    swapped[:, [0, 1]] = tok[:, [1, 0]]  # same bag of tokens, other order (both unpadded)
    ref = call(refined, x, t, tok, mask)
    assert not torch.allclose(call(refined, x, t, swapped, mask), ref)
    torch.testing.assert_close(call(plain, x, t, swapped, mask), call(plain, x, t, tok, mask), atol=1e-4, rtol=1e-5)
    padded = tok.clone()
    padded[1, 3:] = 100.0
    out = refined(x, t, encoder_hidden_states=padded, encoder_attention_mask=mask, pooled_projections=tok.mean(1))
    torch.testing.assert_close(out.sample, ref)

    refined.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config.text_refiner_layers == 2
    torch.testing.assert_close(call(loaded, x, t, tok, mask), ref)
    with pytest.raises(ValueError, match="text_refiner_layers needs cross-attention"):
        tiny("adaln-zero", text_refiner_layers=1)
    with pytest.raises(ValueError, match="text_refiner_layers must be >= 0"):
        tiny("cross-attn", text_refiner_layers=-1)


def test_latent_and_pixel_channels_and_no_sigma():
    m = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="cross-attn", sample_size=8, in_channels=4,
                                        text_dims=[TEXT_DIM], learn_sigma=False))
    out = m(torch.randn(1, 4, 8, 8), 5, encoder_hidden_states=torch.randn(1, 3, TEXT_DIM),
            pooled_projections=torch.randn(1, TEXT_DIM)).sample
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 3, 8, 8), 5, encoder_hidden_states=torch.randn(1, 3, TEXT_DIM),
          pooled_projections=torch.randn(1, TEXT_DIM))


def test_micro_conditions():
    m = randomize(tiny("adaln-single", micro_conditions=True, hidden_size=48, num_heads=2))
    x, t, tok, mask = inputs()
    kw = dict(encoder_hidden_states=tok, encoder_attention_mask=mask)
    a = m(x, t, added_cond_kwargs={"resolution": torch.tensor([[8.0, 8.0]] * 2),
                                   "aspect_ratio": torch.tensor([[1.0]] * 2)}, **kw).sample
    b = m(x, t, added_cond_kwargs={"resolution": torch.tensor([[16.0, 8.0]] * 2),
                                   "aspect_ratio": torch.tensor([[2.0]] * 2)}, **kw).sample
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="micro_conditions"):
        m(x, t, **kw)


def test_pos_embed_is_dit_layout():
    """Columns in the first half of the channels, rows in the second (DiT / diffusers layout)."""
    pe = sincos_2d(8, 2, 3)
    assert pe.shape == (6, 8)
    # token (row 0, col 1) differs from (row 0, col 0) only in the column half
    assert torch.equal(pe[1, 4:], pe[0, 4:]) and not torch.equal(pe[1, :4], pe[0, :4])
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = get_2d_sincos_pos_embed(8, (2, 3), base_size=2, interpolation_scale=1.0)
    ours = sincos_2d(8, 2, 3, base_size=2)
    torch.testing.assert_close(ours, torch.as_tensor(ref).float())


def test_zoo_parameter_counts():
    with torch.device("meta"):
        dit = GenTronTransformer(**zoo_config("DiT-XL/2", conditioning="class", text_dims=[]))
        pixart = GenTronTransformer(**zoo_config("XL/2", conditioning="adaln-single", text_dims=[4096]))
    # official DiT-XL/2: 675,129,632 includes a fixed pos-embed buffer of 256 x 1152 = 294,912 values
    assert count_parameters(dit) == 675_129_632 - 256 * 1152
    assert abs(count_parameters(pixart) / 1e6 - 610.9) < 0.1  # diffusers PixArt-α XL/2: 611M
    with pytest.raises(ValueError, match="unknown model name"):
        zoo_config("GenTron-XXL/2")


def test_video_at_init_equals_image_model_frame_by_frame():
    """TempSelfAttn's zero-initialised output projection makes T2V = T2I per frame (GenTron Sec. 3.3.1)."""
    image_model = randomize(tiny("cross-attn")).eval()
    video_model = tiny("cross-attn", temporal_layers=True).eval()
    missing, unexpected = video_model.load_state_dict(image_model.state_dict(), strict=False)
    assert not unexpected and all("temporal" in k for k in missing)
    x, t, tok, mask = inputs(frames=3)
    vid = call(video_model, x, t, tok, mask)
    for f in range(3):
        img = call(image_model, x[:, :, f], t, tok, mask)
        torch.testing.assert_close(vid[:, :, f], img, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("qk_norm", ["none", "all"])
def test_motion_free_mask_isolates_frames(qk_norm):
    model = randomize(tiny("cross-attn", temporal_layers=True, qk_norm=qk_norm)).eval()
    x, t, tok, mask = inputs(frames=4)
    x2 = x.clone()
    x2[:, :, 2] += 1.0  # perturb frame 2
    mf = torch.tensor([True, False])
    a, b = call(model, x, t, tok, mask, motion_free=mf), call(model, x2, t, tok, mask, motion_free=mf)
    # motion-free sample 0: other frames unchanged; sample 1 (motion on): they change
    for f in (0, 1, 3):
        torch.testing.assert_close(a[0, :, f], b[0, :, f])
        assert not torch.allclose(a[1, :, f], b[1, :, f])


@pytest.mark.parametrize("mode", ["cross-attn", "adaln-single"])
def test_pos_query_starts_as_the_plain_model_and_reads_position(mode, tmp_path):
    """``pos_query`` adds W_pos·P to the cross-attention queries. W_pos is zero at init, so a plain model's
    weights give the same output; once trained, the query depends on the patch position even where the
    input is identical, and it survives save/load and the cached text K/V path."""
    ref = randomize(tiny(mode)).eval()
    model = tiny(mode, pos_query=True).eval()
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and missing == [f"blocks.{i}.cross_attn.q_pos.weight" for i in range(len(model.blocks))]
    assert all(torch.count_nonzero(b.cross_attn.q_pos.weight) == 0 for b in model.blocks)
    x, t, tok, mask = inputs()
    torch.testing.assert_close(call(model, x, t, tok, mask), call(ref, x, t, tok, mask))

    attn = model.blocks[0].cross_attn
    with torch.no_grad():
        for b in model.blocks:
            b.cross_attn.q_pos.weight.normal_(0, 0.2)
    same = torch.zeros(1, 16, attn.q.in_features)  # 16 identical tokens at 16 positions
    pos = model.pos_embed(4, 4, same.device)
    q_plain, q_pos = attn.queries(same), attn.queries(same, pos)
    assert torch.allclose(q_plain[:, :, :1], q_plain)  # no position: every token asks the same
    assert not torch.allclose(q_pos[:, :, :1], q_pos)

    out = call(model, x, t, tok, mask)
    assert not torch.allclose(out, call(ref, x, t, tok, mask))
    kv = model.precompute_text_kv(tok, mask)
    torch.testing.assert_close(model(x, t, pooled_projections=tok.mean(1), added_cond_kwargs={"text_kv": kv}).sample, out)
    model.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config.pos_query
    torch.testing.assert_close(call(loaded, x, t, tok, mask), out)
    with pytest.raises(ValueError, match="pos_query needs cross-attention"):
        tiny("adaln-zero", pos_query=True)


@pytest.mark.parametrize("mode", ["cross-attn", "adaln-single"])
def test_text_whitening_is_identity_until_fitted_then_whitens(mode, tmp_path):
    """``text_whitening`` puts a fixed (x − μ)·W before the token projection. Unfitted it is the identity (a plain
    model's weights give the same output); fitted on a badly conditioned token sample, the whitened tokens have
    unit covariance in every direction the sample spans; the statistics survive save/load and the text K/V cache."""
    ref = randomize(tiny(mode)).eval()
    model = tiny(mode, text_whitening=True, text_whitening_shrinkage=1e-6).eval()
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected
    assert sorted(missing) == ["token_projections.0.feature_mean", "token_projections.0.feature_whitening",
                               "token_projections.0.whitening_fitted"]
    x, t, tok, mask = inputs()
    torch.testing.assert_close(call(model, x, t, tok, mask), call(ref, x, t, tok, mask))
    assert not model.text_whitening_fitted()

    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, -2, TEXT_DIM)  # variances from 1 to 1e-4: a frozen encoder's conditioning
    sample = torch.randn(400, 5, TEXT_DIM, generator=g) * scales + 3.0
    sample_mask = torch.ones(400, 5, dtype=torch.bool)
    sample_mask[:, 4] = False
    sample[:, 4] = 1e3  # padding: must not enter the statistics
    model.fit_text_whitening(0, sample, sample_mask)
    assert model.text_whitening_fitted()
    proj = model.token_projections[0]
    white = (sample[sample_mask] - proj.feature_mean) @ proj.feature_whitening
    torch.testing.assert_close(torch.cov(white.T), torch.eye(TEXT_DIM), atol=0.05, rtol=0)
    torch.testing.assert_close(white.mean(0), torch.zeros(TEXT_DIM), atol=1e-4, rtol=0)

    out = call(model, x, t, tok, mask)
    assert not torch.allclose(out, call(ref, x, t, tok, mask))
    pooled = tok.mean(1) if mode == "cross-attn" else None
    kv = model.precompute_text_kv(tok, mask)
    torch.testing.assert_close(model(x, t, pooled_projections=pooled, added_cond_kwargs={"text_kv": kv}).sample, out)
    model.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.text_whitening_fitted()
    torch.testing.assert_close(call(loaded, x, t, tok, mask), out)

    # The whitening runs in fp32 under bf16 autocast (it amplifies the directions rounding would blur), and the
    # FLOP counter (meta tensors) still goes through it.
    seen = []
    hook = proj.fc1.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        proj(tok)
    hook.remove()
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], (tok - proj.feature_mean) @ proj.feature_whitening, rtol=0, atol=0)
    from gentron.train.trainer import training_flops_per_sample

    assert training_flops_per_sample(model, [tok.shape[1]]) > 0

    with pytest.raises(ValueError, match="text_whitening needs cross-attention"):
        tiny("adaln-zero", text_whitening=True)
    with pytest.raises(ValueError, match="built with text_whitening=False"):
        ref.fit_text_whitening(0, sample, sample_mask)


def test_cpu_bf16_attention_runs_in_fp32_and_keeps_dtype():
    """Under bf16 autocast on CPU, attention is computed in fp32 (faster there) and returns bf16, with gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 5:] = False
    bias = _attention_bias(mask, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product(q, k, v, bias)
    assert out.dtype == torch.bfloat16
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
    assert torch.equal(out, ref.bfloat16())
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


@pytest.mark.parametrize("frames", [None, 2])
def test_mlp_token_conv_starts_as_the_plain_model_and_mixes_neighbours_only(frames, tmp_path):
    """``mlp_token_conv`` adds a zero-initialised depthwise 3x3 conv over the token grid to each MLP's hidden
    layer (SANA's Mix-FFN idea). A plain model's weights give the same output; once trained, a token's MLP
    output depends on its grid neighbours (and only on them, within one frame), and it survives save/load."""
    ref = randomize(tiny("cross-attn")).eval()
    model = tiny("cross-attn", mlp_token_conv=True).eval()
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(
        f"blocks.{i}.mlp.token_conv.{p}" for i in range(len(model.blocks)) for p in ("weight", "bias"))
    x, t, tok, mask = inputs(frames=frames)
    torch.testing.assert_close(call(model, x, t, tok, mask), call(ref, x, t, tok, mask))

    mlp = model.blocks[0].mlp
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.token_conv.weight.normal_(0, 0.2)
    grid = (4, 4)
    h = torch.randn(2, 16, mlp.fc1.in_features)
    base = mlp(h, grid)
    bumped = h.clone()
    bumped[:, 5] += 1.0  # token (1, 1) of the 4x4 grid
    changed = (mlp(bumped, grid) - base).abs().amax(dim=(0, 2)) > 1e-6
    neighbours = {r * 4 + c for r in range(3) for c in range(3)}  # rows 0-2, cols 0-2
    assert {i for i in range(16) if changed[i]} == neighbours
    with pytest.raises(ValueError, match="needs the token grid"):
        mlp(h)

    out = call(model, x, t, tok, mask)
    assert not torch.allclose(out, call(ref, x, t, tok, mask))
    model.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config.mlp_token_conv
    torch.testing.assert_close(call(loaded, x, t, tok, mask), out)


def test_mlp_token_conv_gain_is_a_reparameterisation_that_adam_moves_gain_times_as_fast(tmp_path):
    """``mlp_token_conv_gain`` g scales the conv's output: weights w at gain g are weights g·w at gain 1 (same
    function, saved with the config), and from zero one Adam step moves the gain-g conv's output g times as far."""
    g = 3.0
    plain = randomize(tiny("cross-attn", mlp_token_conv=True)).eval()
    fast = tiny("cross-attn", mlp_token_conv=True, mlp_token_conv_gain=g).eval()
    fast.load_state_dict({k: v / g if ".token_conv." in k else v for k, v in plain.state_dict().items()})
    x, t, tok, mask = inputs()
    close = dict(rtol=1e-4, atol=1e-4)  # w/g·g is not w in floats; the randomized network amplifies it
    torch.testing.assert_close(call(fast, x, t, tok, mask), call(plain, x, t, tok, mask), **close)
    fast.save_pretrained(tmp_path / "m")
    loaded = GenTronTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config.mlp_token_conv_gain == g
    torch.testing.assert_close(call(loaded, x, t, tok, mask), call(fast, x, t, tok, mask))
    with pytest.raises(ValueError, match="mlp_token_conv_gain must be > 0"):
        tiny("cross-attn", mlp_token_conv=True, mlp_token_conv_gain=0.0)

    grid, h = (4, 4), torch.randn(2, 16, plain.blocks[0].mlp.fc1.in_features)
    moved = []
    for gain in (1.0, g):
        mlp = tiny("cross-attn", mlp_token_conv=True, mlp_token_conv_gain=gain).blocks[0].mlp
        mlp.load_state_dict(plain.blocks[0].mlp.state_dict() | {
            k: torch.zeros_like(v) for k, v in plain.blocks[0].mlp.state_dict().items() if k.startswith("token_conv.")})
        before = mlp(h, grid).detach()
        opt = torch.optim.Adam(mlp.token_conv.parameters(), lr=1e-3)
        mlp(h, grid).square().sum().backward()
        opt.step()
        moved.append((mlp(h, grid).detach() - before).abs().mean())
    torch.testing.assert_close(moved[1] / moved[0], torch.tensor(g), rtol=2e-2, atol=0)
