"""Feature cache: shards round-trip the VAE posterior and text features; interrupted runs resume."""

import pytest
import torch
from diffusers import AutoencoderKL

from gentron.data.cache import FeatureCache, shard_name, write_feature_cache
from gentron.data.folder import ImageCaptionFolder
from gentron.text import load_text_encoder


@pytest.fixture(scope="module")
def parts(tmp_path_factory, shapes_data):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5).eval()
    return ImageCaptionFolder(shapes_data, resolution=16), vae, load_text_encoder({"kind": "minilm", "max_length": 12})


def test_cache_round_trip_and_resume(parts, tmp_path):
    data, vae, enc = parts
    out = write_feature_cache(data, tmp_path / "c", vae=vae, text_encoders=[enc], shard_size=40, batch_size=16,
                              show_progress=False)
    cache = FeatureCache(out)
    assert len(cache) == len(data) == 96
    item = cache[45]
    assert item["caption"] == data[45]["caption"]
    mean = vae.encode(data[45]["pixel_values"][None]).latent_dist.mean[0]
    g = torch.Generator().manual_seed(0)
    lat = cache.__getitem__(45, generator=g)["latents"]
    assert lat.shape == mean.shape and (lat / 0.5 - mean).abs().mean() < 1.0
    tokens, mask, pooled = item["text0"]
    ref = enc.encode([item["caption"]])
    torch.testing.assert_close(tokens, ref.tokens[0])
    assert torch.equal(mask, ref.mask[0])
    # interrupt: drop the last shard, resume writes only that one
    (out / shard_name(2)).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        FeatureCache(out)
    before = (out / shard_name(0)).stat().st_mtime_ns
    write_feature_cache(data, out, vae=vae, text_encoders=[enc], shard_size=40, batch_size=16, show_progress=False)
    assert (out / shard_name(0)).stat().st_mtime_ns == before and len(FeatureCache(out)) == 96
    with pytest.raises(ValueError, match="other settings"):
        write_feature_cache(data, out, vae=None, text_encoders=[enc], shard_size=40, show_progress=False)


def test_not_a_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a gentron feature cache"):
        FeatureCache(tmp_path)


# -- training from a cache ----------------------------------------------------------------------


def _train(data_overrides, run_dir, steps, resume=None, extra=()):
    import json

    from conftest import tiny_overrides

    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    cfg = load_config(None, tiny_overrides("unused") + list(data_overrides) + [f"train.steps={steps}"] + list(extra))
    Trainer(cfg, run_dir, resume=resume, log=lambda s: None, show_progress=False).fit()
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_on_a_pixel_cache_matches_training_on_the_folder(parts, shapes_data, tmp_path):
    data, _, _ = parts
    enc = load_text_encoder({"kind": "minilm", "max_length": 24})  # as tiny_overrides
    write_feature_cache(data, tmp_path / "c", text_encoders=[enc], shard_size=40, show_progress=False)
    from_folder = _train([f"data.path={shapes_data}"], tmp_path / "a", 6)
    from_cache = _train(["data.kind=cache", f"data.path={tmp_path / 'c'}"], tmp_path / "b", 6)
    assert len(from_cache) == len(from_folder) == 6
    torch.testing.assert_close(torch.tensor(from_cache), torch.tensor(from_folder), rtol=1e-4, atol=1e-6)


def test_training_on_a_latent_cache_resumes_exactly_and_checks_its_encoders(parts, tmp_path):
    from gentron.train.config import ConfigError

    data, vae, _ = parts
    vae.save_pretrained(tmp_path / "vae")
    enc = load_text_encoder({"kind": "minilm", "max_length": 24})
    write_feature_cache(data, tmp_path / "c", vae=vae, text_encoders=[enc], shard_size=40, show_progress=False)
    latent = ["data.kind=cache", f"data.path={tmp_path / 'c'}", f"vae.path={tmp_path / 'vae'}", "model.in_channels=4"]
    full = _train(latent, tmp_path / "full", 4)
    _train(latent, tmp_path / "part", 2, extra=["train.checkpoint_every=2"])
    resumed = _train(latent, tmp_path / "part", 4, resume="auto")
    assert full == resumed and all(map(torch.isfinite, torch.tensor(full)))
    assert (tmp_path / "full" / "pipeline" / "vae").is_dir()
    with pytest.raises(ConfigError, match="max_length=24 in the cache but 12"):
        _train(latent, tmp_path / "bad", 1, extra=["text.encoders=[{kind: minilm, max_length: 12}]"])
    with pytest.raises(ConfigError, match="hidden_layer=-1 in the cache but 0"):
        _train(latent, tmp_path / "bad1", 1, extra=["text.encoders=[{kind: minilm, max_length: 24, hidden_layer: 0}]"])
    with pytest.raises(ConfigError, match="set vae.path"):
        _train(latent[:2] + ["model.in_channels=4"], tmp_path / "bad2", 1)
