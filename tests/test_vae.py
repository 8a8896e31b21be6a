"""The latent-space path with a tiny random AutoencoderKL saved to disk and loaded back."""

import pytest
import torch
from diffusers import AutoencoderKL

from gentron.models.vae import decode_latents, encode_latents, load_vae, vae_downsample_factor


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path)
    return path


def test_load_encode_decode(vae_dir):
    vae = load_vae(vae_dir)
    assert vae_downsample_factor(vae) == 2
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = encode_latents(vae, x, sample=False, batch_size=2)
    assert z.shape == (3, 4, 8, 8)
    raw = vae.encode(x).latent_dist.mean
    torch.testing.assert_close(z, raw * 0.5)  # scaled by the config's scaling_factor
    px = decode_latents(vae, z, batch_size=2)
    torch.testing.assert_close(px, vae.decode(raw).sample)
    video = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    zv = encode_latents(vae, video, sample=False)
    assert zv.shape == (2, 4, 4, 8, 8)
    torch.testing.assert_close(zv[:, :, 1], encode_latents(vae, video[:, :, 1], sample=False))


def test_pipeline_with_vae_decodes_to_pixels(vae_dir):
    from gentron.diffusion import DiffusionConfig
    from gentron.models import GenTronTransformer, zoo_config
    from gentron.pipelines import GenTronPipeline
    from gentron.text import load_text_encoder

    enc = load_text_encoder({"kind": "minilm", "max_length": 8})
    model = GenTronTransformer(**zoo_config("GenTron-T/2", conditioning="cross-attn", sample_size=8, in_channels=4,
                                            text_dims=[enc.dim]))
    pipe = GenTronPipeline.from_parts(model, [enc], DiffusionConfig(), vae=load_vae(vae_dir))
    out = pipe("a red circle", num_inference_steps=2, output_type="pt", progress=False).images
    assert out.shape == (1, 3, 16, 16)


def test_missing_vae_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_vae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "empty")


def test_train_in_latent_space_and_sample(vae_dir, shapes_data, tmp_path):
    """vae.path: the trainer encodes images to latents, the exported pipeline decodes to pixels."""
    from conftest import tiny_overrides

    from gentron.train.config import ConfigError, load_config
    from gentron.train.trainer import Trainer

    sets = tiny_overrides(shapes_data) + [f"vae.path={vae_dir}", "model.in_channels=4", "model.name=GenTron-T/2",
                                          "train.steps=2"]
    trainer = Trainer(load_config(None, sets), tmp_path / "run", log=lambda s: None, show_progress=False)
    assert trainer.model.config.sample_size == 8 and trainer.model.config.in_channels == 4
    trainer.fit()
    from gentron.pipelines import GenTronPipeline

    pipe = GenTronPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.vae is not None
    out = pipe("a red circle", num_inference_steps=2, output_type="pt", progress=False).images
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="latent channels"):
        Trainer(load_config(None, sets[:-3] + ["model.in_channels=3"]), tmp_path / "bad", log=lambda s: None,
                show_progress=False)
