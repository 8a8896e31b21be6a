"""`gentron bench`: GenTron against the equivalent diffusers model, at identical shapes, in one process.

For every conditioning mode the benchmark builds a ``GenTronTransformer`` and its diffusers peer:

===============  =============================================  ==========================================
gentron mode     peer                                           weights
===============  =============================================  ==========================================
``adaln-single`` ``PixArtTransformer2DModel``                    identical (`export_diffusers_pixart`)
``cross-attn``   ``PixArtTransformer2DModel`` (same shapes)      random; GenTron has per-block adaLN-zero
``class``        ``DiTTransformer2DModel`` (same shapes)          random; diffusers has per-block embedders
===============  =============================================  ==========================================

and measures, interleaving the two models (A B A B …) so machine load hits both alike:

* **train**: images/s of one optimisation step (forward, loss = mean(out²), backward, fused AdamW
  for both models, as the trainer uses), no host synchronisation inside the step;
* **sample**: seconds per image of 20-step DPM-Solver++ with classifier-free guidance (batch 2). GenTron
  runs its own `GenTronPipeline` (text K/V computed once, both guidance branches in one batch); the
  peer runs the minimal diffusers PixArt / DiT denoising loop around its transformer (no pipeline
  overhead at all), with the same scheduler;
* **peak memory** of a training step (CUDA: ``max_memory_allocated``; CPU: the peak RSS increase,
  VmHWM after a reset through ``/proc/self/clear_refs``, with glibc returning freed blocks to the OS);
* **MFU** (CUDA only): analytic matmul FLOPs of the transformer blocks, fwd + bwd = 3 × fwd, against
  the bf16 matmul rate measured on the GPU (or ``--peak-tflops``).

``ratio`` is always peer time / GenTron time: above 1.0 GenTron is faster. Every number is a median over
``rounds`` interleaved rounds after warm-up. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from gentron.models.convert import GENTRON_ONLY_OPTIONS
from gentron.models.transformer import GenTronTransformer, count_parameters, zoo_config
from gentron.train.distributed import compile_blocks

MODES = ("cross-attn", "adaln-single", "class")
TEXT_DIMS = {"minilm": 384, "clip": 768, "t5": 4096, "flan-t5-xxl": 4096, "t5-xxl": 4096}
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


# ----------------------------------------------------------------------------------------------
# What to measure
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Shapes and measurement settings. Defaults: the demo recipe (``configs/demo.yaml``)."""

    model: str = "GenTron-Demo/4"
    resolution: int = 32  # input size in pixels / latents (no VAE in the benchmark)
    in_channels: int = 3
    learn_sigma: bool = False
    text_dim: int = 384
    text_len: int = 24
    batch: int = 32
    sample_steps: int = 20
    guidance: float = 4.0
    modes: tuple[str, ...] = MODES
    precisions: tuple[str, ...] = ("fp32", "bf16")
    device: str = "cpu"
    compile: bool = False
    train: bool = True
    sample: bool = True
    warmup: int = 2  # warm-up train steps / sampling runs per model (after compilation)
    rounds: int = 5  # interleaved A/B rounds; the median is reported
    train_iters: int = 3  # train steps per round
    sample_iters: int = 1  # sampling runs (of one image) per round
    peak_tflops: Optional[float] = None  # CUDA MFU denominator; measured when None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # the recipe's model.overrides (width, heads, …)
    threads: Optional[int] = None  # torch threads (the recipe's train.threads); None: torch's default
    notes: dict[str, Any] = field(default_factory=dict)


def demo_bench_config(path: Path = DEMO_CONFIG, **overrides: Any) -> BenchConfig:
    """A `BenchConfig` at the demo recipe's shapes, read from its YAML (the recipe may change)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    model, text, train, sample = raw.get("model", {}), raw.get("text", {}), raw.get("train", {}), raw.get("sample", {})
    enc = (text.get("encoders") or [{"kind": "minilm", "max_length": 24}])[0]
    cfg = BenchConfig(
        model=model.get("name", "GenTron-Demo/4"),
        resolution=int(model.get("resolution", 32)),
        in_channels=int(model.get("in_channels", 3)),
        learn_sigma=bool(raw.get("diffusion", {}).get("learn_sigma", False)),
        text_dim=TEXT_DIMS.get(enc.get("kind", "minilm"), 384),
        text_len=int(enc.get("max_length", 24)),
        batch=int(train.get("batch_size", 32)),
        sample_steps=int(sample.get("steps", 20)),
        guidance=float(sample.get("guidance", 4.0)),
        overrides=dict(model.get("overrides") or {}),
        threads=train.get("threads"),
    )
    # like for like: layers the peer has no counterpart for are left out of both models, and said so
    left_out = [k for k in GENTRON_ONLY_OPTIONS if cfg.overrides.pop(k, False)]
    if left_out:
        cfg.notes["left_out"] = left_out
    cfg.notes["recipe"] = str(path)
    cfg.notes["recipe_conditioning"] = model.get("conditioning", "cross-attn")
    return replace(cfg, **overrides)


def quick_config(**overrides: Any) -> BenchConfig:
    """CI-sized: the demo model at training batch 8, fp32, 10 sampling steps, 3 rounds (seconds on 2 cores)."""
    base = dict(modes=("cross-attn", "adaln-single"), precisions=("fp32",), batch=8, warmup=1, rounds=3,
                train_iters=1, sample_iters=1, sample_steps=10)
    base.update(overrides)
    return demo_bench_config(**base)


# ----------------------------------------------------------------------------------------------
# Building the pair
# ----------------------------------------------------------------------------------------------


TEXT_ONLY_OPTIONS = ("text_whitening",)


def gentron_kwargs(cfg: BenchConfig, mode: str, **extra: Any) -> dict[str, Any]:
    size = zoo_config(cfg.model)
    kw = zoo_config(
        cfg.model,
        conditioning=mode,
        sample_size=cfg.resolution,
        in_channels=cfg.in_channels,
        learn_sigma=cfg.learn_sigma,
        text_dims=[cfg.text_dim] if mode != "class" else [],
    )
    # the recipe's text-side options (its text whitening) do not exist in a class-conditional model
    kw.update({k: v for k, v in cfg.overrides.items() if not (mode == "class" and k in TEXT_ONLY_OPTIONS)})
    if mode == "adaln-single":  # PixArt-α's position scaling, so the model exports to diffusers exactly
        kw["pos_embed_base_size"] = cfg.resolution // size["patch_size"]
    kw.update(extra)
    return kw


def build_gentron(cfg: BenchConfig, mode: str, **extra: Any) -> GenTronTransformer:
    torch.manual_seed(cfg.seed)
    return GenTronTransformer(**gentron_kwargs(cfg, mode, **extra))


def build_peer(cfg: BenchConfig, mode: str, gentron: Optional[GenTronTransformer] = None) -> nn.Module:
    """The diffusers model at GenTron's shapes (for adaln-single: GenTron's own weights, exported)."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    kw = gentron_kwargs(cfg, mode)
    heads, width = kw["num_heads"], kw["hidden_size"]
    out_ch = 2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels
    if kw["mlp_hidden_size"] != 4 * width:
        raise ValueError(f"diffusers peers have MLP width 4 × hidden; {cfg.model} has {kw['mlp_hidden_size']}")
    torch.manual_seed(cfg.seed)
    if mode == "adaln-single" and gentron is not None:
        from gentron.models.convert import export_diffusers_pixart

        return export_diffusers_pixart(gentron).train()
    if mode in ("adaln-single", "cross-attn"):
        return PixArtTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=width // heads, in_channels=cfg.in_channels,
            out_channels=out_ch, num_layers=kw["depth"], cross_attention_dim=width, attention_bias=True,
            sample_size=cfg.resolution, patch_size=kw["patch_size"], activation_fn="gelu-approximate",
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            interpolation_scale=1, use_additional_conditions=False, caption_channels=cfg.text_dim,
        )
    return DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=cfg.in_channels,
        out_channels=out_ch, num_layers=kw["depth"], sample_size=cfg.resolution, patch_size=kw["patch_size"],
        activation_fn="gelu-approximate", norm_type="ada_norm_zero", norm_elementwise_affine=False, norm_eps=1e-6,
        num_embeds_ada_norm=1000,
    )


def peer_blocks(peer: nn.Module) -> nn.ModuleList:
    return peer.transformer_blocks


# ----------------------------------------------------------------------------------------------
# Inputs and steps
# ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    x: torch.Tensor
    t: torch.Tensor
    tokens: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    pooled: Optional[torch.Tensor]
    labels: Optional[torch.Tensor]


def make_inputs(cfg: BenchConfig, mode: str, batch: int, device: torch.device, seed: int = 0) -> Inputs:
    """Random images, timesteps and text tokens with realistic padding (at least 6 real tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    tokens = mask = pooled = labels = None
    if mode == "class":
        labels = torch.randint(0, 1000, (batch,), generator=g)
    else:
        tokens = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
        lengths = torch.randint(min(6, cfg.text_len), cfg.text_len + 1, (batch,), generator=g)
        mask = torch.arange(cfg.text_len)[None] < lengths[:, None]
        pooled = torch.randn(batch, cfg.text_dim, generator=g)
    mv = lambda z: None if z is None else z.to(device)  # noqa: E731
    return Inputs(mv(x), mv(t), mv(tokens), mv(mask), mv(pooled), mv(labels))


def gentron_forward(model: GenTronTransformer, inp: Inputs) -> torch.Tensor:
    mode = model.config.conditioning
    kw: dict[str, Any] = {}
    if mode == "class":
        kw["class_labels"] = inp.labels
    else:
        kw["encoder_hidden_states"], kw["encoder_attention_mask"] = inp.tokens, inp.mask
        if mode in ("cross-attn", "adaln-zero"):
            kw["pooled_projections"] = inp.pooled
    return model(inp.x, inp.t, **kw).sample


def peer_forward(model: nn.Module, inp: Inputs) -> torch.Tensor:
    if inp.labels is not None:
        return model(inp.x, timestep=inp.t, class_labels=inp.labels).sample
    return model(
        inp.x, encoder_hidden_states=inp.tokens, timestep=inp.t, encoder_attention_mask=inp.mask,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_train_step(model: nn.Module, forward: Callable, inp: Inputs, device: torch.device, precision: str):
    """One optimisation step, as a closure; nothing in it waits for the device."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer (CPU and CUDA)
    model.train()

    def step() -> None:
        with autocast(device, precision):
            out = forward(model, inp)
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_forward(model: nn.Module, forward: Callable, inp: Any, device: torch.device, precision: str):
    """One sampling-style forward (eval, no grad, the given precision), as a closure."""
    model.eval()

    @torch.no_grad()
    def run() -> None:
        with autocast(device, precision):
            forward(model, inp)

    return run


class _FixedTextPipeline:
    """Factory for a `GenTronPipeline` whose text encoders are replaced by fixed embeddings.

    The text encoder is outside the benchmark for both models; everything after it (text K/V once per
    prompt, batched guidance, scheduler, tqdm off) is GenTron's real sampling path.
    """

    @staticmethod
    def build(model: GenTronTransformer, cfg: BenchConfig, inp: Inputs):
        from gentron.diffusion import DiffusionConfig, make_scheduler
        from gentron.pipelines.pipeline_gentron import GenTronPipeline
        from gentron.text import TextEmbedding

        class FixedText(GenTronPipeline):
            def encode_prompt(self, prompts, device):  # noqa: ARG002 - (cond, uncond) of the benchmark
                return [TextEmbedding(tokens=inp.tokens, mask=inp.mask, pooled=inp.pooled)]

        diffusion = DiffusionConfig(beta_schedule="cosine", prediction="sample", learn_sigma=cfg.learn_sigma)
        pipe = FixedText(transformer=model, scheduler=make_scheduler("dpm", diffusion))
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make_gentron_sampler(model: GenTronTransformer, cfg: BenchConfig, device: torch.device, precision: str,
                         **pipe_kwargs: Any):
    inp = make_inputs(cfg, model.config.conditioning, 2, device, seed=1)
    pipe = _FixedTextPipeline.build(model, cfg, inp)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    labels = None if inp.labels is None else inp.labels[:1]

    def sample() -> torch.Tensor:
        with autocast(device, precision):
            return pipe(
                prompt=None if labels is not None else "p", class_labels=labels, num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance, output_type="pt", generator=gen, progress=False, **pipe_kwargs,
            ).images

    return sample


def make_peer_sampler(model: nn.Module, cfg: BenchConfig, mode: str, device: torch.device, precision: str):
    """diffusers' PixArt / DiT denoising loop, stripped to the transformer call, guidance and scheduler."""
    from gentron.diffusion import DiffusionConfig, make_scheduler

    inp = make_inputs(cfg, mode, 2, device, seed=1)
    diffusion = DiffusionConfig(beta_schedule="cosine", prediction="sample", learn_sigma=cfg.learn_sigma)
    scheduler = make_scheduler("dpm", diffusion)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    c = cfg.in_channels
    labels = None
    if inp.labels is not None:
        labels = torch.cat([inp.labels[:1], torch.full_like(inp.labels[:1], 1000)])

    @torch.no_grad()
    def sample() -> torch.Tensor:
        latents = torch.randn(1, c, cfg.resolution, cfg.resolution, generator=gen).to(device)
        scheduler.set_timesteps(cfg.sample_steps, device=device)
        latents = latents * scheduler.init_noise_sigma
        with autocast(device, precision):
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                tt = t.expand(x.shape[0])
                if labels is not None:
                    out = model(x, timestep=tt, class_labels=labels).sample
                else:
                    out = model(x, encoder_hidden_states=inp.tokens, encoder_attention_mask=inp.mask, timestep=tt,
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
                out = out.float()[:, :c]
                cond, uncond = out.chunk(2)
                latents = scheduler.step(uncond + cfg.guidance * (cond - uncond), t, latents).prev_sample
        return latents

    return sample


# ----------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------


def cpu_bench_setup(cfg: BenchConfig, threads: Optional[int] = None) -> torch.device:
    """Threads (``threads`` or the config's), flush-to-zero for denormals; the CPU device the scripts time on."""
    if threads or cfg.threads:
        torch.set_num_threads(threads or cfg.threads)
    torch.set_flush_denormal(True)
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``iters`` calls, synchronised at both ends only."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / iters


def interleaved(fns: dict[str, Callable[[], Any]], iters: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timed A B A B … (the order alternates per round)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(timed(fns[name], iters, device))
    return {k: statistics.median(v) for k, v in samples.items()}


def _rss_kib(field_name: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


_M_MMAP_THRESHOLD = -3


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> Optional[float]:
    """Peak memory one call of ``fn`` adds: CUDA allocator peak, or the CPU peak RSS increase."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # glibc keeps freed blocks in its heap, so RSS would not fall after a step: serve every block of
    # 64 KiB or more by mmap (returned to the OS when freed) while measuring, then restore a 32 MiB
    # threshold (glibc's own ceiling) so timing is not charged page faults.
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    if base is None or peak is None:
        return None
    return (peak - base) / 1024


# ----------------------------------------------------------------------------------------------
# FLOPs and MFU
# ----------------------------------------------------------------------------------------------


def block_matmul_flops(cfg: BenchConfig, mode: str, batch: int) -> float:
    """Analytic matmul FLOPs of one forward of the transformer blocks (2 per multiply-add)."""
    kw = gentron_kwargs(cfg, mode)
    d, m, depth, p = kw["hidden_size"], kw["mlp_hidden_size"], kw["depth"], kw["patch_size"]
    n = (cfg.resolution // p) ** 2
    per_token = 2 * (3 * d * d + d * d) + 2 * 2 * n * d  # self-attn projections + QKᵀ and AV
    per_token += 2 * 2 * d * m  # MLP
    flops = per_token * n
    if mode != "class":
        l = cfg.text_len
        flops += n * (2 * 2 * d * d + 2 * 2 * l * d) + l * 2 * 2 * d * d  # q, out, attention; K/V of text
    return float(flops * depth * batch)


def measured_peak_tflops(device: torch.device) -> float:
    """The bf16 matmul rate of this GPU (what MFU is measured against, as in the peer notes)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sec = timed(lambda: a @ b, 20, device)
    return 2 * 8192**3 / sec / 1e12


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    precision: str
    gentron_params: int
    peer_params: int
    peer: str
    train_gentron: Optional[float] = None  # img/s
    train_peer: Optional[float] = None
    mem_gentron: Optional[float] = None  # MiB
    mem_peer: Optional[float] = None
    mfu_gentron: Optional[float] = None
    mfu_peer: Optional[float] = None
    sample_gentron: Optional[float] = None  # s/image
    sample_peer: Optional[float] = None
    compile_s_gentron: Optional[float] = None
    compile_s_peer: Optional[float] = None

    @property
    def train_ratio(self) -> Optional[float]:
        if self.train_gentron is None or self.train_peer is None:
            return None
        return self.train_gentron / self.train_peer

    @property
    def sample_ratio(self) -> Optional[float]:
        if self.sample_gentron is None or self.sample_peer is None:
            return None
        return self.sample_peer / self.sample_gentron


def run_pair(cfg: BenchConfig, mode: str, precision: str, log: Callable[[str], None] = print) -> Row:
    device = torch.device(cfg.device)
    gentron = build_gentron(cfg, mode).to(device)
    peer = build_peer(cfg, mode, gentron).to(device)
    row = Row(mode, precision, count_parameters(gentron), count_parameters(peer), type(peer).__name__)
    if cfg.compile:
        compile_blocks(gentron.blocks, device)
        compile_blocks(peer_blocks(peer), device)
    peak = None
    if device.type == "cuda":
        peak = cfg.peak_tflops or cfg.notes.setdefault("peak_tflops", measured_peak_tflops(device))

    if cfg.train:
        inp = make_inputs(cfg, mode, cfg.batch, device)
        steps = {
            "gentron": make_train_step(gentron, gentron_forward, inp, device, precision),
            "peer": make_train_step(peer, peer_forward, inp, device, precision),
        }
        for name, fn in steps.items():
            t0 = time.perf_counter()
            timed(fn, 1, device)  # compilation (if any) happens here
            first = time.perf_counter() - t0
            timed(fn, max(cfg.warmup, 1), device)
            if cfg.compile:
                setattr(row, f"compile_s_{name}", max(first - timed(fn, 1, device), 0.0))
        for name, fn in steps.items():
            setattr(row, f"mem_{name}", peak_memory_mib(fn, device))
        sec = interleaved(steps, cfg.train_iters, cfg.rounds, device)
        row.train_gentron, row.train_peer = cfg.batch / sec["gentron"], cfg.batch / sec["peer"]
        if peak:
            flops = 3 * block_matmul_flops(cfg, mode, cfg.batch)
            row.mfu_gentron = flops / sec["gentron"] / (peak * 1e12)
            row.mfu_peer = flops / sec["peer"] / (peak * 1e12)
        del steps
        gentron.zero_grad(set_to_none=True)
        peer.zero_grad(set_to_none=True)

    if cfg.sample:
        samplers = {
            "gentron": make_gentron_sampler(gentron, cfg, device, precision),
            "peer": make_peer_sampler(peer, cfg, mode, device, precision),
        }
        for fn in samplers.values():
            timed(fn, max(cfg.warmup, 1), device)
        sec = interleaved(samplers, cfg.sample_iters, cfg.rounds, device)
        row.sample_gentron, row.sample_peer = sec["gentron"], sec["peer"]
    log(f"  {mode:<13}{precision:<5} " + _row_cells(row, device))
    return row


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[Row]:
    torch.set_flush_denormal(True)
    rows = []
    for precision in cfg.precisions:
        for mode in cfg.modes:
            rows.append(run_pair(cfg, mode, precision, log=log))
            gc.collect()
    return rows


def _fmt(v: Optional[float], spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _row_cells(row: Row, device: torch.device) -> str:
    return (f"train {_fmt(row.train_gentron, '.1f')} vs {_fmt(row.train_peer, '.1f')} img/s "
            f"({_fmt(row.train_ratio, '.2f')}×), sample {_fmt(row.sample_gentron, '.3f')} vs "
            f"{_fmt(row.sample_peer, '.3f')} s/img ({_fmt(row.sample_ratio, '.2f')}×)")


def format_table(rows: list[Row], cfg: BenchConfig) -> str:
    """A Markdown table; ratio = how many times faster GenTron is (peer time / GenTron time)."""
    cuda = cfg.device.startswith("cuda")
    mem_unit = "peak mem MiB" if cuda else "peak RSS +MiB"
    head = ["mode", "prec", "peer", "params G / peer", "train img/s G", "train img/s peer", "train ratio"]
    if cuda:
        head += ["MFU G", "MFU peer"]
    head += [f"{mem_unit} G / peer", "sample s/img G", "sample s/img peer", "sample ratio"]
    if cfg.compile:
        head += ["compile s G / peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.mode, r.precision, r.peer.replace("Transformer2DModel", ""),
                 f"{r.gentron_params / 1e6:.2f}M / {r.peer_params / 1e6:.2f}M",
                 _fmt(r.train_gentron, ".1f"), _fmt(r.train_peer, ".1f"), _fmt(r.train_ratio, ".2f") + "×"]
        if cuda:
            cells += [_fmt(r.mfu_gentron, ".2f"), _fmt(r.mfu_peer, ".2f")]
        cells += [f"{_fmt(r.mem_gentron, '.0f')} / {_fmt(r.mem_peer, '.0f')}",
                  _fmt(r.sample_gentron, ".3f"), _fmt(r.sample_peer, ".3f"), _fmt(r.sample_ratio, ".2f") + "×"]
        if cfg.compile:
            cells += [f"{_fmt(r.compile_s_gentron, '.1f')} / {_fmt(r.compile_s_peer, '.1f')}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(cfg: BenchConfig) -> str:
    kw = gentron_kwargs(cfg, "cross-attn")
    return (f"{cfg.model} (width {kw['hidden_size']}, depth {kw['depth']}, {kw['num_heads']} heads, MLP "
            f"{kw['mlp_hidden_size']}, patch {kw['patch_size']}) at {cfg.resolution}², {cfg.in_channels} channels, "
            f"text {cfg.text_len}×{cfg.text_dim}, train batch {cfg.batch}, sampling {cfg.sample_steps}-step DPM "
            f"with CFG {cfg.guidance} (batch 2), device {cfg.device}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads" + (", regional torch.compile" if cfg.compile else ", eager")
            + (f"; left out (no diffusers counterpart): {', '.join(cfg.notes['left_out'])}"
               if cfg.notes.get("left_out") else ""))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gentron bench`` on an argparse sub-parser collection; returns the parser."""
    s = subparsers.add_parser(
        "bench",
        help="benchmark GenTron against the equivalent diffusers model (train img/s, sampling s/image)",
        description="GenTron vs diffusers PixArt / DiT at identical shapes in one process. See docs/benchmarks.md.",
    )
    s.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    s.add_argument("--quick", action="store_true", help="CI-sized run (about a minute on 2 CPU cores)")
    s.add_argument("--compile", action="store_true", help="regional torch.compile of every block (both models)")
    s.add_argument("--model", help="zoo size, e.g. GenTron-XL/2 (default: the demo recipe's)")
    s.add_argument("--config", default=str(DEMO_CONFIG), help="recipe YAML the shapes come from")
    s.add_argument("--resolution", type=int, help="input size (latent size when the model runs on latents)")
    s.add_argument("--in-channels", type=int)
    s.add_argument("--text-dim", type=int)
    s.add_argument("--text-len", type=int)
    s.add_argument("--batch", type=int, help="training batch")
    s.add_argument("--modes", nargs="+", choices=MODES, help="conditioning modes (default: all)")
    s.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], help="fp32 and/or bf16 autocast")
    s.add_argument("--steps", type=int, help="sampling steps (default: the recipe's)")
    s.add_argument("--rounds", type=int, help="interleaved A/B rounds (median reported)")
    s.add_argument("--train-iters", type=int, help="train steps per round")
    s.add_argument("--warmup", type=int)
    s.add_argument("--no-train", action="store_true")
    s.add_argument("--no-sample", action="store_true")
    s.add_argument("--peak-tflops", type=float, help="MFU denominator on CUDA (default: measured bf16 matmul)")
    s.add_argument("--threads", type=int, help="torch threads (default: the recipe's train.threads)")
    s.set_defaults(func=cmd_bench)
    return s


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    cfg = quick_config() if args.quick else demo_bench_config(Path(args.config))
    if args.quick and args.config != str(DEMO_CONFIG):
        cfg = replace(demo_bench_config(Path(args.config)), **{k: getattr(cfg, k) for k in
                      ("modes", "precisions", "batch", "warmup", "rounds", "train_iters", "sample_iters",
                       "sample_steps")})
    over = {
        "overrides": {} if args.model else None,  # a zoo size given explicitly: no recipe overrides
        "model": args.model, "resolution": args.resolution, "in_channels": args.in_channels,
        "text_dim": args.text_dim, "text_len": args.text_len, "batch": args.batch, "sample_steps": args.steps,
        "rounds": args.rounds, "train_iters": args.train_iters, "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "modes": tuple(args.modes) if args.modes else None,
        "precisions": tuple(args.precision) if args.precision else None,
    }
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    return replace(cfg, device=args.device, compile=args.compile, train=not args.no_train, sample=not args.no_sample)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    cfg = config_from_args(args)
    if args.threads or cfg.threads:
        torch.set_num_threads(args.threads or cfg.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(describe(cfg))
    t0 = time.perf_counter()
    rows = run_bench(cfg)
    print()
    print(format_table(rows, cfg))
    print(f"\nratio = peer time / GenTron time (> 1: GenTron faster); medians of {cfg.rounds} interleaved rounds; "
          f"{time.perf_counter() - t0:.0f} s in all")
    if "peak_tflops" in cfg.notes:
        print(f"MFU against {cfg.notes['peak_tflops']:.0f} TFLOP/s (measured bf16 matmul)")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gentron")
    add_bench_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["bench", *(argv or [])] if not argv or argv[0] != "bench" else argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
