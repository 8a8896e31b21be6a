"""Diffusion: the training objective (`GaussianDiffusion`) and the diffusers samplers that invert it."""

from gentron.diffusion.gaussian import (
    BETA_SCHEDULES,
    HYBRID_LAMBDA,
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    TIMESTEP_SAMPLINGS,
    DiffusionConfig,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    make_betas,
    mean_flat,
    normal_kl,
)
from gentron.diffusion.guidance import cfg_combine, concat_conditioning, guided_model_output
from gentron.diffusion.schedulers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    SPACINGS,
    diffusion_config_from_scheduler,
    make_scheduler,
    resolve_spacing,
    scheduler_config_dict,
    scheduler_step,
    split_model_output,
)

__all__ = [
    "BETA_SCHEDULES",
    "HYBRID_LAMBDA",
    "LOSS_WEIGHTINGS",
    "PREDICTIONS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "SPACINGS",
    "TIMESTEP_SAMPLINGS",
    "DiffusionConfig",
    "GaussianDiffusion",
    "cfg_combine",
    "concat_conditioning",
    "diffusion_config_from_scheduler",
    "discretized_gaussian_log_likelihood",
    "guided_model_output",
    "make_betas",
    "make_scheduler",
    "mean_flat",
    "normal_kl",
    "resolve_spacing",
    "scheduler_config_dict",
    "scheduler_step",
    "split_model_output",
]
