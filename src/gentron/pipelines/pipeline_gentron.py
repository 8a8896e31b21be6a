"""GenTronPipeline: text → image (and video) sampling with diffusers schedulers.

Components follow diffusers' PixArt-α pipeline: ``transformer``, ``scheduler``, up to three text
encoders (``text_encoder``/``tokenizer``, ``_2``, ``_3``; GenTron uses CLIP + Flan-T5), optional
``vae`` (pixel space when absent). How each text encoder's output is read (CLIP pooler, masked mean, …)
is recorded in the pipeline config as ``text_encoder_kinds`` / ``text_max_lengths`` / ``text_hidden_layers``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from gentron.diffusion import DiffusionConfig, cfg_combine, make_scheduler, scheduler_step, split_model_output
# diffusers resolves the saved "transformer" component by its module name, which must already be imported
# for a plain `GenTronPipeline.from_pretrained(dir)` in a fresh interpreter
from gentron.models.transformer import GenTronTransformer  # noqa: F401
from gentron.text import TextEmbedding, TextEncoder

_SLOTS = ("", "_2", "_3")


class GenTronPipelineOutput(BaseOutput):
    # Images: list of PIL images, or a numpy array (N, H, W, 3) in [0, 1], or a tensor (N, 3, H, W).
    # Videos (num_frames > 1): a list (one per sample) of lists of PIL frames, or (N, T, H, W, 3) / (N, 3, T, H, W).
    images: Any

MOTION_GUIDANCE_DEFAULT = 1.0  # λ_M = 1: ordinary CFG with motion on; GenTron's useful range is 1.0-1.3
VIDEO_TEXT_GUIDANCE_DEFAULT = 7.5  # λ_T for videos (GenTron Sec. 4)


class GenTronPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                            "text_encoder_3", "tokenizer_3", "vae"]

    def __init__(
        self,
        transformer,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        vae=None,
        text_encoder_kinds: Optional[Sequence[str]] = None,
        text_max_lengths: Optional[Sequence[int]] = None,
        text_hidden_layers: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3, vae=vae,
        )
        self.register_to_config(
            text_encoder_kinds=list(text_encoder_kinds or []), text_max_lengths=list(text_max_lengths or []),
            # pipelines saved before the option have no key: their encoders used the last layer
            text_hidden_layers=list(text_hidden_layers or [-1] * len(text_encoder_kinds or [])),
        )
        self._encoders: Optional[list[TextEncoder]] = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        transformer,
        text_encoders: Sequence[TextEncoder],
        diffusion: DiffusionConfig,
        sampler: str = "dpm",
        vae=None,
    ) -> "GenTronPipeline":
        """Assemble a pipeline from gentron objects (what the trainer exports)."""
        if len(text_encoders) > len(_SLOTS):
            raise ValueError(f"at most {len(_SLOTS)} text encoders are supported, got {len(text_encoders)}")
        parts: dict[str, Any] = {}
        for slot, enc in zip(_SLOTS, text_encoders):
            model, tokenizer = enc.components()
            parts[f"text_encoder{slot}"] = model
            parts[f"tokenizer{slot}"] = tokenizer
        pipe = cls(
            transformer=transformer,
            scheduler=make_scheduler(sampler, diffusion),
            vae=vae,
            text_encoder_kinds=[e.kind for e in text_encoders],
            text_max_lengths=[e.max_length for e in text_encoders],
            text_hidden_layers=[e.hidden_layer for e in text_encoders],
            **parts,
        )
        pipe._encoders = list(text_encoders)
        return pipe

    def set_sampler(self, name: str) -> None:
        """Swap the scheduler for another diffusers one with the same noise schedule (dpm|ddim|ddpm|sa)."""
        from gentron.diffusion import diffusion_config_from_scheduler

        self.scheduler = make_scheduler(name, diffusion_config_from_scheduler(self.scheduler))

    @property
    def text_encoders(self) -> list[TextEncoder]:
        if self._encoders is None:
            encs = []
            c = self.config
            for slot, kind, max_len, layer in zip(_SLOTS, c.text_encoder_kinds, c.text_max_lengths, c.text_hidden_layers):
                model, tok = getattr(self, f"text_encoder{slot}"), getattr(self, f"tokenizer{slot}")
                if model is None:
                    raise ValueError(f"pipeline config lists text encoder {kind!r} but text_encoder{slot} is missing")
                encs.append(TextEncoder.from_components(model, tok, kind=kind, max_length=max_len, hidden_layer=layer))
            self._encoders = encs
        return self._encoders

    # -- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device: torch.device) -> list[TextEmbedding]:
        return [enc.encode(prompts, device=device) for enc in self.text_encoders]

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, list[str], None] = None,
        negative_prompt: Union[str, list[str], None] = None,
        num_inference_steps: int = 20,
        guidance_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_images_per_prompt: int = 1,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool = True,
        num_frames: int = 1,
        motion_guidance_scale: float = MOTION_GUIDANCE_DEFAULT,
    ):
        """Sample images (or videos). Guidance batches all branches in one forward.

        Args:
            prompt: text prompt(s); ``negative_prompt`` replaces the empty prompt of the unconditional
                branch (classifier-free guidance).
            guidance_scale: CFG scale (λ_T for videos); ≤ 1 runs the conditional branch only. Default 4.5 for
                images, 7.5 for videos (GenTron's λ_T).
            height / width: output size in pixels (default: the model's training size).
            output_type: "pil" (list of PIL images), "np" (N, H, W, 3 in [0, 1]) or "pt" ([-1, 1]).
            num_frames: > 1 samples videos (a model with ``temporal_layers``); ``images`` then holds, per
                sample, a list of T PIL frames ("np": (N, T, H, W, 3); "pt": (N, 3, T, H, W)).
            motion_guidance_scale: λ_M of GenTron's motion-free guidance (Eq. 6)::

                    ε = ε(∅,∅) + λ_T·(ε(c_T,c_M) − ε(∅,c_M)) + λ_M·(ε(∅,c_M) − ε(∅,∅))

                with λ_T = ``guidance_scale`` and ε(·,∅) the motion-free branch (identity temporal mask).
                λ_M = 1 is ordinary CFG with motion on and skips the motion-free branch; the paper's
                useful range is 1.0-1.3. All branches run in one batched forward.
        """
        model = self.transformer
        device = model.device
        mode = model.config.conditioning
        if mode == "class":
            if class_labels is None:
                raise ValueError("this is a class-conditional model: pass class_labels")
            prompts = [str(int(c)) for c in class_labels.reshape(-1).tolist()]
        else:
            if prompt is None:
                raise ValueError("prompt is required")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(prompts)
        negatives = [""] * n
        if negative_prompt is not None:
            neg = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(neg) not in (1, len(prompts) // num_images_per_prompt):
                raise ValueError("negative_prompt must be one string or one per prompt")
            neg = neg * (len(prompts) // num_images_per_prompt) if len(neg) == 1 else neg
            negatives = [p for p in neg for _ in range(num_images_per_prompt)]
        if num_frames < 1:
            raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
        video = num_frames > 1
        if guidance_scale is None:
            guidance_scale = VIDEO_TEXT_GUIDANCE_DEFAULT if video else 4.5
        if video and not model.config.temporal_layers:
            raise ValueError("num_frames > 1 needs a video model (temporal_layers=True)")
        motion_guided = video and motion_guidance_scale != 1.0
        guided = guidance_scale > 1.0 or motion_guided
        # branches: [cond (c_T, c_M)] + [uncond (∅, c_M)] + [motion-free uncond (∅, ∅)]
        branches = 3 if motion_guided else (2 if guided else 1)

        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        size = model.config.sample_size * factor
        height, width = height or size, width or size
        p = model.config.patch_size * factor
        if height % p or width % p:
            raise ValueError(f"height and width must be multiples of {p}, got {height}x{width}")
        shape = (n, model.config.in_channels, height // factor, width // factor)
        if video:
            shape = (n, model.config.in_channels, num_frames, height // factor, width // factor)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        latents = latents.to(device=device, dtype=torch.float32)

        cond_kwargs: dict[str, Any] = {}
        if mode == "class":
            labels = class_labels.reshape(-1).repeat_interleave(num_images_per_prompt).to(device)
            if guided:
                null = torch.full_like(labels, model.config.num_classes)
                labels = torch.cat([labels] + [null] * (branches - 1))
            cond_kwargs["class_labels"] = labels
        else:
            texts = self.encode_prompt(prompts + negatives * (branches - 1), device)
            tokens = tuple(e.tokens for e in texts)
            masks = tuple(e.mask for e in texts)
            cond_kwargs["pooled_projections"] = tuple(e.pooled for e in texts)
            if mode in ("cross-attn", "adaln-single"):
                # Text keys/values are constant over the denoising steps: project them once.
                cond_kwargs["added_cond_kwargs"] = {"text_kv": model.precompute_text_kv(tokens, masks)}
            if model.config.micro_conditions:
                b = branches * n
                cond_kwargs.setdefault("added_cond_kwargs", {}).update(
                    resolution=torch.tensor([[height, width]], device=device, dtype=torch.float32).repeat(b, 1),
                    aspect_ratio=torch.tensor([[height / width]], device=device, dtype=torch.float32).repeat(b, 1),
                )

        if motion_guided:
            cond_kwargs["motion_free"] = torch.arange(branches * n, device=device) >= 2 * n

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        learn_sigma = model.out_channels == 2 * model.config.in_channels
        for t in tqdm(self.scheduler.timesteps, disable=not progress, desc="sampling", leave=False):
            x = torch.cat([latents] * branches) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            out = model(x, t.expand(x.shape[0]), **cond_kwargs).sample.float()
            if guided:
                c = model.config.in_channels
                if motion_guided:
                    cond, uncond, free = out.chunk(3)
                    pred = motion_free_guidance(cond[:, :c], uncond[:, :c], free[:, :c], guidance_scale,
                                                motion_guidance_scale)
                else:
                    cond, uncond = out.chunk(2)
                    pred = cfg_combine(cond[:, :c], uncond[:, :c], guidance_scale)
                out = torch.cat([pred, cond[:, c:]], dim=1)  # keep the conditional variance (DiT)
            out = split_model_output(out, learn_sigma, self.scheduler)
            latents = scheduler_step(self.scheduler, out, t, latents, generator=generator)

        if video:
            b_, c_, t_, h_, w_ = latents.shape
            frames = self.decode(latents.transpose(1, 2).reshape(b_ * t_, c_, h_, w_))
            images = frames.view(b_, t_, *frames.shape[1:]).transpose(1, 2)  # (N, 3, T, H, W)
            if output_type == "pt":
                result = images
            else:
                arr = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().float().numpy()
                result = arr if output_type == "np" else [
                    [Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in arr
                ]
            if not return_dict:
                return (result,)
            return GenTronPipelineOutput(images=result)

        images = self.decode(latents)
        if output_type == "pt":
            result = images
        else:
            arr = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().float().numpy()
            result = arr if output_type == "np" else [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
        if not return_dict:
            return (result,)
        return GenTronPipelineOutput(images=result)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → pixels in [-1, 1] (identity in pixel space); sliced, and frame by frame for video."""
        if self.vae is None:
            return latents
        from gentron.models.vae import decode_latents

        return decode_latents(self.vae, latents)


def motion_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, eps_free: torch.Tensor,
                         text_scale: float, motion_scale: float) -> torch.Tensor:
    """GenTron Eq. 6: ε(∅,∅) + λ_T·(ε(c_T,c_M) − ε(∅,c_M)) + λ_M·(ε(∅,c_M) − ε(∅,∅)).

    ``eps_cond`` = ε(c_T, c_M), ``eps_uncond`` = ε(∅, c_M), ``eps_free`` = ε(∅, ∅) (motion-free mask).
    With λ_M = 1 this is ordinary CFG ε(∅,c_M) + λ_T·(ε(c_T,c_M) − ε(∅,c_M)).
    """
    return eps_free + text_scale * (eps_cond - eps_uncond) + motion_scale * (eps_uncond - eps_free)


def make_grid(images: Sequence[Image.Image], captions: Optional[Sequence[str]] = None, cols: Optional[int] = None,
              scale: int = 0) -> Image.Image:
    """Tile images into one picture; tiny images are upscaled (nearest) so the grid is viewable."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    if scale <= 0:
        scale = max(1, 128 // max(w, h))
    w, h = w * scale, h * scale
    cols = cols or min(len(images), 8)
    rows = (len(images) + cols - 1) // cols
    label_h = 12 if captions else 0
    grid = Image.new("RGB", (cols * w, rows * (h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img.convert("RGB").resize((w, h), Image.NEAREST), (c * w, r * (h + label_h) + label_h))
        if captions:
            text = captions[i % len(captions)]
            max_chars = max(4, w // 6)
            draw.text((c * w + 2, r * (h + label_h)), text[:max_chars], fill=(0, 0, 0))
    return grid
