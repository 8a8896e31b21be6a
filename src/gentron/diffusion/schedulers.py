"""diffusers schedulers configured to sample the process a `DiffusionConfig` trains.

Sampling is diffusers' code, not ours: this module only maps our config onto theirs.

Timestep spacing (``spacing`` argument; measured with an exact oracle, see below).

* ``"trailing"``: steps uniform in t, first step at t = T−1, the only step whose training inputs are
  (nearly) the pure noise sampling starts from (Lin et al. 2024, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", Table 2: trailing ≥ linspace ≫ leading at few steps). DDPM uses
  ``"linspace"`` instead, IDDPM's respacing, which visits both t = T−1 and t = 0: its final ancestral step
  then runs at t = 0 and adds no noise (with trailing spacing its last step, t ≈ T/N, would add noise whose
  learned variance was never trained to vanish there).
* ``"logsnr"``: steps uniform in λ = ½ log SNR, DPM-Solver's "logSNR" skip type (Lu et al. 2022, Sec. 3.3);
  diffusers ``use_lu_lambdas`` for DPM-Solver++, ``use_exponential_sigmas`` (uniform log σ, the same thing)
  for SA-Solver and UniPC. Only for those three samplers.
* ``"auto"`` (default): ``"logsnr"`` for dpm / sa / unipc on the linear schedule, ``"trailing"`` otherwise.
  Time-uniform steps on the linear schedule spend about a third of the budget at λ < −2 (visually pure
  noise) and end with one jump from σ ≈ 0.17 (t = 49 of 1000) to the data, which blurs detail below that
  scale. With an exact posterior-mean oracle for a 3-level mixture with 0.02-wide modes, DPM-Solver++ 2M
  lands 0.155 (10 steps) / 0.056 (20 steps) RMS off the modes with trailing steps and 0.017 / 0.018 with
  log-SNR steps; UniPC and SA-Solver alike. On the cosine schedule, already close to λ-uniform, trailing
  is as good (0.012 at 20 steps) while λ-uniform steps pile up at t ≈ T−1 (its ᾱ_{T−1} ≈ 2e-9); with zero
  terminal SNR λ_min = −∞. Both therefore get trailing. DDIM / DDPM / Euler have no λ spacing.
  Costs of "logsnr": one of the N evaluations is at t = 0 (σ = 0.01), and from ~50 steps on, two steps
  can round to the same integer t near t = 0.

Learned σ. The transformer outputs 2C channels when ``learn_sigma``. `DDPMScheduler` with
``variance_type="learned_range"`` consumes them (IDDPM Eq. 15, the same as `GaussianDiffusion`). The
other samplers are deterministic in σ and get only the first C channels (`split_model_output`); we do
*not* set their ``variance_type``, because diffusers' multistep solvers then slice ``[:, :3]``, which is
only right for 3-channel pixel models. Whether the model learns σ is recorded in the scheduler config
under the private key ``_gentron_learn_sigma`` (kept by ``save_pretrained`` / ``from_config``, ignored by
diffusers), so `diffusion_config_from_scheduler` can restore it.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from gentron.diffusion.gaussian import LINEAR_BETA_END, LINEAR_BETA_START, DiffusionConfig

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "sa": SASolverScheduler,
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
SPACINGS = ("auto", "trailing", "logsnr")
_LOGSNR_OPTION = {"dpm": "use_lu_lambdas", "sa": "use_exponential_sigmas", "unipc": "use_exponential_sigmas"}
LEARN_SIGMA_KEY = "_gentron_learn_sigma"
# Samplers whose `step` reads the variance channels when variance_type is learned.
_CONSUMES_VARIANCE = (DDPMScheduler,)


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SCHEDULER_NAMES)}")
    return key


def _schedule_kwargs(diffusion: DiffusionConfig) -> dict[str, Any]:
    """The noise-schedule part shared by every scheduler (matches `gaussian.make_betas`)."""
    n = int(diffusion.num_timesteps)
    if diffusion.beta_schedule == "linear":
        scale = 1000.0 / n  # IDDPM's T-scaling; 1 at T = 1000 (diffusers' defaults)
        schedule = {"beta_schedule": "linear", "beta_start": scale * LINEAR_BETA_START, "beta_end": scale * LINEAR_BETA_END}
    else:
        schedule = {"beta_schedule": "squaredcos_cap_v2"}
    return {"num_train_timesteps": n, **schedule, "prediction_type": diffusion.prediction}


def resolve_spacing(name: str, diffusion: DiffusionConfig, spacing: str = "auto") -> str:
    """"trailing" or "logsnr": what ``spacing`` means for sampler ``name`` (see the module docstring)."""
    key = _check_name(name)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    # λ_min is −∞ with zero terminal SNR and ≈ −10 on the cosine schedule (ᾱ_{T−1} ≈ 2e-9), where λ-uniform
    # steps pile up at t ≈ T−1 once rounded to integer timesteps.
    logsnr_ok = (key in _LOGSNR_OPTION and diffusion.beta_schedule == "linear"
                 and not diffusion.rescale_betas_zero_snr)
    if spacing == "auto":
        return "logsnr" if logsnr_ok else "trailing"
    if spacing == "logsnr" and not logsnr_ok:
        raise ValueError(
            f"spacing='logsnr' needs sampler dpm, sa or unipc on the linear schedule without zero terminal SNR; "
            f"got {key!r}, beta_schedule={diffusion.beta_schedule!r}, "
            f"rescale_betas_zero_snr={diffusion.rescale_betas_zero_snr}"
        )
    return spacing


def scheduler_config_dict(
    diffusion: DiffusionConfig, name: str = "dpm", clip_sample: bool = False, spacing: str = "auto"
) -> dict[str, Any]:
    """The diffusers config (``scheduler_config.json`` content) of sampler ``name`` for ``diffusion``.

    ``SCHEDULERS[name].from_config(d)`` builds the scheduler; `make_scheduler` does exactly that.
    ``clip_sample`` clips the predicted x0 to [-1, 1] at every step: only for pixel-space models.
    ``spacing``: "auto" | "trailing" | "logsnr" (module docstring).
    """
    key = _check_name(name)
    spacing = resolve_spacing(key, diffusion, spacing)
    cls = SCHEDULERS[key]
    cfg: dict[str, Any] = {"_class_name": cls.__name__, **_schedule_kwargs(diffusion)}
    if diffusion.rescale_betas_zero_snr:
        if key == "sa":
            raise ValueError("SASolverScheduler has no rescale_betas_zero_snr option; use ddim, dpm, euler or unipc")
        cfg["rescale_betas_zero_snr"] = True

    if key == "ddpm":
        cfg.update(
            variance_type="learned_range" if diffusion.learn_sigma else "fixed_small",
            clip_sample=clip_sample, clip_sample_range=1.0, timestep_spacing="linspace",
        )
    elif key == "ddim":
        cfg.update(clip_sample=clip_sample, clip_sample_range=1.0, set_alpha_to_one=True,
                   steps_offset=0, timestep_spacing="trailing")
    elif key == "euler":
        if clip_sample:
            raise ValueError("EulerDiscreteScheduler cannot clip x0; use ddim, ddpm, dpm, sa or unipc for clip_sample")
        cfg.update(timestep_spacing="trailing")
    else:
        # Dynamic thresholding with sample_max_value = 1 clamps its scale s to exactly 1, i.e. static clipping
        # of x0 to [-1, 1] (Imagen, Saharia et al. 2022, Sec. 2.3): the solvers' equivalent of clip_sample.
        cfg.update(thresholding=clip_sample, sample_max_value=1.0, timestep_spacing="trailing")
        if key == "dpm":  # DPM-Solver++(2M) (Lu et al. 2022b), first order on the last steps for stability
            cfg.update(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                       lower_order_final=True, final_sigmas_type="zero", variance_type=None)
        elif key == "sa":  # SA-Solver (Xue et al. 2023) with PixArt-Σ's orders, data-prediction form
            cfg.update(predictor_order=2, corrector_order=2, algorithm_type="data_prediction", variance_type=None)
        elif key == "unipc":
            cfg.update(solver_order=2, predict_x0=True, solver_type="bh2")
    if spacing == "logsnr":
        cfg[_LOGSNR_OPTION[key]] = True
    cfg[LEARN_SIGMA_KEY] = bool(diffusion.learn_sigma)
    return cfg


def make_scheduler(
    name: str, diffusion: DiffusionConfig, clip_sample: bool = False, spacing: str = "auto", **overrides: Any
) -> SchedulerMixin:
    """A diffusers scheduler for sampler ``name`` (ddpm | ddim | dpm | sa | euler | unipc).

    ``dpm`` (DPM-Solver++ 2M) is the default sampler, at 20 steps in the pipeline. ``clip_sample`` clips
    x0 to [-1, 1] (pixel space only); ``spacing`` is "auto" | "trailing" | "logsnr" (module docstring).
    ``overrides`` go to the scheduler config last (e.g. ``solver_order=3``).
    """
    key = _check_name(name)
    cfg = {**scheduler_config_dict(diffusion, key, clip_sample=clip_sample, spacing=spacing), **overrides}
    scheduler = SCHEDULERS[key].from_config(cfg)
    return scheduler


def split_model_output(output: Tensor, learn_sigma: bool, scheduler: SchedulerMixin) -> Tensor:
    """What ``scheduler.step`` expects from a raw model output (B, C or 2C, ...).

    The full 2C channels for a DDPM scheduler with learned variance (it reads σ from them), the first C
    prediction channels for everything else.
    """
    if not learn_sigma:
        return output
    if output.shape[1] % 2:
        raise ValueError(f"learn_sigma: the model output needs an even channel count, got {output.shape[1]}")
    c = output.shape[1] // 2
    variance_type = scheduler.config.get("variance_type", None)
    learned = variance_type in ("learned", "learned_range")
    if learned and isinstance(scheduler, _CONSUMES_VARIANCE):
        return output
    if learned and c != 3:
        raise ValueError(
            f"{type(scheduler).__name__} has variance_type={variance_type!r}, which makes diffusers drop all but "
            f"3 channels; this model has {c}. Build the scheduler with gentron.diffusion.make_scheduler."
        )
    return output[:, :c]


def scheduler_step(
    scheduler: SchedulerMixin,
    model_output: Tensor,
    timestep: Tensor,
    sample: Tensor,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``scheduler.step(...).prev_sample``, passing ``generator`` only to samplers that take one (not UniPC)."""
    kwargs: dict[str, Any] = {}
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator
    return scheduler.step(model_output, timestep, sample, **kwargs).prev_sample


def diffusion_config_from_scheduler(scheduler: SchedulerMixin) -> DiffusionConfig:
    """The `DiffusionConfig` a scheduler samples (best effort: the loss settings are not recorded).

    Raises ValueError for schedules `GaussianDiffusion` cannot represent (e.g. "scaled_linear").
    """
    cfg = scheduler.config
    n = int(cfg["num_train_timesteps"])
    schedule = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        raise ValueError("schedulers with trained_betas cannot be mapped onto a DiffusionConfig")
    if schedule == "squaredcos_cap_v2":
        beta_schedule = "cosine"
    elif schedule == "linear":
        scale = 1000.0 / n
        start, end = float(cfg.get("beta_start", LINEAR_BETA_START)), float(cfg.get("beta_end", LINEAR_BETA_END))
        if abs(start - scale * LINEAR_BETA_START) > 1e-9 or abs(end - scale * LINEAR_BETA_END) > 1e-9:
            raise ValueError(
                f"linear schedule {start}→{end} at T={n} is not the DDPM/DiT schedule "
                f"({scale * LINEAR_BETA_START}→{scale * LINEAR_BETA_END})"
            )
        beta_schedule = "linear"
    else:
        raise ValueError(f"beta_schedule {schedule!r} has no DiffusionConfig equivalent (linear, squaredcos_cap_v2)")
    learn_sigma = cfg.get(LEARN_SIGMA_KEY, None)
    if learn_sigma is None:
        learn_sigma = cfg.get("variance_type", None) in ("learned", "learned_range")
    return DiffusionConfig(
        num_timesteps=n,
        beta_schedule=beta_schedule,
        prediction=cfg.get("prediction_type", "epsilon"),
        learn_sigma=bool(learn_sigma),
        rescale_betas_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
    )
