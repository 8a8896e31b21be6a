"""The shapes world: determinism, held-out splits, captions, geometry, serialisation, prompt suites."""

import json
import random
import re

import numpy as np
import pytest

from gentron.data.shapes import (
    COLORS,
    GAP,
    HELDOUT_COLOR_SHAPE,
    HELDOUT_SPATIAL,
    KINDS,
    NUMBER_WORDS,
    PLURALS,
    RELATION_PHRASES,
    SHAPES,
    SIZES,
    TRAIN_COLOR_SHAPE,
    Scene,
    ShapesWorld,
    describe,
    scene_from_dict,
    scene_to_dict,
    spatial_key,
    write_shapes_dataset,
)
from gentron.eval.prompts import CATEGORIES, eval_suite

PHRASE_TO_REL = {v: k for k, v in RELATION_PHRASES.items()}
SPATIAL_RE = re.compile(r"^a (\w+) (\w+) (to the left of|to the right of|above|below) a (\w+) (\w+)$")


def holds(a, rel, b) -> bool:
    """Ground-truth geometry of a stated relation, with the generator's dominance rule."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[rel]
    return along > 0.3 and abs(across) <= 0.5 * along + 1e-9


def test_vocabulary_and_heldout_design():
    assert len(COLORS) >= 6 and len(SHAPES) >= 4
    assert 4 <= len(HELDOUT_COLOR_SHAPE) <= 6
    assert set(SIZES) == {"small", "large"}
    # every colour and every shape keeps training partners
    assert {c for c, _ in TRAIN_COLOR_SHAPE} == set(COLORS)
    assert {s for _, s in TRAIN_COLOR_SHAPE} == set(SHAPES)
    assert not set(TRAIN_COLOR_SHAPE) & HELDOUT_COLOR_SHAPE
    for a, rel, b in HELDOUT_SPATIAL:
        assert rel in ("left of", "above") and a != b
        assert (b, rel, a) not in HELDOUT_SPATIAL  # the mirrored arrangement stays in training
    assert spatial_key("blue", "right of", "red") == ("red", "left of", "blue")
    assert spatial_key("red", "below", "cyan") == ("cyan", "above", "red")


def test_sample_is_a_pure_function_of_seed_index_split():
    w1, w2 = ShapesWorld(seed=3), ShapesWorld(seed=3)
    forward = [w1.sample(i) for i in range(20)]
    backward = [w2.sample(i) for i in reversed(range(20))][::-1]
    for (im_a, cap_a, sc_a), (im_b, cap_b, sc_b) in zip(forward, backward):
        assert cap_a == cap_b and sc_a == sc_b
        assert np.array_equal(np.asarray(im_a), np.asarray(im_b))
    other_seed = [ShapesWorld(seed=4).sample(i)[1] for i in range(20)]
    other_split = [w1.sample(i, "heldout")[1] for i in range(20)]
    caps = [c for _, c, _ in forward]
    assert caps != other_seed and caps != other_split
    # the scene does not depend on the resolution, only its rendering does
    assert ShapesWorld(resolution=64, seed=3).sample(5)[2] == forward[5][2]


def test_train_split_never_contains_heldout_combos():
    world = ShapesWorld(seed=0)
    kinds = set()
    for i in range(2000):
        scene = world.sample_scene(world.rng_for(i), "train")
        kinds.add(scene.kind)
        pairs = {(o.color, o.shape) for o in scene.objects}
        assert not pairs & HELDOUT_COLOR_SHAPE, (i, scene)
        assert scene.spatial_key() not in HELDOUT_SPATIAL, (i, scene)
    assert kinds == set(KINDS)


def test_heldout_split_always_contains_a_heldout_combo():
    world = ShapesWorld(seed=0)
    for i in range(300):
        scene = world.sample_scene(world.rng_for(i, "heldout"), "heldout")
        assert scene.heldout_combos(), scene
        if scene.kind == "spatial":
            assert scene.spatial_key() in HELDOUT_SPATIAL


def test_kind_mixture_and_numpy_rng():
    world = ShapesWorld(kinds_weights={"spatial": 1.0})
    rng = np.random.default_rng(0)
    assert all(world.sample_scene(rng).kind == "spatial" for _ in range(20))
    with pytest.raises(ValueError):
        ShapesWorld(kinds_weights={"video": 1.0})
    with pytest.raises(ValueError):
        world.sample_scene(rng, split="test")


def test_captions_mention_the_right_attributes():
    world = ShapesWorld(seed=1)
    for i in range(400):
        image, caption, scene = world.sample(i)
        assert len(re.findall(r"\w+|,", caption)) <= 16, caption
        for o in scene.objects:
            assert o.color in caption, (caption, scene)
            assert o.shape in caption or PLURALS[o.shape] in caption, (caption, scene)
        if scene.kind == "single" and caption.split()[1] in SIZES:
            assert caption.split()[1] == scene.objects[0].size
        if scene.kind == "count":
            assert caption.split()[0] == NUMBER_WORDS[len(scene.objects)]
            assert len({(o.color, o.shape) for o in scene.objects}) == 1
        if scene.kind == "spatial":
            m = SPATIAL_RE.match(caption)
            assert m, caption
            c1, s1, phrase, c2, s2 = m.groups()
            a = next(o for o in scene.objects if o.color == c1)
            b = next(o for o in scene.objects if o.color == c2)
            assert (a.shape, b.shape) == (s1, s2)
            assert holds(a, PHRASE_TO_REL[phrase], b), (caption, scene)
        if scene.kind == "complex":
            assert len(scene.objects) == 3 and len({o.color for o in scene.objects}) == 3


@pytest.mark.parametrize("layout_grid", [0, 3, 5])
def test_geometry_fits_and_never_overlaps(layout_grid):
    world = ShapesWorld(seed=2, layout_grid=layout_grid)
    grid = set(np.linspace(0.25, 0.75, layout_grid).round(9)) if layout_grid else None
    kinds = set()
    for i in range(500):
        scene = world.sample_scene(world.rng_for(i))
        kinds.add(scene.kind)
        if grid is not None:
            assert all(round(o.cx, 9) in grid and round(o.cy, 9) in grid for o in scene.objects)
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox()
            assert 0 < x0 and 0 < y0 and x1 < 1 and y1 < 1
        for k, a in enumerate(scene.objects):
            for b in scene.objects[k + 1:]:
                assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= a.radius + b.radius + GAP - 1e-9
        if scene.relation is not None:
            i0, rel, j0 = scene.relation
            assert holds(scene.objects[i0], rel, scene.objects[j0])
    assert kinds == set(KINDS)


def test_layout_grid_keeps_the_splits_and_varies_positions():
    world = ShapesWorld(seed=1, layout_grid=3)
    centres = set()
    for i in range(300):
        train = world.sample_scene(world.rng_for(i, "train"), "train")
        assert not train.heldout_combos()
        centres |= {(o.cx, o.cy) for o in train.objects}
        for kind in KINDS:
            held = world.sample_scene(random.Random(i), "heldout", kind=kind)
            assert held.heldout_combos()
    assert len(centres) == 9  # every point of the 3 x 3 grid is used
    with pytest.raises(ValueError, match="layout_grid"):
        ShapesWorld(layout_grid=1)


@pytest.mark.parametrize("resolution", [16, 32, 48, 64, 128])
def test_renders_at_every_resolution(resolution):
    world = ShapesWorld(resolution=resolution, seed=0)
    for i in range(6):
        image, _, scene = world.sample(i)
        assert image.size == (resolution, resolution) and image.mode == "RGB"
        arr = np.asarray(image)
        colours = {tuple(p) for p in arr.reshape(-1, 3)}
        assert colours == {world.background} | {COLORS[o.color] for o in scene.objects}  # crisp: no blends
        assert (arr[0] == world.background).all() and (arr[:, -1] == world.background).all()


def test_geometry_scales_with_resolution():
    scene = ShapesWorld(seed=0).sample_scene(random.Random(0), kind="single")
    fractions = []
    for res in (32, 64, 128):
        arr = np.asarray(ShapesWorld(resolution=res).render(scene))
        fg = (arr != ShapesWorld().background).any(-1).mean()
        fractions.append(fg)
    assert max(fractions) - min(fractions) < 0.03


def test_scene_roundtrip_through_json():
    world = ShapesWorld(seed=5)
    for i in range(50):
        scene = world.sample(i)[2]
        d = json.loads(json.dumps(scene_to_dict(scene)))
        assert scene_from_dict(d) == scene
    assert isinstance(scene_from_dict(scene_to_dict(scene)), Scene)


def test_video_mode_writes_moving_shapes_clips(tmp_path):
    # the video mode itself is tested in tests/test_video.py; here: the shared entry point dispatches to it
    out = write_shapes_dataset(tmp_path, num=2, resolution=16, video=True)
    recs = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["file"].startswith("videos/") and "moving" in r["caption"] for r in recs)


def test_eval_suites_are_deterministic_and_held_out():
    for cat in CATEGORIES:
        a, b = eval_suite(cat, n=12), eval_suite(cat, n=12)
        assert [p.prompt for p in a] == [p.prompt for p in b]
        assert all(p.category == cat and p.prompt == describe(p.scene) for p in a)
        for p in a:
            if cat == "spatial":
                assert p.scene.spatial_key() in HELDOUT_SPATIAL
            else:
                assert {(o.color, o.shape) for o in p.scene.objects} & HELDOUT_COLOR_SHAPE
        for p in eval_suite(cat, split="train", n=12):
            assert not p.scene.heldout_combos()
    singles = eval_suite("color", n=12)
    # balanced: every held-out pair appears twice in 12 single-object prompts
    assert sorted({p.prompt for p in singles}) == sorted(f"a {c} {s}" for c, s in HELDOUT_COLOR_SHAPE)
    assert [p.prompt for p in singles] == [p.prompt for p in eval_suite("shape", n=12)]
    counts = {len(p.scene.objects) for p in eval_suite("count", n=18)}
    assert counts == {1, 2, 3}
    assert {p.scene.relation[1] for p in eval_suite("spatial", n=24)} == {"left of", "right of", "above", "below"}
    with pytest.raises(ValueError):
        eval_suite("texture")
