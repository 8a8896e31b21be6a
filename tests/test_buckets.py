import math

import torch
from PIL import Image

from gentron.data.buckets import BucketBatchSampler, aspect_ratio_buckets, nearest_bucket, resize_to_bucket


def test_forty_buckets_per_base():
    for base in (256, 512, 1024):
        buckets = aspect_ratio_buckets(base)
        assert len(buckets) == 40
        ratios = [h / w for h, w in buckets]
        assert ratios == sorted(ratios)
        assert abs(ratios[0] - 0.25) < 0.02 and abs(ratios[-1] - 4.0) < 0.3
        assert (base, base) in buckets
        step = base // 16
        for h, w in buckets:
            assert h % step == 0 and w % step == 0
            assert abs(h * w / base**2 - 1) <= 0.15


def test_nearest_bucket_and_resize():
    buckets = aspect_ratio_buckets(256)
    i = nearest_bucket(480, 640, buckets)
    h, w = buckets[i]
    assert abs(math.log((h / w) / 0.75)) < 0.08
    img = resize_to_bucket(Image.new("RGB", (640, 480)), (h, w))
    assert img.size == (w, h)


def test_bucket_batches_are_homogeneous_and_deterministic():
    bucket_of = [0, 1, 2] * 20
    s = BucketBatchSampler(bucket_of, batch_size=4, seed=3)
    batches = list(s)
    assert all(len({bucket_of[i] for i in b}) == 1 for b in batches)
    assert batches == list(BucketBatchSampler(bucket_of, batch_size=4, seed=3))
    assert batches != s.batches(epoch=1)
    assert len({bucket_of[b[0]] for b in batches[:6]}) > 1  # buckets alternate
    assert sorted(i for b in batches for i in b) == sorted(range(60))


# -- bucketed training (trainer) ----------------------------------------------------------------


def _aspect_folder(root, n=48, seed=0):
    """Images of three aspect ratios (wide, square, tall) with captions, like real scraped data."""
    import json
    import random

    root.mkdir(parents=True)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        w, h = [(64, 32), (40, 40), (30, 60)][i % 3]
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        img.save(root / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"picture {i % 5}"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_bucketed_images_keep_aspect_and_report_micro_conditions(tmp_path):
    from gentron.data.buckets import BucketedImages
    from gentron.data.folder import ImageCaptionFolder

    data = BucketedImages(ImageCaptionFolder(_aspect_folder(tmp_path / "d"), resolution=32), base=32, multiple=4,
                          show_progress=False)
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in data.buckets) and (32, 32) in data.buckets
    wide, square, tall = data[0], data[1], data[2]
    for item, (oh, ow) in zip((wide, square, tall), [(32, 64), (40, 40), (60, 30)]):
        _, h, w = item["pixel_values"].shape
        assert item["original_size"] == (oh, ow)
        assert abs(math.log((h / w) / (oh / ow))) < 0.2 and abs(h * w / 32**2 - 1) <= 0.15
        assert item["aspect_ratio"] == h / w
    assert len({tuple(data[i]["pixel_values"].shape) for i in range(0, 48, 3)}) == 1


def test_index_stated_sizes_skip_header_reads(tmp_path):
    """captions.jsonl may state height/width (PixArt-α's data-info style): bucketing then trusts them and
    opens no file; a malformed size falls back to the image header."""
    import json

    from gentron.data.buckets import BucketedImages
    from gentron.data.folder import ImageCaptionFolder

    root = _aspect_folder(tmp_path / "d", n=6)
    recs = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    recs[0].update(height=200, width=100)  # the file is 32x64 (wide); the index says tall
    recs[1].update(height="x", width=40)  # malformed: read the header (40x40)
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    folder = ImageCaptionFolder(root, resolution=32)
    assert folder.image_size(0) == (200, 100) and folder.image_size(1) == (40, 40)
    assert set(folder.stated_sizes) == {0}
    data = BucketedImages(folder, base=32, multiple=4, show_progress=False)
    h, w = data.buckets[data.bucket_of_item[0]]
    assert h > w  # bucketed by the stated (tall) size


def test_bucketed_training_with_micro_conditions_resumes_exactly(tmp_path):
    import json

    from conftest import tiny_overrides

    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    root = _aspect_folder(tmp_path / "d")
    sets = tiny_overrides(root) + ["model.resolution=32", "model.conditioning=adaln-single",
                                   "model.micro_conditions=true", "data.buckets=true", "train.batch_size=4",
                                   "model.overrides={hidden_size: 48, num_heads: 2}"]

    def run(out, steps, resume=None, extra=()):
        cfg = load_config(None, sets + [f"train.steps={steps}"] + list(extra))
        trainer = Trainer(cfg, out, resume=resume, log=lambda s: None, show_progress=False)
        shapes = {tuple(trainer.load_batch(trainer.batch_indices(s, 0))[0].shape) for s in range(steps)}
        trainer.fit()
        return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()], shapes

    full, shapes = run(tmp_path / "full", 6)
    assert len(shapes) == 3  # batches come from all three buckets, each batch one shape
    run(tmp_path / "part", 3, extra=["train.checkpoint_every=3"])
    resumed, _ = run(tmp_path / "part", 6, resume="auto")
    assert resumed == full
