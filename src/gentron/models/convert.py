"""Exact checkpoint conversion (DiT, PixArt-α, diffusers) and PixArt-α's re-parameterised init.

Layouts handled (see ``docs/convert.md``):

=====================  ===========================================================  ==================
layout                 what                                                         GenTron mode
=====================  ===========================================================  ==================
``dit``                official DiT ``.pt`` (``DiT-XL-2-256x256.pt``, training ckpt)  ``class``
``pixart``             official PixArt-α ``.pth`` (256 / 512 / 1024-MS)              ``adaln-single``
``diffusers-dit``      diffusers ``DiTTransformer2DModel``                          ``class``
``diffusers-pixart``   diffusers ``PixArtTransformer2DModel`` (also exported to)     ``adaln-single``
=====================  ===========================================================  ==================

Every diffusers path goes *through* the official layout (diffusers → official → GenTron and GenTron →
official → diffusers), so the official converters are exercised by every diffusers round trip.

All converters validate what they read: a key the layout does not know raises ``ValueError`` naming
the first such key, a missing key names the key, and a tensor of the wrong shape names the key and
both shapes. Files are read with safetensors or ``torch.load(weights_only=True)``; nothing else is
ever unpickled.

Re-parameterisation (PixArt-α Sec. 2.3): `reparam_init_from_dit` builds a text-conditional model
from a class-conditional DiT so that its per-block modulations equal DiT's at a reference timestep
(t = 500, null class); see the function's docstring for the exact choices.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from gentron.models import offline_load_kwargs
from gentron.models.transformer import GenTronTransformer, sincos_2d

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, Path]

__all__ = [
    "load_checkpoint_file",
    "detect_layout",
    "build_model",
    "convert_dit_state_dict",
    "export_dit_state_dict",
    "diffusers_dit_to_official",
    "convert_diffusers_dit",
    "convert_pixart_state_dict",
    "export_pixart_state_dict",
    "diffusers_pixart_to_official",
    "official_pixart_to_diffusers",
    "convert_diffusers_pixart",
    "export_diffusers_pixart",
    "reparam_init_from_dit",
    "init_model_from_dit",
    "add_convert_parser",
    "cmd_convert",
]

# ----------------------------------------------------------------------------------------------
# Reading checkpoint files (never unpickles arbitrary objects)
# ----------------------------------------------------------------------------------------------

_TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
# Wrappers used by DiT / PixArt training checkpoints, in order of preference.
_EMA_KEYS = ("ema", "state_dict_ema", "model_ema", "ema_state_dict")
_MODEL_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def load_checkpoint_file(path: PathLike, prefer_ema: bool = True) -> StateDict:
    """Read a state dict of tensors from a ``.safetensors`` or ``.pt``/``.pth`` file.

    ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` (only tensors and plain
    containers; ``argparse.Namespace`` is allowed because DiT training checkpoints store their args
    in one). Wrapped checkpoints are unwrapped: DiT training checkpoints ``{"model", "ema", "opt",
    "args"}`` and PixArt ``{"state_dict", "state_dict_ema", ...}``; the EMA weights are used when
    present unless ``prefer_ema=False``. DDP's ``module.`` prefix is stripped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a directory, an unsupported extension, a corrupt file, a pickle holding
            non-tensor objects, or no state dict of tensors inside.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint file {p} does not exist")
    if p.is_dir():
        raise ValueError(
            f"{p} is a directory; give a checkpoint file (.pt/.pth/.safetensors), or use "
            "--from diffusers-dit / diffusers-pixart / gentron for a save_pretrained folder"
        )
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error type for corrupt headers
            raise ValueError(f"could not read safetensors file {p} (corrupt or truncated?): {e}") from e
    elif suffix in _TORCH_EXTENSIONS:
        obj = _torch_load_weights_only(p)
    else:
        raise ValueError(
            f"unsupported checkpoint extension {p.suffix!r} for {p}; expected .safetensors, "
            + ", ".join(_TORCH_EXTENSIONS)
        )
    return _unwrap_state_dict(obj, p, prefer_ema)


def _torch_load_weights_only(p: Path) -> Any:
    import pickle

    ctx = (
        torch.serialization.safe_globals([argparse.Namespace])
        if hasattr(torch.serialization, "safe_globals")
        else contextlib.nullcontext()
    )
    try:
        with ctx:
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL (\S+) was not an allowed global", msg)
        if m:
            raise ValueError(
                f"{p} contains a pickled Python object ({m.group(1)}) besides tensors; gentron never "
                "unpickles arbitrary objects. Re-save only the state dict (e.g. with safetensors) "
                "from a trusted environment."
            ) from None
        raise ValueError(f"{p} is not a readable PyTorch checkpoint (corrupt or truncated?)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{p} is not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from None


def _unwrap_state_dict(obj: Any, p: Path, prefer_ema: bool) -> StateDict:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a state dict")
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}} at worst
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        order = _EMA_KEYS + _MODEL_KEYS if prefer_ema else _MODEL_KEYS + _EMA_KEYS
        inner = next((obj[k] for k in order if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise ValueError(f"{p} has no state dict of tensors (top-level keys: {keys})")
    sd = {str(k): v for k, v in obj.items()}
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

_DIT_PATTERNS = [
    r"x_embedder\.proj\.(weight|bias)",
    r"t_embedder\.mlp\.[02]\.(weight|bias)",
    r"y_embedder\.embedding_table\.weight",
    r"pos_embed",
    r"blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)",
    r"blocks\.\d+\.mlp\.fc[12]\.(weight|bias)",
    r"blocks\.\d+\.adaLN_modulation\.1\.(weight|bias)",
    r"final_layer\.linear\.(weight|bias)",
    r"final_layer\.adaLN_modulation\.1\.(weight|bias)",
]
_PIXART_PATTERNS = [
    r"x_embedder\.proj\.(weight|bias)",
    r"t_embedder\.mlp\.[02]\.(weight|bias)",
    r"t_block\.1\.(weight|bias)",
    r"y_embedder\.y_proj\.fc[12]\.(weight|bias)",
    r"y_embedder\.y_embedding",
    r"(csize|ar)_embedder\.mlp\.[02]\.(weight|bias)",
    r"pos_embed",
    r"blocks\.\d+\.scale_shift_table",
    r"blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)",
    r"blocks\.\d+\.cross_attn\.(q_linear|kv_linear|proj)\.(weight|bias)",
    r"blocks\.\d+\.mlp\.fc[12]\.(weight|bias)",
    r"final_layer\.scale_shift_table",
    r"final_layer\.linear\.(weight|bias)",
]
_DIFFUSERS_DIT_PATTERNS = [
    r"pos_embed\.proj\.(weight|bias)",
    r"pos_embed\.pos_embed",
    r"transformer_blocks\.\d+\.norm1\.emb\.timestep_embedder\.linear_[12]\.(weight|bias)",
    r"transformer_blocks\.\d+\.norm1\.emb\.class_embedder\.embedding_table\.weight",
    r"transformer_blocks\.\d+\.norm1\.linear\.(weight|bias)",
    r"transformer_blocks\.\d+\.attn1\.to_[qkv]\.(weight|bias)",
    r"transformer_blocks\.\d+\.attn1\.to_out\.0\.(weight|bias)",
    r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.(weight|bias)",
    r"proj_out_[12]\.(weight|bias)",
]
_DIFFUSERS_PIXART_PATTERNS = [
    r"pos_embed\.proj\.(weight|bias)",
    r"pos_embed\.pos_embed",
    r"caption_projection\.linear_[12]\.(weight|bias)",
    r"adaln_single\.emb\.(timestep|resolution|aspect_ratio)_embedder\.linear_[12]\.(weight|bias)",
    r"adaln_single\.linear\.(weight|bias)",
    r"transformer_blocks\.\d+\.scale_shift_table",
    r"transformer_blocks\.\d+\.attn[12]\.to_[qkv]\.(weight|bias)",
    r"transformer_blocks\.\d+\.attn[12]\.to_out\.0\.(weight|bias)",
    r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.(weight|bias)",
    r"scale_shift_table",
    r"proj_out\.(weight|bias)",
]
_LAYOUT_PATTERNS = {
    "dit": _DIT_PATTERNS,
    "pixart": _PIXART_PATTERNS,
    "diffusers-dit": _DIFFUSERS_DIT_PATTERNS,
    "diffusers-pixart": _DIFFUSERS_PIXART_PATTERNS,
}
_LAYOUT_NAMES = {
    "dit": "official DiT",
    "pixart": "official PixArt-α",
    "diffusers-dit": "diffusers DiTTransformer2DModel",
    "diffusers-pixart": "diffusers PixArtTransformer2DModel",
    "gentron": "GenTronTransformer",
}


def _check_known_keys(sd: Mapping[str, Any], layout: str) -> None:
    """Raise ValueError naming the first key the layout does not know."""
    if not sd:
        raise ValueError(f"empty state dict; expected a {_LAYOUT_NAMES[layout]} checkpoint")
    pats = [re.compile(p) for p in _LAYOUT_PATTERNS[layout]]
    for key in sd:
        if not any(p.fullmatch(key) for p in pats):
            guess = detect_layout(sd)
            hint = f" (it looks like a {_LAYOUT_NAMES[guess]} checkpoint)" if guess not in (None, layout) else ""
            raise ValueError(f"unexpected key {key!r} for the {_LAYOUT_NAMES[layout]} layout{hint}")


def detect_layout(sd: Mapping[str, Any]) -> Optional[str]:
    """Best guess of a state dict's layout: 'dit', 'pixart', 'diffusers-dit', 'diffusers-pixart',
    'gentron' or None."""
    keys = set(sd)
    if "x_embedder.proj.weight" in keys:
        return "pixart" if "t_block.1.weight" in keys else "dit"
    if "x_embedder.weight" in keys:
        return "gentron"
    if "pos_embed.proj.weight" in keys:
        return "diffusers-pixart" if "adaln_single.linear.weight" in keys else "diffusers-dit"
    return None


class _Taker:
    """Pops keys from a copy of a state dict; a missing key is a ValueError naming it."""

    def __init__(self, sd: Mapping[str, torch.Tensor], layout: str):
        self.sd = dict(sd)
        self.layout = layout

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise ValueError(f"{_LAYOUT_NAMES[self.layout]} checkpoint is missing key {key!r}")
        return self.sd.pop(key)

    def maybe(self, key: str) -> Optional[torch.Tensor]:
        return self.sd.pop(key, None)

    def has(self, key: str) -> bool:
        return key in self.sd

    def finish(self) -> None:
        if self.sd:
            key = next(iter(self.sd))
            raise ValueError(f"unexpected key {key!r} for the {_LAYOUT_NAMES[self.layout]} layout")


def _num_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if not idx:
        raise ValueError(f"checkpoint has no transformer blocks (no keys starting with {prefix!r}N.)")
    depth = max(idx) + 1
    missing = sorted(set(range(depth)) - idx)
    if missing:
        raise ValueError(f"checkpoint has no weights for block {missing[0]} ({prefix}{missing[0]}.*)")
    return depth


def _shape(sd: Mapping[str, torch.Tensor], key: str, layout: str, ndim: int) -> torch.Size:
    if key not in sd:
        raise ValueError(f"{_LAYOUT_NAMES[layout]} checkpoint is missing key {key!r}")
    shape = sd[key].shape
    if len(shape) != ndim:
        raise ValueError(f"{key!r} has shape {tuple(shape)}; expected a {ndim}-D tensor")
    return shape


def expected_shapes(config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """Parameter shapes of ``GenTronTransformer(**config)``, computed without allocating memory."""
    try:
        with torch.device("meta"):
            model = GenTronTransformer(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"inferred model config is invalid: {e}") from e
    return {k: v.shape for k, v in model.state_dict().items()}


def validate_state_dict(
    expected: Mapping[str, torch.Size],
    sd: Mapping[str, torch.Tensor],
    what: str = "GenTronTransformer",
    source_names: Optional[Mapping[str, str]] = None,
) -> None:
    """Same keys and shapes as ``expected``, else ValueError naming the first offending key.

    ``source_names`` maps a key of ``sd`` to the checkpoint key it came from, for the message.
    """
    names = source_names or {}

    def name(key: str) -> str:
        src = names.get(key, key)
        return repr(src) if src == key else f"{src!r} ({what} {key!r})"

    for key in sd:
        if key not in expected:
            raise ValueError(f"unexpected key {name(key)} for {what}")
    for key, shape in expected.items():
        if key not in sd:
            raise ValueError(f"missing key {name(key)} for {what}")
        if tuple(sd[key].shape) != tuple(shape):
            raise ValueError(
                f"shape mismatch for {name(key)}: checkpoint has {tuple(sd[key].shape)}, "
                f"{what} expects {tuple(shape)}"
            )


def build_model(
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype] = None
) -> GenTronTransformer:
    """``GenTronTransformer(**config)`` holding exactly ``state_dict`` (validated; no random init)."""
    validate_state_dict(expected_shapes(config), state_dict)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        # Own, contiguous storage: never alias the source model's parameters or each other.
        tensors[k] = v.clone(memory_format=torch.contiguous_format)
    with torch.device("meta"):
        model = GenTronTransformer(**config)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Positions: check / infer from a stored pos_embed buffer
# ----------------------------------------------------------------------------------------------


def _grid_of_pos_embed(pos: torch.Tensor, hidden: int, key: str = "pos_embed") -> int:
    if pos.dim() == 3 and pos.shape[0] == 1:
        pos = pos[0]
    if pos.dim() != 2 or pos.shape[1] != hidden:
        raise ValueError(f"{key!r} has shape {tuple(pos.shape)}; expected (1, N, {hidden})")
    g = math.isqrt(pos.shape[0])
    if g * g != pos.shape[0]:
        raise ValueError(f"{key!r} has {pos.shape[0]} positions, not a square grid")
    return g


def _sample_size_from(pos_grid: Optional[int], patch: int, sample_size: Optional[int], what: str) -> int:
    if pos_grid is not None:
        inferred = pos_grid * patch
        if sample_size is not None and sample_size != inferred:
            raise ValueError(
                f"sample_size={sample_size} disagrees with the checkpoint's pos_embed "
                f"({pos_grid}x{pos_grid} patches of {patch} → sample_size {inferred})"
            )
        return inferred
    if sample_size is None:
        raise ValueError(f"{what} checkpoint has no pos_embed to infer the latent size from; pass sample_size")
    return int(sample_size)


def _check_pos_embed(
    pos: torch.Tensor, grid: int, hidden: int, base_size: Optional[int], scale: float, what: str
) -> None:
    ref = sincos_2d(hidden, grid, grid, base_size, scale)
    err = (pos.reshape(-1, hidden).float() - ref).abs().max().item()
    if err > 1e-4:
        raise ValueError(
            f"{what} pos_embed does not match the fixed 2-D sin-cos embedding "
            f"(base_size={base_size}, interpolation_scale={scale}); max abs difference {err:.3g}"
        )


def _infer_interpolation_scale(pos: torch.Tensor, grid: int, hidden: int) -> float:
    """PixArt's ``lewei_scale`` from its pos_embed buffer (base grid, so column j sits at j / scale).

    Reads the position of the last column from the lowest-frequency sin/cos channel pair.
    """
    pos = pos.reshape(-1, hidden).double()
    quarter = hidden // 4
    k = quarter - 1  # lowest frequency of the column half
    omega = 1.0 / 10000 ** (k / quarter)
    tok = grid - 1  # row 0, last column
    angle = math.atan2(pos[tok, k].item(), pos[tok, quarter + k].item())
    if angle <= 0:
        raise ValueError("pos_embed is not a PixArt sin-cos embedding (cannot read its interpolation scale)")
    scale = (grid - 1) / (angle / omega)
    return round(scale, 4)


# ----------------------------------------------------------------------------------------------
# DiT: official layout ↔ GenTron (class mode), diffusers → official
# ----------------------------------------------------------------------------------------------


def _official_geometry(sd: Mapping[str, torch.Tensor], layout: str) -> tuple[int, int, int, int, int, int]:
    """(hidden, in_channels, out_channels, patch, depth, mlp width) from the tensor shapes of an official
    DiT / PixArt-α checkpoint (both share the ``x_embedder`` / ``blocks`` / ``final_layer`` names)."""
    w = _shape(sd, "x_embedder.proj.weight", layout, 4)
    hidden, in_ch, patch = w[0], w[1], w[-1]
    out_rows = _shape(sd, "final_layer.linear.weight", layout, 2)[0]
    if out_rows % (patch * patch):
        raise ValueError(f"'final_layer.linear.weight' has {out_rows} rows, not a multiple of patch² = {patch**2}")
    mlp = _shape(sd, "blocks.0.mlp.fc1.weight", layout, 2)[0]
    return hidden, in_ch, out_rows // (patch * patch), patch, _num_blocks(sd, "blocks."), mlp


def convert_dit_state_dict(
    sd: Mapping[str, torch.Tensor], num_heads: int = 16, sample_size: Optional[int] = None
) -> tuple[dict[str, Any], StateDict]:
    """Official DiT checkpoint → (``GenTronTransformer`` kwargs, state dict), ``conditioning='class'``.

    Depth, width, MLP width, patch, in/out channels (learned sigma when out = 2·in) and the number of
    classes (embedding rows − 1, the last row being DiT's null class) come from tensor shapes. The
    number of heads is not stored in the weights: DiT uses 16 for every released model, override it
    for others. ``sample_size`` (latent size) comes from the ``pos_embed`` buffer, which is checked
    against GenTron's own sin-cos embedding and then dropped (GenTron computes it on the fly);
    without a buffer pass ``sample_size``.
    """
    _check_known_keys(sd, "dit")
    hidden, in_ch, out_ch, patch, depth, mlp = _official_geometry(sd, "dit")
    rows = _shape(sd, "y_embedder.embedding_table.weight", "dit", 2)[0]
    pos = sd.get("pos_embed")
    grid = _grid_of_pos_embed(pos, hidden) if pos is not None else None
    sample = _sample_size_from(grid, patch, sample_size, "DiT")
    if pos is not None:
        _check_pos_embed(pos, grid, hidden, None, 1.0, "DiT")
    config = _base_config(hidden, depth, num_heads, mlp, patch, in_ch, out_ch, sample)
    config.update(
        conditioning="class",
        text_dims=[],
        num_classes=rows - 1,
        class_dropout=True,
        pos_embed_base_size=None,
        pos_embed_interpolation_scale=1.0,
    )
    out: StateDict = {}
    names: dict[str, str] = {}
    for src_key, value in sd.items():
        if src_key == "pos_embed":
            continue
        key = src_key
        if key.startswith("x_embedder.proj."):
            key = "x_embedder." + key[len("x_embedder.proj.") :]
        elif key == "y_embedder.embedding_table.weight":
            key = "y_embedder.weight"
        out[key], names[key] = value, src_key
    validate_state_dict(expected_shapes(config), out, source_names=names)
    return config, out


def _base_config(hidden, depth, heads, mlp, patch, in_ch, out_ch, sample) -> dict[str, Any]:
    if heads <= 0 or hidden % heads:
        raise ValueError(f"num_heads={heads} does not divide the hidden size {hidden}")
    learn_sigma = out_ch == 2 * in_ch
    return dict(
        sample_size=int(sample),
        patch_size=int(patch),
        in_channels=int(in_ch),
        out_channels=None if out_ch in (in_ch, 2 * in_ch) else int(out_ch),
        learn_sigma=bool(learn_sigma),
        depth=int(depth),
        hidden_size=int(hidden),
        num_heads=int(heads),
        mlp_hidden_size=int(mlp),
        norm_eps=1e-6,
    )


# GenTron-only layers that neither the official DiT/PixArt code nor diffusers has: a model using them has no
# checkpoint in those layouts (`text_whitening` has none either, but PixArt's caption projection absorbs it)
GENTRON_ONLY_OPTIONS = ("mlp_token_conv", "pos_query")


def _check_no_gentron_only_options(model: GenTronTransformer, layout: str) -> None:
    used = [name for name in GENTRON_ONLY_OPTIONS if getattr(model.config, name, False)]
    if used:
        raise ValueError(f"{', '.join(used)} has no counterpart in the {layout} layout; this model cannot be exported")


def export_dit_state_dict(model: GenTronTransformer) -> StateDict:
    """Class-mode ``GenTronTransformer`` → official DiT state dict (with its ``pos_embed`` buffer)."""
    cfg = model.config
    if cfg.conditioning != "class" or cfg.temporal_layers:
        raise ValueError("only a class-conditional image model (conditioning='class') has a DiT layout")
    if cfg.pos_embed_base_size is not None and cfg.pos_embed_base_size != cfg.sample_size // cfg.patch_size:
        raise ValueError("DiT uses plain integer patch positions; this model rescales them (pos_embed_base_size)")
    _check_no_gentron_only_options(model, "official DiT")
    out: StateDict = {}
    for key, value in model.state_dict().items():
        if key.startswith("x_embedder."):
            key = "x_embedder.proj." + key[len("x_embedder.") :]
        elif key == "y_embedder.weight":
            key = "y_embedder.embedding_table.weight"
        out[key] = value.detach().clone()
    grid = cfg.sample_size // cfg.patch_size
    out["pos_embed"] = sincos_2d(cfg.hidden_size, grid, grid)[None]
    return out


def diffusers_dit_to_official(sd: Mapping[str, torch.Tensor], require_shared_embedding: bool = True) -> StateDict:
    """diffusers ``DiTTransformer2DModel`` state dict → official DiT layout.

    diffusers stores a copy of the timestep/class embedder in every block (``transformer_blocks.N.
    norm1.emb``) and uses block 0's for the final layer; DiT has one. Converted DiT checkpoints have
    identical copies; if they differ, this raises unless ``require_shared_embedding=False`` (then block
    0's copy is used, as diffusers' final layer does).
    """
    _check_known_keys(sd, "diffusers-dit")
    take = _Taker(sd, "diffusers-dit")
    depth = _num_blocks(sd, "transformer_blocks.")
    out: StateDict = {
        "x_embedder.proj.weight": take("pos_embed.proj.weight"),
        "x_embedder.proj.bias": take("pos_embed.proj.bias"),
    }
    pos = take.maybe("pos_embed.pos_embed")
    if pos is not None:
        out["pos_embed"] = pos
    emb_map = {
        "timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
        "timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
        "timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
        "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
        "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
    }
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for name, official in emb_map.items():
            t = take(f"{src}norm1.emb.{name}")
            if i == 0:
                out[official] = t
            elif require_shared_embedding and (t.shape != out[official].shape or not torch.equal(t, out[official])):
                raise ValueError(
                    f"'{src}norm1.emb.{name}' differs from block 0's copy; DiT (and GenTron) share one "
                    "timestep/class embedder. Pass require_shared_embedding=False to use block 0's "
                    "(what diffusers' final layer uses)."
                )
        out[dst + "adaLN_modulation.1.weight"] = take(src + "norm1.linear.weight")
        out[dst + "adaLN_modulation.1.bias"] = take(src + "norm1.linear.bias")
        for p in ("weight", "bias"):
            out[f"{dst}attn.qkv.{p}"] = torch.cat([take(f"{src}attn1.to_{n}.{p}") for n in "qkv"], 0)
            out[f"{dst}attn.proj.{p}"] = take(f"{src}attn1.to_out.0.{p}")
            out[f"{dst}mlp.fc1.{p}"] = take(f"{src}ff.net.0.proj.{p}")
            out[f"{dst}mlp.fc2.{p}"] = take(f"{src}ff.net.2.{p}")
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = take(f"proj_out_1.{p}")
        out[f"final_layer.linear.{p}"] = take(f"proj_out_2.{p}")
    take.finish()
    return out


def _load_diffusers_model(model_or_dir: Any, cls_name: str) -> nn.Module:
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir
    p = Path(model_or_dir)
    if not p.exists():
        raise FileNotFoundError(f"diffusers model folder {p} does not exist")
    if (p / "transformer" / "config.json").is_file():  # a pipeline folder
        p = p / "transformer"
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a diffusers model folder (no config.json)")
    import diffusers

    cls = getattr(diffusers, cls_name)
    try:
        return cls.from_pretrained(str(p), **offline_load_kwargs())
    except Exception as e:
        raise ValueError(f"could not load a diffusers {cls_name} from {p}: {type(e).__name__}: {e}") from e


def _require_config(cfg: Mapping[str, Any], key: str, allowed: Sequence[Any], what: str) -> None:
    value = cfg.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{what} with {key}={value!r} is not supported (GenTron implements {allowed[0]!r})")


def convert_diffusers_dit(model_or_dir: Any, require_shared_embedding: bool = True) -> GenTronTransformer:
    """diffusers ``DiTTransformer2DModel`` (a model or a folder) → class-mode ``GenTronTransformer``.

    The weights pass through the official DiT layout. The result computes *official* DiT, which
    differs from diffusers' DiT runtime in two places where diffusers deviates from DiT:

    * diffusers' ``CombinedTimestepLabelEmbeddings`` spaces the timestep frequencies with
      ``downscale_freq_shift=1`` (exp(-ln(10⁴)·i/(half-1))); DiT (and GenTron) use i/half;
    * diffusers' MLP LayerNorm uses the config's ``norm_eps`` (1e-5 by default); DiT uses 1e-6.

    With ``downscale_freq_shift=0`` set on diffusers' time projections and ``norm_eps=1e-6`` the two
    agree to fp32 round-off (see ``docs/convert.md``).
    """
    model = _load_diffusers_model(model_or_dir, "DiTTransformer2DModel")
    cfg = dict(model.config)
    what = "diffusers DiT"
    _require_config(cfg, "norm_type", ["ada_norm_zero"], what)
    _require_config(cfg, "activation_fn", ["gelu-approximate"], what)
    _require_config(cfg, "attention_bias", [True], what)
    _require_config(cfg, "norm_elementwise_affine", [False], what)
    official = diffusers_dit_to_official(model.state_dict(), require_shared_embedding)
    if cfg.get("norm_eps", 1e-5) != 1e-6:
        warnings.warn(
            f"diffusers DiT config has norm_eps={cfg.get('norm_eps', 1e-5)} for its MLP LayerNorm; the "
            "converted model uses DiT's 1e-6 everywhere (as the weights were trained)",
            stacklevel=2,
        )
    config, sd = convert_dit_state_dict(
        official, num_heads=int(cfg["num_attention_heads"]), sample_size=int(cfg["sample_size"])
    )
    rows = sd["y_embedder.weight"].shape[0]
    n = cfg.get("num_embeds_ada_norm")
    if n is not None and rows == n:  # diffusers without a null class row
        config.update(num_classes=rows, class_dropout=False)
    return build_model(config, sd)


# ----------------------------------------------------------------------------------------------
# PixArt-α: official layout ↔ GenTron (adaln-single), diffusers ↔ official
# ----------------------------------------------------------------------------------------------

_PIXART_RENAMES = [
    (r"x_embedder\.proj\.(weight|bias)", r"x_embedder.\1"),
    (r"y_embedder\.y_proj\.(fc[12])\.(weight|bias)", r"token_projections.0.\1.\2"),
    (r"csize_embedder\.(mlp\.[02]\.(?:weight|bias))", r"resolution_embedder.\1"),
    (r"ar_embedder\.(mlp\.[02]\.(?:weight|bias))", r"aspect_ratio_embedder.\1"),
    (r"blocks\.(\d+)\.cross_attn\.q_linear\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (r"blocks\.(\d+)\.cross_attn\.kv_linear\.(weight|bias)", r"blocks.\1.cross_attn.kv.\2"),
]


def convert_pixart_state_dict(
    sd: Mapping[str, torch.Tensor],
    num_heads: int = 16,
    sample_size: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
) -> tuple[dict[str, Any], StateDict, dict[str, torch.Tensor]]:
    """Official PixArt-α checkpoint → (``GenTronTransformer`` kwargs, state dict, extras).

    ``conditioning='adaln-single'``; shapes give depth, width, MLP width, patch, channels, caption
    width (``text_dims``) and whether the 1024-MS micro-conditions (``csize_embedder`` /
    ``ar_embedder`` → ``micro_conditions=True``) are present. Heads: 16 (all released models).

    Positions: PixArt rescales the patch grid to ``base_size = sample_size // patch`` and divides by
    ``lewei_scale``; both become ``pos_embed_base_size`` / ``pos_embed_interpolation_scale``. The
    ``pos_embed`` buffer (the base-resolution embedding) gives ``sample_size`` and the scale, and is
    checked against GenTron's embedding. Without it pass ``sample_size`` (and ``interpolation_scale``,
    default ``max(sample_size // 64, 1)`` as in diffusers / PixArt's inference scripts).

    ``extras["null_caption_embedding"]`` is PixArt's learned null caption (``y_embedder.y_embedding``,
    (120, caption_channels)): the unconditional input of classifier-free guidance, in *caption* space
    (before the projection). GenTron has no such parameter, so it is returned separately.
    """
    _check_known_keys(sd, "pixart")
    hidden, in_ch, out_ch, patch, depth, mlp = _official_geometry(sd, "pixart")
    caption = _shape(sd, "y_embedder.y_proj.fc1.weight", "pixart", 2)[1]
    micro = any(k.startswith(("csize_embedder.", "ar_embedder.")) for k in sd)
    pos = sd.get("pos_embed")
    grid = _grid_of_pos_embed(pos, hidden) if pos is not None else None
    sample = _sample_size_from(grid, patch, sample_size, "PixArt-α")
    base = sample // patch
    if interpolation_scale is None:
        if pos is not None and grid > 1:
            interpolation_scale = _infer_interpolation_scale(pos, grid, hidden)
        else:
            interpolation_scale = float(max(sample // 64, 1))
    if pos is not None:
        _check_pos_embed(pos, grid, hidden, base, interpolation_scale, "PixArt-α")
    config = _base_config(hidden, depth, num_heads, mlp, patch, in_ch, out_ch, sample)
    config.update(
        conditioning="adaln-single",
        text_dims=[int(caption)],
        pooled_dims=None,
        micro_conditions=micro,
        pos_embed_base_size=int(base),
        pos_embed_interpolation_scale=float(interpolation_scale),
    )
    renames = [(re.compile(p), r) for p, r in _PIXART_RENAMES]
    out: StateDict = {}
    extras: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for src_key, value in sd.items():
        if src_key == "pos_embed":
            continue
        if src_key == "y_embedder.y_embedding":
            extras["null_caption_embedding"] = value
            continue
        key = src_key
        for pat, repl in renames:
            if pat.fullmatch(key):
                key = pat.sub(repl, key)
                break
        out[key], names[key] = value, src_key
    validate_state_dict(expected_shapes(config), out, source_names=names)
    return config, out, extras


def export_pixart_state_dict(
    model: GenTronTransformer, null_caption_embedding: Optional[torch.Tensor] = None
) -> StateDict:
    """adaln-single ``GenTronTransformer`` → official PixArt-α state dict (with ``pos_embed``)."""
    cfg = model.config
    _check_pixart_exportable(model)
    back = {
        "x_embedder.": "x_embedder.proj.",
        "token_projections.0.": "y_embedder.y_proj.",
        "resolution_embedder.": "csize_embedder.",
        "aspect_ratio_embedder.": "ar_embedder.",
    }
    out: StateDict = {}
    # PixArt-α has no text whitening: fold it into the caption projection and drop its buffers
    state = model.state_dict()
    projection = model.token_projections[0]
    state["token_projections.0.fc1.weight"], state["token_projections.0.fc1.bias"] = projection.folded_fc1()
    for name, _ in projection.named_buffers():
        del state[f"token_projections.0.{name}"]
    for key, value in state.items():
        for ours, theirs in back.items():
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        key = re.sub(r"\.cross_attn\.q\.", ".cross_attn.q_linear.", key)
        key = re.sub(r"\.cross_attn\.kv\.", ".cross_attn.kv_linear.", key)
        out[key] = value.detach().clone()
    grid = cfg.sample_size // cfg.patch_size
    out["pos_embed"] = sincos_2d(
        cfg.hidden_size, grid, grid, cfg.pos_embed_base_size, cfg.pos_embed_interpolation_scale
    )[None]
    if null_caption_embedding is not None:
        out["y_embedder.y_embedding"] = null_caption_embedding.detach().clone()
    return out


def _check_pixart_exportable(model: GenTronTransformer) -> None:
    cfg = model.config
    if cfg.conditioning != "adaln-single":
        raise ValueError(f"only adaln-single models have a PixArt layout (this one is {cfg.conditioning!r})")
    if cfg.temporal_layers:
        raise ValueError("PixArt-α has no temporal layers; this is a video model")
    if len(cfg.text_dims) != 1:
        raise ValueError(f"PixArt-α has one text encoder; this model has {len(cfg.text_dims)}")
    _check_no_gentron_only_options(model, "PixArt-α")
    if cfg.pos_embed_base_size != cfg.sample_size // cfg.patch_size:
        raise ValueError(
            "PixArt-α scales positions to base_size = sample_size // patch_size "
            f"({cfg.sample_size // cfg.patch_size}); this model has pos_embed_base_size={cfg.pos_embed_base_size}"
        )


def _pixart_key_table(depth: int) -> list[tuple[str, tuple[str, ...], bool]]:
    """The official PixArt-α ↔ diffusers ``PixArtTransformer2DModel`` key correspondence, written once:
    ``(official key, diffusers keys, optional)``. Several diffusers keys mean the official tensor is their
    concatenation along dim 0 (fused qkv / kv). Optional entries are the micro-condition embedders, which
    only the 1024 px checkpoints have. ``pos_embed`` is handled by the callers (diffusers may recompute it)."""
    table: list[tuple[str, tuple[str, ...], bool]] = []
    for p in ("weight", "bias"):
        table += [
            (f"x_embedder.proj.{p}", (f"pos_embed.proj.{p}",), False),
            (f"y_embedder.y_proj.fc1.{p}", (f"caption_projection.linear_1.{p}",), False),
            (f"y_embedder.y_proj.fc2.{p}", (f"caption_projection.linear_2.{p}",), False),
            (f"t_embedder.mlp.0.{p}", (f"adaln_single.emb.timestep_embedder.linear_1.{p}",), False),
            (f"t_embedder.mlp.2.{p}", (f"adaln_single.emb.timestep_embedder.linear_2.{p}",), False),
            (f"t_block.1.{p}", (f"adaln_single.linear.{p}",), False),
            (f"final_layer.linear.{p}", (f"proj_out.{p}",), False),
        ]
        for theirs, official in (("resolution", "csize"), ("aspect_ratio", "ar")):
            for lin, idx in (("linear_1", 0), ("linear_2", 2)):
                table.append((f"{official}_embedder.mlp.{idx}.{p}", (f"adaln_single.emb.{theirs}_embedder.{lin}.{p}",), True))
    table.append(("final_layer.scale_shift_table", ("scale_shift_table",), False))
    for i in range(depth):
        off, dif = f"blocks.{i}.", f"transformer_blocks.{i}."
        table.append((off + "scale_shift_table", (dif + "scale_shift_table",), False))
        for p in ("weight", "bias"):
            table += [
                (f"{off}attn.qkv.{p}", tuple(f"{dif}attn1.to_{n}.{p}" for n in "qkv"), False),
                (f"{off}attn.proj.{p}", (f"{dif}attn1.to_out.0.{p}",), False),
                (f"{off}cross_attn.q_linear.{p}", (f"{dif}attn2.to_q.{p}",), False),
                (f"{off}cross_attn.kv_linear.{p}", tuple(f"{dif}attn2.to_{n}.{p}" for n in "kv"), False),
                (f"{off}cross_attn.proj.{p}", (f"{dif}attn2.to_out.0.{p}",), False),
                (f"{off}mlp.fc1.{p}", (f"{dif}ff.net.0.proj.{p}",), False),
                (f"{off}mlp.fc2.{p}", (f"{dif}ff.net.2.{p}",), False),
            ]
    return table


def diffusers_pixart_to_official(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """diffusers ``PixArtTransformer2DModel`` state dict → official PixArt-α layout."""
    _check_known_keys(sd, "diffusers-pixart")
    take = _Taker(sd, "diffusers-pixart")
    out: StateDict = {}
    pos = take.maybe("pos_embed.pos_embed")
    if pos is not None:
        out["pos_embed"] = pos
    for official, theirs, optional in _pixart_key_table(_num_blocks(sd, "transformer_blocks.")):
        if optional and not take.has(theirs[0]):
            continue
        out[official] = torch.cat([take(k) for k in theirs], 0) if len(theirs) > 1 else take(theirs[0])
    take.finish()
    return out


def official_pixart_to_diffusers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official PixArt-α state dict → diffusers ``PixArtTransformer2DModel`` layout.

    ``pos_embed`` (diffusers recomputes it) and ``y_embedder.y_embedding`` (no diffusers parameter)
    are dropped.
    """
    _check_known_keys(sd, "pixart")
    take = _Taker(sd, "pixart")
    take.maybe("pos_embed")
    take.maybe("y_embedder.y_embedding")
    out: StateDict = {}
    for official, theirs, optional in _pixart_key_table(_num_blocks(sd, "blocks.")):
        if optional and not take.has(official):
            continue
        for k, t in zip(theirs, take(official).chunk(len(theirs), 0)):
            out[k] = t
    take.finish()
    return {k: v.contiguous() for k, v in out.items()}


def _diffusers_pixart_interpolation_scale(cfg: Mapping[str, Any]) -> float:
    scale = cfg.get("interpolation_scale")
    return float(scale if scale is not None else max(int(cfg["sample_size"]) // 64, 1))


def convert_diffusers_pixart(model_or_dir: Any) -> GenTronTransformer:
    """diffusers ``PixArtTransformer2DModel`` (a model, a transformer folder or a pipeline folder) →
    adaln-single ``GenTronTransformer``, through the official PixArt-α layout.

    Positions follow diffusers: ``base_size = sample_size // patch_size`` and ``interpolation_scale``
    from the config or ``max(sample_size // 64, 1)``. Micro-conditions (``use_additional_conditions``)
    become ``micro_conditions=True`` with the same ``added_cond_kwargs`` keys.
    """
    model = _load_diffusers_model(model_or_dir, "PixArtTransformer2DModel")
    cfg = dict(model.config)
    what = "diffusers PixArt"
    _require_config(cfg, "norm_type", ["ada_norm_single"], what)
    _require_config(cfg, "activation_fn", ["gelu-approximate"], what)
    _require_config(cfg, "attention_bias", [True], what)
    _require_config(cfg, "norm_elementwise_affine", [False], what)
    _require_config(cfg, "attention_type", ["default"], what)
    if cfg.get("caption_channels") is None:
        raise ValueError("diffusers PixArt model without caption_channels (no caption projection) is not supported")
    inner = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    if cfg.get("cross_attention_dim") not in (None, inner):
        raise ValueError(f"cross_attention_dim={cfg['cross_attention_dim']} must equal the width {inner}")
    eps = float(cfg.get("norm_eps", 1e-6))
    if eps != 1e-6:
        warnings.warn(
            f"diffusers PixArt norm_eps={eps}: diffusers' final LayerNorm always uses 1e-6, GenTron uses "
            "norm_eps for every LayerNorm, so outputs differ slightly",
            stacklevel=2,
        )
    official = diffusers_pixart_to_official(model.state_dict())
    config, sd, _ = convert_pixart_state_dict(
        official,
        num_heads=int(cfg["num_attention_heads"]),
        sample_size=int(cfg["sample_size"]),
        interpolation_scale=_diffusers_pixart_interpolation_scale(cfg),
    )
    config["norm_eps"] = eps
    micro = getattr(model, "use_additional_conditions", None)
    if micro is None:
        micro = cfg.get("use_additional_conditions")
        micro = int(cfg["sample_size"]) == 128 if micro is None else micro
    if bool(micro) != config["micro_conditions"]:
        raise ValueError("use_additional_conditions disagrees with the resolution/aspect-ratio embedder weights")
    return build_model(config, sd)


def export_diffusers_pixart(model: GenTronTransformer):
    """adaln-single ``GenTronTransformer`` → diffusers ``PixArtTransformer2DModel`` (same outputs).

    Needs PixArt's structure: one text encoder, MLP width 4·hidden, positions with
    ``pos_embed_base_size = sample_size // patch_size``, no temporal layers.
    """
    from diffusers import PixArtTransformer2DModel

    _check_pixart_exportable(model)
    cfg = model.config
    if cfg.mlp_hidden_size != 4 * cfg.hidden_size:
        raise ValueError(
            f"diffusers PixArt's MLP is 4 × hidden ({4 * cfg.hidden_size}); this model's is {cfg.mlp_hidden_size}"
        )
    if cfg.norm_eps != 1e-6:
        warnings.warn("diffusers' final LayerNorm uses eps 1e-6; this model's norm_eps differs", stacklevel=2)
    official = export_pixart_state_dict(model)
    sd = official_pixart_to_diffusers(official)
    out = PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels,
        out_channels=model.out_channels,
        num_layers=cfg.depth,
        cross_attention_dim=cfg.hidden_size,
        attention_bias=True,
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        activation_fn="gelu-approximate",
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=cfg.norm_eps,
        interpolation_scale=cfg.pos_embed_interpolation_scale,
        use_additional_conditions=bool(cfg.micro_conditions),
        caption_channels=cfg.text_dims[0],
    )
    expected = {k: v.shape for k, v in out.state_dict().items()}
    validate_state_dict(expected, sd, what="PixArtTransformer2DModel")
    out.load_state_dict(sd, strict=True)
    if model.dtype != torch.float32:
        out = out.to(model.dtype)
    return out.eval()


# ----------------------------------------------------------------------------------------------
# Re-parameterised init from DiT (PixArt-α Sec. 2.3)
# ----------------------------------------------------------------------------------------------


def _as_dit_model(dit: Any, num_heads: int, sample_size: Optional[int]) -> GenTronTransformer:
    if isinstance(dit, GenTronTransformer):
        if dit.config.conditioning != "class":
            raise ValueError(f"re-parameterisation needs a class-conditional DiT, got {dit.config.conditioning!r}")
        return dit
    if isinstance(dit, (str, Path)):
        dit = load_checkpoint_file(dit)
    if isinstance(dit, Mapping):
        config, sd = convert_dit_state_dict(dit, num_heads=num_heads, sample_size=sample_size)
        return build_model(config, sd)
    if isinstance(dit, nn.Module) and type(dit).__name__ == "DiTTransformer2DModel":
        return convert_diffusers_dit(dit)
    raise ValueError(f"expected a DiT state dict, checkpoint path or class-mode GenTronTransformer, got {type(dit)}")


@torch.no_grad()
def reparam_init_from_dit(
    dit_sd_or_model: Any,
    text_dims: Sequence[int],
    conditioning: str = "adaln-single",
    t_ref: float = 500,
    t_block_init: str = "mean",
    num_heads: int = 16,
    sample_size: Optional[int] = None,
    **overrides: Any,
) -> GenTronTransformer:
    """A text-conditional ``GenTronTransformer`` initialised from a class-conditional DiT.

    Shared layers are copied exactly: patch embedding, timestep MLP, self-attention, MLP and the
    final linear. New layers: token projections (PixArt's N(0, 0.02) init) and cross-attention with
    a zero output projection (PixArt-α Sec. 2.3), so text has no effect at init. The reference
    condition is DiT's null class: c_ref = t_emb(t_ref) + y_null ("DiT without c").

    ``conditioning="adaln-single"`` (PixArt-α re-parameterisation): block i computes
    S⁽ⁱ⁾ = E⁽ⁱ⁾ + t_block(t_emb(t)). ``t_block`` starts as the *mean* of DiT's per-block adaLN
    linears (``t_block_init="mean"``; ``"block0"`` copies block 0's, ``"zero"`` makes S⁽ⁱ⁾
    constant) — the mean is the single linear map closest (least squares over blocks) to all of
    them, so the time dependence away from t_ref stays close to DiT's. Then
    E⁽ⁱ⁾ = f⁽ⁱ⁾(c_ref) − t_block(t_emb(t_ref)), which makes S⁽ⁱ⁾(t_ref) equal DiT's block-i
    modulation exactly. The final layer likewise: table = DiT_final(c_ref) − t_emb(t_ref). With
    ``micro_conditions=True`` the size/aspect embedders' last linears are zeroed (no effect at init).
    At t = t_ref the new model's output equals DiT's with the null class, for any text.

    ``conditioning="cross-attn"`` (GenTron) or ``"adaln-zero"``: the per-block adaLN linears are
    copied as they are, and the pooled-text projection's last linear gets weight 0 and bias y_null
    (first encoder; 0 for others), so c = t_emb(t) + y_null for any pooled text: the new model
    equals DiT with the null class at *every* t.

    Extra keyword arguments override the new model's config (e.g. ``micro_conditions``,
    ``pooled_dims``, ``temporal_layers``). adaln-single uses PixArt positions (base_size =
    sample_size // patch), identical to DiT's at the training resolution.
    """
    if conditioning not in ("adaln-single", "cross-attn", "adaln-zero"):
        raise ValueError(f"conditioning must be adaln-single, cross-attn or adaln-zero, got {conditioning!r}")
    if t_block_init not in ("mean", "block0", "zero"):
        raise ValueError(f"t_block_init must be 'mean', 'block0' or 'zero', got {t_block_init!r}")
    dit = _as_dit_model(dit_sd_or_model, num_heads, sample_size)
    if dit.dtype != torch.float32:  # compute the tables in fp32 without touching the caller's model
        dit = copy.deepcopy(dit).float()
    dcfg = dit.config
    config: dict[str, Any] = {
        k: dcfg[k]
        for k in (
            "sample_size", "patch_size", "in_channels", "out_channels", "learn_sigma", "depth",
            "hidden_size", "num_heads", "mlp_hidden_size", "norm_eps",
            "pos_embed_base_size", "pos_embed_interpolation_scale",
        )
    }
    config.update(conditioning=conditioning, text_dims=list(text_dims))
    if conditioning == "adaln-single":
        config.update(pos_embed_base_size=dcfg.sample_size // dcfg.patch_size, pos_embed_interpolation_scale=1.0)
    config.update(overrides)
    new = GenTronTransformer(**config).to(dit.device).eval()
    for name in ("hidden_size", "depth", "mlp_hidden_size", "patch_size", "in_channels"):
        if new.config[name] != dcfg[name]:
            raise ValueError(f"override of {name} is incompatible with the DiT weights")
    if new.out_channels != dit.out_channels:
        raise ValueError("out_channels / learn_sigma must match the DiT checkpoint")

    new.x_embedder.load_state_dict(dit.x_embedder.state_dict())
    new.t_embedder.load_state_dict(dit.t_embedder.state_dict())
    new.final_layer.linear.load_state_dict(dit.final_layer.linear.state_dict())
    for nb, db in zip(new.blocks, dit.blocks):
        nb.attn.load_state_dict(db.attn.state_dict())
        nb.mlp.load_state_dict(db.mlp.state_dict())
        if nb.cross_attn is not None:
            nn.init.zeros_(nb.cross_attn.proj.weight)
            nn.init.zeros_(nb.cross_attn.proj.bias)

    t = torch.tensor([float(t_ref)], device=dit.device)
    rows = dit.y_embedder.weight.shape[0]
    y_null = (
        dit.y_embedder.weight[dcfg.num_classes]
        if rows > dcfg.num_classes
        else torch.zeros(dcfg.hidden_size, device=dit.device)
    )
    c_ref = dit.t_embedder(t) + y_null[None]

    if conditioning == "adaln-single":
        lins = [b.adaLN_modulation[1] for b in dit.blocks]
        t_block = new.t_block[1]
        if t_block_init == "mean":
            t_block.weight.copy_(torch.stack([lin.weight for lin in lins]).mean(0))
            t_block.bias.copy_(torch.stack([lin.bias for lin in lins]).mean(0))
        elif t_block_init == "block0":
            t_block.load_state_dict(lins[0].state_dict())
        else:
            nn.init.zeros_(t_block.weight)
            nn.init.zeros_(t_block.bias)
        for emb in (getattr(new, "resolution_embedder", None), getattr(new, "aspect_ratio_embedder", None)):
            if emb is not None:
                nn.init.zeros_(emb.mlp[2].weight)
                nn.init.zeros_(emb.mlp[2].bias)
        t_emb = new.t_embedder(t)  # identical weights → identical to DiT's t_emb
        global_mod = new.t_block(t_emb).view(6, -1)
        for nb, db in zip(new.blocks, dit.blocks):
            nb.scale_shift_table.copy_(db.adaLN_modulation(c_ref).view(6, -1) - global_mod)
        final = dit.final_layer.adaLN_modulation(c_ref).view(2, -1)
        new.final_layer.scale_shift_table.copy_(final - t_emb)
    else:
        for nb, db in zip(new.blocks, dit.blocks):
            nb.adaLN_modulation.load_state_dict(db.adaLN_modulation.state_dict())
        new.final_layer.adaLN_modulation.load_state_dict(dit.final_layer.adaLN_modulation.state_dict())
        for k, proj in enumerate(getattr(new, "pooled_projections", [])):
            nn.init.zeros_(proj[2].weight)
            proj[2].bias.copy_(y_null if k == 0 else torch.zeros_like(y_null))
        if not hasattr(new, "pooled_projections"):
            warnings.warn("no pooled-text projection: the null-class embedding is not carried over", stacklevel=2)
    return new


def init_model_from_dit(model: GenTronTransformer, dit: Any, t_ref: float = 500) -> None:
    """``gentron train --init-from-dit CKPT``: re-parameterise a DiT checkpoint (PixArt-α Sec. 2.3, see
    :func:`reparam_init_from_dit`) into the architecture of ``model``, in place.

    The DiT must have ``model``'s width, depth, MLP, patch and channels; its resolution may differ (positions
    are fixed sin-cos, recomputed for ``model``'s grid). New layers (cross-attention, token and pooled-text
    projections, temporal attention) get the re-parameterisation's identity-at-init values."""
    cfg = model.config
    keep = {k: cfg[k] for k in ("pooled_dims", "micro_conditions", "temporal_layers", "temporal_pos_embed")
            if k in cfg and (k != "pooled_dims" or cfg.conditioning != "adaln-single")}
    new = reparam_init_from_dit(dit, text_dims=cfg.text_dims, conditioning=cfg.conditioning, t_ref=t_ref,
                                num_heads=cfg.num_heads, **keep)
    bad = [f"{k} {new.config[k]} (checkpoint) vs {cfg[k]} (config)"
           for k in ("hidden_size", "depth", "mlp_hidden_size", "patch_size", "in_channels", "out_channels")
           if new.config[k] != cfg[k]]
    if bad:
        raise ValueError(f"--init-from-dit: the DiT checkpoint does not fit the model config: {'; '.join(bad)}")
    model.load_state_dict(new.state_dict())


# ----------------------------------------------------------------------------------------------
# CLI: gentron convert
# ----------------------------------------------------------------------------------------------

SOURCES = ("dit", "pixart", "diffusers-dit", "diffusers-pixart", "gentron")
NULL_CAPTION_FILE = "null_caption_embedding.safetensors"
TARGETS = ("gentron", "diffusers-pixart")


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gentron convert`` on an argparse sub-parser collection; returns the parser."""
    s = subparsers.add_parser(
        "convert",
        help="convert DiT / PixArt-α / diffusers checkpoints to GenTron (or GenTron to diffusers PixArt)",
        description="Convert a checkpoint into a save_pretrained folder (safetensors). See docs/convert.md.",
    )
    s.add_argument("src", help="checkpoint file (.pt/.pth/.safetensors) or save_pretrained folder")
    s.add_argument("--from", dest="src_format", required=True, choices=SOURCES, help="layout of SRC")
    s.add_argument("--to", dest="dst_format", default="gentron", choices=TARGETS, help="output layout")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--sample-size", type=int, help="latent size, when the checkpoint has no pos_embed")
    s.add_argument("--num-heads", type=int, default=16, help="attention heads of an official checkpoint (16)")
    s.add_argument("--interpolation-scale", type=float, help="PixArt position scale (default: inferred)")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights of a training checkpoint, not EMA")
    s.add_argument(
        "--reparam",
        choices=["adaln-single", "cross-attn", "adaln-zero"],
        help="re-parameterised init of a text model from a DiT (PixArt-α Sec. 2.3)",
    )
    s.add_argument("--text-dim", type=int, action="append", help="text token width for --reparam (repeatable)")
    s.add_argument("--t-ref", type=float, default=500, help="reference timestep of --reparam (500)")
    s.set_defaults(func=cmd_convert)
    return s


def cmd_convert(args: argparse.Namespace) -> int:
    """Handler of ``gentron convert``; raises ValueError / FileNotFoundError with a message."""
    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if args.reparam and args.src_format not in ("dit", "diffusers-dit"):
        raise ValueError("--reparam needs a DiT source (--from dit or diffusers-dit)")
    if args.dst_format == "diffusers-pixart" and args.src_format in ("dit", "diffusers-dit"):
        if args.reparam != "adaln-single":
            raise ValueError("--to diffusers-pixart needs a PixArt-α model (from a DiT: --reparam adaln-single)")
    extras: dict[str, torch.Tensor] = {}
    if args.src_format == "dit":
        config, sd = convert_dit_state_dict(
            load_checkpoint_file(src, prefer_ema=not args.no_ema), args.num_heads, args.sample_size
        )
        model = build_model(config, sd)
    elif args.src_format == "pixart":
        config, sd, extras = convert_pixart_state_dict(
            load_checkpoint_file(src, prefer_ema=not args.no_ema),
            args.num_heads,
            args.sample_size,
            args.interpolation_scale,
        )
        model = build_model(config, sd)
    elif args.src_format == "diffusers-dit":
        model = convert_diffusers_dit(src)
    elif args.src_format == "diffusers-pixart":
        model = convert_diffusers_pixart(src)
    else:
        folder = src / "transformer" if (src / "transformer" / "config.json").is_file() else src
        if not (folder / "config.json").is_file():
            raise ValueError(f"{src} is not a GenTron save_pretrained folder (no config.json)")
        model = GenTronTransformer.from_pretrained(str(folder), **offline_load_kwargs())
    if args.reparam:
        if not args.text_dim:
            raise ValueError("--reparam needs --text-dim (token width of the text encoder)")
        model = reparam_init_from_dit(model, args.text_dim, conditioning=args.reparam, t_ref=args.t_ref)

    out.mkdir(parents=True, exist_ok=True)
    if args.dst_format == "diffusers-pixart":
        export_diffusers_pixart(model).save_pretrained(str(out), safe_serialization=True)
        kind = "diffusers PixArtTransformer2DModel"
    else:
        model.save_pretrained(str(out), safe_serialization=True)
        kind = f"GenTronTransformer ({model.config.conditioning})"
    if "null_caption_embedding" in extras:
        from safetensors.torch import save_file

        save_file({"y_embedding": extras["null_caption_embedding"].contiguous()}, str(out / NULL_CAPTION_FILE))
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    print(
        f"wrote {kind} to {out}: depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads}, "
        f"patch {cfg.patch_size}, {n / 1e6:.1f}M parameters"
    )
    if "null_caption_embedding" in extras:
        print(f"  PixArt null caption embedding saved to {out / NULL_CAPTION_FILE} (key 'y_embedding')")
    return 0

