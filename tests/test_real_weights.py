"""Bring-your-own weights: CLIP + Flan-T5 interleaved end to end, progressive resolution."""

import pytest
import torch
import transformers
from conftest import tiny_overrides
from test_text_encoders import clip_tokenizer, t5_tokenizer

from gentron.models import GenTronTransformer, zoo_config
from gentron.pipelines import GenTronPipeline
from gentron.train.config import load_config
from gentron.train.trainer import Trainer


@pytest.fixture(scope="module")
def clip_t5_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    tok = clip_tokenizer()
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    tok = t5_tokenizer()
    transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tok), d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)).save_pretrained(root / "t5")
    tok.save_pretrained(root / "t5")
    return root / "clip", root / "t5"


def test_clip_plus_t5_interleaved_trains_and_samples(shapes_data, clip_t5_dirs, tmp_path):
    clip, t5 = clip_t5_dirs
    cfg = load_config(None, tiny_overrides(shapes_data) + [
        f"text.encoders=[{{kind: clip, path: {clip}, max_length: 16}}, {{kind: t5, path: {t5}, max_length: 12}}]",
        "model.overrides={depth: 4}", "train.steps=3",
    ])
    trainer = Trainer(cfg, tmp_path / "run", log=lambda s: None, show_progress=False)
    model = trainer.model
    assert [model.encoder_for_block(i) for i in range(4)] == [0, 1, 0, 1]  # GenTron interleaved cross-attention
    assert [p.fc1.in_features for p in model.token_projections] == [32, 24]
    trainer.fit()
    pipe = GenTronPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.config.text_encoder_kinds == ["clip", "t5"]
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    out = pipe("a red circle", num_inference_steps=2, output_type="pt", progress=False).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_progressive_resolution_256_to_512(tmp_path):
    """A 16-latent (128 px) checkpoint loads into a 32-latent (256 px) model: positions are recomputed for the
    new grid, every weight is shared, and the model runs at the new size (the 256² → 512² recipe, scaled down)."""
    torch.manual_seed(0)
    small = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="adaln-single", sample_size=16,
                                            in_channels=4, text_dims=[24]))
    small.save_pretrained(tmp_path / "small")
    big = GenTronTransformer.from_pretrained(tmp_path / "small", sample_size=32)
    assert big.config.sample_size == 32
    for (n, a), (_, b) in zip(small.state_dict().items(), big.state_dict().items()):
        assert torch.equal(a, b), n
    out = big(torch.randn(1, 4, 32, 32), 10, encoder_hidden_states=torch.randn(1, 5, 24)).sample
    assert out.shape == (1, 8, 32, 32)
    assert big.pos_embed(16, 16, "cpu").shape == (1, 256, 64)
