"""Config, trainer, checkpoints, resume, pipeline and the CLI end to end (tiny, CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from gentron.cli.main import main as cli
from gentron.train import checkpoint as ckpt
from gentron.train.config import ConfigError, load_config
from gentron.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def make_trainer(data, run_dir, extra=(), resume=None, log=lambda s: None):
    cfg = load_config(None, tiny_overrides(data) + list(extra))
    return Trainer(cfg, run_dir, resume=resume, log=log, show_progress=False)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# -- config -------------------------------------------------------------------------------------


def test_config_rejects_unknown_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, ["modle.name=GenTron-T/2"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ValueError, match="unknown model name"):
        load_config(None, ["model.name=GenTron-Q/2"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    cfg = load_config(REPO / "configs" / "shapes-tiny.yaml", ["train.steps=7", "train.lr=3e-4"])
    assert cfg.train.steps == 7 and cfg.train.lr == 3e-4 and cfg.model.name == "GenTron-T/4"


def test_shapes_data_of_another_layout_is_a_config_error(shapes_data, tmp_path):
    """Reusing a generated folder whose layout_grid differs from the config would train the wrong recipe."""
    base = [o for o in tiny_overrides(shapes_data) if not o.startswith("data.kind")] + ["data.kind=shapes"]
    with pytest.raises(ConfigError, match="layout_grid=0.*data.layout_grid=3"):
        Trainer(load_config(None, base + ["data.layout_grid=3"]), tmp_path / "r", log=lambda s: None)
    with pytest.raises(ConfigError, match="data.layout_grid"):
        load_config(None, ["data.layout_grid=1"])
    fresh = tmp_path / "grid-data"  # missing: generated with the configured layout, then accepted as it is
    overrides = [o.replace(str(shapes_data), str(fresh)) for o in base] + ["data.layout_grid=3", "data.num=16"]
    Trainer(load_config(None, overrides), tmp_path / "r2", log=lambda s: None)
    assert json.loads((fresh / "meta.json").read_text())["layout_grid"] == 3


def test_lr_schedules_warm_up_hold_and_decay(shapes_data, tmp_path):
    base = ["train.steps=110", "train.warmup_steps=10", "train.lr=1e-3", "train.lr_min=1e-4"]
    trainer = make_trainer(shapes_data, tmp_path / "wsd", base + ["train.lr_schedule=wsd", "train.lr_decay_fraction=0.2"])
    lr = {step: trainer.lr_at(step) for step in (4, 50, 90, 100, 110)}
    assert lr[4] == pytest.approx(5e-4)  # linear warm-up
    assert lr[50] == lr[90] == pytest.approx(1e-3)  # stable until 80 % of the post-warm-up steps
    assert lr[100] == pytest.approx(5.5e-4) and lr[110] == pytest.approx(1e-4)  # then linear to lr_min
    trainer.cfg.train.max_minutes = 10.0  # time-budgeted: whichever comes first, steps or wall time
    trainer.start_time -= 9 * 60
    assert trainer.lr_at(20) == pytest.approx(5.5e-4, rel=1e-3)  # 90 % of the time spent
    cosine = make_trainer(shapes_data, tmp_path / "cos", base + ["train.lr_schedule=cosine"])
    assert cosine.lr_at(60) == pytest.approx(5.5e-4) and cosine.lr_at(110) == pytest.approx(1e-4)
    constant = make_trainer(shapes_data, tmp_path / "const", base)
    assert constant.lr_at(4) == pytest.approx(5e-4) and constant.lr_at(110) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="lr_decay_fraction"):
        load_config(None, ["train.lr_schedule=wsd", "train.lr_decay_fraction=0"])


def test_reserve_steps_keeps_the_time_of_measured_steps_free(shapes_data, tmp_path, monkeypatch):
    """`train.reserve_steps` stops a time-bounded run that many of its own measured steps before `max_minutes` (both
    demos keep their evaluation's time this way); start-up steps are not measured."""
    from gentron.train import trainer as trainer_module
    from gentron.train.trainer import StepTimeReserve

    clock = [1000.0]
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock[0])
    reserve = StepTimeReserve(100, first_step=20)
    kept = []
    for step in range(21, 36):
        clock[0] += 3.0 if step <= 25 else 0.5  # slow start-up steps, then 0.5 s a step
        kept.append(reserve.seconds(step))
    assert kept[:9] == [0.0] * 9  # steps 21-29: warm-up, then five steps of measurement
    assert kept[9:] == [pytest.approx(50.0)] * 6  # 100 steps of 0.5 s, the start-up not counted
    assert StepTimeReserve(0, first_step=0).seconds(50) == 0.0
    monkeypatch.undo()

    steps = ["train.steps=60", "train.log_every=1", "train.checkpoint_every=0", "train.max_minutes=30"]
    summary = make_trainer(shapes_data, tmp_path / "reserved", steps + ["train.reserve_steps=1e9"]).fit()
    assert summary["stopped_early"] == "time budget" and summary["steps"] == 2 * StepTimeReserve.WARMUP
    assert make_trainer(shapes_data, tmp_path / "full", steps[:1] + ["train.max_minutes=30"]).fit()["steps"] == 60
    with pytest.raises(ConfigError, match="reserve_steps"):
        load_config(None, ["train.reserve_steps=-1"])


def test_a_decay_timed_on_max_minutes_ends_where_the_reserve_stops_the_run(shapes_data, tmp_path, monkeypatch):
    """With `train.reserve_steps` the wsd decay runs on the time left before the reserve, so the lr reaches lr_min at
    the step where the run stops early (the image demo's last stage), not where max_minutes would end."""
    from gentron.train import trainer as trainer_module

    clock = [1000.0]
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock[0])
    real_step = trainer_module.Trainer.train_step

    def one_second_step(self):
        clock[0] += 1.0
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", one_second_step)
    sets = ["train.steps=1000", "train.log_every=1", "train.checkpoint_every=0", "train.max_minutes=1",
            "train.warmup_steps=0", "train.lr=1e-3", "train.lr_min=0", "train.lr_schedule=wsd",
            "train.lr_decay_fraction=0.5"]
    summary = make_trainer(shapes_data, tmp_path / "wsd", sets + ["train.reserve_steps=20"]).fit()
    records = [json.loads(line) for line in (tmp_path / "wsd" / "metrics.jsonl").read_text().splitlines()]
    # 1 s a step: it stops when 20 more steps would pass the 60 s budget, after ~40 steps
    assert summary["stopped_early"] == "time budget" and 38 <= summary["steps"] <= 42
    assert records[-1]["lr"] < 0.1e-3  # decayed to (almost) lr_min at the stop; timed on 60 s it would be ~0.65e-3
    assert records[len(records) // 3]["lr"] == pytest.approx(1e-3)  # the stable phase is kept before the decay


def test_diffusion_section_reaches_the_training_objective():
    from gentron.train.trainer import diffusion_config

    d = diffusion_config(load_config(None, ["diffusion.timestep_sampling=logit_normal", "diffusion.logit_mean=0.5"]))
    assert (d.timestep_sampling, d.logit_mean, d.logit_std) == ("logit_normal", 0.5, 1.0)
    assert diffusion_config(load_config(None, ["diffusion.multiscale_loss=[8, 16]"])).multiscale_loss == (8, 16)
    assert diffusion_config(load_config(None, ["diffusion.gradient_loss=2.0"])).gradient_loss == 2.0
    assert diffusion_config(load_config(None, ["diffusion.temporal_loss=4"])).temporal_loss == 4.0
    with pytest.raises(ValueError, match="timestep_sampling"):
        diffusion_config(load_config(None, ["diffusion.timestep_sampling=lognormal"]))


def test_trainer_draws_timesteps_from_the_configured_distribution(shapes_data, tmp_path):
    """The trainer's per-sample draws, not only the config, follow `diffusion.timestep_sampling`."""
    def drawn(extra):
        trainer = make_trainer(shapes_data, tmp_path / "-".join(extra or ["uniform"]), extra)
        return torch.cat([trainer.sample_randomness(step, 0, torch.Size((64, 3, 8, 8)))[1] for step in range(8)])

    uniform = drawn([])
    shifted = drawn(["diffusion.timestep_sampling=logit_normal", "diffusion.logit_mean=1.5", "diffusion.logit_std=0.5"])
    T = 1000
    assert 0.4 < (uniform < T // 2).float().mean() < 0.6
    # t/T = sigmoid(N(1.5, 0.5)): below T/2 only when N < 0, about 0.1 % of draws
    assert (shifted < T // 2).float().mean() < 0.02 and shifted.float().median() > 0.75 * T


def test_stable_config_keys_exist():
    cfg = load_config(REPO / "configs" / "shapes-tiny.yaml")
    for key in ("steps", "batch_size", "checkpoint_every", "seed"):
        assert hasattr(cfg.train, key)
    assert cfg.model.name


# -- training -----------------------------------------------------------------------------------


def test_overfits_one_batch(shapes_data, tmp_path):
    """A tiny model memorises a single batch: the loss drops by at least 10x."""
    t = make_trainer(shapes_data, tmp_path / "run", ["train.steps=1", "train.caption_dropout=0"])
    t.cfg.train.lr = 3e-3
    for g in t.optimizer.param_groups:
        g["lr"] = 3e-3
    idx = t.batch_indices(0, 0)
    t.batch_indices = lambda step, micro: idx  # always the same batch
    # one fixed timestep and noise so the target is one fixed function to fit
    g = torch.Generator().manual_seed(0)
    fixed_t = torch.full((len(idx),), 400)
    x0, caps, ids = t.load_batch(idx)
    noise = torch.randn(x0.shape, generator=g)
    first = last = None
    for step in range(150):
        text = t.text_conditioning(caps, ids, torch.zeros(len(idx), dtype=torch.bool))
        x_t = t.diffusion.q_sample(x0, fixed_t, noise)
        out = t.model(x_t, fixed_t, encoder_hidden_states=tuple(e.tokens for e in text),
                      pooled_projections=tuple(e.pooled for e in text)).sample
        loss = t.diffusion.training_losses(out, x0, x_t, fixed_t, noise)["loss"].mean()
        t.optimizer.zero_grad()
        loss.backward()
        t.optimizer.step()
        first = first if first is not None else loss.item()
        last = loss.item()
    assert last < first / 10, (first, last)


def test_train_writes_metrics_checkpoints_and_pipeline(shapes_data, tmp_path):
    run = tmp_path / "run"
    summary = make_trainer(shapes_data, run, ["train.steps=6", "train.checkpoint_every=3",
                                              "train.keep_checkpoints=1"]).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all("loss" in r for r in records)
    # throughput rides on the last record of each log interval (log_every in make_trainer's config)
    timed = [r["step"] for r in records if "img_per_s" in r]
    assert timed and timed[-1] == 6 and all(records[s - 1]["img_per_s"] > 0 for s in timed)
    assert [d.name for d in ckpt.list_checkpoints(run)] == ["step_0000006"]  # keep-last-1
    assert (run / "pipeline" / "model_index.json").is_file()
    assert (run / "samples" / "step_0000006.png").is_file()
    assert summary["steps"] == 6 and (run / "summary.json").is_file()
    assert (run / "config.yaml").is_file() and any((run / "tensorboard").iterdir())


def test_resume_is_bit_identical(shapes_data, tmp_path):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: same per-step losses and weights."""
    straight = make_trainer(shapes_data, tmp_path / "a", ["train.steps=8", "train.checkpoint_every=4"])
    straight.fit()
    first = make_trainer(shapes_data, tmp_path / "b", ["train.steps=4", "train.checkpoint_every=4"])
    first.fit()
    resumed = make_trainer(shapes_data, tmp_path / "b", ["train.steps=8", "train.checkpoint_every=4"],
                           resume="auto")
    assert resumed.step == 4
    resumed.fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    for a, b in zip(straight.ema.shadow, resumed.ema.shadow):
        assert torch.equal(a, b)


def test_compiled_blocks_train_like_eager_and_keep_parameter_names(shapes_data, tmp_path, monkeypatch):
    """train.compile (regional torch.compile, every block in place) changes speed, not the model: the same losses up to
    kernel rounding, the same parameter names in the checkpoint, and a pipeline the eager code loads."""
    steps = ["train.steps=3", "train.checkpoint_every=3", "sample.prompts=[a red circle]"]
    make_trainer(shapes_data, tmp_path / "eager", steps).fit()
    compiled = make_trainer(shapes_data, tmp_path / "compiled", steps + ["train.compile=true"])
    assert all(block._compiled_call_impl is not None for block in compiled.model.blocks)
    compiled.fit()
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    saved = [ckpt.list_checkpoints(tmp_path / run)[-1] / "model.safetensors" for run in ("eager", "compiled")]
    from safetensors.torch import load_file

    assert load_file(saved[0]).keys() == load_file(saved[1]).keys()
    assert (tmp_path / "compiled" / "pipeline" / "model_index.json").is_file()
    monkeypatch.setattr("gentron.train.distributed.shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        make_trainer(shapes_data, tmp_path / "no-compiler", steps + ["train.compile=true"])


def test_resume_skips_incomplete_and_corrupt_checkpoints(shapes_data, tmp_path):
    run = tmp_path / "run"
    make_trainer(shapes_data, run, ["train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3"]).fit()
    names = [d.name for d in ckpt.list_checkpoints(run)]
    assert names == ["step_0000002", "step_0000004"]
    (run / "checkpoints" / "step_0000004" / "model.safetensors").write_bytes(b"garbage")
    (run / "checkpoints" / "step_0000009").mkdir()  # an interrupted write: no COMPLETE marker
    with pytest.warns(UserWarning, match="corrupt"):
        t = make_trainer(shapes_data, run, ["train.steps=6"], resume="auto")
    assert t.step == 2


def test_corrupt_and_uncaptioned_images_are_skipped_and_counted(shapes_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    (data / "images" / "000003.png").write_bytes(b"not a png")
    lines = (data / "captions.jsonl").read_text().splitlines()
    rec = json.loads(lines[5])
    rec.pop("caption")
    lines[5] = json.dumps(rec)
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    summary = make_trainer(data, tmp_path / "run", ["train.steps=2"]).fit()
    assert summary["skipped_data"]["corrupt_image"] == 1
    assert summary["skipped_data"]["missing_caption"] == 1


def test_wrong_data_path_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        make_trainer(tmp_path / "nowhere", tmp_path / "run")


def test_trainable_scratch_text_encoder_trains_and_resumes(shapes_data, tmp_path):
    # zero-init final layer and cross-attention output: text gets gradient from step 3 on
    extra = ["text.encoders=[{kind: scratch, max_length: 24}]", "train.steps=3", "train.checkpoint_every=3"]
    t = make_trainer(shapes_data, tmp_path / "run", extra)
    before = [p.detach().clone() for p in t.text_encoders[0].parameters()]
    t.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.text_encoders[0].parameters()))
    r = make_trainer(shapes_data, tmp_path / "run", extra[:-2] + ["train.steps=4"], resume="auto")
    for a, b in zip(t.text_encoders[0].parameters(), r.text_encoders[0].parameters()):
        assert torch.equal(a, b)


def test_text_whitening_is_fitted_on_the_training_captions_once(shapes_data, tmp_path):
    """A text_whitening model is fitted on the frozen encoder's tokens of the training captions (preloaded bank or
    streamed captions alike), exported with the weights, and kept, not refitted, on resume."""
    extra = ["model.overrides={text_whitening: true}", "train.steps=2", "train.checkpoint_every=2"]
    t = make_trainer(shapes_data, tmp_path / "run", extra)
    proj = t.model.token_projections[0]
    assert t.model.text_whitening_fitted()
    bank = t.banks[0]
    raw = bank.tokens[bank.mask]
    top_raw = torch.linalg.eigvalsh(torch.cov(raw.T.double())).flip(0)[:50]
    top_white = torch.linalg.eigvalsh(torch.cov(((raw - proj.feature_mean) @ proj.feature_whitening).T.double()))
    top_white = top_white.flip(0)[:50]
    assert top_raw[0] / top_raw[-1] > 50  # MiniLM's 50 leading directions span almost two orders of magnitude ...
    assert 0.9 < top_white.min() and top_white.max() < 1.05  # ... whitened, they are all unit
    t.fit()
    pipe_model = load_pipeline_model(tmp_path / "run")
    torch.testing.assert_close(pipe_model.token_projections[0].feature_whitening, proj.feature_whitening)

    streamed = make_trainer(shapes_data, tmp_path / "streamed", extra + ["data.preload=false"])
    assert streamed.banks == [None]
    torch.testing.assert_close(streamed.model.token_projections[0].feature_whitening, proj.feature_whitening,
                               atol=1e-4, rtol=1e-3)  # same distinct captions, encoded live

    logs = []
    make_trainer(shapes_data, tmp_path / "run", extra[:-1] + ["train.steps=4"], resume="auto", log=logs.append)
    assert not [line for line in logs if "text whitening" in line]  # loaded, and it covers the same captions
    with torch.no_grad():
        proj.feature_whitening.mul_(5)  # make "refitted" visible: resume must load, not refit ...
    t.save_checkpoint()
    resumed = make_trainer(shapes_data, tmp_path / "run", extra[:-1] + ["train.steps=4"], resume="auto",
                           log=logs.append)
    torch.testing.assert_close(resumed.model.token_projections[0].feature_whitening, proj.feature_whitening)
    # ... and a whitening that no longer fits the captions (25x the energy) is reported, not silently used
    assert [line for line in logs if "warning: text whitening of encoder 0 was fitted on other captions" in line]
    with pytest.raises(ConfigError, match="text_whitening needs frozen text encoders"):
        make_trainer(shapes_data, tmp_path / "scratch", extra + ["text.encoders=[{kind: scratch, max_length: 24}]"])


def load_pipeline_model(run_dir):
    from gentron.cli.main import load_pipeline

    return load_pipeline(str(run_dir), "cpu", None).transformer


# -- pipeline -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(shapes_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    make_trainer(shapes_data, run, ["train.steps=4"]).fit()
    return run


def test_pipeline_round_trip_and_determinism(trained_run, tmp_path):
    from gentron.pipelines import GenTronPipeline

    pipe = GenTronPipeline.from_pretrained(trained_run / "pipeline")
    kw = dict(num_inference_steps=4, guidance_scale=3.0, output_type="pt", progress=False)
    a = pipe(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(1), **kw).images
    b = pipe(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(1), **kw).images
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    pipe.save_pretrained(tmp_path / "again")
    again = GenTronPipeline.from_pretrained(tmp_path / "again")
    c = again(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(1), **kw).images
    torch.testing.assert_close(a, c)
    pil = pipe("a red circle", num_inference_steps=2, progress=False).images
    assert len(pil) == 1 and pil[0].size == (16, 16)


def test_pipeline_guidance_matches_manual_two_branch_computation(trained_run):
    """The batched CFG step equals ε_u + s (ε_c − ε_u) computed with two separate forwards."""
    from gentron.diffusion import diffusion_config_from_scheduler, make_scheduler
    from gentron.pipelines import GenTronPipeline

    pipe = GenTronPipeline.from_pretrained(trained_run / "pipeline")
    model = pipe.transformer
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, 3, 16, 16)
    out = pipe("a red circle", num_inference_steps=1, guidance_scale=5.0, latents=x.clone(),
               output_type="pt", progress=False).images

    sched = make_scheduler("dpm", diffusion_config_from_scheduler(pipe.scheduler))
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    enc = pipe.text_encoders[0]
    with torch.no_grad():
        preds = []
        for prompt in ("a red circle", ""):
            e = enc.encode([prompt])
            preds.append(model(x, t.reshape(1), encoder_hidden_states=e.tokens, encoder_attention_mask=e.mask,
                               pooled_projections=e.pooled).sample)
    guided = preds[1] + 5.0 * (preds[0] - preds[1])
    expected = sched.step(guided, t, x).prev_sample
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_run_dir_and_bad_model_paths(trained_run, tmp_path):
    """A run dir loads (its EMA export) without diffusers' advice to install accelerate, which is not a dependency;
    bad paths are clear errors."""
    import logging

    from gentron.cli.main import UserError, load_pipeline

    records: list[logging.LogRecord] = []
    catch = logging.Handler(logging.WARNING)
    catch.emit = records.append
    logging.getLogger("diffusers").addHandler(catch)  # diffusers' own root logger: it does not propagate further
    try:
        assert load_pipeline(str(trained_run), device="cpu").transformer is not None
    finally:
        logging.getLogger("diffusers").removeHandler(catch)
    assert not [r.getMessage() for r in records if "accelerate" in r.getMessage()]
    with pytest.raises(UserError, match="does not exist"):
        load_pipeline(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        load_pipeline(str(tmp_path / "empty"))


# -- CLI end to end -----------------------------------------------------------------------------


def test_cli_train_sample_eval_end_to_end(shapes_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", str(REPO / "configs" / "shapes-tiny.yaml"), "--out", str(run)]
    for s in tiny_overrides(shapes_data) + ["train.steps=4", "train.checkpoint_every=2"]:
        args += ["--set", s]
    assert cli(args) == 0
    out_png = tmp_path / "grid.png"
    assert cli(["sample", "--model", str(run), "--prompt", "a red circle", "--num", "2", "--steps", "3",
                "--seed", "3", "--out", str(out_png)]) == 0
    first = out_png.read_bytes()
    assert cli(["sample", "--model", str(run), "--prompt", "a red circle", "--num", "2", "--steps", "3",
                "--seed", "3", "--out", str(out_png)]) == 0
    assert out_png.read_bytes() == first  # deterministic for a fixed seed
    report = tmp_path / "report.json"
    assert cli(["eval", "shapes", "--model", str(run), "--num", "2", "--steps", "2", "--out", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert set(rep["accuracy"]) == {"color", "shape", "count", "spatial", "complex"}
    assert all(0.0 <= v <= 1.0 for v in rep["accuracy"].values())
    assert abs(rep["chance"]["color"] - 1 / 6) < 0.05


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gentron", "train", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gentron", "train", str(REPO / "configs" / "shapes-tiny.yaml"),
                        "--set", "train.bogus=1"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown config key" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gentron", "sample", "--model", str(tmp_path), "--prompt", "x",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_info_prints_zoo(capsys):
    assert cli(["info"]) == 0
    out = capsys.readouterr().out
    assert "GenTron-XL/2" in out and "GenTron-G/2" in out
    assert cli(["info", "GenTron-XL/2", "--cond", "cross-attn", "--text-dim", "4096"]) == 0
    assert "834,542,240" in capsys.readouterr().out


# -- re-parameterised init from DiT (PixArt-α Sec. 2.3) -----------------------------------------


def _tiny_dit_file(path, hidden=64, seed=3):
    """An official-layout DiT checkpoint shaped like the tiny training config (T/4, 16 px, pixels)."""
    from gentron.models.convert import export_dit_state_dict
    from gentron.models.transformer import GenTronTransformer, zoo_config

    torch.manual_seed(seed)
    dit = GenTronTransformer(**zoo_config("GenTron-T/4", conditioning="class", text_dims=[], sample_size=16,
                                          in_channels=3, learn_sigma=False, hidden_size=hidden, num_classes=5))
    for p in dit.parameters():  # random everywhere, zero-inits included, so every copy is visible
        torch.nn.init.normal_(p, std=0.05)
    torch.save(export_dit_state_dict(dit), path)
    return dit


@pytest.mark.parametrize("mode", ["adaln-single", "cross-attn"])
def test_train_init_from_dit_equals_reparameterisation(shapes_data, tmp_path, mode):
    from gentron.models.convert import reparam_init_from_dit

    dit = _tiny_dit_file(tmp_path / "dit.pt")
    trainer = make_trainer(shapes_data, tmp_path / "run", [f"model.conditioning={mode}",
                                                            f"model.init_from_dit={tmp_path / 'dit.pt'}"])
    cfg = trainer.model.config
    extra = {} if mode == "adaln-single" else {"pooled_dims": cfg.pooled_dims}
    wants = []
    for seed in (0, 1):  # new layers draw random inits; the keys equal under two seeds are the DiT-determined ones
        torch.manual_seed(seed)
        wants.append(reparam_init_from_dit(tmp_path / "dit.pt", text_dims=cfg.text_dims, conditioning=mode,
                                           num_heads=2, **extra).state_dict())
    got = trainer.model.state_dict()
    assert set(got) == set(wants[0])
    determined = [k for k in wants[0] if torch.equal(wants[0][k], wants[1][k])]
    assert len(determined) > len(got) // 2
    for k in determined:
        assert torch.equal(got[k], wants[0][k]), k
    assert torch.equal(got["blocks.1.attn.qkv.weight"], dit.state_dict()["blocks.1.attn.qkv.weight"])
    # and it trains from there
    trainer.cfg.train.steps = 2
    trainer.fit()


def test_train_init_from_dit_rejects_a_mismatched_checkpoint(shapes_data, tmp_path, capsys):
    _tiny_dit_file(tmp_path / "dit.pt", hidden=32)
    argv = ["train", str(REPO / "configs" / "shapes-tiny.yaml"), "--out", str(tmp_path / "run"),
            "--init-from-dit", str(tmp_path / "dit.pt")]
    for s in tiny_overrides(shapes_data) + ["model.conditioning=adaln-single", "train.steps=1"]:
        argv += ["--set", s]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "init-from-dit" in err and "hidden_size 32 (checkpoint) vs 64 (config)" in err


def test_resume_adds_zero_initialised_token_conv_and_continues_the_rest_exactly(shapes_data, tmp_path):
    """The demo's curriculum: stage 1 trains without ``mlp_token_conv``, stage 2 resumes its checkpoint with it.
    The new layers start at zero (the model's output is the checkpoint's), every saved weight, EMA shadow and
    AdamW moment loads exactly, the new layers then train (at any gain: they start at zero); any other mismatch,
    and a checkpoint with the conv resumed under another gain, is still an error."""
    first = make_trainer(shapes_data, tmp_path / "a", ["train.steps=3", "train.checkpoint_every=3"])
    first.fit()
    conv = ["model.overrides.mlp_token_conv=true", "model.overrides.mlp_token_conv_gain=3"]  # the demo's gain
    grown = make_trainer(shapes_data, tmp_path / "a", ["train.steps=5"] + conv, resume="auto")
    assert grown.step == 3
    old, new = dict(first.model.named_parameters()), dict(grown.model.named_parameters())
    added = grown.model.growth_parameter_names()
    assert set(new) - set(old) == set(added) and len(added) == 2 * len(grown.model.blocks)
    assert all(torch.equal(old[n], new[n]) for n in old) and all(torch.count_nonzero(new[n]) == 0 for n in added)
    old_state, new_state = first.optimizer.state, grown.optimizer.state
    for n in old:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(old_state[old[n]][key], new_state[new[n]][key]), n
    assert all(len(new_state[new[n]]) == 0 for n in added)
    shadows = dict(zip(grown.ema.names, grown.ema.shadow))
    assert all(torch.equal(a, shadows[n]) for n, a in zip(first.ema.names, first.ema.shadow))
    grown.fit()
    assert all(torch.count_nonzero(p) > 0 for n, p in grown.model.named_parameters() if n in added)
    assert len(losses(tmp_path / "a")) > 1

    with pytest.raises(ValueError, match="does not match the model"):  # other architecture changes stay errors
        make_trainer(shapes_data, tmp_path / "a", ["train.steps=7", "model.overrides.qk_norm=all"] + conv,
                     resume="auto")
    # the conv's gain shows in no weight: a checkpoint that has the conv resumes only under its own gain
    with pytest.raises(ValueError, match="mlp_token_conv_gain 3, this run has 1: resume it with --set model"):
        make_trainer(shapes_data, tmp_path / "a", ["train.steps=7", "model.overrides.mlp_token_conv=true"],
                     resume="auto")


def test_progressive_resolution_continues_from_a_lower_resolution_run(shapes_data, tmp_path):
    from gentron.models.transformer import GenTronTransformer

    low = make_trainer(shapes_data, tmp_path / "low", ["train.steps=2"])
    low.fit()
    high = make_trainer(shapes_data, tmp_path / "high", ["model.resolution=32", f"video.init_from={tmp_path / 'low'}"])
    assert high.model.config.sample_size == 32 and low.model.config.sample_size == 16
    trained = GenTronTransformer.from_pretrained(tmp_path / "low" / "pipeline" / "transformer").state_dict()
    own = high.model.state_dict()
    assert set(trained) == set(own) and all(torch.equal(own[k], v) for k, v in trained.items())
    high.cfg.train.steps = 1
    assert high.fit()["steps"] == 1


def test_training_flops_match_dit_paper_and_count_temporal_attention():
    """MFU's numerator: DiT-XL/2 at 256 px (32² latents) is 118.6 GFLOPs in DiT Table 4 (multiply-adds),
    i.e. 237.2 G forward FLOPs; a video clip costs T frames plus its temporal attention."""
    from gentron.models.transformer import GenTronTransformer, zoo_config
    from gentron.train.trainer import training_flops_per_sample

    with torch.device("meta"):
        dit = GenTronTransformer(**zoo_config("GenTron-XL/2", conditioning="class", text_dims=[], sample_size=32,
                                              in_channels=4))
    assert training_flops_per_sample(dit) / 3 / 2 == pytest.approx(118.6e9, rel=0.01)
    kw = dict(conditioning="cross-attn", text_dims=[64], sample_size=16, in_channels=4)
    with torch.device("meta"):
        image = GenTronTransformer(**zoo_config("GenTron-T/4", **kw))
        video = GenTronTransformer(**zoo_config("GenTron-T/4", temporal_layers=True, **kw))
    one = training_flops_per_sample(image, [12])
    assert training_flops_per_sample(image, [24]) > one  # longer text, more cross-attention work
    clip = training_flops_per_sample(video, [12], num_frames=8)
    assert 8 * one < clip < 8 * one * 1.5


def test_cpu_peak_for_mfu_counts_native_bf16(monkeypatch):
    """The rough CPU peak doubles under bf16 autocast only where the CPU has bf16 dot products; else the demo's
    bf16 runs reported an MFU above 100 %."""
    import gentron.train.trainer as T

    cpu = torch.device("cpu")
    fp32 = T.peak_flops_per_device(cpu)
    assert fp32 == torch.get_num_threads() * 2.5e9 * 32
    for native, factor in ((True, 2), (False, 1)):
        monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
        assert T.peak_flops_per_device(cpu, autocast_dtype=torch.bfloat16) == factor * fp32
        assert T.peak_flops_per_device(cpu, autocast_dtype=None) == fp32
    assert T.peak_flops_per_device(cpu, peak_tflops=3.0, autocast_dtype=torch.bfloat16) == 3e12
