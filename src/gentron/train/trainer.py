"""`gentron train`: the training loop.

Everything random in step ``s`` (data order, caption dropout, timesteps, noise) is drawn from generators
seeded by ``(train.seed, s)``, so a run resumed from a checkpoint at step ``s`` replays exactly what an
uninterrupted run would have done (see `step_generator`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

import gentron
from gentron.diffusion import DiffusionConfig, GaussianDiffusion
from gentron.models.transformer import GenTronTransformer, count_parameters, zoo_config
from gentron.text import TextEmbedding, TextEncoder, load_text_encoders
from gentron.train import checkpoint as ckpt
from gentron.train import distributed as D
from gentron.train.config import ConfigError, RunConfig
from gentron.train.ema import EMA
from gentron.train.video import video_motion_free

# ------------------------------------------------------------------------------------------------
# Device and precision
# ------------------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX512-BF16 / AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    return torch.device(name)


def resolve_autocast(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast on GPUs and on CPUs with native bf16; fp32 otherwise (or when asked)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def step_generator(seed: int, step: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, step, stream): the basis of exact resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1))
    return g


# ------------------------------------------------------------------------------------------------
# Model construction
# ------------------------------------------------------------------------------------------------


def diffusion_config(cfg: RunConfig) -> DiffusionConfig:
    """The run's ``diffusion:`` section as the objective's `DiffusionConfig`: every key of the section is a field
    of it under the same name, so a new loss option is added in two places, not three. (``multiscale_loss`` is
    normalised to a tuple of ints by DiffusionConfig.)"""
    d = cfg.diffusion
    return DiffusionConfig(**{f.name: getattr(d, f.name) for f in fields(d)})


def build_transformer(cfg: RunConfig, text_encoders: list[TextEncoder], vae_factor: int = 1) -> GenTronTransformer:
    """The `GenTronTransformer` a run config describes, sized for its text encoders."""
    mode = cfg.model.conditioning
    kwargs = zoo_config(
        cfg.model.name,
        conditioning=mode,
        sample_size=cfg.model.resolution // vae_factor,
        in_channels=cfg.model.in_channels,
        learn_sigma=cfg.diffusion.learn_sigma,
        text_dims=[e.dim for e in text_encoders] if mode != "class" else [],
        pooled_dims=[e.pooled_dim for e in text_encoders] if mode in ("adaln-zero", "cross-attn") else None,
        temporal_layers=cfg.model.temporal_layers,
        temporal_every=cfg.model.temporal_every,
        temporal_dim=cfg.model.temporal_dim,
        micro_conditions=cfg.model.micro_conditions,
    )
    kwargs.update(cfg.model.overrides)
    try:
        return GenTronTransformer(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model.overrides: {e}") from None


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


#: A loaded text whitening is reported as not covering a run's words when more than WHITENING_SHARE_WARN of the
#: run's captions have whitened tokens with a mean square above WHITENING_ENERGY_WARN (shapes-world image captions
#: under their own fit: median 0.8, 99th percentile 4.2; moving-shapes captions under that fit: 9.6-40, docs/video.md).
WHITENING_ENERGY_WARN = 8.0
WHITENING_SHARE_WARN = 0.02


def prepare_dataset(cfg: RunConfig, log: Callable[[str], None] = print):
    """The training dataset; for ``data.kind=shapes`` the images are generated on first use."""
    from gentron.data.folder import ImageCaptionFolder

    if getattr(cfg, "video", None) is not None and cfg.video.num_frames > 1:  # T2V: clips (+ images), data/video.py
        from gentron.data.video import prepare_video_data

        return prepare_video_data(cfg, log)

    path = Path(cfg.data.path)
    if cfg.data.kind == "cache":  # precomputed latents + text features (`gentron cache`, data/cache.py)
        from gentron.data.cache import FeatureCache

        return FeatureCache(path)
    if cfg.data.kind == "shards":  # webdataset tar shards: a folder, glob or brace pattern (data/shards.py)
        from gentron.data.shards import TarShardDataset

        return TarShardDataset(cfg.data.path, resolution=cfg.model.resolution, center_crop=cfg.data.center_crop,
                               random_flip=cfg.data.random_flip)
    if cfg.data.kind == "shapes" and not (path / "captions.jsonl").is_file():
        from gentron.data.shapes import write_shapes_dataset

        log(f"generating {cfg.data.num} shapes-world images at {cfg.model.resolution}px into {path} ...")
        write_shapes_dataset(path, num=cfg.data.num, resolution=cfg.model.resolution, seed=cfg.data.seed,
                             kinds_weights=cfg.data.kinds_weights or None, layout_grid=cfg.data.layout_grid)
    elif cfg.data.kind == "shapes":
        check_shapes_data_matches(path, cfg)
    return ImageCaptionFolder(
        path, resolution=cfg.model.resolution, center_crop=cfg.data.center_crop, random_flip=cfg.data.random_flip
    )


def check_shapes_data_matches(path: Path, cfg: RunConfig) -> None:
    """Shapes data already on disk is reused only if it was generated with the run's layout: training on stale
    data of another layout would silently measure the wrong recipe."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return  # a hand-made folder in the shapes layout: nothing to compare
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{meta_path} is unreadable ({e}); delete {path} to regenerate it") from None
    stored = int(meta.get("layout_grid", 0))  # data written before the option: free placement
    if stored != cfg.data.layout_grid:
        raise ConfigError(f"shapes data at {path} was generated with layout_grid={stored}, the config says "
                          f"data.layout_grid={cfg.data.layout_grid}; delete the folder or point data.path elsewhere")


def build_patch_size(cfg: RunConfig) -> int:
    """The patch size the run's model will have (zoo name, then overrides)."""
    return int(cfg.model.overrides.get("patch_size", zoo_config(cfg.model.name)["patch_size"]))


def keep_batch(bucketed, batch: list[int]) -> bool:
    """A bucket batch is usable unless it is the group of unreadable images (bucket -1)."""
    return bucketed.bucket_of_item[batch[0]] >= 0


#: Encoder options that caches written before the option existed lack; they were made with its default.
_CACHE_META_DEFAULTS = {"hidden_layer": -1}


def check_cache_matches(cache, cfg: RunConfig, encoders: list[TextEncoder], vae, vae_factor: int) -> int:
    """A feature cache must have been made with the run's encoders (kind, max length, width) and VAE; returns
    the latent downsampling factor (resolution / stored size). Mismatches are config errors, not shape crashes."""
    stored = cache.meta["encoders"]
    if len(stored) != len(encoders):
        raise ConfigError(f"cache {cache.root} holds features of {len(stored)} text encoder(s); text.encoders lists {len(encoders)}")
    for k, (meta, enc) in enumerate(zip(stored, encoders)):
        mine = enc.to_dict()
        for key in ("kind", "max_length", "hidden_layer"):
            if meta.get(key, _CACHE_META_DEFAULTS.get(key)) != mine.get(key):
                raise ConfigError(f"cache {cache.root}: text encoder {k} has {key}={meta.get(key)!r} in the cache but "
                                  f"{mine.get(key)!r} in text.encoders; re-run `gentron cache` or fix the config")
        width = cache.token_width(k)
        if width != enc.dim:
            raise ConfigError(f"cache {cache.root}: text encoder {k} tokens are {width}-wide, the configured encoder's {enc.dim}")
    c, h, w = cache.sample_shape()
    if c != cfg.model.in_channels:
        raise ConfigError(f"cache {cache.root} stores {c}-channel {'latents' if cache.is_latent else 'images'}, "
                          f"model.in_channels is {cfg.model.in_channels}")
    if cache.is_latent and vae is None:
        raise ConfigError(f"cache {cache.root} stores latents: set vae.path to the VAE it was made with "
                          "(the exported pipeline decodes with it)")
    if not cache.is_latent and vae is not None:
        raise ConfigError(f"cache {cache.root} stores pixels but vae.path is set; cache with --vae or unset vae.path")
    factor = cfg.model.resolution // h if cache.is_latent else 1
    if (h * factor, w * factor) != (cfg.model.resolution,) * 2 or factor != vae_factor:
        raise ConfigError(f"cache {cache.root} stores {h}x{w} {'latents' if cache.is_latent else 'images'}; "
                          f"model.resolution {cfg.model.resolution} with VAE factor {vae_factor} needs "
                          f"{cfg.model.resolution // vae_factor}")
    return factor


@dataclass
class InMemoryData:
    """Decoded images (uint8) and caption ids, for data sets that fit in RAM (the shapes world)."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    caption_ids: torch.Tensor  # (N,) index into `captions`; 0 is the empty prompt
    captions: list[str]
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]


def preload(dataset, log: Callable[[str], None] = print, show_progress: bool = True) -> InMemoryData:
    captions: list[str] = [""]
    index: dict[str, int] = {"": 0}
    images, ids = [], []
    for i in tqdm(range(len(dataset)), desc="loading images", disable=not show_progress, leave=False):
        item = dataset[i]
        x = ((item["pixel_values"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        images.append(x)
        cap = item["caption"]
        if cap not in index:
            index[cap] = len(captions)
            captions.append(cap)
        ids.append(index[cap])
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    return InMemoryData(torch.stack(images), torch.tensor(ids), captions, skipped)


class TextBank:
    """Frozen-encoder outputs for every distinct caption, computed once (they never change).

    With a process group (``ctx``) the ranks share the work: batch ``i`` is encoded by rank ``i mod world`` and
    the batches are gathered on every rank, so the bank is the one a single process builds (the same batches),
    in 1/world of the time. Why: every rank needs every caption, and on the CPU demo each rank has one core, so
    encoding them all on each rank cost ~15 s per stage (2041 MiniLM captions) of a 15-minute budget."""

    def __init__(self, encoder: TextEncoder, captions: list[str], device: torch.device, batch: int = 256,
                 show_progress: bool = True, ctx: Optional[D.DistContext] = None):
        rank, world = (ctx.rank, ctx.world) if ctx is not None and ctx.enabled else (0, 1)
        starts = list(range(0, len(captions), batch))
        mine = {}
        for i in tqdm(starts[rank::world], desc="encoding captions", disable=not show_progress, leave=False):
            emb = encoder.encode(captions[i : i + batch])
            mine[i] = (emb.tokens.float().cpu(), emb.mask.cpu(), emb.pooled.float().cpu())
        encoder.clear_cache()  # the bank holds these now; don't keep a second copy in the encoder's LRU
        done = {k: v for part in D.all_gather_object(mine, ctx) for k, v in part.items()} if world > 1 else mine
        toks, masks, pooled = zip(*(done[i] for i in starts))
        self.tokens = torch.cat(toks).to(device)
        self.mask = torch.cat(masks).to(device)
        self.pooled = torch.cat(pooled).to(device)

    def __call__(self, ids: torch.Tensor) -> TextEmbedding:
        return TextEmbedding(tokens=self.tokens[ids], mask=self.mask[ids], pooled=self.pooled[ids])


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


class NonFiniteError(RuntimeError, ValueError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


class Trainer:
    """One training loop for one process or many (torchrun): DDP / FSDP2 are a wrapping step
    (`gentron.train.distributed`), the batch of step ``s`` is a function of (seed, s) split across ranks."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        resume: Optional[str] = None,
        log: Callable[[str], None] = print,
        show_progress: bool = True,
        whitening_captions: Optional[Sequence[str]] = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = D.init_from_env(resolve_device(cfg.train.device))
        self.log = log if self.ctx.is_main else (lambda s: None)  # rank-0-only logging
        log = self.log
        self.show_progress = show_progress and self.ctx.is_main
        show_progress = self.show_progress
        self.device = self.ctx.device
        self.autocast_dtype = resolve_autocast(cfg.train.precision, self.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)  # same on every rank: FSDP2 shards each rank's own init
        self.parallel = cfg.train.parallel if self.ctx.enabled else "none"
        if cfg.train.parallel != "none" and not self.ctx.enabled:
            log(f"train.parallel={cfg.train.parallel} in a single process: running unwrapped "
                "(launch with torchrun --nproc_per_node=N for more processes)")

        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

        # data first: a wrong path must fail before any model is built; rank 0 generates, then the rest read
        if not self.ctx.is_main:
            D.barrier(self.ctx)
        dataset = prepare_dataset(cfg, log)
        if self.ctx.is_main:
            D.barrier(self.ctx)
        if len(dataset) == 0:
            raise ValueError(f"dataset {cfg.data.path} is empty")
        self.dataset = dataset
        from gentron.data.cache import FeatureCache

        self.cache = dataset if isinstance(dataset, FeatureCache) else None  # latents/text precomputed
        preloadable = cfg.data.preload and self.cache is None and not cfg.data.buckets
        self.data = preload(dataset, log, show_progress) if preloadable else None
        from gentron.train.video import make_video_plan  # T2V joint image-video batches (None for T2I)

        self.video_plan = make_video_plan(cfg, dataset, self.ctx.world)

        self.text_encoders = load_text_encoders([_entry_dict(e) for e in cfg.text.encoders], device=self.device)
        self.vae, vae_factor = None, 1
        if cfg.vae.path:  # latent space (SD VAE): images are encoded on the fly, the VAE stays frozen
            from gentron.models.vae import load_vae, vae_downsample_factor

            self.vae = load_vae(cfg.vae.path, device=self.device)
            vae_factor = vae_downsample_factor(self.vae)
            if cfg.model.in_channels != self.vae.config.latent_channels:
                raise ConfigError(f"model.in_channels is {cfg.model.in_channels} but the VAE at {cfg.vae.path} has "
                                  f"{self.vae.config.latent_channels} latent channels")
        if self.cache is not None:
            vae_factor = check_cache_matches(self.cache, cfg, self.text_encoders, self.vae, vae_factor)
        self.bucketed = None
        if cfg.data.buckets:  # multi-aspect training (PixArt-α): sides multiple of patch × VAE factor
            from gentron.data.buckets import BucketedImages

            if self.cache is not None or getattr(self, "video_plan", None) is not None:
                raise ConfigError("data.buckets works with image folders and shards (not caches or video)")
            multiple = vae_factor * build_patch_size(cfg)
            self.bucketed = self.dataset = BucketedImages(self.dataset, base=cfg.model.resolution, multiple=multiple,
                                                          num=cfg.data.num_buckets, show_progress=show_progress)
            log(f"aspect-ratio buckets: {len(self.bucketed.buckets)} at base {cfg.model.resolution}px")
        self.model = build_transformer(cfg, self.text_encoders, vae_factor=vae_factor).to(self.device)
        if cfg.model.init_from_dit and not resume:  # PixArt-α re-parameterised init (models/convert.py)
            from gentron.models.convert import init_model_from_dit

            init_model_from_dit(self.model, cfg.model.init_from_dit, t_ref=cfg.model.init_from_dit_t_ref)
            log(f"initialised from DiT {cfg.model.init_from_dit} (re-parameterised at t={cfg.model.init_from_dit_t_ref:g})")
        if getattr(cfg, "video", None) is not None and cfg.video.init_from:  # T2I → T2V (train/video.py)
            from gentron.train.video import init_from_t2i

            init_from_t2i(self.model, cfg.video.init_from, log)
        self.ac_blocks = D.apply_activation_checkpointing(self.model, cfg.train.activation_checkpointing,
                                                          cfg.train.ac_every)
        if cfg.train.compile:
            D.compile_blocks(self.model.blocks, self.device)
        fsdp_dtype = {"bf16": torch.bfloat16, "fp32": None}.get(
            cfg.train.fsdp_param_dtype, torch.bfloat16 if self.device.type == "cuda" else None)
        self.train_model = D.wrap_model(self.model, self.parallel, self.ctx, fsdp_dtype)
        if self.ctx.enabled:  # from here on the global RNG may differ per rank (training draws are keyed)
            torch.manual_seed(cfg.train.seed + 1_000_003 * self.ctx.rank)
        self.diffusion = GaussianDiffusion(diffusion_config(cfg))
        self.banks: list[Optional[TextBank]] = [
            TextBank(enc, self.data.captions, self.device, show_progress=show_progress, ctx=self.ctx)
            if (self.data is not None and not enc.trainable)
            else None
            for enc in self.text_encoders
        ]
        self.trainable_text = [enc for enc in self.text_encoders if enc.trainable]
        # cached text: caption dropout swaps in the live encoder's empty-prompt features (computed once)
        self.empty_text = [enc.encode([""], device=self.device) for enc in self.text_encoders] if self.cache else []
        params = [p for p in self.model.parameters() if p.requires_grad]
        for enc in self.trainable_text:
            params += [p for p in enc.parameters() if p.requires_grad]
        # Fused AdamW (CPU and CUDA): one kernel per step (~4x faster than foreach on the demo's CPU), and it
        # takes `found_inf`, so a non-finite step is skipped on the device without a host sync.
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay, fused=True
        )
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.step = 0
        # non-finite steps: the total and the current run, kept on the device and read when the loop syncs
        self._nonfinite_total = torch.zeros((), dtype=torch.long, device=self.device)
        self._nonfinite_run = torch.zeros((), dtype=torch.long, device=self.device)
        self._nonfinite_longest = torch.zeros((), dtype=torch.long, device=self.device)
        self.start_time = time.time()
        self._agreed_elapsed = 0.0  # multi-process runs: the slowest rank's clock at the last step (see `elapsed_s`)
        self._time_reserved = 0.0  # seconds `train.reserve_steps` keeps free at the end (all ranks agree; see `lr_at`)
        self._stop_requested = False
        if resume:
            self._resume(resume)
        self.fit_text_whitening(whitening_captions)

    def fit_text_whitening(self, captions: Optional[Sequence[str]] = None, max_captions: int = 4096) -> None:
        """``text_whitening`` models: fit each encoder's fixed token whitening once, before training, on the
        training captions or on ``captions`` (the constructor's ``whitening_captions``).

        A resumed run or a T2V model initialised from a fitted T2I model keeps the statistics it loaded (they are
        buffers in its weights), so the model never sees its inputs change; it is only checked to cover this run's
        captions (a warning when they come out amplified, e.g. motion words under an image-only fit). ``captions``
        is for a curriculum whose first stage sees only part of the caption kinds (the demo's relations stage): it
        must whiten for all of them, or the words it has not seen land in directions the whitening blows up."""
        model = self.model
        if not getattr(model.config, "text_whitening", False):
            if captions is not None:
                raise ConfigError("whitening captions need model.overrides.text_whitening=true")
            return
        loaded = model.text_whitening_fitted()
        for k, enc in enumerate(self.text_encoders):
            if enc.trainable:
                raise ConfigError("model.overrides.text_whitening needs frozen text encoders; "
                                  f"encoder {k} ({enc.kind}) is trained with the model")
            # The distinct training captions and the empty prompt (caption dropout feeds it to the model too).
            bank = self.banks[k]
            if captions is None and bank is not None:  # the bank holds every distinct caption, "" first
                pick = torch.linspace(0, len(bank.tokens) - 1, min(len(bank.tokens), max_captions)).long()
                tokens, mask = bank.tokens[pick.to(bank.tokens.device)], bank.mask[pick.to(bank.mask.device)]
            elif captions is None and self.cache is not None:
                rows = [self.cache[int(i)][f"text{k}"]
                        for i in torch.linspace(0, len(self.cache) - 1, min(len(self.cache), max_captions)).long()]
                empty = enc.encode([""])
                tokens = torch.cat([empty.tokens.float().cpu(), torch.stack([r[0] for r in rows]).float()])
                mask = torch.cat([empty.mask.cpu(), torch.stack([r[1] for r in rows]).bool()])
            else:
                distinct = sorted(set(self.dataset.captions if captions is None else captions) - {""})
                pick = torch.linspace(0, len(distinct) - 1, min(len(distinct), max_captions)).long()
                sample = TextBank(enc, [""] + [distinct[int(i)] for i in pick], self.device, show_progress=False,
                                  ctx=self.ctx)
                tokens, mask = sample.tokens, sample.mask
            if not loaded:
                model.fit_text_whitening(k, tokens, mask)
                self.log(f"text whitening of encoder {k} ({enc.kind}) fitted on {int(mask.sum())} tokens of "
                         f"{len(tokens)} captions (shrinkage {model.config.text_whitening_shrinkage:g})")
                continue
            # Loaded (resume, T2V init): it must cover this run's words, or they come in amplified.
            energy = model.text_whitening_energy(k, tokens.to(self.device), mask.to(self.device))
            far = energy > WHITENING_ENERGY_WARN
            if far.float().mean() > WHITENING_SHARE_WARN:
                self.log(f"warning: text whitening of encoder {k} was fitted on other captions: {int(far.sum())} of "
                         f"{len(energy)} of this run's captions come out with {float(energy[far].median()):.0f}x the "
                         f"energy of the fit (median; words it was not fitted on are amplified). Fit it on captions "
                         f"that cover both runs (Trainer(whitening_captions=...) in the first run) or raise "
                         f"model.overrides.text_whitening_shrinkage.")

    # -- state ---------------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        state = None
        if resume == "auto":
            where = None
            if self.ctx.is_main:  # rank 0 picks (and validates) the newest complete checkpoint
                found = ckpt.find_resumable(self.run_dir)
                if found is not None:
                    where, state = str(found[0]), found[1]
            where = D.broadcast_object(where, self.ctx)
            if where is None:
                self.log("resume=auto: no complete checkpoint found, starting from scratch")
                return
            where = Path(where)
        else:
            where = Path(resume)
        if state is None:
            state = ckpt.load_checkpoint(where)
        meta = state["meta"]
        self._check_weightless_options(where, meta)
        if "dcp" in state:
            if self.parallel != "fsdp":
                raise ValueError(f"checkpoint {where} is sharded (FSDP2): resume it with train.parallel=fsdp under torchrun")
            self._load_sharded(state["dcp"])
        else:
            if self.parallel == "fsdp":
                raise ValueError(f"checkpoint {where} was written without FSDP; resume it with train.parallel=ddp or none")
            self._load_replicated(where, state)
        self.step = int(meta["step"])
        self._nonfinite_total.fill_(int(meta.get("nonfinite_skips", 0)))
        rng = ckpt.read_rng_state(where, self.ctx.rank) or (meta.get("rng") if self.ctx.rank == 0 else None)
        if rng and "torch" in rng:
            torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        old_gb = (meta.get("data") or {}).get("global_batch")
        if old_gb is not None and old_gb != self.global_batch:
            self.log(f"warning: global batch changed on resume ({old_gb} -> {self.global_batch}); "
                     "the data order continues from step position, not from the same sample")
        self.log(f"resumed from {where} at step {self.step}")

    def _check_weightless_options(self, where: Path, meta: dict) -> None:
        """A fixed gain on the token conv changes the function but no weight's shape, so a load would pass and
        training would silently continue another model: a checkpoint resumes only under the gain it trained with.
        (A conv added on resume starts at zero, so it may take any gain.)"""
        theirs = ((meta.get("config") or {}).get("model") or {}).get("overrides") or {}
        if not (theirs.get("mlp_token_conv") and self.model.config.mlp_token_conv):
            return
        old, new = float(theirs.get("mlp_token_conv_gain", 1.0)), float(self.model.config.mlp_token_conv_gain)
        if old != new:
            raise ValueError(f"checkpoint {where} was trained with mlp_token_conv_gain {old:g}, this run has {new:g}: "
                             f"resume it with --set model.overrides.mlp_token_conv_gain={old:g}")

    def _load_replicated(self, where: Path, state: dict) -> None:
        model_state = {k: v for k, v in state["model"].items() if not k.startswith("text.")}
        grown = [n for n in self.model.growth_parameter_names() if n not in model_state]
        missing, unexpected = self.model.load_state_dict(model_state, strict=False)
        missing = [k for k in missing if k not in grown]
        if missing or unexpected:
            bad = (missing or unexpected)[0]
            raise ValueError(f"checkpoint {where} does not match the model: first mismatched key {bad!r}")
        optimizer_state = state["optimizer"]
        if grown:  # layers added on resume: zero (an identity), fresh AdamW moments; the rest continues exactly
            if any(torch.count_nonzero(p) for n, p in self.model.named_parameters() if n in grown):
                raise ValueError(f"checkpoint {where}: layers added on resume must start at zero")
            optimizer_state = _optimizer_state_with_new_params(optimizer_state, self.optimizer, set(map(id, (
                p for n, p in self.model.named_parameters() if n in grown))))
            self.log(f"resume: {len(grown)} tensors of new zero-initialised layers (mlp_token_conv) added to the "
                     f"checkpoint's model")
        self.optimizer.load_state_dict(optimizer_state)
        meta = state["meta"]
        if "ema" in state:
            self.ema.load_state_dict(state["ema"], meta.get("ema_updates", meta["step"]), new=grown)
        # trainable text encoders are stored in model.safetensors under "text.{i}."
        text_states = {k: v for k, v in state["model"].items() if k.startswith("text.")}
        for i, enc in enumerate(self.trainable_text):
            prefix = f"text.{i}."
            enc.load_state_dict({k[len(prefix) :]: v for k, v in text_states.items() if k.startswith(prefix)})

    def _sharded_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optim": osd, "ema": self.ema.state_dict()}

    def _load_sharded(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._sharded_state()
        D.dcp_load(state, path)  # EMA shadows are loaded in place
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        meta = json.loads((Path(path).parent / "trainer_state.json").read_text())
        self.ema.num_updates = int(meta.get("ema_updates", meta["step"]))

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.ctx.world * self.cfg.train.grad_accum

    def model_state(self) -> dict[str, torch.Tensor]:
        state = dict(self.model.state_dict())
        for i, enc in enumerate(self.trainable_text):
            state.update({f"text.{i}.{k}": v for k, v in enc.state_dict().items()})
        return state

    def save_checkpoint(self) -> Path:
        """Model, EMA, optimizer, LR schedule, step, data position, per-rank RNG, config, version — atomically.

        One process: safetensors + ``optimizer.pt`` (unchanged format). DDP: the same files from rank 0 (they
        are replicated) plus every rank's RNG state. FSDP2: shards of model, EMA and optimizer via
        `torch.distributed.checkpoint` in ``dcp/``. All ranks must call this.
        """
        samples = self.step * self.global_batch
        n = len(self.data) if self.data is not None else len(self.dataset)
        meta = {
            "step": self.step,
            "ema_updates": self.ema.num_updates,
            "nonfinite_skips": self.nonfinite_skips,
            "gentron_version": gentron.__version__,
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state().tolist()},
            "world_size": self.ctx.world,
            "parallel": self.parallel,
            "lr_scheduler": {"schedule": self.cfg.train.lr_schedule, "next_lr": self.lr_at(self.step),
                             "warmup_steps": self.cfg.train.warmup_steps},
            "data": {"global_batch": self.global_batch, "samples_seen": samples, "epoch": samples // n,
                     "position_in_epoch": samples % n, "order": "randperm(seed, epoch), split by rank"},
        }
        rng = {"torch": torch.get_rng_state().tolist()}
        keep = self.cfg.train.keep_checkpoints
        if not self.ctx.enabled:
            where = ckpt.save_checkpoint(
                self.run_dir, self.step, self.model_state(), self.ema.state_dict(), self.optimizer.state_dict(), meta,
                keep=keep, rng_state=rng,
            )
        else:
            where = self._save_distributed(meta, rng, keep)
        self.export_pipeline(self.run_dir / "pipeline")
        return where

    def _save_distributed(self, meta: dict, rng: dict, keep: int) -> Path:
        ctx = self.ctx
        tag = D.broadcast_object(os.getpid(), ctx)  # one shared temporary directory, named by rank 0
        tmp = self.run_dir / "checkpoints" / f".tmp_{ckpt.step_dir_name(self.step)}_{tag}"
        if ctx.is_main:
            ckpt.begin_checkpoint(self.run_dir, self.step, tag)
        D.barrier(ctx)
        if self.parallel == "fsdp":
            D.dcp_save(self._sharded_state(), tmp / "dcp")
        elif ctx.is_main:
            ckpt.write_state_files(tmp, self.model_state(), self.ema.state_dict(), self.optimizer.state_dict())
        ckpt.write_rng_state(tmp, ctx.rank, rng)
        if ctx.is_main:
            (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        D.barrier(ctx)
        where = ckpt.commit_checkpoint(self.run_dir, self.step, tmp, keep) if ctx.is_main else None
        D.barrier(ctx)
        return self.run_dir / "checkpoints" / ckpt.step_dir_name(self.step)

    # -- one step ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then constant, cosine decay, or warm-up-stable-decay (``wsd``: constant, then linear to
        ``lr_min`` over the last ``lr_decay_fraction`` of training).

        With ``max_minutes`` the schedule runs on whichever comes first, steps or wall time, so a
        time-budgeted run (the demo) still ends at ``lr_min`` on a slower machine. The time it runs on ends where
        the run will stop: ``max_minutes`` less the seconds ``train.reserve_steps`` keeps free, as measured so far,
        so a decay still finishes when the run stops early for that reserve.
        """
        tc = self.cfg.train
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
        if tc.lr_schedule == "constant" or step < tc.warmup_steps:
            return lr
        progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        if tc.max_minutes > 0:
            progress = max(progress, self.elapsed_s() / max(tc.max_minutes * 60 - self._time_reserved, 1e-9))
        progress = min(progress, 1.0)
        if tc.lr_schedule == "cosine":
            return tc.lr_min + 0.5 * (tc.lr - tc.lr_min) * (1 + math.cos(math.pi * progress))
        # wsd: the stable phase keeps the lr high for most of a short run (the cosine spent half of it small),
        # the final linear decay lands the raw weights where the EMA would lag (docs/demo-recipe.md, 11th round)
        cooldown = max(0.0, progress - (1 - tc.lr_decay_fraction)) / tc.lr_decay_fraction
        return tc.lr + (tc.lr_min - tc.lr) * cooldown

    def elapsed_s(self) -> float:
        """Seconds since ``start_time`` for the time-based lr schedule. With several processes every rank uses the
        value all of them agreed on at the previous step (the slowest clock), so each rank's optimizer applies the
        same lr and the replicas stay identical (each reading its own clock, they would differ by microseconds, and
        so would their lrs and then their weights)."""
        if self.ctx.enabled:
            return self._agreed_elapsed
        return time.time() - self.start_time

    def batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """This rank's dataset indices of a micro-batch: its slice of `global_batch_indices`."""
        return self.global_batch_indices(step, micro)[D.rank_slice(self.cfg.train.batch_size * self.ctx.world, self.ctx)]

    def global_batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """Indices of the global micro-batch (all ranks): epoch-wise permutations that depend only on the seed,
        so the data order (and the loader position in a checkpoint) is a function of (seed, step)."""
        if getattr(self, "video_plan", None) is not None:  # T2V: per-sample motion-free mix (data/video.py)
            return self.video_plan.draw(step * self.cfg.train.grad_accum + micro)[0]
        b = self.cfg.train.batch_size * self.ctx.world
        if self.bucketed is not None:  # every global batch from one aspect-ratio bucket (data/buckets.py)
            return torch.tensor(self._bucket_batch(step * self.cfg.train.grad_accum + micro, b))
        n = len(self.data) if self.data is not None else len(self.dataset)
        start = (step * self.cfg.train.grad_accum + micro) * b
        out = []
        for pos in range(start, start + b):
            epoch, offset = divmod(pos, n)
            if getattr(self, "_perm_epoch", None) != epoch:
                self._perm = torch.randperm(n, generator=step_generator(self.cfg.train.seed, epoch, stream=9))
                self._perm_epoch = epoch
            out.append(int(self._perm[offset]))
        return torch.tensor(out)

    def _bucket_batch(self, k: int, size: int) -> list[int]:
        """The k-th global batch of the bucket sampler: epoch e's batch list is a function of (seed, e), and
        every epoch has the same number of batches, so k alone locates it (exact resume)."""
        from gentron.data.buckets import BucketBatchSampler

        if getattr(self, "_bucket_sampler", None) is None:
            # unreadable images (bucket -1) form their own group, whose batches `keep_batch` drops
            self._bucket_sampler = BucketBatchSampler(self.bucketed.bucket_of_item, size, seed=self.cfg.train.seed)
            self._bucket_epochs: dict[int, list[list[int]]] = {}
        sampler = self._bucket_sampler
        first = self._bucket_epochs.setdefault(0, [bt for bt in sampler.batches(0) if keep_batch(self.bucketed, bt)])
        if not first:
            raise ValueError(f"no aspect-ratio bucket holds a full global batch of {size} images; "
                             "lower train.batch_size or add data")
        epoch, j = divmod(k, len(first))
        if epoch not in self._bucket_epochs:
            self._bucket_epochs = {0: first, epoch: [bt for bt in sampler.batches(epoch) if keep_batch(self.bucketed, bt)]}
        batches = self._bucket_epochs[epoch]
        return batches[j % len(batches)]

    def micro_conditions(self, idx: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """PixArt-α 1024-MS micro-conditions for a model built with them: each image's original (h, w) and
        its bucket's aspect ratio; square training without buckets passes the training size and 1."""
        if not self.model.config.micro_conditions:
            return None
        if self.bucketed is not None:
            sizes = [self.bucketed.original_sizes[int(i)] for i in idx]
            ratios = [self.bucketed.buckets[self.bucketed.bucket_of_item[int(i)]] for i in idx]
            ratios = [h / w for h, w in ratios]
        else:
            sizes = [(self.cfg.model.resolution,) * 2] * len(idx)
            ratios = [1.0] * len(idx)
        return {"resolution": torch.tensor(sizes, dtype=torch.float32, device=self.device),
                "aspect_ratio": torch.tensor(ratios, dtype=torch.float32, device=self.device)[:, None]}

    def load_batch(self, idx: torch.Tensor, key: Optional[int] = None) -> tuple[torch.Tensor, list[str], Optional[torch.Tensor]]:
        """Pixels in [-1, 1], captions and (preloaded data) caption ids of a micro-batch. ``key`` =
        step × grad_accum + micro lets ``train.num_workers`` worker processes prefetch it (data/loader.py)."""
        if self.data is not None:
            x = self.data.images[idx].to(self.device).float() / 127.5 - 1.0
            ids = self.data.caption_ids[idx]
            return x, [self.data.captions[i] for i in ids.tolist()], ids
        items = self._prefetched(key) if self.cfg.train.num_workers > 0 and key is not None else \
            [self.dataset[int(i)] for i in idx]
        return torch.stack([it["pixel_values"] for it in items]).to(self.device), [it["caption"] for it in items], None

    def _prefetched(self, key: int) -> list[dict[str, Any]]:
        """Items of micro-batch ``key`` from the worker pool; (re)started at ``key`` after a resume or a jump."""
        if getattr(self, "_loader_next", None) != key:
            from gentron.data.loader import StepBatchLoader

            accum = self.cfg.train.grad_accum
            loader = StepBatchLoader(self.dataset, lambda k: self.batch_indices(*divmod(k, accum)), key,
                                     max(key + 1, self.cfg.train.steps * accum), num_workers=self.cfg.train.num_workers)
            self._loader = iter(loader)
        k, items = next(self._loader)
        self._loader_next = k + 1
        return items

    def load_cached_batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list[TextEmbedding]]:
        """Latents (sampled from the stored posterior with ``generator``) or pixels, and the stored text features."""
        items = [self.cache.__getitem__(int(i), generator=generator) for i in idx]
        x0 = torch.stack([it["latents" if self.cache.is_latent else "pixel_values"] for it in items]).to(self.device)
        text = [TextEmbedding(*(torch.stack([it[f"text{k}"][j] for it in items]).to(self.device) for j in range(3)))
                for k in range(self.cache.num_encoders)]
        return x0, text

    def cached_text_conditioning(self, text: list[TextEmbedding], drop: torch.Tensor) -> list[TextEmbedding]:
        """Dropped captions (CFG training) get the empty prompt's features, as in `text_conditioning`."""
        d = drop.to(self.device)
        out = []
        for emb, empty in zip(text, self.empty_text):
            out.append(TextEmbedding(
                tokens=torch.where(d[:, None, None], empty.tokens.to(emb.tokens.dtype), emb.tokens),
                mask=torch.where(d[:, None], empty.mask, emb.mask),
                pooled=torch.where(d[:, None], empty.pooled.to(emb.pooled.dtype), emb.pooled),
            ))
        return out

    def text_conditioning(self, captions: list[str], ids: Optional[torch.Tensor], drop: torch.Tensor) -> list[TextEmbedding]:
        """Per-encoder embeddings; dropped captions become the empty prompt (CFG training)."""
        out = []
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        for enc, bank in zip(self.text_encoders, self.banks):
            if bank is not None and ids is not None:
                out.append(bank(torch.where(drop, torch.zeros_like(ids), ids).to(self.device)))
            else:
                out.append(enc.encode(captions, device=self.device))
        return out

    def sample_randomness(self, step: int, micro: int, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Caption dropout, timestep and noise for each sample of this rank's micro-batch.

        Keyed by (seed, step, micro, global position in the micro-batch): sample j gets the same draws
        whatever the number of processes, so N processes reproduce one process with the same global batch.
        """
        cfg = self.cfg
        key = step * cfg.train.grad_accum + micro
        offset = self.ctx.rank * shape[0]
        drops, ts, noises = [], [], []
        for j in range(shape[0]):
            g = torch.Generator().manual_seed(D.sample_seed(cfg.train.seed, key, offset + j))
            drops.append(torch.rand(1, generator=g))
            ts.append(self.diffusion.sample_timesteps(1, generator=g))  # uniform (DiT) or logit-normal (config)
            noises.append(torch.randn(tuple(shape[1:]), generator=g))
        return torch.cat(drops) < cfg.train.caption_dropout, torch.cat(ts), torch.stack(noises)

    def _sync_context(self, micro: int):
        """Gradient all-reduce only on the last micro-batch of an accumulation."""
        import contextlib

        last = micro == self.cfg.train.grad_accum - 1
        if self.parallel == "ddp" and not last:
            return self.train_model.no_sync()
        if self.parallel == "fsdp":
            self.train_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.train.grad_accum):
            idx = self.batch_indices(self.step, micro)
            # a fresh VAE posterior sample each step, from a per-step generator (exact resume)
            g_vae = step_generator(cfg.train.seed, self.step * cfg.train.grad_accum + micro, stream=7)
            if self.cache is not None:
                x0, cached_text = self.load_cached_batch(idx, g_vae)
            else:
                x0, captions, ids = self.load_batch(idx, key=self.step * cfg.train.grad_accum + micro)
                if self.vae is not None:
                    from gentron.models.vae import encode_latents

                    x0 = encode_latents(self.vae, x0, sample=True, generator=g_vae)
            drop, t, noise = self.sample_randomness(self.step, micro, x0.shape)
            noise = noise.to(self.device)
            t = t.to(self.device)
            if self.cache is not None:
                text = self.cached_text_conditioning(cached_text, drop)
            else:
                text = self.text_conditioning(captions, ids, drop)
            x_t = self.diffusion.q_sample(x0, t, noise)
            motion_free = video_motion_free(self, micro)
            with self._sync_context(micro):
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    out = self.train_model(
                        x_t, t,
                        encoder_hidden_states=tuple(e.tokens for e in text),
                        encoder_attention_mask=tuple(e.mask for e in text),
                        pooled_projections=tuple(e.pooled for e in text),
                        added_cond_kwargs=self.micro_conditions(idx),
                        motion_free=motion_free,
                    ).sample
                losses = self.diffusion.training_losses(out.float(), x0, x_t, t, noise,
                                                        moving=None if motion_free is None else ~motion_free)
                loss = losses["loss"].mean()
                (loss / cfg.train.grad_accum).backward()
            total = total + loss.detach() / cfg.train.grad_accum
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # loss = mean over the global batch; DDP/FSDP already averaged the model's gradients
        total = D.all_reduce_mean(total, self.ctx)
        D.average_gradients([p for enc in self.trainable_text for p in enc.parameters() if p.requires_grad], self.ctx)
        grad_norm = D.clip_grad_norm(params, cfg.train.grad_clip, self.ctx, sharded=self.parallel == "fsdp")
        # A non-finite step changes nothing (weights, Adam moments and step count, EMA) and is counted, all on
        # the device: no host sync per step (the mechanism torch.amp.GradScaler uses with fused optimizers).
        nonfinite = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        self.optimizer.found_inf = nonfinite.float()
        self.optimizer.step()
        self.ema.update(self.model, skip=nonfinite)
        self._nonfinite_total += nonfinite
        self._nonfinite_run = (self._nonfinite_run + 1) * nonfinite
        torch.maximum(self._nonfinite_longest, self._nonfinite_run, out=self._nonfinite_longest)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "lr": lr}

    def _check_nonfinite(self, rec: dict[str, Any]) -> None:
        """Stop when the longest run of skipped steps since the last check reached the limit (checked once per
        log interval, when the loop syncs anyway; skipped steps change no weights, so nothing is lost)."""
        longest = int(self._nonfinite_longest)
        self._nonfinite_longest.zero_()
        limit = self.cfg.train.max_nonfinite_in_a_row
        if limit > 0 and longest >= limit:
            kept = ckpt.list_checkpoints(self.run_dir)
            raise NonFiniteError(
                f"{longest} non-finite steps in a row (last loss {rec['loss']}, grad-norm {rec['grad_norm']}) by step "
                f"{self.step}; train.max_nonfinite_in_a_row={limit}. Stopping; last good checkpoint: "
                f"{kept[-1] if kept else 'none'}. Lower train.lr, check the data, or use train.precision=fp32."
            )

    @property
    def nonfinite_skips(self) -> int:
        """Non-finite steps skipped so far (a host sync: read it when the loop syncs anyway)."""
        return int(self._nonfinite_total)

    @property
    def nonfinite_in_a_row(self) -> int:
        """Length of the current run of skipped steps (0 after a finite step; a host sync)."""
        return int(self._nonfinite_run)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        n_params = count_parameters(self.model)
        self.log(
            f"gentron {gentron.__version__} | {cfg.model.name} {cfg.model.conditioning} | {n_params / 1e6:.2f}M params | "
            f"device {self.device} | autocast {self.autocast_dtype or 'fp32'} | parallel {self.parallel} | "
            f"activation checkpointing {cfg.train.activation_checkpointing} ({len(self.ac_blocks)} blocks) | "
            f"global batch {self.global_batch} "
            f"(= {cfg.train.batch_size} per rank × {self.ctx.world} process{'es' if self.ctx.world > 1 else ''} × "
            f"{cfg.train.grad_accum} accumulation)"
        )
        main = self.ctx.is_main
        metrics_path = self.run_dir / "metrics.jsonl"
        writer = _tensorboard(self.run_dir / "tensorboard") if main else None
        handlers = _install_stop_handlers(self)
        try:
            flops_per_image = training_flops_per_sample(
                self.model, [e.max_length for e in self.text_encoders],
                num_frames=cfg.video.num_frames if self.video_plan is not None else 1)
        except Exception as e:  # noqa: BLE001 - MFU is a report, never a reason to stop a run
            self.log(f"warning: could not count the model's FLOPs ({type(e).__name__}: {e}); MFU not reported")
            flops_per_image = 0.0
        peak_flops = peak_flops_per_device(self.device, cfg.train.peak_tflops, self.autocast_dtype)
        mfu_values: list[float] = []
        t_last, step_last = time.time(), self.step
        t_bar0 = t_last
        pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        deadline = self.start_time + cfg.train.max_minutes * 60 if cfg.train.max_minutes > 0 else None
        reserve = StepTimeReserve(cfg.train.reserve_steps, self.step)
        # A run bounded by time whose step cap is out of reach (the demo: 100000 steps, 15 min) shows its time
        # budget; the step count goes in the postfix.
        by_time = deadline is not None and cfg.train.steps - self.step > 10 * cfg.train.max_minutes * 60
        if by_time:
            pbar = tqdm(total=max(round(deadline - t_last), 1), desc=f"train ({cfg.train.max_minutes:.1f} min budget)",
                        unit="s", disable=not self.show_progress, dynamic_ncols=True, smoothing=0,
                        bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
        else:
            pbar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                        disable=not self.show_progress, dynamic_ncols=True)
        stopped_early = None
        loss_ema = None
        try:
            with (open(metrics_path, "a") if main else open(os.devnull, "w")) as metrics:
                while self.step < cfg.train.steps:
                    out = self.train_step()
                    pending.append((self.step, out["loss"], out["grad_norm"], out["lr"]))
                    if by_time:  # advance the bar to the seconds elapsed
                        pbar.update(min(round(time.time() - t_bar0), pbar.total) - pbar.n)
                    else:
                        pbar.update(1)
                    # every rank must agree to stop (signal to one rank, or wall-clock budget)
                    flag = 1.0 if self._stop_requested else 0.0
                    kept = reserve.seconds(self.step)
                    if deadline is not None and time.time() + kept > deadline:
                        flag = max(flag, 0.5)
                    if self.ctx.enabled:  # one collective: the stop flag, the schedule's clock, the reserve
                        flag, self._agreed_elapsed, kept = D.all_reduce_max(torch.tensor(
                            [flag, time.time() - self.start_time, kept], dtype=torch.float64), self.ctx).tolist()
                    self._time_reserved = kept
                    self._stop_requested = flag >= 1.0
                    out_of_time = 0.0 < flag < 1.0
                    last = self.step >= cfg.train.steps
                    if self.step % cfg.train.log_every == 0 or last or self._stop_requested or out_of_time:
                        now = time.time()
                        ips = (self.step - step_last) * self.global_batch / max(now - t_last, 1e-9)
                        t_last, step_last = now, self.step
                        # the interval's throughput goes on its last record
                        extra = {"img_per_s": ips, "nonfinite_skips": self.nonfinite_skips,
                                 "elapsed_s": now - self.start_time}
                        if peak_flops and flops_per_image:
                            extra["mfu"] = ips * flops_per_image / (peak_flops * self.ctx.world)
                            mfu_values.append(extra["mfu"])
                        extra["peak_mem_gib"] = peak_memory_gib(self.device)
                        for k, (s, l, gn, lr) in enumerate(pending):  # one host sync per log interval
                            rec = {"step": s, "loss": float(l), "grad_norm": float(gn), "lr": lr}
                            if k == len(pending) - 1:
                                rec.update(extra)
                            metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                        if writer is not None:
                            for k, v in rec.items():
                                if k != "step":
                                    writer.add_scalar(f"train/{k}", v, s)
                        loss_ema = rec["loss"] if loss_ema is None else 0.9 * loss_ema + 0.1 * rec["loss"]
                        if loss_ema is not None and rec["loss"] > 5 * loss_ema and self.step > 10 * cfg.train.log_every:
                            self.log(f"warning: loss spike at step {s}: {rec['loss']:.4f} vs running {loss_ema:.4f}")
                        pbar.set_postfix(step=self.step, loss=f"{rec['loss']:.4f}", img_s=f"{ips:.0f}")
                        pending.clear()
                        self._check_nonfinite(rec)
                    if (cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0 and not last
                            and self.nonfinite_in_a_row == 0):
                        self.save_checkpoint()
                    if cfg.train.sample_every > 0 and self.step % cfg.train.sample_every == 0 and not last:
                        self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
                    if self._stop_requested:
                        stopped_early = "signal"
                        break
                    if out_of_time:
                        stopped_early = "time budget"
                        break
        finally:
            pbar.close()
            _restore_stop_handlers(handlers)
        where = self.save_checkpoint()
        grid = self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
        if writer is not None:
            writer.close()
        elapsed = time.time() - self.start_time
        summary = {
            "steps": self.step,
            "minutes": elapsed / 60,
            "final_loss": loss_ema,
            "nonfinite_skips": self.nonfinite_skips,
            "skipped_data": dict(self.data.skipped if self.data is not None else getattr(self.dataset, "skipped", {})),
            "checkpoint": str(where),
            "pipeline": str(self.run_dir / "pipeline"),
            "samples": str(grid) if grid else None,
            "stopped_early": stopped_early,
            "world_size": self.ctx.world,
            "parallel": self.parallel,
            "global_batch": self.global_batch,
            "mfu_estimate": (sum(mfu_values) / len(mfu_values)) if mfu_values else None,
            "peak_mem_gib": peak_memory_gib(self.device),
        }
        if main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        mfu_txt = f", MFU ≈ {summary['mfu_estimate'] * 100:.2f}%" if summary["mfu_estimate"] is not None else ""
        self.log(
            f"done: {self.step} steps in {elapsed / 60:.1f} min, loss {loss_ema if loss_ema is None else round(loss_ema, 4)}, "
            f"skipped data {summary['skipped_data'] or 'none'}, non-finite steps skipped {self.nonfinite_skips}"
            + (f", stopped early ({stopped_early})" if stopped_early else "")
            + f"\n  {self.ctx.world} process(es), {self.parallel}, global batch {self.global_batch}{mfu_txt}, "
            f"peak memory {summary['peak_mem_gib']:.2f} GiB ({'CUDA allocated' if self.device.type == 'cuda' else 'RSS'})"
            + f"\n  checkpoint: {where}\n  pipeline (EMA weights): {self.run_dir / 'pipeline'}"
        )
        D.barrier(self.ctx)
        self.ctx.close()
        return summary

    # -- outputs -------------------------------------------------------------------------------
    def ema_model(self) -> Optional[GenTronTransformer]:
        """An unsharded copy of the model with the EMA weights (collective under FSDP2; None off rank 0)."""
        if self.parallel != "fsdp":
            if not self.ctx.is_main:
                return None
            model = GenTronTransformer.from_config(self.model.config)
            model.load_state_dict(self.model.state_dict())
            self.ema.copy_to(model)
            return model.to(self.device).eval()
        full_state = {k: D.full(v) for k, v in self.model.state_dict().items()}
        ema = self.ema.full_state_dict()
        if not self.ctx.is_main:
            return None
        model = GenTronTransformer.from_config(self.model.config)
        model.load_state_dict({k: v.float() for k, v in full_state.items()})
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in ema.items():
                params[n].copy_(v.to(params[n].dtype))
        return model.to(self.device).eval()

    def export_pipeline(self, out_dir: Path) -> None:
        from gentron.pipelines import GenTronPipeline

        model = self.ema_model()
        if model is None:
            return
        pipe = GenTronPipeline.from_parts(
            model, self.text_encoders, diffusion_config(self.cfg), sampler=self.cfg.sample.sampler, vae=self.vae
        )
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)

    def sample_grid(self, path: Path) -> Optional[Path]:
        from gentron.pipelines import GenTronPipeline, make_grid

        prompts = list(self.cfg.sample.prompts)
        if not prompts:
            return None
        model = self.ema_model()
        if model is None:
            return None
        pipe = GenTronPipeline.from_parts(
            model, self.text_encoders, diffusion_config(self.cfg), sampler=self.cfg.sample.sampler, vae=self.vae
        )
        g = torch.Generator().manual_seed(self.cfg.sample.seed)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            images = pipe(prompts, num_inference_steps=self.cfg.sample.steps,
                          guidance_scale=self.cfg.sample.guidance, generator=g, progress=False).images
        path.parent.mkdir(parents=True, exist_ok=True)
        make_grid(images, captions=prompts).save(path)
        return path


def training_flops_per_sample(model: GenTronTransformer, text_lengths: Sequence[int] = (), num_frames: int = 1) -> float:
    """Training FLOPs per image (or clip of ``num_frames``): 3 × forward (fwd + 2× bwd), recomputation not counted.

    The forward is counted by torch's ``FlopCounterMode`` on a meta-device copy (no memory, no compute), so
    per-token, per-text-token and per-sample work (adaLN modulation, timestep MLP) and spatial vs temporal
    attention are each counted at their real sizes. ``text_lengths``: tokens per encoder (default 77).
    """
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    with torch.device("meta"):
        meta = GenTronTransformer.from_config(c)
        lengths = list(text_lengths) + [77] * (meta.num_encoders - len(text_lengths))
        frames = (num_frames,) if num_frames > 1 else ()
        x = torch.zeros(1, c.in_channels, *frames, c.sample_size, c.sample_size)
        kw: dict[str, Any] = {}
        if c.conditioning == "class":
            kw["class_labels"] = torch.zeros(1, dtype=torch.long)
        else:
            kw["encoder_hidden_states"] = tuple(torch.zeros(1, n, d) for n, d in zip(lengths, c.text_dims))
            kw["encoder_attention_mask"] = tuple(torch.ones(1, n, dtype=torch.bool) for n in lengths)
            if hasattr(meta, "pooled_projections"):  # the model's own pooled widths (adaln-zero / cross-attn)
                kw["pooled_projections"] = tuple(torch.zeros(1, proj[0].in_features) for proj in meta.pooled_projections)
        if getattr(c, "micro_conditions", False):
            kw["added_cond_kwargs"] = {"resolution": torch.zeros(1, 2), "aspect_ratio": torch.zeros(1, 1)}
        with FlopCounterMode(display=False) as counter:
            meta(x, torch.zeros(1, dtype=torch.long), **kw)
    return 3.0 * counter.get_total_flops()


def peak_flops_per_device(device: torch.device, peak_tflops: float = 0.0,
                          autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Peak FLOP/s for MFU: ``train.peak_tflops`` if set; else bf16 dense peaks of known GPUs, or a rough CPU
    figure (threads × 2.5 GHz × 32 fp32 FLOP/cycle, AVX2 FMA), doubled for bf16 autocast on a CPU with native
    bf16 dot products (AVX512-BF16 does two bf16 multiply-adds per fp32 lane; without the doubling the demo
    printed an MFU of 122 %). 0 when unknown (MFU is then not reported)."""
    if peak_tflops > 0:
        return peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in (("H200", 989), ("H100", 989), ("A100", 312), ("L40", 181), ("A10", 125), ("4090", 165),
                        ("V100", 125)):
            if key in name:
                return tf * 1e12
        return 0.0
    bf16 = autocast_dtype == torch.bfloat16 and cpu_has_native_bf16()
    return torch.get_num_threads() * 2.5e9 * 32 * (2 if bf16 else 1)


class StepTimeReserve:
    """``train.reserve_steps``: the time of that many of this run's own steps, kept free before ``max_minutes`` ends.

    Why: what follows a time-bounded run (the demos' evaluations) costs about a fixed number of training steps
    on any machine, so a fixed number of minutes is too much on a fast CPU and too little on a slow one (it overran
    the 15-minute video demo by 1.6 min on the AVX2 EPYC). The step time is the mean from the WARMUP-th step of this
    ``fit`` on, so start-up costs do not count; until then nothing is reserved. A schedule timed on ``max_minutes``
    ends where the reserve begins (`Trainer.lr_at`)."""

    WARMUP = 5

    def __init__(self, steps: float, first_step: int):
        self.steps, self.first_step = float(steps), first_step
        self._start: Optional[tuple[int, float]] = None  # (step, time) where the measurement starts

    def seconds(self, step: int) -> float:
        """Seconds to keep free, called once per step with the step count reached."""
        if self.steps <= 0 or step < self.first_step + self.WARMUP:
            return 0.0
        if self._start is None:
            self._start = (step, time.time())
        done = step - self._start[0]
        return self.steps * (time.time() - self._start[1]) / done if done >= self.WARMUP else 0.0


def peak_memory_gib(device: torch.device) -> float:
    """CUDA: peak allocated by torch. CPU: the process's peak resident set size (ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except Exception:  # noqa: BLE001
        return 0.0


def _entry_dict(entry: Any) -> dict:
    return dict(kind=entry.kind, path=entry.path, max_length=entry.max_length, dtype=entry.dtype,
                hidden_layer=entry.hidden_layer)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing or broken: JSONL metrics still work
        return None
    return SummaryWriter(str(path))


def _install_stop_handlers(trainer: Trainer) -> dict:
    """SIGTERM / SIGUSR1 (preemption): finish the step, checkpoint, exit cleanly."""

    def handler(signum, frame):  # noqa: ARG001
        trainer._stop_requested = True
        trainer.log(f"received signal {signum}: finishing this step, checkpointing and exiting")

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    return old


def _restore_stop_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


def _optimizer_state_with_new_params(saved: dict, optimizer: torch.optim.Optimizer, new_ids: set) -> dict:
    """The saved optimizer state re-indexed for an optimizer that also holds the parameters ``new_ids``
    (added on resume): saved parameters keep their moments and step, new ones start without state."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    old_to_new = [i for i, p in enumerate(params) if id(p) not in new_ids]
    if len(saved["param_groups"]) != len(optimizer.param_groups) or len(saved["state"]) > len(old_to_new) or sum(
            len(g["params"]) for g in saved["param_groups"]) != len(old_to_new):
        raise ValueError("the checkpoint's optimizer state does not match the model's parameters")
    groups, start = [], 0
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        groups.append({**saved_group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    return {"state": {old_to_new[int(k)]: v for k, v in saved["state"].items()}, "param_groups": groups}

