"""Gaussian diffusion objective, diffusers scheduler plumbing and classifier-free guidance."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from gentron.diffusion import (
    PREDICTIONS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    DiffusionConfig,
    GaussianDiffusion,
    cfg_combine,
    diffusion_config_from_scheduler,
    guided_model_output,
    make_scheduler,
    scheduler_config_dict,
    scheduler_step,
    split_model_output,
)


pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def data(shape=(4, 3, 8, 8), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=dtype) * 2 - 1, torch.randn(shape, generator=g, dtype=dtype)


def ts(*values):
    return torch.tensor(values, dtype=torch.long)


# ------------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_alphas_cumprod_match_diffusers(ours, theirs):
    diff = GaussianDiffusion(DiffusionConfig(beta_schedule=ours))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule=theirs)
    assert diff.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(diff.betas, ref.betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(diff.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)


def test_zero_snr_and_other_T_match_the_schedulers_we_build():
    cfg = DiffusionConfig(prediction="v_prediction", rescale_betas_zero_snr=True)
    diff = GaussianDiffusion(cfg)
    assert diff.alphas_cumprod[-1] == 0
    torch.testing.assert_close(diff.alphas_cumprod, DDPMScheduler(rescale_betas_zero_snr=True).alphas_cumprod,
                               atol=1e-6, rtol=0)
    # IDDPM scales the linear endpoints by 1000/T; make_scheduler passes the scaled endpoints on.
    cfg = DiffusionConfig(num_timesteps=250)
    sched = make_scheduler("ddpm", cfg)
    torch.testing.assert_close(GaussianDiffusion(cfg).alphas_cumprod, sched.alphas_cumprod, atol=1e-6, rtol=0)
    assert GaussianDiffusion(cfg).alphas_cumprod[-1] < 1e-4


def test_config_validation():
    with pytest.raises(ValueError, match="prediction"):
        DiffusionConfig(prediction="x0")
    with pytest.raises(ValueError, match="beta_schedule"):
        DiffusionConfig(beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match="v_prediction"):
        DiffusionConfig(prediction="epsilon", rescale_betas_zero_snr=True)


# ------------------------------------------------------------------------------------------------
# Forward process and conversions
# ------------------------------------------------------------------------------------------------


def test_q_sample_statistics():
    diff = GaussianDiffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((2, 1, 100, 100), 0.5)
    noise = torch.randn(x0.shape, generator=g)
    t = ts(100, 700)
    x_t = diff.q_sample(x0, t, noise)
    ab = diff.alphas_cumprod[t].double()
    for i in range(2):
        assert abs(x_t[i].mean().item() - 0.5 * ab[i].sqrt().item()) < 0.03
        assert abs(x_t[i].std().item() - (1 - ab[i]).sqrt().item()) < 0.02
    torch.testing.assert_close(diff.q_sample(x0, ts(0, 0), torch.zeros_like(x0)), x0 * diff.alphas_cumprod[0].sqrt())


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_round_trip(prediction):
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    x0, noise = data(dtype=torch.float64)
    t = ts(0, 10, 500, 999)
    x_t = diff.q_sample(x0, t, noise)
    target = diff.prediction_target(x0, noise, t)
    torch.testing.assert_close(diff.predict_x0(target, x_t, t), x0, atol=1e-9, rtol=0)
    torch.testing.assert_close(diff.predict_eps(target, x_t, t), noise, atol=1e-9, rtol=0)
    # float32 (what training uses) is accurate to rounding
    x0f, noisef, x_tf = x0.float(), noise.float(), x_t.float()
    torch.testing.assert_close(diff.predict_eps(diff.prediction_target(x0f, noisef, t), x_tf, t), noisef,
                               atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------------
# Training losses
# ------------------------------------------------------------------------------------------------


def perfect_output(diff, x0, noise, t, var_values=None):
    pred = diff.prediction_target(x0, noise, t)
    if diff.learn_sigma:
        var_values = torch.zeros_like(pred) if var_values is None else var_values
        return torch.cat([pred, var_values], dim=1)
    return pred


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_perfect_prediction_has_zero_mse_and_nonnegative_vb(prediction):
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction, learn_sigma=True))
    x0, noise = data()
    t = ts(0, 1, 300, 999)  # t = 0 exercises the decoder NLL
    x_t = diff.q_sample(x0, t, noise)
    g = torch.Generator().manual_seed(3)
    var_values = torch.rand(x0.shape, generator=g) * 2 - 1
    out = diff.training_losses(perfect_output(diff, x0, noise, t, var_values), x0, x_t, t, noise)
    assert set(out) == {"loss", "mse", "weight", "vb", "vlb"}
    assert all(v.shape == (4,) for v in out.values())
    assert torch.allclose(out["mse"], torch.zeros(4), atol=1e-8)
    assert (out["vb"] >= 0).all() and (out["vlb"] >= 0).all()
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    torch.testing.assert_close(out["vb"], out["vlb"] * (1000 * 1e-3))  # λ T L_t, λ = 1/1000
    # with the true mean, the KL is minimised by the true variance: the learned-range end that is β̃_t
    true_var = torch.full_like(x0, -1.0)
    best = diff.training_losses(perfect_output(diff, x0, noise, t, true_var), x0, x_t, t, noise)
    assert torch.allclose(best["vb"][1:], torch.zeros(3), atol=1e-6)


def test_vb_is_a_proper_bound_for_random_outputs():
    diff = GaussianDiffusion(DiffusionConfig(learn_sigma=True))
    x0, noise = data(seed=1)
    t = ts(0, 5, 400, 999)
    x_t = diff.q_sample(x0, t, noise)
    out = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(2))
    losses = diff.training_losses(out, x0, x_t, t, noise)
    assert (losses["vb"] > 0).all() and torch.isfinite(losses["loss"]).all()


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_vb_gradient_reaches_only_the_variance_channels(prediction):
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction, learn_sigma=True))
    x0, noise = data()
    t = ts(0, 20, 300, 900)
    x_t = diff.q_sample(x0, t, noise)
    out = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    losses = diff.training_losses(out, x0, x_t, t, noise)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out)
    assert torch.count_nonzero(grad_vb[:, :3]) == 0
    assert torch.count_nonzero(grad_vb[:, 3:]) > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert torch.count_nonzero(grad_mse[:, 3:]) == 0


def test_learn_sigma_shape_checks_and_video():
    x0, noise = data()
    t = ts(1, 2, 3, 4)
    fixed = GaussianDiffusion(DiffusionConfig(learn_sigma=False))
    learned = GaussianDiffusion(DiffusionConfig(learn_sigma=True))
    x_t = fixed.q_sample(x0, t, noise)
    assert set(fixed.training_losses(noise.clone(), x0, x_t, t, noise)) == {"loss", "mse", "weight"}
    with pytest.raises(ValueError, match="channels"):
        fixed.training_losses(torch.zeros(4, 6, 8, 8), x0, x_t, t, noise)
    with pytest.raises(ValueError, match="channels"):
        learned.training_losses(torch.zeros(4, 3, 8, 8), x0, x_t, t, noise)
    with pytest.raises(ValueError, match="t must have shape"):
        learned.training_losses(torch.zeros(4, 6, 8, 8), x0, x_t, t[:2], noise)

    # video (B, C, T, H, W): losses are per sample, means over channels, frames and pixels
    video, vnoise = data((2, 4, 3, 4, 4))
    vt = ts(0, 500)
    vx_t = learned.q_sample(video, vt, vnoise)
    out = torch.randn(2, 8, 3, 4, 4, requires_grad=True)
    losses = learned.training_losses(out, video, vx_t, vt, vnoise)
    assert losses["loss"].shape == (2,)
    losses["loss"].mean().backward()
    assert out.grad.shape == out.shape
    expected = ((out[:, :4] - vnoise) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(losses["mse"], expected.detach())


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weighting_equals_min_snr_gamma_in_x0_space(prediction):
    """Hang et al. 2023: every target's weighted MSE equals min(SNR, γ) ‖x0 − x̂0‖²."""
    diff = GaussianDiffusion(DiffusionConfig(prediction=prediction, learn_sigma=False, loss_weighting="min_snr"))
    x0, noise = data(dtype=torch.float64)
    t = ts(0, 50, 300, 900)
    x_t = diff.q_sample(x0, t, noise)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # the ε consistent with (x_t, x̂0), via the x0-parameterisation's converter
    eps_hat = GaussianDiffusion(DiffusionConfig(prediction="sample")).predict_eps(x0_hat, x_t, t)
    pred = diff.prediction_target(x0_hat, eps_hat, t)
    torch.testing.assert_close(diff.predict_x0(pred, x_t, t), x0_hat)
    losses = diff.training_losses(pred, x0, x_t, t, noise)
    snr = diff.alphas_cumprod[t].double() / (1 - diff.alphas_cumprod[t].double())
    expected = snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["loss"], expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("frames", [None, 2])
def test_multiscale_loss_adds_pooled_residuals_only(frames):
    """simple diffusion's multiscale loss: a residual that is constant over each 4x4 block counts once more
    per factor it survives; a one-pixel checkerboard (pure high frequency) pools to zero and adds nothing."""
    shape = (2, 3, 8, 8) if frames is None else (2, 3, frames, 8, 8)
    x0, noise = data(shape)
    t = torch.tensor([10, 900])
    plain = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False))
    multi = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False, multiscale_loss=(2, 4)))
    x_t = plain.q_sample(x0, t, noise)
    blocky = torch.randn(*shape[:-2], 2, 2).repeat_interleave(4, -2).repeat_interleave(4, -1)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    for residual, extra in ((blocky, 2), (checker.expand(shape), 0)):
        ref = plain.training_losses(x0 + residual, x0, x_t, t, noise)
        out = multi.training_losses(x0 + residual, x0, x_t, t, noise)
        torch.testing.assert_close(out["mse"], ref["mse"])
        torch.testing.assert_close(out["loss"], (1 + extra) * ref["loss"])
    with pytest.raises(ValueError, match="does not divide"):
        GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False, multiscale_loss=(3,))).training_losses(
            x0, x0, x_t, t, noise)
    with pytest.raises(ValueError, match="multiscale_loss"):
        DiffusionConfig(multiscale_loss=(1,))


def test_gradient_loss_adds_the_residuals_pixel_differences_only():
    """The edge term: a residual constant over the image has no differences and adds nothing; a one-pixel
    checkerboard of ±1 has every neighbour difference ±2, so its squared mean (4) is added λ times."""
    shape = (2, 3, 8, 8)
    x0, noise = data(shape)
    t = torch.tensor([10, 900])
    plain = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False))
    edges = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False, gradient_loss=0.5))
    x_t = plain.q_sample(x0, t, noise)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    for residual, extra in ((torch.full(shape, 0.7), 0.0), (checker.expand(shape), 0.5 * 4.0)):
        ref = plain.training_losses(x0 + residual, x0, x_t, t, noise)
        out = edges.training_losses(x0 + residual, x0, x_t, t, noise)
        torch.testing.assert_close(out["mse"], ref["mse"])
        torch.testing.assert_close(out["loss"], ref["loss"] + extra * ref["weight"])
    with pytest.raises(ValueError, match="gradient_loss"):
        DiffusionConfig(gradient_loss=-1.0)


def test_temporal_loss_adds_what_changes_across_frames_only():
    """The motion term: a residual the same in every frame adds nothing; one that alternates ±1 over frames
    (mean zero over the clip) adds λ × its squared mean (1); an image's loss is unchanged."""
    plain = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False))
    motion = GaussianDiffusion(DiffusionConfig(prediction="sample", learn_sigma=False, temporal_loss=3.0))
    t = torch.tensor([10, 900])
    flicker = (torch.arange(4) % 2 * 2.0 - 1.0).view(1, 1, 4, 1, 1)
    for shape, residual, extra in (((2, 3, 4, 8, 8), torch.randn(2, 3, 1, 8, 8).expand(2, 3, 4, 8, 8), 0.0),
                                   ((2, 3, 4, 8, 8), flicker.expand(2, 3, 4, 8, 8), 3.0),
                                   ((2, 3, 8, 8), torch.randn(2, 3, 8, 8), 0.0)):
        x0, noise = data(shape)
        x_t = plain.q_sample(x0, t, noise)
        ref = plain.training_losses(x0 + residual, x0, x_t, t, noise)
        out = motion.training_losses(x0 + residual, x0, x_t, t, noise)
        torch.testing.assert_close(out["mse"], ref["mse"])
        torch.testing.assert_close(out["loss"], ref["loss"] + extra * ref["weight"])
        if len(shape) == 5:  # a motion-free pseudo-video (the second sample here) holds no motion to weigh
            moving = torch.tensor([True, False])
            out = motion.training_losses(x0 + residual, x0, x_t, t, noise, moving=moving)
            torch.testing.assert_close(out["loss"], ref["loss"] + extra * ref["weight"] * moving)
    with pytest.raises(ValueError, match="temporal_loss"):
        DiffusionConfig(temporal_loss=-1.0)


def test_sample_timesteps_and_training_step_inputs():
    for sampling in ("uniform", "logit_normal"):
        diff = GaussianDiffusion(DiffusionConfig(timestep_sampling=sampling))
        a = diff.sample_timesteps(4096, torch.Generator().manual_seed(0))
        b = diff.sample_timesteps(4096, torch.Generator().manual_seed(0))
        assert a.dtype == torch.long and torch.equal(a, b)
        assert 0 <= a.min() and a.max() <= 999
        middle = ((a > 250) & (a < 750)).float().mean()
        assert (middle > 0.62) if sampling == "logit_normal" else (abs(middle - 0.5) < 0.05)
    diff = GaussianDiffusion(DiffusionConfig())
    x0, _ = data()
    x_t, t, noise = diff.training_step_inputs(x0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x_t, diff.q_sample(x0, t, noise))
    x_t2, t2, noise2 = diff.training_step_inputs(x0, torch.Generator().manual_seed(1))
    assert torch.equal(x_t, x_t2) and torch.equal(t, t2)


# ------------------------------------------------------------------------------------------------
# Schedulers
# ------------------------------------------------------------------------------------------------


def sample_with_oracle(name, diffusion, x0, steps=20, var_values=None, seed=0, **kw):
    """Run a diffusers scheduler with a model that knows x0 and returns the exact target at every step."""
    diff = GaussianDiffusion(diffusion)
    sched = make_scheduler(name, diffusion, **kw)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x0.shape, generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        tt = t.long().expand(x0.shape[0])
        ab = diff.alphas_cumprod[tt].view(-1, 1, 1, 1)
        eps = (x_in - ab.sqrt() * x0) / (1 - ab).sqrt()  # the oracle ε for this x_t
        out = diff.prediction_target(x0, eps, tt)
        if diffusion.learn_sigma:
            out = torch.cat([out, torch.zeros_like(out) if var_values is None else var_values], dim=1)
        x = scheduler_step(sched, split_model_output(out, diffusion.learn_sigma, sched), t, x, g)
    return x


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", ["ddim", "dpm"])
def test_oracle_round_trip_recovers_x0(name, prediction):
    x0, _ = data((2, 4, 8, 8))
    cfg = DiffusionConfig(prediction=prediction, learn_sigma=True)
    x = sample_with_oracle(name, cfg, x0)
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)


def test_oracle_round_trip_other_samplers():
    x0, _ = data((2, 3, 8, 8))
    for name in ("unipc", "euler"):
        torch.testing.assert_close(sample_with_oracle(name, DiffusionConfig(prediction="v_prediction"), x0),
                                   x0, atol=1e-3, rtol=0)
    # DPM with trailing time steps, the cosine schedule and zero terminal SNR
    cosine = DiffusionConfig(beta_schedule="cosine")
    torch.testing.assert_close(sample_with_oracle("dpm", cosine, x0, spacing="trailing"), x0, atol=1e-3, rtol=0)
    zsnr = DiffusionConfig(prediction="v_prediction", rescale_betas_zero_snr=True)
    torch.testing.assert_close(sample_with_oracle("ddim", zsnr, x0), x0, atol=1e-3, rtol=0)
    # SA-Solver stops at σ(t=0) = 0.01 instead of 0, so it lands within a few σ_min of x0
    assert (sample_with_oracle("sa", DiffusionConfig(), x0) - x0).abs().max() < 0.06


def test_ddpm_learned_range_consumes_variance_channels():
    x0, _ = data((2, 3, 8, 8))
    cfg = DiffusionConfig(learn_sigma=True)
    sched = make_scheduler("ddpm", cfg)
    assert sched.config.variance_type == "learned_range"
    out = torch.zeros(2, 6, 8, 8)
    assert split_model_output(out, True, sched).shape[1] == 6
    assert split_model_output(out, True, make_scheduler("dpm", cfg)).shape[1] == 3
    assert split_model_output(out[:, :3], False, sched).shape[1] == 3
    # linspace spacing ends at t = 0, where DDPM adds no noise: the oracle's x0 comes back whatever σ is
    var = torch.rand(x0.shape, generator=torch.Generator().manual_seed(9)) * 2 - 1
    x = sample_with_oracle("ddpm", cfg, x0, var_values=var)
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)
    assert sched.config.timestep_spacing == "linspace"


def test_make_scheduler_config_mapping_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="ddim, dpm"):
        make_scheduler("heun", DiffusionConfig())
    for name in SCHEDULER_NAMES:
        for cfg in (DiffusionConfig(), DiffusionConfig(beta_schedule="cosine", prediction="sample", learn_sigma=False)):
            sched = make_scheduler(name, cfg)
            assert isinstance(sched, SCHEDULERS[name])
            assert sched.config.prediction_type == cfg.prediction
            assert diffusion_config_from_scheduler(sched) == cfg
    dpm = make_scheduler("dpm", DiffusionConfig())
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    assert dpm.config.use_lu_lambdas and dpm.config.variance_type is None
    assert make_scheduler("ddim", DiffusionConfig()).config.timestep_spacing == "trailing"
    assert not make_scheduler("ddim", DiffusionConfig()).config.clip_sample
    assert make_scheduler("ddim", DiffusionConfig(), clip_sample=True).config.clip_sample
    assert make_scheduler("dpm", DiffusionConfig(), clip_sample=True).config.thresholding
    with pytest.raises(ValueError, match="clip"):
        make_scheduler("euler", DiffusionConfig(), clip_sample=True)
    with pytest.raises(ValueError, match="logsnr"):
        make_scheduler("ddim", DiffusionConfig(), spacing="logsnr")
    assert scheduler_config_dict(DiffusionConfig(), "sa")["_class_name"] == "SASolverScheduler"
    # learn_sigma survives save_pretrained / from_pretrained (a private key diffusers ignores)
    cfg = DiffusionConfig(learn_sigma=True, prediction="v_prediction")
    make_scheduler("dpm", cfg).save_pretrained(tmp_path)
    loaded = SCHEDULERS["dpm"].from_pretrained(tmp_path)
    assert diffusion_config_from_scheduler(loaded) == cfg
    assert make_scheduler("ddpm", diffusion_config_from_scheduler(loaded)).config.variance_type == "learned_range"


def test_gaussian_data_oracle_samples_the_right_distribution():
    """For x0 ~ N(μ, s²) the exact ε is analytic; 20 DPM-Solver++ steps must push N(0, I) onto N(μ, s²)."""
    mu, s = 0.3, 0.5
    cfg = DiffusionConfig(learn_sigma=False)
    diff = GaussianDiffusion(cfg)
    sched = make_scheduler("dpm", cfg)
    sched.set_timesteps(20)
    x = torch.randn(8192, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in sched.timesteps:
        ab = diff.alphas_cumprod[t.long()].double()
        x0_hat = mu + ab.sqrt() * s**2 / (ab * s**2 + 1 - ab) * (x - ab.sqrt() * mu)  # E[x0 | x_t]
        x = sched.step((x - ab.sqrt() * x0_hat) / (1 - ab).sqrt(), t, x).prev_sample
    assert abs(x.mean().item() - mu) < 0.02
    assert abs(x.std().item() / s - 1) < 0.03


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ------------------------------------------------------------------------------------------------


def toy_model(x, t, cond):
    """Output 2C channels that depend on x, t and a (tokens, mask) conditioning, sample by sample."""
    tokens, mask = cond["tokens"], cond["mask"]
    c = (tokens * mask[..., None]).sum(1).mean(-1).view(-1, 1, 1, 1)
    pred = torch.tanh(x * (1 + c) + t.view(-1, 1, 1, 1) / 1000)
    return torch.cat([pred, torch.sin(x + c)], dim=1)


def test_cfg_combine_and_batched_guidance():
    g = torch.Generator().manual_seed(0)
    eps_c, eps_u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert torch.equal(cfg_combine(eps_c, eps_u, 1.0), eps_c)
    torch.testing.assert_close(cfg_combine(eps_c, eps_u, 4.5), eps_u + 4.5 * (eps_c - eps_u))
    torch.testing.assert_close(cfg_combine(eps_c, eps_u, 0.0), eps_u)

    x = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([10, 500])
    cond = {"tokens": torch.randn(2, 5, 7, generator=g), "mask": torch.ones(2, 5)}
    uncond = {"tokens": torch.zeros(2, 5, 7), "mask": torch.ones(2, 5)}
    out_c, out_u = toy_model(x, t, cond), toy_model(x, t, uncond)
    guided = guided_model_output(toy_model, x, t, cond, uncond, 4.0, learn_sigma=True)
    torch.testing.assert_close(guided[:, :3], cfg_combine(out_c[:, :3], out_u[:, :3], 4.0))
    torch.testing.assert_close(guided[:, 3:], out_c[:, 3:])  # the conditional variance, as in DiT
    torch.testing.assert_close(guided_model_output(toy_model, x, t, cond, uncond, 1.0, learn_sigma=True), out_c)
    no_sigma = guided_model_output(lambda x, t, c: toy_model(x, t, c)[:, :3], x, torch.tensor(10), cond, uncond,
                                   2.0, learn_sigma=False)
    ten = torch.tensor([10, 10])
    torch.testing.assert_close(no_sigma, cfg_combine(toy_model(x, ten, cond)[:, :3], toy_model(x, ten, uncond)[:, :3], 2.0))
    assert math.isfinite(guided.sum().item())
