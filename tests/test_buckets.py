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
