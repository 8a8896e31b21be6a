"""Typed run configuration: dataclasses ↔ YAML, with ``--set key=value`` overrides.

Unknown keys are an error (a typo must never silently train the wrong model). The stable keys that
outside tools rely on: ``train.steps``, ``train.batch_size``, ``train.checkpoint_every``,
``train.seed``, ``model.name``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported with the offending key."""


@dataclass
class ModelConfig:
    name: str = "GenTron-Demo/4"  # zoo name, see `gentron info`
    conditioning: str = "cross-attn"  # adaln-zero | cross-attn | adaln-single | class
    resolution: int = 32  # training image size in pixels (latent size = resolution / vae factor)
    in_channels: int = 3  # 3 = pixel space, 4 = SD-VAE latents
    temporal_layers: bool = False
    temporal_every: int = 1  # TempSelfAttn in every k-th block (1 = every block, as GenTron; >1 is cheaper)
    temporal_dim: Optional[int] = None  # width of TempSelfAttn's q/k/v (None = hidden size, as GenTron; less is cheaper)
    micro_conditions: bool = False
    overrides: dict = field(default_factory=dict)  # any extra GenTronTransformer kwarg (depth, ...)
    init_from_dit: Optional[str] = None  # DiT class checkpoint: re-parameterised init (PixArt-α Sec. 2.3)
    init_from_dit_t_ref: float = 500.0  # the timestep at which the new model equals DiT (null class)


@dataclass
class TextEncoderEntry:
    kind: str = "minilm"  # minilm | clip | t5 | bert | auto | scratch
    path: Optional[str] = None  # local folder; None = the packaged MiniLM
    max_length: Optional[int] = None
    dtype: str = "float32"
    hidden_layer: int = -1  # hidden state used as tokens: -1 last, -2 penultimate, 0 embeddings


@dataclass
class TextConfig:
    encoders: list = field(default_factory=lambda: [TextEncoderEntry()])


@dataclass
class DiffusionSection:
    num_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear (DiT) | cosine
    prediction: str = "epsilon"  # epsilon | v_prediction | sample
    learn_sigma: bool = True  # IDDPM/DiT hybrid loss
    loss_weighting: str = "none"  # none | min_snr
    snr_gamma: float = 5.0
    timestep_sampling: str = "uniform"  # uniform (DiT) | logit_normal (SD3: t/T = sigmoid(N(logit_mean, logit_std)))
    logit_mean: float = 0.0  # > 0 spends more steps at high noise, where layout is decided
    logit_std: float = 1.0
    multiscale_loss: list = field(default_factory=list)  # pooling factors, e.g. [8, 16]: adds the pooled residual's MSE
    gradient_loss: float = 0.0  # weight of an added MSE on the residual's pixel differences (edges, silhouettes)
    temporal_loss: float = 0.0  # videos: weight of an added MSE on the residual minus its mean over frames (motion)


@dataclass
class DataConfig:
    kind: str = "shapes"  # shapes (generated when missing) | folder | shards (webdataset tars) | cache (`gentron cache`)
    path: str = "data/shapes-32"
    num: int = 20000  # images to generate for kind=shapes
    seed: int = 0  # shapes generator seed
    center_crop: bool = True
    random_flip: bool = False  # off by default: flips break "left of / right of" captions
    preload: bool = True  # keep decoded images in memory (small data sets)
    kinds_weights: dict = field(default_factory=dict)  # shapes: mixture of single/count/spatial/complex scenes
    layout_grid: int = 0  # shapes: 0 = free placement; N >= 2 = object centres on an N x N grid (the demo: 3)
    buckets: bool = False  # multi-aspect-ratio buckets (PixArt-α): each batch from one bucket around model.resolution²
    num_buckets: int = 40  # PixArt-α: 40 ratios from 0.25 to 4 (fewer at small sizes)


DATA_KINDS: tuple[str, ...] = ("shapes", "folder", "shards", "cache")


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4  # GenTron / PixArt: 1e-4 constant
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine | wsd (to lr_min at train.steps, or at max_minutes if sooner)
    lr_min: float = 0.0
    lr_decay_fraction: float = 0.2  # wsd: the last share of training (steps or time) that decays linearly to lr_min
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay ramps as min(decay, (1+n)/(10+n)) so short runs get a useful EMA
    caption_dropout: float = 0.1  # CFG: caption replaced by "" with this probability
    seed: int = 0
    precision: str = "auto"  # auto (bf16 where native) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0 = only at the end
    max_minutes: float = 0.0  # stop cleanly after this wall time (0 = no limit)
    # stop this many of the run's own measured steps before max_minutes ends, to keep that time for work that
    # follows and costs in proportion to a step (an evaluation: `gentron demo`); a schedule timed on max_minutes
    # ends its decay there. 0 = train to the end
    reserve_steps: float = 0.0
    threads: int = 0  # torch CPU threads (0 = torch default)
    # -- scale-out (docs/training-at-scale.md); batch_size is per process under torchrun --
    parallel: str = "none"  # none | ddp | fsdp (FSDP2 fully_shard per block + root); needs torchrun for >1 process
    activation_checkpointing: str = "off"  # off | all | every_k (recompute every ac_every-th block)
    ac_every: int = 2
    compile: bool = False  # regional torch.compile: each block compiled in place (needs a C++ compiler on CPU)
    fsdp_param_dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32; gradients reduce in fp32
    max_nonfinite_in_a_row: int = 20  # stop with an error after this many skipped non-finite steps (0 = never)
    peak_tflops: float = 0.0  # per-device peak for the MFU estimate (0 = guess from the device)


@dataclass
class SampleSection:
    sampler: str = "dpm"  # dpm | ddim | ddpm | sa
    steps: int = 20
    guidance: float = 4.5
    prompts: list = field(
        default_factory=lambda: [
            "a red circle",
            "a blue square",
            "a green triangle",
            "a yellow circle to the left of a purple square",
        ]
    )
    seed: int = 0


@dataclass
class VaeConfig:
    path: Optional[str] = None  # local diffusers AutoencoderKL folder; None = pixel space


@dataclass
class VideoSection:
    """Text-to-video training (GenTron Sec. 3.3); active when ``num_frames > 1`` (needs
    ``model.temporal_layers: true``). The ``data:`` section is then the *image* data of joint
    image-video training, configured side by side with the clips here."""

    num_frames: int = 1  # T frames per clip; 1 = image (T2I) training
    fps: float = 4.0  # target frame rate the T frames are sampled at (from each source's own rate)
    kind: str = "shapes"  # shapes (moving shapes, generated when missing) | folder (mp4/webm/gif + captions)
    path: str = "data/shapes-video-32"
    num: int = 2000  # clips to generate for kind=shapes
    seed: int = 0  # moving-shapes generator seed
    p_motion_free: float = 0.5  # probability a sample's TempSelfAttn uses the identity (motion-free) mask
    motion_free_source: str = "image"  # image: motion-free samples are data: images repeated T times
    #                                    (joint image-video training, the paper); video: real clips, masked
    init_from: Optional[str] = None  # T2I run dir / pipeline dir / checkpoint: load shared weights


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    vae: VaeConfig = field(default_factory=VaeConfig)
    video: VideoSection = field(default_factory=VideoSection)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_LIST_ITEM_TYPES = {("text", "encoders"): TextEncoderEntry}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value against a dataclass field type, with a message naming the key."""
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key!r} must be true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    if tp in (dict,) or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp in (tuple,) or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return tuple(value)
    if tp in (list,) or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return list(value)
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or 'root'!r} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; valid keys: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key)
        else:
            value = _coerce(data[f.name], tp, key)
            item_cls = _LIST_ITEM_TYPES.get(tuple(key.split(".")))
            if item_cls is not None:
                value = [_build(item_cls, v, f"{key}[{i}]") for i, v in enumerate(value)]
            kwargs[f.name] = value
    obj = cls(**kwargs)
    for (section, name), item_cls in _LIST_ITEM_TYPES.items():  # default list items → dataclasses
        if prefix == section and cls is not item_cls:
            setattr(obj, name, [v if isinstance(v, item_cls) else _build(item_cls, v, name) for v in getattr(obj, name)])
    return obj


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    """Apply one ``key.sub=value`` override; the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in dotted:
        raise ConfigError(f"--set expects key=value, got {dotted!r}")
    key, _, text = dotted.partition("=")
    value = yaml.safe_load(text) if text != "" else ""
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Read a YAML file (optional), apply ``key=value`` overrides, validate into a `RunConfig`."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(p)!r} must contain a mapping at the top level")
    for item in overrides or []:
        _set_dotted(tree, item, "")
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that are cheap and catch real mistakes before any work starts."""
    from gentron.models.transformer import CONDITIONING_MODES, zoo_config

    zoo_config(cfg.model.name)  # raises with the list of valid names
    if cfg.model.conditioning not in CONDITIONING_MODES:
        raise ConfigError(f"model.conditioning must be one of {CONDITIONING_MODES}, got {cfg.model.conditioning!r}")
    if cfg.diffusion.prediction not in ("epsilon", "v_prediction", "sample"):
        raise ConfigError(f"diffusion.prediction must be epsilon, v_prediction or sample, got {cfg.diffusion.prediction!r}")
    if cfg.diffusion.beta_schedule not in ("linear", "cosine"):
        raise ConfigError(f"diffusion.beta_schedule must be linear or cosine, got {cfg.diffusion.beta_schedule!r}")
    if cfg.data.kind not in DATA_KINDS:
        raise ConfigError(f"data.kind must be one of {', '.join(DATA_KINDS)}, got {cfg.data.kind!r}")
    if cfg.data.layout_grid < 0 or cfg.data.layout_grid == 1:
        raise ConfigError(f"data.layout_grid must be 0 (free placement) or ≥ 2, got {cfg.data.layout_grid}")
    if cfg.train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto, fp32 or bf16, got {cfg.train.precision!r}")
    if cfg.train.lr_schedule not in ("constant", "cosine", "wsd"):
        raise ConfigError(f"train.lr_schedule must be constant, cosine or wsd, got {cfg.train.lr_schedule!r}")
    if cfg.train.reserve_steps < 0:
        raise ConfigError(f"train.reserve_steps must be ≥ 0, got {cfg.train.reserve_steps}")
    if not 0 < cfg.train.lr_decay_fraction <= 1:
        raise ConfigError(f"train.lr_decay_fraction must be in (0, 1], got {cfg.train.lr_decay_fraction}")
    if cfg.sample.sampler not in ("dpm", "ddim", "ddpm", "sa"):
        raise ConfigError(f"sample.sampler must be dpm, ddim, ddpm or sa, got {cfg.sample.sampler!r}")
    for key in ("steps", "batch_size", "grad_accum"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key} must be ≥ 1")
    if cfg.train.parallel not in ("none", "ddp", "fsdp"):
        raise ConfigError(f"train.parallel must be none, ddp or fsdp, got {cfg.train.parallel!r}")
    if cfg.train.activation_checkpointing not in ("off", "all", "every_k"):
        raise ConfigError(
            f"train.activation_checkpointing must be off, all or every_k, got {cfg.train.activation_checkpointing!r}"
        )
    if cfg.train.ac_every < 1:
        raise ConfigError("train.ac_every must be ≥ 1")
    if cfg.train.fsdp_param_dtype not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.fsdp_param_dtype must be auto, bf16 or fp32, got {cfg.train.fsdp_param_dtype!r}")
    if cfg.train.max_nonfinite_in_a_row < 0:
        raise ConfigError("train.max_nonfinite_in_a_row must be ≥ 0 (0 = never stop)")
    if not 0.0 <= cfg.train.caption_dropout < 1.0:
        raise ConfigError("train.caption_dropout must be in [0, 1)")
    v = cfg.video
    if v.num_frames < 1:
        raise ConfigError("video.num_frames must be ≥ 1")
    if v.num_frames > 1:
        if not cfg.model.temporal_layers:
            raise ConfigError("video.num_frames > 1 needs model.temporal_layers: true")
        if v.fps <= 0:
            raise ConfigError("video.fps must be > 0")
        if v.kind not in ("shapes", "folder"):
            raise ConfigError(f"video.kind must be shapes or folder, got {v.kind!r}")
        if not 0.0 <= v.p_motion_free <= 1.0:
            raise ConfigError("video.p_motion_free must be in [0, 1]")
        if v.motion_free_source not in ("image", "video"):
            raise ConfigError(f"video.motion_free_source must be image or video, got {v.motion_free_source!r}")
    if cfg.model.conditioning != "class" and not cfg.text.encoders:
        raise ConfigError("text.encoders is empty; text-conditioned models need at least one encoder")
