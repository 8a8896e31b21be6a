"""The detector: exact on clean renders, tolerant of sample-like noise, and strict on wrong renders."""

import copy
import random

import numpy as np
import pytest
from PIL import Image

from gentron.data.shapes import BACKGROUND, COLORS, SHAPES, ShapesWorld, describe
from gentron.eval.detector import (
    Detection,
    chance_levels,
    degrade,
    detect,
    label_components,
    relation_holds,
    score,
    validate_detector,
)
from gentron.eval.prompts import CATEGORIES, EvalPrompt, eval_suite


@pytest.mark.parametrize("resolution,n", [(32, 80), (64, 30)])
def test_clean_renders_are_read_exactly(resolution, n):
    acc = validate_detector(resolution=resolution, n=n, seed=1)
    assert set(acc) == set(CATEGORIES)
    assert all(v >= 0.99 for v in acc.values()), acc


def test_sample_like_noise_is_tolerated():
    acc = validate_detector(resolution=32, n=30, seed=2, noisy=True)
    assert all(v >= 0.9 for v in acc.values()), acc


def test_detections_match_the_scene():
    world = ShapesWorld(resolution=32, seed=0)
    for i in range(40):
        image, _, scene = world.sample(i)
        dets = detect(np.asarray(image))  # arrays work as well as PIL images
        assert sorted(d.describe() for d in dets) == sorted(o.describe() for o in scene.objects)
        for d in dets:
            o = min(scene.objects, key=lambda o: (o.cx - d.cx) ** 2 + (o.cy - d.cy) ** 2)
            assert abs(o.cx - d.cx) < 0.05 and abs(o.cy - d.cy) < 0.08  # triangles' centroids sit low
            assert 0 < d.area < 1 and d.shape_iou > 0.8


def test_blank_and_speck_images_have_no_objects():
    blank = Image.new("RGB", (32, 32), BACKGROUND)
    assert detect(blank) == []
    arr = np.asarray(blank).copy()
    arr[10, 10] = COLORS["red"]
    arr[20, 5:7] = COLORS["blue"]
    assert detect(arr) == []
    with pytest.raises(ValueError):
        detect(np.zeros((4, 4)))


def test_components_link_across_small_cracks_only():
    labels = -np.ones((9, 12), dtype=int)
    labels[1:4, 1:4] = 0
    labels[1:4, 5:8] = 0  # one-pixel crack
    labels[1:4, 10:12] = 0  # two-pixel gap
    labels[6:8, 1:4] = 1  # another colour, adjacent to nothing of its colour
    comps = label_components(labels, link=2)
    assert comps[2, 2] == comps[2, 6] != comps[2, 10]
    assert comps[7, 2] not in (comps[2, 2], comps[2, 10])
    assert len(np.unique(comps[comps >= 0])) == 3


def _prompt(category, n=30):
    return eval_suite(category, split="heldout", n=n, seed=7)


def _other(value, options, rng):
    return rng.choice([o for o in options if o != value])


def test_wrong_colour_or_shape_scores_low():
    world = ShapesWorld(resolution=32)
    rng = random.Random(0)
    good = {"color": 0, "shape": 0}
    bad = {"color": 0, "shape": 0}
    prompts = _prompt("color")
    for p in prompts:
        good["color"] += score(p, detect(world.render(p.scene)))["color"]
        good["shape"] += score(p, detect(world.render(p.scene)))["shape"]
        recolored = copy.deepcopy(p.scene)
        recolored.objects[0].color = _other(p.scene.objects[0].color, list(COLORS), rng)
        bad["color"] += score(p, detect(world.render(recolored)))["color"]
        reshaped = copy.deepcopy(p.scene)
        reshaped.objects[0].shape = _other(p.scene.objects[0].shape, SHAPES, rng)
        bad["shape"] += score(p, detect(world.render(reshaped)))["shape"]
    assert good == {"color": len(prompts), "shape": len(prompts)}
    assert bad == {"color": 0, "shape": 0}


def test_mirrored_layouts_fail_spatial():
    world = ShapesWorld(resolution=32)
    for p in _prompt("spatial"):
        image = world.render(p.scene)
        assert score(p, detect(image)) == {"objects": True, "spatial": True}
        horizontal = p.scene.relation[1] in ("left of", "right of")
        mirrored = image.transpose(Image.FLIP_LEFT_RIGHT if horizontal else Image.FLIP_TOP_BOTTOM)
        assert score(p, detect(mirrored)) == {"objects": True, "spatial": False}, p.prompt
        swapped = copy.deepcopy(p.scene)  # right positions, colours exchanged
        a, b = swapped.objects
        a.color, b.color = b.color, a.color
        assert not score(p, detect(world.render(swapped)))["spatial"]


def test_wrong_counts_and_complex_scenes_fail():
    world = ShapesWorld(resolution=32)
    rng = random.Random(1)
    for p in _prompt("count", n=18):
        assert score(p, detect(world.render(p.scene)))["count"]
        fewer = copy.deepcopy(p.scene)
        if len(fewer.objects) > 1:
            fewer.objects.pop()
        else:
            fewer.objects[0].color = _other(fewer.objects[0].color, list(COLORS), rng)
        assert not score(p, detect(world.render(fewer)))["count"]
    for p in _prompt("complex", n=12):
        assert score(p, detect(world.render(p.scene)))["complex"]
        wrong = copy.deepcopy(p.scene)
        k = rng.randrange(3)
        wrong.objects[k].shape = _other(wrong.objects[k].shape, SHAPES, rng)
        assert not score(p, detect(world.render(wrong)))["complex"]


def test_score_rules():
    scene = ShapesWorld().sample_scene(random.Random(0), kind="single")
    o = scene.objects[0]
    big = Detection(o.color, o.shape, 0.5, 0.5, 0.2, (0, 0, 1, 1))
    small = Detection("red" if o.color != "red" else "blue", o.shape, 0.2, 0.2, 0.05, (0, 0, 1, 1))
    p = EvalPrompt(describe(scene), scene, "color")
    assert score(p, [small, big]) == {"color": True, "shape": True}  # the most prominent object decides
    assert score(p, []) == {"color": False, "shape": False}
    a = Detection("red", "circle", 0.2, 0.5, 0.1, (0, 0, 1, 1))
    b = Detection("blue", "square", 0.7, 0.6, 0.1, (0, 0, 1, 1))
    assert relation_holds(a, "left of", b) and relation_holds(b, "right of", a)
    assert not relation_holds(a, "above", b) and not relation_holds(a, "right of", b)
    c = Detection("blue", "square", 0.3, 0.9, 0.1, (0, 0, 1, 1))  # mostly below, a little right
    assert relation_holds(a, "above", c) and not relation_holds(a, "left of", c)


def test_chance_levels_are_low_and_deterministic():
    chance = chance_levels(split="heldout", n=12, images=24)
    assert chance == chance_levels(split="heldout", n=12, images=24)
    assert set(chance) == set(CATEGORIES)
    assert 0.05 < chance["color"] < 0.3
    assert chance["shape"] < 0.4
    assert all(chance[c] < 0.15 for c in ("count", "spatial", "complex"))
    train = chance_levels(split="train", n=12, images=24)
    assert all(0.0 <= v <= 1.0 for v in train.values())


def test_degrade_changes_pixels_but_not_size():
    image = ShapesWorld().sample(0)[0]
    noisy = degrade(image, random.Random(0))
    assert noisy.size == image.size and noisy.mode == "RGB"
    assert not np.array_equal(np.asarray(noisy), np.asarray(image))
