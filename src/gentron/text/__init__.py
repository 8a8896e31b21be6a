"""Text encoders for conditioning: frozen MiniLM / CLIP / T5 / BERT-like, or a trainable scratch one."""

from gentron.text.encoders import (
    DEFAULT_MAX_LENGTH,
    KINDS,
    ScratchTextModel,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    load_text_encoder,
    load_text_encoders,
    masked_mean,
    minilm_dir,
)

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "KINDS",
    "ScratchTextModel",
    "TextEmbedding",
    "TextEncoder",
    "TextEncoderConfig",
    "load_text_encoder",
    "load_text_encoders",
    "masked_mean",
    "minilm_dir",
]
