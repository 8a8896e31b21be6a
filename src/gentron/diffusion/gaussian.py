"""Discrete-time Gaussian diffusion: noise schedule, forward process and DiT's / PixArt-α's training loss.

Notation (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "IDDPM"):

* ``β_t`` the noise schedule, ``α_t = 1 − β_t``, ``ᾱ_t = ∏_{s≤t} α_s`` (``t = 0 … T−1``, 0-based as in
  diffusers), ``ᾱ_{−1} = 1``.
* forward process ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` (DDPM Eq. 4),
* posterior ``q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)`` (DDPM Eq. 6-7),
* ``SNR(t) = ᾱ_t / (1 − ᾱ_t)``.

Sampling is *not* here: it goes through diffusers schedulers (`gentron.diffusion.schedulers`), which is why
the schedule must equal diffusers' bit for bit (up to float32 rounding of the cumulative product).

The network predicts one of three targets (``DiffusionConfig.prediction``):

* ``epsilon`` the noise ε (DDPM),
* ``v_prediction`` ``v = √ᾱ ε − √(1−ᾱ) x_0`` (Salimans & Ho 2022, "Progressive Distillation", Sec. 4),
* ``sample`` ``x_0`` itself,

and, with ``learn_sigma``, an extra ``C`` channels that interpolate the log-variance between ``β̃_t`` and
``β_t`` (IDDPM Eq. 15, "learned_range"), trained by the hybrid loss (IDDPM Sec. 3.1, DiT Sec. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

PREDICTIONS = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "cosine")
LOSS_WEIGHTINGS = ("none", "min_snr")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

# DDPM / DiT linear schedule endpoints for T = 1000 steps (DDPM Sec. 4). IDDPM scales both by 1000 / T so
# that any T gives the same continuous-time curve; at T = 1000 this is exactly diffusers' default.
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
# IDDPM Sec. 3.1: L_hybrid = L_simple + λ L_vlb with λ = 0.001.
HYBRID_LAMBDA = 1e-3
# Cap on β for the cosine schedule (IDDPM Sec. 3.2, "clip β_t to be no larger than 0.999").
COSINE_MAX_BETA = 0.999
COSINE_S = 0.008  # IDDPM Eq. 17 offset


@dataclass
class DiffusionConfig:
    """What defines the diffusion process and the training objective (and, through it, the samplers).

    Attributes:
        num_timesteps: T, the number of discrete training steps (DiT / PixArt: 1000).
        beta_schedule: "linear" (DDPM / DiT, 1e-4 → 0.02 at T = 1000) or "cosine" (IDDPM Eq. 17,
            diffusers' "squaredcos_cap_v2").
        prediction: network target: "epsilon", "v_prediction" or "sample" (x0).
        learn_sigma: the network also outputs the IDDPM variance interpolation (2C output channels) and is
            trained with the hybrid loss. Well defined for every prediction type because the model mean
            is the posterior mean of the *predicted* x0 (IDDPM Eq. 11 rewritten through x0).
        loss_weighting: "none" (L_simple) or "min_snr" (Min-SNR-γ, Hang et al. 2023), applied to the
            MSE term only.
        snr_gamma: γ of Min-SNR-γ (paper: 5).
        timestep_sampling: "uniform" (DiT) or "logit_normal" (t/T ~ sigmoid(N(m, s)), Esser et al. 2024,
            SD3 Sec. 3.1), which spends more steps at middle noise levels.
        logit_mean, logit_std: m and s of the logit-normal sampler.
        multiscale_loss: pooling factors f; each adds the MSE of the residual average-pooled over f×f pixel
            blocks (Hoogeboom et al. 2023, "simple diffusion", Sec. 3.3). Why: the optimum is unchanged (the
            conditional mean minimises every term), but low frequencies — the layout — get a gradient that is
            not drowned by where exactly an object sits.
        gradient_loss: weight λ of an added MSE on the residual's horizontal and vertical pixel differences.
            The mirror image of ``multiscale_loss``: the optimum is again unchanged (differences are linear
            in the prediction), but edges — an object's silhouette — get a gradient that is not drowned by
            its colour and place.
        temporal_loss: weight λ of an added MSE on the part of a video's residual that changes across frames
            (the residual minus its mean over the clip). Images, and pseudo-videos of a repeated image (see
            ``training_losses``' ``moving``), are unaffected. The optimum is again unchanged (the projection is
            linear in the prediction), but motion errors (an object in the wrong place in some frames) get a
            gradient that is not drowned by the errors every frame shares (colour, shape).
        rescale_betas_zero_snr: rescale the schedule to zero terminal SNR (Lin et al. 2024, Alg. 1), so
            that the last training step sees pure noise as sampling does. Needs v- or x0-prediction:
            ε-prediction is ill-posed at SNR 0 (x0 = (x_t − ε)/0).
    """

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction: str = "epsilon"
    learn_sigma: bool = True
    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    multiscale_loss: tuple[int, ...] = ()
    gradient_loss: float = 0.0
    temporal_loss: float = 0.0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        def check(value: str, valid: tuple[str, ...], name: str) -> None:
            if value not in valid:
                raise ValueError(f"DiffusionConfig.{name} must be one of {', '.join(valid)}; got {value!r}")

        check(self.beta_schedule, BETA_SCHEDULES, "beta_schedule")
        check(self.prediction, PREDICTIONS, "prediction")
        check(self.loss_weighting, LOSS_WEIGHTINGS, "loss_weighting")
        check(self.timestep_sampling, TIMESTEP_SAMPLINGS, "timestep_sampling")
        if int(self.num_timesteps) < 2:
            raise ValueError(f"DiffusionConfig.num_timesteps must be ≥ 2, got {self.num_timesteps}")
        if self.snr_gamma <= 0:
            raise ValueError(f"DiffusionConfig.snr_gamma must be > 0, got {self.snr_gamma}")
        if self.logit_std <= 0:
            raise ValueError(f"DiffusionConfig.logit_std must be > 0, got {self.logit_std}")
        self.multiscale_loss = tuple(int(f) for f in self.multiscale_loss)
        if any(f < 2 for f in self.multiscale_loss):
            raise ValueError(f"DiffusionConfig.multiscale_loss factors must be ≥ 2, got {self.multiscale_loss}")
        if self.gradient_loss < 0:
            raise ValueError(f"DiffusionConfig.gradient_loss must be ≥ 0, got {self.gradient_loss}")
        if self.temporal_loss < 0:
            raise ValueError(f"DiffusionConfig.temporal_loss must be ≥ 0, got {self.temporal_loss}")
        if self.rescale_betas_zero_snr and self.prediction == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr=True needs prediction='v_prediction' or 'sample': at zero terminal SNR "
                "an ε-prediction carries no information about x0 (Lin et al. 2024, Sec. 3.2)"
            )


# ------------------------------------------------------------------------------------------------
# Schedules (float64, as IDDPM / diffusers compute them before casting)
# ------------------------------------------------------------------------------------------------


def linear_betas(num_timesteps: int) -> Tensor:
    """DDPM's linear schedule, endpoints scaled by 1000/T as in IDDPM so any T spans the same curve."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, max_beta: float = COSINE_MAX_BETA) -> Tensor:
    """IDDPM Eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = 1 − ᾱ(t+1)/ᾱ(t), capped at 0.999."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Alg. 1: shift and scale √ᾱ so that √ᾱ_{T−1} = 0 while √ᾱ_0 is unchanged."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def make_betas(config: DiffusionConfig) -> Tensor:
    """The float64 β schedule a config describes."""
    n = int(config.num_timesteps)
    betas = linear_betas(n) if config.beta_schedule == "linear" else cosine_betas(n)
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


# ------------------------------------------------------------------------------------------------
# Gaussian likelihood helpers
# ------------------------------------------------------------------------------------------------


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every non-batch dimension: images (B, C, H, W) and videos (B, C, T, H, W) alike."""
    return x.flatten(1).mean(dim=1)


def pool_pixels(x: Tensor, factor: int) -> Tensor:
    """Average over non-overlapping factor×factor blocks of the last two (spatial) dims; images or videos."""
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"multiscale_loss factor {factor} does not divide the {h}x{w} model input")
    return x.reshape(*x.shape[:-2], h // factor, factor, w // factor, factor).mean(dim=(-3, -1))


def pixel_differences(x: Tensor) -> tuple[Tensor, Tensor]:
    """Differences between neighbouring pixels along the last two (spatial) dims: (vertical, horizontal)."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats.

    Written as ½ (expm1(−d) + d + Δμ² / σ2²) with d = logvar2 − logvar1: expm1(−d) + d ≥ 0 is then accurate
    where the variances nearly agree (β̃_t ≈ β_t at large t), and the clamp removes the last rounding error.
    """
    d = logvar2 - logvar1
    kl = 0.5 * (torch.expm1(-d) + d + (mean1 - mean2) ** 2 * torch.exp(-logvar2))
    return kl.clamp(min=0.0)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) for data in [-1, 1] quantised to 256 levels under N(mean, e^{2 log_scale}) (DDPM Eq. 13).

    Each value owns the bin [x − 1/255, x + 1/255]; the two edge bins extend to ±∞ so the decoder is a
    proper distribution over the 256 levels. Elementwise, in nats.
    """
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1.0 / 255.0)
    lower = inv_std * (x - mean - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log Φ(upper): the bin below x = -1 extends to -∞
    log_sf_lower = torch.special.log_ndtr(-lower)  # log (1 − Φ(lower)): the bin above x = 1 extends to +∞
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, bin_mass.log()))


# ------------------------------------------------------------------------------------------------
# The diffusion process
# ------------------------------------------------------------------------------------------------


class GaussianDiffusion:
    """Schedule, forward process, prediction-type conversions and the DiT / IDDPM training loss.

    Coefficients are computed in float64; the public tables (``betas``, ``alphas_cumprod``, …) are float32
    CPU tensors, as diffusers stores them. `_extract` reads the float64 masters, cast to float32 (or kept
    float64 for float64 inputs, which makes the conversions exact round trips), moves them to the tensors'
    device once per (device, dtype) and reshapes them to broadcast over (B, C, ...) of any rank.
    """

    # float32 (T,) tables, indexed by the 0-based timestep
    betas: Tensor
    log_betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    snr_table: Tensor

    def __init__(self, config: Optional[DiffusionConfig] = None) -> None:
        self.config = config or DiffusionConfig()
        cfg = self.config
        self.num_timesteps = int(cfg.num_timesteps)
        self.prediction = cfg.prediction
        self.learn_sigma = cfg.learn_sigma

        betas = make_betas(cfg)
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        # DDPM Eq. 7: posterior variance β̃_t and mean coefficients of q(x_{t-1} | x_t, x_0).
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        # β̃_0 = 0: IDDPM clips the log at t = 0 to log β̃_1 so the learned range stays finite.
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        coef_x0 = betas * ab_prev.sqrt() / (1.0 - ab)
        coef_xt = (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab)

        tables64 = {
            "betas": betas,
            "log_betas": betas.log(),
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": ab.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ab).sqrt(),
            "sqrt_recip_alphas_cumprod": ab.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ab - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": coef_x0,
            "posterior_mean_coef2": coef_xt,
            "snr_table": ab / (1.0 - ab),
        }
        self._tables64 = tables64
        for name, table in tables64.items():
            setattr(self, name, table.to(torch.float32))
        self._on_device: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- tables --------------------------------------------------------------------------------
    def _extract(self, name: str, t: Tensor, ndim: int, like: Optional[Tensor] = None) -> Tensor:
        """``table[t]`` of shape (B, 1, …, 1) with ``ndim`` dims; float64 if ``like`` is, else float32."""
        dtype = torch.float64 if like is not None and like.dtype == torch.float64 else torch.float32
        key = (name, t.device, dtype)
        table = self._on_device.get(key)
        if table is None:
            table = self._on_device[key] = self._tables64[name].to(device=t.device, dtype=dtype)
        return table[t.long()].reshape(-1, *([1] * (ndim - 1)))

    # -- timesteps and noise -------------------------------------------------------------------
    def sample_timesteps(
        self, batch: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
    ) -> Tensor:
        """(batch,) int64 training timesteps, uniform (DiT) or logit-normal (SD3).

        Drawn on the generator's device (so a seeded CPU generator reproduces across devices), then moved.
        """
        draw_on = generator.device if generator is not None else (device or torch.device("cpu"))
        if self.config.timestep_sampling == "uniform":
            t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=draw_on)
        else:
            u = torch.randn((batch,), generator=generator, device=draw_on, dtype=torch.float64)
            u = torch.sigmoid(self.config.logit_mean + self.config.logit_std * u)
            t = (u * self.num_timesteps).long().clamp_(0, self.num_timesteps - 1)
        return t.to(device) if device is not None else t

    def training_step_inputs(
        self, x0: Tensor, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t, t, noise) for one training step on ``x0``: everything random comes from ``generator``."""
        t = self.sample_timesteps(x0.shape[0], generator, device=x0.device)
        draw_on = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=draw_on, dtype=torch.float32)
        noise = noise.to(device=x0.device, dtype=x0.dtype)
        return self.q_sample(x0, t, noise), t, noise

    # -- forward process -----------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (DDPM Eq. 4)."""
        n = x0.ndim
        out = self._extract("sqrt_alphas_cumprod", t, n, x0) * x0 + self._extract("sqrt_one_minus_alphas_cumprod", t, n, x0) * noise
        return out.to(x0.dtype)

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0) (DDPM Eq. 6-7)."""
        n = x_t.ndim
        mean = self._extract("posterior_mean_coef1", t, n, x_t) * x0 + self._extract("posterior_mean_coef2", t, n, x_t) * x_t
        var = self._extract("posterior_variance", t, n, x_t).expand_as(x_t)
        log_var = self._extract("posterior_log_variance_clipped", t, n, x_t).expand_as(x_t)
        return mean, var, log_var

    def snr(self, t: Tensor) -> Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), shape (B,)."""
        return self._extract("snr_table", t, 1)

    # -- prediction-type conversions -----------------------------------------------------------
    def prediction_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for (x0, ε, t) under the configured prediction type."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        n = x0.ndim  # v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022, Sec. 4)
        return self._extract("sqrt_alphas_cumprod", t, n, x0) * noise - self._extract("sqrt_one_minus_alphas_cumprod", t, n, x0) * x0

    def predict_x0(self, model_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x0 implied by a prediction (the first C channels of the model output) at x_t."""
        n = x_t.ndim
        if self.prediction == "epsilon":  # x0 = (x_t − √(1−ᾱ) ε) / √ᾱ
            return (self._extract("sqrt_recip_alphas_cumprod", t, n, x_t) * x_t
                    - self._extract("sqrt_recipm1_alphas_cumprod", t, n, x_t) * model_pred)
        if self.prediction == "sample":
            return model_pred
        # x0 = √ᾱ x_t − √(1−ᾱ) v  (substitute x_t = √ᾱ x0 + √(1−ᾱ) ε into the definition of v)
        return self._extract("sqrt_alphas_cumprod", t, n, x_t) * x_t - self._extract("sqrt_one_minus_alphas_cumprod", t, n, x_t) * model_pred

    def predict_eps(self, model_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """ε implied by a prediction at x_t (what classifier-free guidance and DDIM work with)."""
        n = x_t.ndim
        if self.prediction == "epsilon":
            return model_pred
        if self.prediction == "sample":  # ε = (x_t − √ᾱ x0) / √(1−ᾱ)
            return ((x_t - self._extract("sqrt_alphas_cumprod", t, n, x_t) * model_pred)
                    / self._extract("sqrt_one_minus_alphas_cumprod", t, n, x_t))
        # ε = √(1−ᾱ) x_t + √ᾱ v
        return self._extract("sqrt_one_minus_alphas_cumprod", t, n, x_t) * x_t + self._extract("sqrt_alphas_cumprod", t, n, x_t) * model_pred

    def split_output(self, model_output: Tensor, channels: int) -> tuple[Tensor, Optional[Tensor]]:
        """(prediction, variance values or None) from the raw network output of a ``channels``-channel input."""
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape[1] != expected:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; expected {expected} "
                f"({'2 × ' if self.learn_sigma else ''}{channels} input channels, learn_sigma={self.learn_sigma})"
            )
        if not self.learn_sigma:
            return model_output, None
        pred, var_values = model_output.split(channels, dim=1)
        return pred, var_values

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The reverse step p(x_{t−1} | x_t) the model defines: mean, variance, log-variance and x0.

        The mean is the posterior mean at the predicted x0 (equal to DDPM Eq. 11 for ε-prediction).
        The log-variance is IDDPM Eq. 15 with v ∈ [-1, 1] mapped to [0, 1] ("learned_range"), or the
        posterior variance β̃_t when σ is not learned (what the DDPM sampler's "fixed_small" uses).
        """
        pred, var_values = self.split_output(model_output, x_t.shape[1])
        n = x_t.ndim
        min_log = self._extract("posterior_log_variance_clipped", t, n, x_t)
        if var_values is None:
            log_var = min_log.expand_as(x_t)
        else:
            max_log = self._extract("log_betas", t, n, x_t)
            frac = (var_values + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log  # IDDPM Eq. 15
        x0_pred = self.predict_x0(pred, x_t, t)
        mean, _, _ = self.q_posterior(x0_pred, x_t, t)
        return {"mean": mean, "variance": log_var.exp(), "log_variance": log_var, "pred_x0": x0_pred}

    # -- losses --------------------------------------------------------------------------------
    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample weight of the MSE term, shape (B,).

        Min-SNR-γ (Hang et al. 2023, Eq. 8-9) weights the x0-space loss by min(SNR, γ). The same weighting
        expressed on other targets: ‖ε − ε̂‖² = SNR ‖x0 − x̂0‖² gives min(SNR, γ)/SNR for ε, and
        ‖v − v̂‖² = (SNR + 1) ‖x0 − x̂0‖² gives min(SNR, γ)/(SNR + 1) for v.
        """
        if self.config.loss_weighting == "none":
            return torch.ones(t.shape[0], device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.config.snr_gamma)
        if self.prediction == "sample":
            return clipped
        if self.prediction == "v_prediction":
            return clipped / (snr + 1.0)
        # ε: the limit of min(SNR, γ)/SNR at SNR → 0 is 1 (only reachable with a zero-SNR schedule).
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))

    def vlb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_t of the variational bound in bits/dim, per sample (IDDPM Eq. 4-6).

        t > 0: KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)); t = 0: the discretized Gaussian decoder NLL
        −log p_θ(x0 | x_1) for data in [-1, 1] (DDPM Eq. 13; applied to latents as DiT does).
        """
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor,
                        moving: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Per-sample training losses from the network's raw output.

        ``moving`` (B,) bool marks the samples of a video batch that are real clips; the others (motion-free
        pseudo-videos, GenTron's joint training) hold no motion, so ``temporal_loss`` leaves them out rather
        than upweighting their per-frame noise. None: every video sample is a clip.

        Returns ``loss`` (what to ``.mean()`` and backprop), ``mse`` (unweighted), ``weight`` (the MSE
        weight, ones unless Min-SNR) and, with ``learn_sigma``, ``vb`` (the term added to the loss) and
        ``vlb`` (L_t in bits/dim, unscaled).

        Hybrid loss (IDDPM Sec. 3.1, DiT Sec. 3):

            loss = w_t · ‖target − pred‖²  +  λ T · L_t[stop-grad(μ_θ), Σ_θ],   λ = 1/1000

        L_vlb = Σ_t L_t, and with t ~ U{0…T−1} the single-sample estimate of L_vlb is T · L_t, so λ L_vlb
        is estimated by (T/1000) · L_t: exactly IDDPM's ``vb *= num_timesteps / 1000`` and, at DiT's
        T = 1000, exactly DiT's unscaled ``mse + vb``. The predicted mean is detached inside L_t so the
        bound trains only Σ_θ, while L_simple trains the mean (IDDPM Sec. 3.1). (With logit-normal t the
        estimate is no longer unbiased; both terms are then reweighted by the sampling density alike.)
        """
        if not (x0.shape == x_t.shape == noise.shape):
            raise ValueError(f"x0, x_t and noise must have one shape; got {tuple(x0.shape)}, {tuple(x_t.shape)}, {tuple(noise.shape)}")
        if model_output.shape[0] != x0.shape[0] or model_output.shape[2:] != x0.shape[2:]:
            raise ValueError(f"model output {tuple(model_output.shape)} does not match data {tuple(x0.shape)}")
        if t.shape != (x0.shape[0],):
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        # Losses in at least float32 even when the network ran in bf16 / fp16.
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        model_output, x0, x_t, noise = (a.to(dtype) for a in (model_output, x0, x_t, noise))
        pred, var_values = self.split_output(model_output, x0.shape[1])

        target = self.prediction_target(x0, noise, t)
        residual = target - pred
        mse = mean_flat(residual**2)
        weight = self.loss_weight(t).to(dtype)
        out = {"mse": mse, "weight": weight, "loss": weight * mse}
        for f in self.config.multiscale_loss:
            out["loss"] = out["loss"] + weight * mean_flat(pool_pixels(residual, f) ** 2)
        if self.config.gradient_loss > 0:
            dy, dx = pixel_differences(residual)
            edges = 0.5 * (mean_flat(dy**2) + mean_flat(dx**2))
            out["loss"] = out["loss"] + self.config.gradient_loss * weight * edges
        if self.config.temporal_loss > 0 and residual.dim() == 5:  # (B, C, T, H, W)
            changes = mean_flat((residual - residual.mean(dim=2, keepdim=True)) ** 2)
            if moving is not None:
                changes = changes * moving.to(changes)
            out["loss"] = out["loss"] + self.config.temporal_loss * weight * changes
        if var_values is not None:
            frozen = torch.cat([pred.detach(), var_values], dim=1)  # stop-grad: vb trains only σ
            vlb = self.vlb_terms(frozen, x0, x_t, t)
            vb = vlb * (HYBRID_LAMBDA * self.num_timesteps)
            out.update(vlb=vlb, vb=vb, loss=out["loss"] + vb)
        return out
