"""Shapes-CompBench, FID / shapes-FID, CLIP-Score and the T2I-CompBench harness, all offline: tiny models and
weight files are built in-process, nothing is downloaded."""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from gentron.data.shapes import render_scene
from gentron.eval import compbench as cb
from gentron.eval.prompts import COMPBENCH_CATEGORIES, VIDEO_CATEGORIES, eval_suite, suite_fingerprint

# The v1 suites (32 prompts, suite seed 1234). A change here means the benchmark changed: bump SUITE_VERSION.
V1_FINGERPRINTS = {
    "color/train": "544facd93c87a529", "color/heldout": "9d017c0f4e411a84",
    "shape/train": "024bf944f6baed40", "shape/heldout": "74c59c6db4f0447f",
    "size/train": "19e200c223422561", "size/heldout": "bb9b6d1be146fc59",
    "count/train": "74fedb79cc73c36a", "count/heldout": "ba41888febe46d05",
    "spatial/train": "d47d0008ec3c4da0", "spatial/heldout": "60e63d0d93ba7664",
    "complex/train": "88c48cb4b03b0a8b", "complex/heldout": "e36dd454033fadf4",
}


def eval_parser() -> argparse.ArgumentParser:
    """`gentron eval ...` as main.py wires it: add_eval_parsers on the eval sub-parsers."""
    from gentron.eval.cli import add_eval_parsers

    p = argparse.ArgumentParser(prog="gentron")
    sub = p.add_subparsers(dest="command", required=True)
    esub = sub.add_parser("eval").add_subparsers(dest="eval_command", required=True)
    add_eval_parsers(esub)
    return p


def run_cli(*argv: str) -> int:
    args = eval_parser().parse_args(["eval", *argv])
    return args.func(args)


# ------------------------------------------------------------------------------------------------
# Shapes-CompBench
# ------------------------------------------------------------------------------------------------


def test_suites_are_fixed_and_versioned():
    suites = cb.build_suites(n=32)
    assert {f"{c}/{s}": suite_fingerprint(p) for (c, s), p in suites.items()} == V1_FINGERPRINTS
    size = eval_suite("size", "heldout", n=8)
    assert all(p.prompt == f"a {p.scene.objects[0].size} {p.scene.objects[0].color} {p.scene.objects[0].shape}"
               for p in size)
    assert {p.scene.objects[0].size for p in size} == {"small", "large"}
    with pytest.raises(ValueError, match="video"):
        cb.build_suites([VIDEO_CATEGORIES[0]])


def test_noise_seeds_are_coordinates():
    seeds = {cb.noise_seed(3, c, s, i, k) for c in COMPBENCH_CATEGORIES for s in ("train", "heldout")
             for i in range(5) for k in range(3)}
    assert len(seeds) == len(COMPBENCH_CATEGORIES) * 2 * 5 * 3
    assert cb.decode_noise_seed(cb.noise_seed(3, "spatial", "heldout", 17, 2)) == ("spatial", "heldout", 17, 2)


def test_bootstrap_ci():
    lo, hi = cb.bootstrap_ci([1.0] * 10)
    assert lo == hi == 1.0
    v = [1.0] * 5 + [0.0] * 5
    lo, hi = cb.bootstrap_ci(v, 2000, seed=1)
    assert 0.1 < lo < 0.5 < hi < 0.9
    assert cb.bootstrap_ci(v, 500, seed=1) == cb.bootstrap_ci(v, 500, seed=1)


def test_judge_passes_ground_truth_and_fails_wrong_renders():
    v = cb.validate_judge(n=12)
    for cat, r in v.items():
        assert r["correct_clean"] == 1.0 and r["correct_degraded"] >= 0.9, (cat, r)
        assert r["wrong_clean"] == 0.0 and r["wrong_degraded"] <= 0.1, (cat, r)


def test_size_scoring():
    p = eval_suite("size", "train", n=4)[0]
    img = render_scene(p.scene, 32)
    assert cb.judge(p, img)[0]
    assert not cb.judge(p, render_scene(cb.wrong_scene(p, random.Random(0)), 32))[0]
    assert cb.judge(p, render_scene(p.scene, 48))[0]  # resolution independent


def test_compbench_report_oracle(tmp_path):
    suites = cb.build_suites(n=3)
    good = cb.run_compbench(cb.oracle_sampler(suites, noisy=True), n=3, images_per_prompt=2, bootstrap=100,
                            chance_images=8, validate=False)
    assert good["overall"] == {"train": 1.0, "heldout": 1.0}
    for cat in COMPBENCH_CATEGORIES:
        r = good["results"][cat]["heldout"]
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and r["images"] == 6
        assert 0.0 <= r["chance"] < 0.5
    assert good["results"]["spatial"]["heldout"]["chance"] == 0.0  # held-out arrangements never in training
    bad = cb.run_compbench(cb.oracle_sampler(suites, wrong=True), n=3, bootstrap=100, chance_images=8, validate=False)
    assert bad["overall"] == {"train": 0.0, "heldout": 0.0}
    paths = cb.write_compbench_report(good, tmp_path)
    rep = json.loads(paths["json"].read_text())
    assert rep["suite_version"] == cb.SUITE_VERSION and "_images" not in rep
    assert set(rep["video_categories"]) == set(VIDEO_CATEGORIES)
    md = paths["markdown"].read_text()
    assert "held-out acc [95% CI]" in md and "| size |" in md
    assert Image.open(paths["grid_heldout"]).size[0] > 0


def test_compbench_cli_oracle_and_export(tmp_path):
    assert run_cli("compbench", "--oracle", "clean", "--num", "2", "--categories", "color", "count",
                   "--bootstrap", "50", "--no-validate", "--out", str(tmp_path / "cb"),
                   "--export-suites", str(tmp_path / "suites")) == 0
    rep = json.loads((tmp_path / "cb" / "report.json").read_text())
    assert rep["categories"] == ["color", "count"] and rep["overall"]["heldout"] == 1.0
    assert (tmp_path / "suites" / "count_heldout.txt").read_text().count("\n") == 2
    assert "suites" in json.loads((tmp_path / "suites" / "suites.json").read_text())


def test_video_compbench_judge_oracles_and_cli(tmp_path):
    """The video half: ground-truth clips pass both categories, clips played backwards fail motion, clips whose
    objects change shape half-way fail consistency; a text-blind model sits near zero; CLI report files."""
    from gentron.eval.compbench import validate_video_judge

    v = validate_video_judge(n=8)
    assert v["motion_direction"] == {"correct_clean": 1.0, "wrong_clean": 0.0}
    assert v["temporal_consistency"] == {"correct_clean": 1.0, "wrong_clean": 0.0}
    common = ["--video", "--num", "3", "--bootstrap", "50", "--no-validate"]
    assert run_cli("compbench", *common, "--oracle", "clean", "--out", str(tmp_path / "good")) == 0
    good = json.loads((tmp_path / "good" / "report.json").read_text())
    assert good["benchmark"] == "shapes-compbench-video" and good["categories"] == ["motion_direction",
                                                                                    "temporal_consistency"]
    for cat in good["categories"]:
        for split in ("train", "heldout"):
            r = good["results"][cat][split]
            assert r["accuracy"] == 1.0 and r["ci95"] == [1.0, 1.0] and r["chance"] < 0.3 and r["prompts"] == 3
    assert good["results"]["motion_direction"]["train"]["suite_fingerprint"] != \
        good["results"]["motion_direction"]["heldout"]["suite_fingerprint"]
    assert "temporal_consistency" in (tmp_path / "good" / "report.md").read_text()
    assert (tmp_path / "good" / "samples-heldout.png").is_file()
    assert run_cli("compbench", *common, "--oracle", "wrong", "--out", str(tmp_path / "bad")) == 0
    bad = json.loads((tmp_path / "bad" / "report.json").read_text())
    assert bad["results"]["motion_direction"]["heldout"]["accuracy"] == 0.0
    from gentron.cli.main import UserError

    with pytest.raises(UserError, match="image benchmark"):
        run_cli("compbench", "--video", "--oracle", "noisy")


# ------------------------------------------------------------------------------------------------
# FID
# ------------------------------------------------------------------------------------------------


def solid_images(colors, size=16):
    return [Image.new("RGB", (size, size), tuple(int(v) for v in c)) for c in colors]


def test_tf1_resize_matches_tensorflow_semantics():
    from gentron.eval.fid import resize_tf1

    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    out = resize_tf1(x, 8)[0, 0, 0]
    # TF1 align_corners=False: src = dst * in/out, no half-pixel offset, clamped at the edge
    torch.testing.assert_close(out, torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))


def test_inception_weight_file_round_trip_and_fid(tmp_path):
    from gentron.eval.fid import FIDInceptionV3, compute_fid, frechet_distance, load_inception

    torch.manual_seed(0)
    net = FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # the FID Inception-v3, incl. 1008-way fc
    weights = tmp_path / "pt_inception-random.pth"
    torch.save(net.state_dict(), weights)
    model = load_inception(weights, dims=64)
    assert not model.training
    rng = np.random.default_rng(0)
    real = solid_images(rng.integers(0, 255, (10, 3)))
    fake = solid_images(rng.integers(0, 255, (10, 3)) // 2)
    r = compute_fid(real, fake, model, batch_size=8, backend="torch")
    assert r["feature_dims"] == 64 and r["num_real"] == 10 and r["fid"] > 0
    same = compute_fid(real, real, model, backend="torch")["fid"]
    assert abs(same) < 1e-3 * r["fid"]
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an FID Inception"):
        load_inception(bad)
    feats_r, feats_f = torch.randn(30, 8, dtype=torch.float64), torch.randn(25, 8, dtype=torch.float64) + 1
    assert frechet_distance(feats_r, feats_f) > 0


def test_fid_cli_with_an_inception_weights_file(tmp_path):
    """``gentron eval fid --inception-weights FILE`` end to end on folders (random weights stand in for the
    published file, which is loaded by the same code); identical folders give FID ≈ 0."""
    from gentron.data.shapes import write_shapes_dataset
    from gentron.eval.fid import FIDInceptionV3

    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-random.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    real = write_shapes_dataset(tmp_path / "real", num=6, resolution=32, seed=0)
    fake = write_shapes_dataset(tmp_path / "fake", num=6, resolution=32, seed=1, split="heldout")
    common = ["--inception-weights", str(weights), "--dims", "64"]
    assert run_cli("fid", "--fake", str(fake / "images"), "--real", str(real / "images"), *common,
                   "--out", str(tmp_path / "fid.json")) == 0  # --backend auto: torchmetrics (the test extra)
    r = json.loads((tmp_path / "fid.json").read_text())
    assert r["num_real"] == r["num_fake"] == 6 and r["feature_dims"] == 64 and r["fid"] > 0
    assert r["backend"] == "torchmetrics"
    common += ["--backend", "torch"]
    assert run_cli("fid", "--fake", str(real / "images"), "--real", str(real / "images"), *common,
                   "--out", str(tmp_path / "same.json")) == 0
    assert abs(json.loads((tmp_path / "same.json").read_text())["fid"]) < 1e-3 * r["fid"]


def test_torchmetrics_backend_agrees():
    pytest.importorskip("torchmetrics")
    from gentron.eval.fid import fid_from_features, frechet_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)
    value, used = fid_from_features(a, b * 1.5 + 0.2, "torchmetrics")
    assert used == "torchmetrics"
    assert value == pytest.approx(frechet_distance(a, b * 1.5 + 0.2), rel=1e-6)


def test_shapes_features_and_shapes_fid_cli(tmp_path):
    from gentron.data.shapes import write_shapes_dataset
    from gentron.eval.features import fingerprint, load_shapes_features, train_shapes_features

    model, info = train_shapes_features(tmp_path / "feat.pt", steps=3, batch_size=8, log=None)
    loaded, linfo = load_shapes_features(tmp_path / "feat.pt")
    assert fingerprint(loaded) == info["fingerprint"] == linfo["fingerprint"]
    # the CLI writes the same kind of file, seeded: equal fingerprints for equal seeds
    assert run_cli("shapes-features", "--out", str(tmp_path / "cli.pt"), "--steps", "3", "--batch-size", "8") == 0
    assert run_cli("shapes-features", "--out", str(tmp_path / "cli2.pt"), "--steps", "3", "--batch-size", "8") == 0
    assert load_shapes_features(tmp_path / "cli.pt")[1]["fingerprint"] == \
        load_shapes_features(tmp_path / "cli2.pt")[1]["fingerprint"]
    x = torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8)
    assert loaded(x).shape == (2, 128)
    real = write_shapes_dataset(tmp_path / "real", num=12, resolution=32, seed=0)
    fake = write_shapes_dataset(tmp_path / "fake", num=12, resolution=32, seed=1, split="heldout")
    out = tmp_path / "fid.json"
    assert run_cli("fid", "--fake", str(fake / "images"), "--real", str(real / "images"), "--shapes-features",
                   str(tmp_path / "feat.pt"), "--backend", "torch", "--out", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["num_real"] == r["num_fake"] == 12 and r["fid"] > 0 and r["features_fingerprint"] == info["fingerprint"]
    from gentron.cli.main import UserError

    with pytest.raises(UserError):
        run_cli("fid", "--fake", str(fake), "--real", str(real))


# ------------------------------------------------------------------------------------------------
# CLIP-Score
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from test_text_encoders import clip_tokenizer

    root = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    tok = clip_tokenizer()
    cfg.text_config.vocab_size = len(tok)
    transformers.CLIPModel(cfg).save_pretrained(root)
    proc = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok)
    proc.save_pretrained(root)
    return root


def test_clip_score_matches_definition(tiny_clip, tmp_path):
    from gentron.eval.clip_score import clip_score, clip_scores, load_clip

    images = solid_images([(200, 30, 30), (30, 30, 200)], size=40)
    prompts = ["a red circle", "a blue square"]
    model, proc = load_clip(tiny_clip)
    s = clip_scores(images, prompts, model, proc)
    with torch.no_grad():
        pix = proc(images=images, return_tensors="pt")["pixel_values"]
        tok = proc(text=prompts, return_tensors="pt", padding=True)
        i = model.get_image_features(pixel_values=pix)
        t = model.get_text_features(**{k: tok[k] for k in ("input_ids", "attention_mask")})
        i, t = getattr(i, "pooler_output", i), getattr(t, "pooler_output", t)
    ref = 100 * torch.nn.functional.cosine_similarity(i, t, dim=-1).clamp(min=0)
    torch.testing.assert_close(s, ref)
    assert clip_score(images, prompts, tiny_clip)["num"] == 2
    # CLI over an image folder with a prompt file
    (tmp_path / "imgs").mkdir()
    for k, im in enumerate(images):
        im.save(tmp_path / "imgs" / f"{k}.png")
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    assert run_cli("clip-score", "--clip", str(tiny_clip), "--images", str(tmp_path / "imgs"), "--prompts",
                   str(tmp_path / "p.txt"), "--out", str(tmp_path / "c.json")) == 0
    assert json.loads((tmp_path / "c.json").read_text())["clip_score"] == pytest.approx(float(s.mean()), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# T2I-CompBench harness, through a tiny real pipeline
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from gentron.diffusion import DiffusionConfig
    from gentron.models import GenTronTransformer, zoo_config
    from gentron.pipelines import GenTronPipeline
    from gentron.text import load_text_encoder

    torch.manual_seed(0)
    enc = load_text_encoder({"kind": "minilm", "max_length": 8})
    model = GenTronTransformer(**zoo_config("GenTron-T/4", conditioning="cross-attn", sample_size=16, in_channels=3,
                                            learn_sigma=False, text_dims=[enc.dim], pooled_dims=[enc.pooled_dim]))
    pipe = GenTronPipeline.from_parts(model, [enc], DiffusionConfig(prediction="sample", learn_sigma=False))
    root = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe.save_pretrained(root)
    return root


def test_pipeline_loads_in_a_fresh_interpreter(tiny_pipeline):
    """The documented Python API, with nothing else imported first (diffusers needs the transformer's module)."""
    import subprocess
    import sys

    code = ("from gentron.pipelines import GenTronPipeline; "
            f"p = GenTronPipeline.from_pretrained({str(tiny_pipeline)!r}); print(type(p.transformer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("GenTronTransformer")


def test_t2i_compbench_layout(tiny_pipeline, tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "color_val.txt").write_text("a green bench and a blue bowl\na red book/pen\n")
    (data / "spatial_val.txt").write_text("a dog on the left of a cat\t0\n")
    out = tmp_path / "out"
    assert run_cli("t2i-compbench", "--prompts", str(data), "--model", str(tiny_pipeline), "--out", str(out),
                   "--images-per-prompt", "2", "--steps", "2", "--device", "cpu") == 0
    names = sorted(p.name for p in (out / "color" / "samples").iterdir())
    assert names == ["a green bench and a blue bowl_000000.png", "a green bench and a blue bowl_000001.png",
                     "a red book-pen_000002.png", "a red book-pen_000003.png"]
    assert sorted(p.name for p in (out / "spatial" / "samples").iterdir()) == [
        "a dog on the left of a cat_000000.png", "a dog on the left of a cat_000001.png"]
    man = [json.loads(x) for x in (out / "color" / "manifest.jsonl").read_text().splitlines()]
    assert [m["seed"] for m in man] == [42, 43, 42, 43] and man[2]["renamed"]
    assert "BLIP_vqa.py" in (out / "README.txt").read_text()
    # deterministic: image n of a prompt depends only on (prompt, seed + n)
    a = np.asarray(Image.open(out / "color" / "samples" / names[0]))
    (out / "color" / "samples" / names[0]).unlink()
    run_cli("t2i-compbench", "--prompts", str(data / "color_val.txt"), "--model", str(tiny_pipeline), "--out",
            str(out), "--images-per-prompt", "2", "--steps", "2", "--device", "cpu")
    np.testing.assert_array_equal(a, np.asarray(Image.open(out / "color" / "samples" / names[0])))


def test_compbench_cli_on_a_model(tiny_pipeline, tmp_path):
    assert run_cli("compbench", "--model", str(tiny_pipeline), "--num", "2", "--categories", "color", "spatial",
                   "--splits", "heldout", "--steps", "2", "--bootstrap", "20", "--no-validate", "--device", "cpu",
                   "--out", str(tmp_path)) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["splits"] == ["heldout"] and rep["model"] == str(tiny_pipeline)
    assert 0.0 <= rep["results"]["color"]["heldout"]["accuracy"] <= 1.0


def test_fid_and_clip_score_generate_from_a_model(tiny_pipeline, tiny_clip, tmp_path):
    from gentron.data.shapes import write_shapes_dataset
    from gentron.eval.features import train_shapes_features

    train_shapes_features(tmp_path / "feat.pt", steps=1, batch_size=4, log=None)
    real = write_shapes_dataset(tmp_path / "real", num=4, resolution=16, seed=0)
    assert run_cli("fid", "--model", str(tiny_pipeline), "--real", str(real), "--shapes-features",
                   str(tmp_path / "feat.pt"), "--steps", "2", "--device", "cpu", "--backend", "torch",
                   "--save-samples", str(tmp_path / "gen"), "--out", str(tmp_path / "fid.json")) == 0
    r = json.loads((tmp_path / "fid.json").read_text())
    assert r["num_fake"] == 4 and r["model"] == str(tiny_pipeline) and len(list((tmp_path / "gen").iterdir())) == 4
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    assert run_cli("clip-score", "--clip", str(tiny_clip), "--model", str(tiny_pipeline), "--prompts",
                   str(tmp_path / "p.txt"), "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "c.json")) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["num"] == 2 and 0.0 <= c["clip_score"] <= 100.0


def test_demo_report_uses_the_budgets_targets(tmp_path):
    """`gentron demo --minutes 60` is judged against the issue's 60-minute bar (shape 0.9, spatial 0.85)."""
    from types import SimpleNamespace

    from gentron.cli.demo import TARGETS, shape_by_shape, targets_for, write_markdown

    assert targets_for(15) == TARGETS and targets_for(60) == {"color": 0.9, "shape": 0.9, "spatial": 0.85}
    acc = {"color": 1.0, "shape": 0.8, "count": 0.5, "spatial": 0.75, "complex": 0.0}
    for minutes, missed in ((15, set()), (60, {"shape", "spatial"})):
        targets = targets_for(minutes)
        report = {"prompts_per_category": 48, "sampler": "dpm", "steps": 20, "guidance": 4.0, "per_prompt": [
            {"category": "shape", "prompt": "a red circle", "correct": True},
            {"category": "shape", "prompt": "a blue cross", "correct": False},
            {"category": "shape", "prompt": "a large yellow cross", "correct": True},
            {"category": "color", "prompt": "a red square", "correct": False}]}
        result = {"accuracy": acc, "chance": dict.fromkeys(acc, 0.1), "targets": targets, "steps": 10,
                  "targets_met": {k: acc[k] >= v for k, v in targets.items()}, "model": "m", "device": "cpu",
                  "train_minutes": minutes - 2, "minutes": minutes, "shape_by_shape": shape_by_shape(report)}
        assert result["shape_by_shape"] == {"circle": [1, 1], "cross": [1, 2]}
        cfg = SimpleNamespace(model=SimpleNamespace(conditioning="cross-attn"))
        write_markdown(tmp_path / "r.md", result, report, cfg, tmp_path / "s.png", tmp_path / "l.png")
        text = (tmp_path / "r.md").read_text()
        assert ("## Targets not reached" in text) == bool(missed)
        for cat in missed:
            assert f"- {cat}: {acc[cat]:.3f} < {targets[cat]}" in text
        assert ("| spatial | 0.750 | 0.100 | 0.85 | **not met** (target 0.85) |" in text) == (minutes == 60)
        assert ("per shape: circle 1/1, cross 1/2; crosses are what is missing" in text) == (minutes == 60)


def _tiny_demo(monkeypatch, steps: int, prompts: str) -> list[str]:
    """A demo small enough for a test: tiny data and model, one evaluation prompt per category; its ``--set`` list."""
    import gentron.eval.shapes_eval as shapes_eval
    from gentron.cli import demo

    monkeypatch.setattr(demo, "RELATIONS_DATA", ["data.kinds_weights={spatial: 1.0}", "data.num=48"])
    evaluate = shapes_eval.evaluate_shapes
    monkeypatch.setattr(shapes_eval, "evaluate_shapes", lambda pipe, **k: evaluate(pipe, **{**k, "n_per_category": 1}))
    return ["model.resolution=16", "data.num=64", f"train.steps={steps}", "train.log_every=1", "train.precision=fp32",
            "model.overrides={hidden_size: 32, num_heads: 2, mlp_hidden_size: 64, depth: 2, text_whitening: true}",
            "sample.steps=2", f"sample.prompts={prompts}"]


def test_demo_trains_relations_first_then_resumes_on_the_full_mix(tmp_path, monkeypatch):
    """`gentron demo` stage 1 sees only two-object scenes; stage 2 resumes its checkpoint (step, weights, the text
    whitening fitted on the full mix's captions) on the full mix, and the report records both stages."""
    from gentron.cli import demo
    from gentron.data.shapes import load_scenes
    from gentron.pipelines import GenTronPipeline
    from gentron.train.checkpoint import load_checkpoint
    from gentron.train.config import load_config
    from gentron.train.trainer import WHITENING_ENERGY_WARN

    sets = _tiny_demo(monkeypatch, steps=5, prompts="[a red circle]")
    result = demo.run_demo(tmp_path, minutes=3, device="cpu", overrides=sets, relations_steps=3, processes=1)
    # the last stage keeps the evaluation's time as its own measured steps; the relations stage keeps none
    assert load_config(tmp_path / "run" / "config.yaml").train.reserve_steps == demo.EVAL_RESERVE_STEPS
    assert load_config(tmp_path / "relations" / "config.yaml").train.reserve_steps == 0

    assert {scene.kind for _, _, scene in load_scenes(tmp_path / "data-relations")} == {"spatial"}
    assert {scene.kind for _, _, scene in load_scenes(tmp_path / "data")} == {"single", "count", "spatial", "complex"}
    assert result["stages"]["relations"]["steps"] == 3 and result["stages"]["mix"]["steps"] == result["steps"] == 5
    assert sum(n for _, n in result["shape_by_shape"].values()) == 1  # one held-out shape prompt, by its shape
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5]  # resumed at the relations stage's step
    first = load_checkpoint(tmp_path / "relations" / "checkpoints" / "step_0000003")["model"]
    proj = "token_projections.0."
    whitening = first[proj + "feature_whitening"]
    assert bool(first[proj + "whitening_fitted"]) and not torch.allclose(whitening, torch.eye(len(whitening)))
    pipe = GenTronPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    final = pipe.transformer.token_projections[0]
    assert torch.equal(final.feature_whitening, whitening)  # fitted once, carried through the resume
    # ... on the full mix's captions: count and complex words, which stage 1 never reads, are not amplified
    mixed = [caption for _, caption, scene in load_scenes(tmp_path / "data") if scene.kind in ("count", "complex")]
    mixed = pipe.text_encoders[0].encode(mixed)
    energy = pipe.transformer.text_whitening_energy(0, mixed.tokens, mixed.mask)
    assert energy.shape == (len(mixed.tokens),) and (energy > WHITENING_ENERGY_WARN).float().mean() <= 0.02
    # the edge loss is the mixed stage's only: it stops the relations stage from binding
    assert load_config(tmp_path / "relations" / "config.yaml").diffusion.gradient_loss == 0.0
    assert load_config(tmp_path / "run" / "config.yaml").diffusion.gradient_loss == \
        load_config(demo.recipe_path()).diffusion.gradient_loss > 0
    assert (tmp_path / "loss.png").is_file()
    assert "(3 steps on two-object scenes, then 2 on the full mix)" in (tmp_path / "report.md").read_text()


def test_demo_eval_reserve_covers_the_measured_evaluations():
    """The last stage's reserve (EVAL_RESERVE_STEPS of its steps + EVAL_RESERVE_FIXED_MIN) covers the evaluation +
    report measured after training on both 2-core machines (0.159 s/step -> 25 s on the Zen 4, bf16; 0.28 -> 39 s
    and, on a slow day, 0.41 -> 70 s on the AVX2 EPYC, fp32) with 15 s to spare, and idles less than the fixed
    1.5 min of old on the Zen 4."""
    from gentron.cli import demo

    def reserve_s(seconds_per_step: float) -> float:
        return demo.EVAL_RESERVE_STEPS * seconds_per_step + 60 * demo.EVAL_RESERVE_FIXED_MIN

    for seconds_per_step, measured_s in ((0.159, 25), (0.28, 39), (0.41, 70)):
        assert reserve_s(seconds_per_step) >= measured_s + 15
    assert reserve_s(0.159) < 60


def test_long_demo_adds_the_token_conv_for_its_last_minutes_only(tmp_path, monkeypatch):
    """With a mixed stage longer than 1.5x TOKEN_CONV_MINUTES, the demo trains the full mix without the token conv
    (constant lr) and adds the conv for the last minutes (resumed exactly; the wsd decay inside those minutes)."""
    from gentron.cli import demo
    from gentron.train.config import load_config

    sets = _tiny_demo(monkeypatch, steps=6, prompts="[]")
    sets = [s.replace("text_whitening: true", "text_whitening: true, mlp_token_conv: true, mlp_token_conv_gain: 3.0")
            for s in sets]
    monkeypatch.setattr(demo, "TOKEN_CONV_MINUTES", 0.5)  # the test's 3-minute demo leaves ~1.4 min for the mix
    real_train_stage = demo.train_stage

    def stage_of_four_steps(cfg, run_dir, *args, **kwargs):  # the plain mix would otherwise take every step
        if run_dir.name == "mix-plain":
            cfg.train.steps = 4
        return real_train_stage(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(demo, "train_stage", stage_of_four_steps)
    result = demo.run_demo(tmp_path, minutes=3, device="cpu", overrides=sets, relations_steps=2, processes=1)

    assert [(k, v["steps"]) for k, v in result["stages"].items()] == [("relations", 2), ("mix-plain", 4), ("mix", 6)]
    plain, final = (load_config(tmp_path / d / "config.yaml") for d in ("mix-plain", "run"))
    assert not plain.model.overrides["mlp_token_conv"] and plain.train.lr_schedule == "constant"
    assert final.model.overrides["mlp_token_conv"] and final.train.lr_schedule == "wsd"
    assert final.model.overrides["mlp_token_conv_gain"] == demo.LATE_CONV_GAIN != 3.0  # the long demo's late conv
    assert 0.25 < final.train.lr_decay_fraction <= 1.0  # the last quarter of the whole mix, all in the conv's part
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6]
    report = (tmp_path / "report.md").read_text()
    assert "then 4 on the full mix, the last 2 with the token conv)" in report
    assert "(dotted lines: the full mix starts, then the token conv joins)" in report


def test_long_demo_late_conv_keeps_gain_one_unless_a_set_names_the_gain():
    """The long demo's last stage: LATE_CONV_GAIN replaces the recipe's gain, a dotted `--set` of the gain is kept,
    a `--set` of the whole overrides dict is not a set of the gain, and the lr decay covers a quarter of the mix."""
    from gentron.cli import demo
    from gentron.train.config import load_config

    cfg = load_config(demo.recipe_path())
    assert cfg.model.overrides["mlp_token_conv_gain"] == 3.0 != demo.LATE_CONV_GAIN
    late = demo.late_token_conv_config(cfg, [], plain_minutes=30.0, left_minutes=10.0)
    assert late.model.overrides["mlp_token_conv_gain"] == demo.LATE_CONV_GAIN
    assert late.train.lr_decay_fraction == pytest.approx(min(1.0, cfg.train.lr_decay_fraction * 4))
    assert cfg.model.overrides["mlp_token_conv_gain"] == 3.0  # the recipe's config is not changed in place
    dotted = "model.overrides.mlp_token_conv_gain=6"
    kept = demo.late_token_conv_config(load_config(demo.recipe_path(), [dotted]), [dotted], 30.0, 10.0)
    assert kept.model.overrides["mlp_token_conv_gain"] == 6.0
    whole = "model.overrides={mlp_token_conv: true, mlp_token_conv_gain: 6.0}"
    replaced = demo.late_token_conv_config(load_config(demo.recipe_path(), [whole]), [whole], 30.0, 10.0)
    assert replaced.model.overrides["mlp_token_conv_gain"] == demo.LATE_CONV_GAIN


def test_demo_in_two_processes_trains_as_one(tmp_path, monkeypatch):
    """On a 2-core CPU the demo trains its stages as two data-parallel processes of one thread each (the global batch
    unchanged): the same weights as one process, to float rounding, and the report says how it trained."""
    import os

    from safetensors.torch import load_file

    from gentron.cli import demo

    sets = _tiny_demo(monkeypatch, steps=4, prompts="[]")
    weights, results = {}, {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        results[n] = demo.run_demo(out, minutes=3, device="cpu", overrides=sets, relations_steps=2, processes=n)
        weights[n] = load_file(next((out / "run" / "checkpoints").glob("step_*")) / "model.safetensors")
    assert results[2]["processes"] == 2 and results[1]["processes"] == 1 and results[2]["steps"] == 4
    assert "min on cpu: fp32" in (tmp_path / "p2" / "report.md").read_text()
    assert ", 2 training processes; whole" in (tmp_path / "p2" / "report.md").read_text()
    summary = json.loads((tmp_path / "p2" / "run" / "summary.json").read_text())
    assert summary["parallel"] == "ddp" and summary["global_batch"] == 32
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[2][k].float(), v.float(), rtol=1e-5, atol=1e-6, msg=k)
    cores, n = len(os.sched_getaffinity(0)), demo.demo_processes(0, "cpu", 32)
    assert 32 % n == 0 and n <= cores and (n == cores or 32 % cores)  # one per core, unless that splits no batch
    assert demo.demo_processes(0, "cpu", 3) in (1, 3) and demo.demo_processes(4, "cpu", 32) == 4
    with pytest.raises(ValueError, match="must divide the batch size"):
        demo.demo_processes(3, "cpu", 32)
