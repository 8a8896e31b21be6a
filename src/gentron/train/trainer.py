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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

import gentron
from gentron.diffusion import DiffusionConfig, GaussianDiffusion
from gentron.models.transformer import GenTronTransformer, count_parameters, zoo_config
from gentron.text import TextEmbedding, TextEncoder, load_text_encoders
from gentron.train import checkpoint as ckpt
from gentron.train.config import ConfigError, RunConfig
from gentron.train.ema import EMA

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
    d = cfg.diffusion
    return DiffusionConfig(
        num_timesteps=d.num_timesteps,
        beta_schedule=d.beta_schedule,
        prediction=d.prediction,
        learn_sigma=d.learn_sigma,
        loss_weighting=d.loss_weighting,
        snr_gamma=d.snr_gamma,
    )


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


def prepare_dataset(cfg: RunConfig, log: Callable[[str], None] = print):
    """The training dataset; for ``data.kind=shapes`` the images are generated on first use."""
    from gentron.data.folder import ImageCaptionFolder

    path = Path(cfg.data.path)
    if cfg.data.kind == "shapes" and not (path / "captions.jsonl").is_file():
        from gentron.data.shapes import write_shapes_dataset

        log(f"generating {cfg.data.num} shapes-world images at {cfg.model.resolution}px into {path} ...")
        write_shapes_dataset(path, num=cfg.data.num, resolution=cfg.model.resolution, seed=cfg.data.seed,
                             kinds_weights=cfg.data.kinds_weights or None)
    return ImageCaptionFolder(
        path, resolution=cfg.model.resolution, center_crop=cfg.data.center_crop, random_flip=cfg.data.random_flip
    )


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
    """Frozen-encoder outputs for every distinct caption, computed once (they never change)."""

    def __init__(self, encoder: TextEncoder, captions: list[str], device: torch.device, batch: int = 256,
                 show_progress: bool = True):
        toks, masks, pooled = [], [], []
        for i in tqdm(range(0, len(captions), batch), desc="encoding captions", disable=not show_progress, leave=False):
            emb = encoder.encode(captions[i : i + batch])
            toks.append(emb.tokens.float().cpu())
            masks.append(emb.mask.cpu())
            pooled.append(emb.pooled.float().cpu())
        encoder.clear_cache()  # the bank holds these now; don't keep a second copy in the encoder's LRU
        self.tokens = torch.cat(toks).to(device)
        self.mask = torch.cat(masks).to(device)
        self.pooled = torch.cat(pooled).to(device)

    def __call__(self, ids: torch.Tensor) -> TextEmbedding:
        return TextEmbedding(tokens=self.tokens[ids], mask=self.mask[ids], pooled=self.pooled[ids])


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """Single-process trainer (DDP / FSDP2 build on the same loop)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        resume: Optional[str] = None,
        log: Callable[[str], None] = print,
        show_progress: bool = True,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log = log
        self.show_progress = show_progress
        self.device = resolve_device(cfg.train.device)
        self.autocast_dtype = resolve_autocast(cfg.train.precision, self.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

        # data first: a wrong path must fail before any model is built
        dataset = prepare_dataset(cfg, log)
        if len(dataset) == 0:
            raise ValueError(f"dataset {cfg.data.path} is empty")
        self.dataset = dataset
        self.data = preload(dataset, log, show_progress) if cfg.data.preload else None

        self.text_encoders = load_text_encoders([_entry_dict(e) for e in cfg.text.encoders], device=self.device)
        self.model = build_transformer(cfg, self.text_encoders).to(self.device)
        self.diffusion = GaussianDiffusion(diffusion_config(cfg))
        self.banks: list[Optional[TextBank]] = [
            TextBank(enc, self.data.captions, self.device, show_progress=show_progress)
            if (self.data is not None and not enc.trainable)
            else None
            for enc in self.text_encoders
        ]
        self.trainable_text = [enc for enc in self.text_encoders if enc.trainable]
        params = [p for p in self.model.parameters() if p.requires_grad]
        for enc in self.trainable_text:
            params += [p for p in enc.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay, fused=fused
        )
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup)
        self.step = 0
        self.nonfinite_skips = 0
        self.start_time = time.time()
        self._stop_requested = False
        if resume:
            self._resume(resume)

    # -- state ---------------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        if resume == "auto":
            found = ckpt.find_resumable(self.run_dir)
            if found is None:
                self.log("resume=auto: no complete checkpoint found, starting from scratch")
                return
            where, state = found
        else:
            where = Path(resume)
            state = ckpt.load_checkpoint(where)
        model_state = {k: v for k, v in state["model"].items() if not k.startswith("text.")}
        missing, unexpected = self.model.load_state_dict(model_state, strict=False)
        if missing or unexpected:
            bad = (missing or unexpected)[0]
            raise ValueError(f"checkpoint {where} does not match the model: first mismatched key {bad!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        meta = state["meta"]
        if "ema" in state:
            self.ema.load_state_dict(state["ema"], meta.get("ema_updates", meta["step"]))
        # trainable text encoders are stored in model.safetensors under "text.{i}."
        text_states = {k: v for k, v in state["model"].items() if k.startswith("text.")}
        for i, enc in enumerate(self.trainable_text):
            prefix = f"text.{i}."
            enc.load_state_dict({k[len(prefix) :]: v for k, v in text_states.items() if k.startswith(prefix)})
        self.step = int(meta["step"])
        self.nonfinite_skips = int(meta.get("nonfinite_skips", 0))
        self.log(f"resumed from {where} at step {self.step}")

    def model_state(self) -> dict[str, torch.Tensor]:
        state = dict(self.model.state_dict())
        for i, enc in enumerate(self.trainable_text):
            state.update({f"text.{i}.{k}": v for k, v in enc.state_dict().items()})
        return state

    def save_checkpoint(self) -> Path:
        meta = {
            "step": self.step,
            "ema_updates": self.ema.num_updates,
            "nonfinite_skips": self.nonfinite_skips,
            "gentron_version": gentron.__version__,
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state().tolist()},
        }
        where = ckpt.save_checkpoint(
            self.run_dir, self.step, self.model_state(), self.ema.state_dict(), self.optimizer.state_dict(), meta,
            keep=self.cfg.train.keep_checkpoints,
        )
        self.export_pipeline(self.run_dir / "pipeline")
        return where

    # -- one step ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay.

        With ``max_minutes`` the cosine runs on whichever comes first, steps or wall time, so a
        time-budgeted run (the demo) still ends at ``lr_min`` on a slower machine.
        """
        tc = self.cfg.train
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
        if tc.lr_schedule == "cosine" and step >= tc.warmup_steps:
            progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
            if tc.max_minutes > 0:
                progress = max(progress, (time.time() - self.start_time) / (tc.max_minutes * 60))
            progress = min(progress, 1.0)
            lr = tc.lr_min + 0.5 * (tc.lr - tc.lr_min) * (1 + math.cos(math.pi * progress))
        return lr

    def batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """Dataset indices of a micro-batch: epoch-wise permutations that depend only on the seed."""
        b = self.cfg.train.batch_size
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

    def load_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[str], Optional[torch.Tensor]]:
        if self.data is not None:
            x = self.data.images[idx].to(self.device).float() / 127.5 - 1.0
            ids = self.data.caption_ids[idx]
            return x, [self.data.captions[i] for i in ids.tolist()], ids
        items = [self.dataset[int(i)] for i in idx]
        return torch.stack([it["pixel_values"] for it in items]).to(self.device), [it["caption"] for it in items], None

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

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.train.grad_accum):
            g = step_generator(cfg.train.seed, self.step * cfg.train.grad_accum + micro)
            idx = self.batch_indices(self.step, micro)
            x0, captions, ids = self.load_batch(idx)
            b = x0.shape[0]
            drop = torch.rand(b, generator=g) < cfg.train.caption_dropout
            t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=g)
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            t = t.to(self.device)
            text = self.text_conditioning(captions, ids, drop)
            x_t = self.diffusion.q_sample(x0, t, noise)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                out = self.model(
                    x_t, t,
                    encoder_hidden_states=tuple(e.tokens for e in text),
                    encoder_attention_mask=tuple(e.mask for e in text),
                    pooled_projections=tuple(e.pooled for e in text),
                ).sample
            losses = self.diffusion.training_losses(out.float(), x0, x_t, t, noise)
            loss = losses["loss"].mean()
            (loss / cfg.train.grad_accum).backward()
            total = total + loss.detach() / cfg.train.grad_accum
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.ema.update(self.model)
        else:
            self.nonfinite_skips += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "lr": lr, "finite": finite}

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        n_params = count_parameters(self.model)
        self.log(
            f"gentron {gentron.__version__} | {cfg.model.name} {cfg.model.conditioning} | {n_params / 1e6:.2f}M params | "
            f"device {self.device} | autocast {self.autocast_dtype or 'fp32'} | "
            f"global batch {cfg.train.batch_size * cfg.train.grad_accum} "
            f"(= {cfg.train.batch_size} per step × 1 process × {cfg.train.grad_accum} accumulation)"
        )
        metrics_path = self.run_dir / "metrics.jsonl"
        writer = _tensorboard(self.run_dir / "tensorboard")
        handlers = _install_stop_handlers(self)
        pbar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", disable=not self.show_progress,
                    dynamic_ncols=True)
        t_last, step_last = time.time(), self.step
        pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        deadline = self.start_time + cfg.train.max_minutes * 60 if cfg.train.max_minutes > 0 else None
        stopped_early = None
        loss_ema = None
        try:
            with open(metrics_path, "a") as metrics:
                while self.step < cfg.train.steps:
                    out = self.train_step()
                    pending.append((self.step, out["loss"], out["grad_norm"], out["lr"]))
                    pbar.update(1)
                    last = self.step >= cfg.train.steps
                    if self.step % cfg.train.log_every == 0 or last or self._stop_requested:
                        now = time.time()
                        ips = (self.step - step_last) * cfg.train.batch_size * cfg.train.grad_accum / max(now - t_last, 1e-9)
                        t_last, step_last = now, self.step
                        for s, l, gn, lr in pending:  # one host sync per log interval
                            rec = {"step": s, "loss": float(l), "grad_norm": float(gn), "lr": lr}
                            metrics.write(json.dumps(rec) + "\n")
                        rec.update(img_per_s=ips, nonfinite_skips=self.nonfinite_skips, elapsed_s=now - self.start_time)
                        if self.device.type == "cuda":
                            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        metrics.flush()
                        if writer is not None:
                            for k, v in rec.items():
                                if k != "step":
                                    writer.add_scalar(f"train/{k}", v, s)
                        loss_ema = rec["loss"] if loss_ema is None else 0.9 * loss_ema + 0.1 * rec["loss"]
                        if loss_ema is not None and rec["loss"] > 5 * loss_ema and self.step > 10 * cfg.train.log_every:
                            self.log(f"warning: loss spike at step {s}: {rec['loss']:.4f} vs running {loss_ema:.4f}")
                        pbar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{ips:.0f}")
                        pending.clear()
                    if cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0 and not last:
                        self.save_checkpoint()
                    if cfg.train.sample_every > 0 and self.step % cfg.train.sample_every == 0 and not last:
                        self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
                    if self._stop_requested:
                        stopped_early = "signal"
                        break
                    if deadline is not None and time.time() > deadline:
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
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        self.log(
            f"done: {self.step} steps in {elapsed / 60:.1f} min, loss {loss_ema if loss_ema is None else round(loss_ema, 4)}, "
            f"skipped data {summary['skipped_data'] or 'none'}, non-finite steps skipped {self.nonfinite_skips}"
            + (f", stopped early ({stopped_early})" if stopped_early else "")
            + f"\n  checkpoint: {where}\n  pipeline (EMA weights): {self.run_dir / 'pipeline'}"
        )
        return summary

    # -- outputs -------------------------------------------------------------------------------
    def ema_model(self) -> GenTronTransformer:
        model = GenTronTransformer.from_config(self.model.config)
        model.load_state_dict(self.model.state_dict())
        self.ema.copy_to(model)
        return model.to(self.device).eval()

    def export_pipeline(self, out_dir: Path) -> None:
        from gentron.pipelines import GenTronPipeline

        pipe = GenTronPipeline.from_parts(
            self.ema_model(), self.text_encoders, diffusion_config(self.cfg), sampler=self.cfg.sample.sampler
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
        pipe = GenTronPipeline.from_parts(
            self.ema_model(), self.text_encoders, diffusion_config(self.cfg), sampler=self.cfg.sample.sampler
        )
        g = torch.Generator().manual_seed(self.cfg.sample.seed)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            images = pipe(prompts, num_inference_steps=self.cfg.sample.steps,
                          guidance_scale=self.cfg.sample.guidance, generator=g, progress=False).images
        path.parent.mkdir(parents=True, exist_ok=True)
        make_grid(images, captions=prompts).save(path)
        return path


def _entry_dict(entry: Any) -> dict:
    return dict(kind=entry.kind, path=entry.path, max_length=entry.max_length, dtype=entry.dtype)


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
