"""Text-to-video (GitHub issue 4): moving shapes, video folders, TempSelfAttn init, motion-free mask and
guidance, joint image-video training, video sampling and evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gentron.data.shapes import HELDOUT_COLOR_SHAPE, MOTIONS, ShapesVideoWorld, describe_video
from gentron.data.video import (
    VideoCaptionFolder,
    VideoTooShort,
    load_clip,
    sample_frame_indices,
    write_video,
)
from gentron.eval.detector import detect
from gentron.models.transformer import GenTronTransformer, zoo_config

TEXT_DIM = 24


def tiny_video_model(**kw) -> GenTronTransformer:
    torch.manual_seed(0)
    cfg = zoo_config("GenTron-T/2", conditioning="cross-attn", sample_size=8, in_channels=3, text_dims=[TEXT_DIM])
    cfg.update(kw)
    return GenTronTransformer(**cfg)


def randomize_temporal(model, scale=0.3):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal" in name or "adaLN" in name or "final_layer" in name or "cross_attn.proj" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def call(model, x, motion_free=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    tok = torch.randn(b, 5, TEXT_DIM, generator=g)
    t = torch.tensor([10, 500][:b] + [3] * max(0, b - 2))
    return model(x, t, encoder_hidden_states=tok, encoder_attention_mask=torch.ones(b, 5, dtype=torch.bool),
                 pooled_projections=tok.mean(1), motion_free=motion_free).sample


# ------------------------------------------------------------------------------------------------
# 7. moving shapes
# ------------------------------------------------------------------------------------------------


def test_moving_shapes_world_captions_motion_and_split():
    world = ShapesVideoWorld(resolution=32, seed=0)
    for i in range(12):
        frames, caption, vs = world.sample(i, "train")
        assert frames == world.sample(i, "train")[0] or all(
            np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frames, world.sample(i, "train")[0]))
        assert caption == describe_video(vs) and "moving" in caption
        assert not vs.heldout_combos()
        if vs.kind == "pair":
            assert vs.motions[0] != vs.motions[1] and " and " in caption
        for obj, motion in zip(vs.objects, vs.motions):  # the rendered object really moves that way
            a = max((d for d in detect(frames[0]) if d.color == obj.color), key=lambda d: d.area)
            b = max((d for d in detect(frames[-1]) if d.color == obj.color), key=lambda d: d.area)
            dx, dy = MOTIONS[motion]
            assert (b.cx - a.cx) * dx + (b.cy - a.cy) * dy > 0.2
    for i in range(8):
        assert world.sample_scene(world.rng_for(i, "heldout"), "heldout").color_shape_pairs() & HELDOUT_COLOR_SHAPE
    _, cap, _ = world.sample(0)
    assert cap.startswith("a ") and any(w in cap for w in ("to the right", "to the left", "up", "down"))


def test_cli_data_shapes_video_writes_lossless_clips(tmp_path):
    from gentron.cli.main import main

    out = tmp_path / "clips"
    assert main(["data", "shapes", "--video", "--out", str(out), "--num", "4", "--resolution", "16"]) == 0
    recs = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["file"].endswith(".mp4") and "moving" in r["caption"] for r in recs)
    ds = VideoCaptionFolder(out, resolution=16, num_frames=8, fps=4)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 8, 16, 16) and item["caption"] == recs[0]["caption"]
    world = ShapesVideoWorld(resolution=16, seed=0)
    ref = world.sample(0)[0]
    clip = load_clip(out / recs[0]["file"], 8, 4.0, 16)
    for k, f in zip(sample_frame_indices(16, 8, 8, 4), clip):
        assert np.array_equal(np.asarray(ref[k]), np.asarray(f))  # lossless H.264 RGB


# ------------------------------------------------------------------------------------------------
# 6. video folders
# ------------------------------------------------------------------------------------------------


def test_frame_sampling_at_target_fps():
    assert sample_frame_indices(16, 8, 8, 4) == [1, 3, 5, 7, 9, 11, 13, 15]
    idx = sample_frame_indices(90, 30, 8, 4)  # 3 s at 30 fps → every 7.5 source frames
    assert all(7 <= b - a <= 8 for a, b in zip(idx, idx[1:]))
    with pytest.raises(VideoTooShort):
        sample_frame_indices(30, 30, 8, 4)  # 1 s is too short for 8 frames at 4 fps


def test_video_folder_sidecars_and_bad_videos_are_skipped_and_counted(tmp_path):
    world = ShapesVideoWorld(resolution=16, seed=0)
    frames, caption, _ = world.sample(0)
    write_video(tmp_path / "good.gif", frames, fps=8)
    (tmp_path / "good.txt").write_text(caption)
    write_video(tmp_path / "short.webm", frames[:3], fps=8)
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (tmp_path / "broken.txt").write_text("corrupt")
    write_video(tmp_path / "nocap.mp4", frames, fps=8)
    ds = VideoCaptionFolder(tmp_path, resolution=16, num_frames=8, fps=4)
    assert len(ds) == 3 and ds.skipped["missing_caption"] == 1
    items = [ds[i] for i in range(len(ds))]
    assert all(it["caption"] == caption and it["pixel_values"].shape == (3, 8, 16, 16) for it in items)
    assert ds.skipped["too_short"] == 1 and ds.skipped["corrupt_video"] == 1


# ------------------------------------------------------------------------------------------------
# 1-3. TempSelfAttn, init from T2I, motion-free mask with the temporal position embedding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temporal", [{}, {"temporal_dim": 16}, {"temporal_conv": True}],
                         ids=["paper", "narrow", "conv"])  # the paper's layer, a narrow one, one with the 3-D conv
def test_init_from_t2i_is_frame_by_frame_t2i(tmp_path, temporal):
    from gentron.train.video import init_from_t2i

    t2i = tiny_video_model()
    with torch.no_grad():
        for p in t2i.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    t2i.save_pretrained(tmp_path / "transformer")
    t2v = tiny_video_model(temporal_layers=True, temporal_pos_embed=True, **temporal)
    randomize_temporal(t2v)  # everything non-temporal is overwritten; temporal out proj (and conv) re-zeroed
    info = init_from_t2i(t2v, tmp_path, log=lambda s: None)
    assert info["new_layers"] == len(t2v.blocks)
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        video = call(t2v.eval(), x)
        frames = [call(t2i.eval(), x[:, :, k]) for k in range(4)]
    for k in range(4):
        torch.testing.assert_close(video[:, :, k], frames[k], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        init_from_t2i(tiny_video_model(temporal_layers=True, depth=3), tmp_path, log=lambda s: None)


def test_init_from_t2i_refuses_another_token_conv_gain(tmp_path):
    """The conv's gain is not in the weights: loading them at another gain would silently change the function."""
    from gentron.train.video import init_from_t2i

    tiny_video_model(mlp_token_conv=True, mlp_token_conv_gain=3.0).save_pretrained(tmp_path / "transformer")
    with pytest.raises(ValueError, match="mlp_token_conv_gain 3, this model 1"):
        init_from_t2i(tiny_video_model(temporal_layers=True, mlp_token_conv=True), tmp_path, log=lambda s: None)
    info = init_from_t2i(tiny_video_model(temporal_layers=True, mlp_token_conv=True, mlp_token_conv_gain=3.0),
                         tmp_path, log=lambda s: None)
    assert info["new_layers"] > 0


@pytest.mark.parametrize("temporal_dim", [None, 16])
def test_frame_position_embedding_breaks_time_symmetry_but_not_motion_free(temporal_dim):
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    rev = x.flip(2)
    narrow = dict(temporal_layers=True, temporal_dim=temporal_dim)
    with torch.no_grad():
        plain = randomize_temporal(tiny_video_model(**narrow, temporal_pos_embed=False)).eval()
        torch.testing.assert_close(call(plain, rev), call(plain, x).flip(2), atol=1e-5, rtol=1e-4)  # equivariant
        pe = randomize_temporal(tiny_video_model(**narrow, temporal_pos_embed=True)).eval()
        assert (call(pe, rev) - call(pe, x).flip(2)).abs().max() > 1e-3  # can tell forward from backward
        # motion-free: a still clip (image repeated T times) gives the same output for every frame
        still = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
        out = call(pe, still, motion_free=torch.tensor([True, True]))
        for k in range(1, 4):
            torch.testing.assert_close(out[:, :, k], out[:, :, 0], atol=1e-5, rtol=1e-5)
        # ... and a motion-free frame depends on its own frame only (identity mask)
        x2 = x.clone()
        x2[:, :, 3] += 1.0
        a, b = call(pe, x, torch.tensor([True, False])), call(pe, x2, torch.tensor([True, False]))
        torch.testing.assert_close(a[0, :, :3], b[0, :, :3])
        assert (a[1, :, :3] - b[1, :, :3]).abs().max() > 1e-4


def test_relative_frame_values_place_frames_in_time_from_a_still_input():
    """Q/K positions alone cannot make the frames of a still clip differ (equal values stay equal under any
    attention weights), so a model that sees pure noise cannot start a motion. Relative positions in the values
    can, and a motion-free still is still one image model for every frame. Zero at init either way."""
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    still = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
    spread = lambda out: (out - out[:, :, :1]).abs().max().item()  # noqa: E731
    with torch.no_grad():
        qk = randomize_temporal(tiny_video_model(temporal_layers=True)).eval()
        assert spread(call(qk, still)) < 1e-5
        rel = tiny_video_model(temporal_layers=True, temporal_relative_values=True).eval()
        for name, p in rel.named_parameters():  # everything but the zero-initialised temporal output projection
            if "temporal_attn.proj" not in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
        assert call(rel, still).abs().max() > 1e-2
        assert spread(call(rel, still)) < 1e-5  # zero-init output projection: the T2I model per frame
        randomize_temporal(rel)
        assert spread(call(rel, still)) > 1e-3
        assert spread(call(rel, still, motion_free=torch.tensor([True, True]))) < 1e-5
    with pytest.raises(ValueError, match="temporal_pos_embed"):
        tiny_video_model(temporal_layers=True, temporal_pos_embed=False, temporal_relative_values=True)


def test_temporal_conv_mixes_neighbouring_frames_and_obeys_the_motion_free_mask():
    """``temporal_conv``: zero at init (the model without it), a still clip's frames can differ once trained
    (the frame axis is zero-padded, unlike attention's equal values), and under the identity mask a frame
    depends on itself only, while a motion sample's frames see their neighbours."""
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = randomize_temporal(tiny_video_model(temporal_layers=True)).eval()
    conv = tiny_video_model(temporal_layers=True, temporal_conv=True).eval()
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".temporal_conv." in k for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(call(conv, x), call(plain, x))  # zero-initialised: exactly the model without it
        for block in conv.blocks:
            block.temporal_conv.weight.normal_(0, 0.3)
        assert (call(conv, x) - call(plain, x)).abs().max() > 1e-3
        still = x[:, :, :1].expand(-1, -1, 4, -1, -1).contiguous()
        out = call(conv, still)
        assert (out[:, :, 1] - out[:, :, 0]).abs().max() > 1e-3
        x2 = x.clone()
        x2[:, :, 3] += 1.0
        mf = torch.tensor([True, False])
        a, b = call(conv, x, mf), call(conv, x2, mf)
        torch.testing.assert_close(a[0, :, :3], b[0, :, :3])  # motion-free: frame 3 reaches no other frame
        assert (a[1, :, 2] - b[1, :, 2]).abs().max() > 1e-4  # motion: it reaches its neighbour
    with pytest.raises(ValueError, match="temporal_layers"):
        tiny_video_model(temporal_conv=True)


# ------------------------------------------------------------------------------------------------
# 5. motion-free guidance
# ------------------------------------------------------------------------------------------------


def _tiny_pipeline():
    from gentron.diffusion import DiffusionConfig
    from gentron.pipelines import GenTronPipeline
    from gentron.text import load_text_encoders

    encs = load_text_encoders([{"kind": "scratch", "max_length": 8}])
    model = tiny_video_model(temporal_layers=True, text_dims=[encs[0].dim], pooled_dims=[encs[0].pooled_dim],
                             learn_sigma=False)
    randomize_temporal(model)
    return GenTronPipeline.from_parts(model.eval(), encs, DiffusionConfig(prediction="sample", learn_sigma=False),
                                      sampler="ddim")


def test_motion_free_guidance_branches_and_reduction_to_cfg():
    from gentron.pipelines.pipeline_gentron import motion_free_guidance
    from gentron.diffusion import cfg_combine

    c, u, f = (torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    torch.testing.assert_close(motion_free_guidance(c, u, f, 7.5, 1.0), cfg_combine(c, u, 7.5))
    torch.testing.assert_close(motion_free_guidance(c, u, f, 7.5, 1.2), f + 7.5 * (c - u) + 1.2 * (u - f))

    pipe = _tiny_pipeline()
    seen = []
    forward = pipe.transformer.forward

    def spy(x, t, **kw):
        seen.append((x.shape[0], kw.get("motion_free")))
        return forward(x, t, **kw)

    pipe.transformer.forward = spy
    lat = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=2, guidance_scale=3.0, latents=lat, num_frames=4, output_type="pt", progress=False)
    a = pipe("a red circle moving up", motion_guidance_scale=1.0, **kw).images
    assert all(b == 2 and mf is None for b, mf in seen)  # λ_M = 1: ordinary CFG, no third branch
    seen.clear()
    b = pipe("a red circle moving up", motion_guidance_scale=1.2, **kw).images
    assert all(n == 3 and mf.tolist() == [False, False, True] for n, mf in seen)  # one batched forward
    assert a.shape == b.shape == (1, 3, 4, 8, 8) and (a - b).abs().max() > 0
    clip = pipe("a red circle moving up", num_inference_steps=1, num_frames=4, progress=False).images[0]
    assert len(clip) == 4 and isinstance(clip[0], Image.Image)


# ------------------------------------------------------------------------------------------------
# 2-4, 8, 9. training (init-from, joint batches), CLI sampling and evaluation
# ------------------------------------------------------------------------------------------------


def _overrides(tmp: Path) -> list[str]:
    return ["model.name=GenTron-T/4", "model.resolution=16", "data.kind=shapes", f"data.path={tmp / 'img'}",
            "data.num=16", "text.encoders=[{kind: scratch, max_length: 16}]", "diffusion.prediction=sample",
            "diffusion.learn_sigma=false", "train.batch_size=4", "train.steps=1", "train.checkpoint_every=0",
            "train.precision=fp32", "train.log_every=1", "sample.steps=1", "sample.prompts=[a red circle]"]


def _t2v_overrides(tmp: Path) -> list[str]:
    """The T2V run of `video_run`: temporal layers, 4-frame clips, joint image-video batches, init from ``tmp/t2i``."""
    return _overrides(tmp) + ["model.temporal_layers=true", "video.num_frames=4", f"video.path={tmp / 'vid'}",
                              "video.num=8", "video.p_motion_free=0.5", f"video.init_from={tmp / 't2i'}"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A trained T2I run (``tmp/t2i``) and a factory of fresh T2V trainers initialised from it."""
    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("t2v")
    quiet = dict(log=lambda s: None, show_progress=False)
    Trainer(load_config(None, _overrides(tmp)), tmp / "t2i", **quiet).fit()
    cfg = load_config(None, _t2v_overrides(tmp))
    return tmp, lambda name: Trainer(cfg, tmp / name, **quiet)


@pytest.fixture(scope="module")
def trained_t2v(video_run):
    """A finished T2V run dir of its own, so tests that sample it do not depend on test order."""
    tmp, make_trainer = video_run
    make_trainer("t2v-trained").fit()
    return tmp / "t2v-trained"


def test_t2v_training_init_from_and_joint_batches(video_run):
    from safetensors.torch import load_file

    tmp, make_trainer = video_run
    trainer = make_trainer("t2v")
    t2i = load_file(tmp / "t2i" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    own = trainer.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in t2i.items())  # every shared weight loaded
    assert all(float(b.temporal_attn.proj.weight.detach().abs().sum()) == 0 for b in trainer.model.blocks)
    data, plan = trainer.dataset, trainer.video_plan
    assert data.num_videos == 8 and data.num_images == 16
    flags = []
    for pos in range(6):
        idx, mf = plan.draw(pos)
        assert torch.equal(idx >= data.num_videos, mf)  # motion-free ⇔ image repeated T times
        flags += mf.tolist()
    assert 0 < sum(flags) < len(flags)
    x, _, _ = trainer.load_batch(idx)
    assert x.shape == (4, 3, 4, 16, 16)
    for i in torch.nonzero(mf).flatten().tolist():  # pseudo-videos are still
        assert torch.equal(x[i, :, 0], x[i, :, -1])
    # the loss learns which samples are real clips (diffusion.temporal_loss weighs only their motion)
    seen, losses = [], trainer.diffusion.training_losses
    trainer.diffusion.training_losses = lambda *a, moving=None: seen.append(moving) or losses(*a, moving=moving)
    summary = trainer.fit()
    assert summary["steps"] == 1 and (tmp / "t2v" / "pipeline" / "model_index.json").is_file()
    assert len(seen) == 1 and torch.equal(seen[0].cpu(), ~plan.draw(0)[1])


def test_cli_sample_video_and_eval_video(video_run, trained_t2v, tmp_path, capsys):
    from gentron.cli.main import main

    tmp, _ = video_run
    model = str(trained_t2v)
    for name in ("clip.mp4", "clip.gif", "grid.png"):
        assert main(["sample", "--model", model, "--prompt", "a red circle moving to the right", "--frames", "4",
                     "--motion-guidance", "1.2", "--steps", "2", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).is_file()
    assert len(load_clip(tmp_path / "clip.mp4", 4, 4.0)) == 4
    assert main(["eval", "shapes", "--video", "--model", model, "--num", "2", "--steps", "1", "--frames", "4",
                 "--out", str(tmp_path / "v.json")]) == 0
    report = json.loads((tmp_path / "v.json").read_text())
    assert set(report["accuracy"]) == {"motion_direction", "temporal_consistency", "frame_color", "frame_shape",
                                       "overall"}
    assert "motion direction accuracy" in capsys.readouterr().out
    cb = tmp_path / "cb"
    assert main(["eval", "compbench", "--video", "--model", model, "--num", "1", "--steps", "1", "--frames", "4",
                 "--motion-guidance", "1.2", "--bootstrap", "10", "--no-validate", "--out", str(cb)]) == 0
    rep = json.loads((cb / "report.json").read_text())
    assert rep["num_frames"] == 4 and rep["motion_guidance"] == 1.2
    assert set(rep["results"]) == {"motion_direction", "temporal_consistency"} and len(rep["per_image"]) == 2
    assert main(["eval", "compbench", "--video", "--model", str(tmp / "t2i"), "--num", "1",
                 "--out", str(cb)]) == 2  # image model: a message, not a traceback
    assert main(["sample", "--model", str(tmp / "t2i"), "--prompt", "x", "--frames", "4",
                 "--out", str(tmp_path / "x.mp4")]) == 2  # image model: a message, not a traceback


def test_video_config_validation():
    from gentron.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="temporal_layers"):
        load_config(None, ["video.num_frames=8"])
    with pytest.raises(ConfigError, match="p_motion_free"):
        load_config(None, ["model.temporal_layers=true", "video.num_frames=8", "video.p_motion_free=2"])


# ------------------------------------------------------------------------------------------------
# 9. evaluation metrics on ground truth
# ------------------------------------------------------------------------------------------------


def test_video_eval_is_exact_on_ground_truth_and_catches_wrong_motion():
    from gentron.eval.video_eval import ground_truth_clips, summarize, validate_video_eval, video_eval_suite

    acc = validate_video_eval(n=16)
    assert all(v >= 0.99 for v in acc.values()), acc
    prompts = video_eval_suite("heldout", 6)
    clips = ground_truth_clips(prompts)
    reverse = summarize(prompts, [c[::-1] for c in clips])["accuracy"]
    still = summarize(prompts, [[c[0]] * len(c) for c in clips])["accuracy"]
    assert reverse["motion_direction"] == 0.0 and still["motion_direction"] == 0.0
    assert reverse["frame_shape"] == 1.0 and reverse["frame_color"] == 1.0 and still["temporal_consistency"] == 1.0


def test_motion_chance_levels_follow_the_suite_and_the_clips():
    """Chance is 1/4 for one object and 1/12 for two (different directions); the caption-blind level scores the
    model's own clips against every caption: 1/4 or 1/12 for clips that move clearly, 0 for still ones."""
    from gentron.eval.video_eval import direction_of, ground_truth_clips, motion_captions, summarize, video_eval_suite

    prompts = video_eval_suite("heldout", 12)
    kinds = [p.kind for p in prompts]
    assert {"single", "pair"} <= set(kinds)
    assert [len(motion_captions(p)) for p in prompts] == [4 if k == "single" else 12 for k in kinds]
    expected = sum(0.25 if k == "single" else 1 / 12 for k in kinds) / len(kinds)
    clips = ground_truth_clips(prompts)
    truth = summarize(prompts, clips)
    assert truth["chance"]["motion_direction"] == pytest.approx(expected)
    assert truth["accuracy"]["motion_direction"] == 1.0
    assert truth["chance"]["motion_direction_caption_blind"] == pytest.approx(expected)  # every clip moves clearly
    reverse = summarize(prompts, [c[::-1] for c in clips])
    assert reverse["accuracy"]["motion_direction"] == 0.0
    assert reverse["chance"]["motion_direction_caption_blind"] == pytest.approx(expected)  # moves, just not as told
    still = summarize(prompts, [[c[0]] * len(c) for c in clips])
    assert still["chance"]["motion_direction_caption_blind"] == 0.0
    # per object, the tracked centroid's first and last position (image fractions): the move it reports, reversed
    for fwd, back in zip(truth["per_prompt"], reverse["per_prompt"]):
        for (start, end), (b_start, b_end), move in zip(fwd["paths"], back["paths"], fwd["moves"]):
            assert direction_of(end[0] - start[0], end[1] - start[1]) == move and (b_start, b_end) == (end, start)


def test_temporal_every_k_blocks():
    kw = zoo_config("GenTron-T/4", conditioning="cross-attn", text_dims=[8], sample_size=8, in_channels=3,
                    learn_sigma=False, depth=4)
    every2 = GenTronTransformer(**kw, temporal_layers=True, temporal_every=2)
    assert [b.temporal_attn is not None for b in every2.blocks] == [True, False, True, False]
    full = GenTronTransformer(**kw, temporal_layers=True)
    assert all(b.temporal_attn is not None for b in full.blocks)
    with pytest.raises(ValueError, match="temporal_every"):
        GenTronTransformer(**kw, temporal_layers=True, temporal_every=0)


def test_narrow_temporal_attention_matches_a_reference_and_keeps_the_block_width():
    """``temporal_dim`` narrows TempSelfAttn's q/k/v (cheaper per frame); the output projection maps back to the
    block's width. Checked against a plain re-implementation of Eq. 3-5: LN, attention over frames per position."""
    kw = zoo_config("GenTron-T/4", conditioning="cross-attn", text_dims=[8], sample_size=8, in_channels=3,
                    learn_sigma=False, depth=1)
    model = GenTronTransformer(**kw, temporal_layers=True, temporal_dim=16, temporal_pos_embed=False)
    blk = model.blocks[0]
    d, heads = kw["hidden_size"], kw["num_heads"]
    assert blk.temporal_attn.qkv.weight.shape == (3 * 16, d) and blk.temporal_attn.proj.weight.shape == (d, 16)
    randomize_temporal(model)
    b, t, n = 2, 4, 3
    x = torch.randn(b * t, n, d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = blk.temporal_residual(x, t, None)
        seq = x.view(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)  # (b t) n d -> (b n) t d
        q, k, v = blk.temporal_attn.qkv(blk.norm_temporal(seq)).view(b * n, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (16 // heads) ** 0.5, dim=-1) @ v
        want = blk.temporal_attn.proj(att.transpose(1, 2).reshape(b * n, t, 16))
        want = want.view(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="temporal_dim"):
        GenTronTransformer(**kw, temporal_layers=True, temporal_dim=kw["num_heads"] + 1)


def test_video_demo_continues_the_image_demo_and_extends_its_report(video_run, tmp_path, monkeypatch):
    import shutil

    import yaml

    from gentron.cli import demo

    tmp, _ = video_run
    shutil.copytree(tmp / "t2i", tmp_path / "run")  # stands in for `gentron demo --out tmp_path`
    shutil.copytree(tmp / "img", tmp_path / "data")
    # as written by a demo started in tmp_path with a relative --out, then continued from another directory
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    config["data"]["path"] = "data"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "report.json").write_text(json.dumps({"accuracy": {"color": 0.5}, "chance": {"color": 0.2}}))
    (tmp_path / "report.md").write_text("# gentron demo report\n\nimage table\n")
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the image demo must be reused"))
    sets = ["video.num_frames=4", "video.num=8", "train.batch_size=4", "sample.steps=1"]
    result = demo.run_video_demo(tmp_path, minutes=0.05, overrides=sets, eval_prompts=2)
    assert result["init_from"] == str(tmp_path / "run") and result["t2v_steps"] >= 1
    t2v_config = yaml.safe_load((tmp_path / "t2v" / "config.yaml").read_text())
    assert t2v_config["diffusion"]["temporal_loss"] == 4.0  # the demo's T2V objective weighs motion errors
    # the evaluation's time is kept in the stage's own steps: 2 prompts x 3 values of λ_M, at 1 of 20 sampling steps
    assert t2v_config["train"]["reserve_steps"] == pytest.approx(demo.VIDEO_EVAL_STEPS_PER_CLIP * 2 * 3 / 20)
    assert set(result["motion_guidance_sweep"]) == {"1.0", "1.15", "1.3"}
    merged = json.loads((tmp_path / "report.json").read_text())
    assert merged["accuracy"]["color"] == 0.5 and set(demo.VIDEO_ACCURACY_KEYS) <= set(merged["accuracy"])
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# gentron demo report") and "image table" in text and "## Text-to-video" in text
    with Image.open(tmp_path / "video-samples.gif") as gif:
        assert gif.n_frames == 4
    assert not any((tmp_path / "elsewhere").iterdir()), "the image data must be found, not regenerated here"


def test_t2v_trains_in_two_processes_as_in_one(video_run, tmp_path):
    """`gentron demo --video` trains data-parallel on a multi-core CPU: two processes, each on its half of every
    joint image-video batch (with the per-sample motion-free masks of its half), end with the one-process weights."""
    import time

    from safetensors.torch import load_file

    from gentron.cli.demo import StageBudget, train_stage
    from gentron.train.config import load_config

    tmp, _ = video_run
    cfg = load_config(None, _t2v_overrides(tmp) + ["train.steps=3"])
    weights = {}
    for n in (1, 2):
        summary = train_stage(cfg, tmp_path / f"p{n}", StageBudget(time.time(), total=10, reserve=0), "t2v", n)
        assert summary["steps"] == 3 and summary["parallel"] == ("ddp" if n == 2 else "none")
        weights[n] = load_file(tmp_path / f"p{n}" / "checkpoints" / "step_0000003" / "model.safetensors")
    assert any(k.startswith("blocks.0.temporal_attn.") for k in weights[1])
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[2][k].float(), v.float(), rtol=1e-5, atol=1e-6, msg=k)
