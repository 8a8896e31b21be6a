"""ImageCaptionFolder: the shapes round trip, sidecar captions, and messy data that must not crash."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gentron.data.folder import ImageCaptionFolder, ImageLoadError, load_image, resize_and_crop
from gentron.data.shapes import ShapesWorld, load_scenes, write_shapes_dataset


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_shapes_dataset_round_trip(tmp_path):
    root = write_shapes_dataset(tmp_path / "shapes", num=12, resolution=32, seed=3)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["generator"] == "gentron-shapes" and meta["version"] == 1
    assert (meta["resolution"], meta["seed"], meta["num"], meta["split"]) == (32, 3, 12, "train")
    lines = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert [rec["file"] for rec in lines] == [f"images/{i:06d}.png" for i in range(12)]
    assert not (root / "captions.jsonl.tmp").exists()

    ds = ImageCaptionFolder(root, resolution=32)
    assert len(ds) == 12 and ds.source == "captions.jsonl"
    world = ShapesWorld(resolution=32, seed=3)
    scenes = load_scenes(root)
    for i in range(12):
        item = ds[i]
        image, caption, scene = world.sample(i)
        assert item["index"] == i and item["caption"] == caption == lines[i]["caption"]
        assert scenes[i][2] == scene
        px = item["pixel_values"]
        assert px.shape == (3, 32, 32) and px.dtype == torch.float32
        assert px.min() >= -1 and px.max() <= 1
        assert np.array_equal(to_uint8(px), np.asarray(image))  # native resolution: no resampling


def test_shapes_dataset_downscaled_on_load(tmp_path):
    root = write_shapes_dataset(tmp_path / "s64", num=2, resolution=64)
    ds = ImageCaptionFolder(root, resolution=32)
    assert ds[1]["pixel_values"].shape == (3, 32, 32)


def _save(path, size=(40, 30), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_sidecar_captions_and_crops(tmp_path):
    _save(tmp_path / "a.png", (40, 30))
    (tmp_path / "a.txt").write_text("a red rectangle\n")
    _save(tmp_path / "sub" / "b.jpg", (20, 50), (30, 30, 200))
    (tmp_path / "sub" / "b.txt").write_text("a blue one")
    _save(tmp_path / "c.webp", (16, 16))  # no caption file
    (tmp_path / "notes.txt").write_text("not a caption")
    ds = ImageCaptionFolder(tmp_path, resolution=16)
    assert ds.source == "sidecar" and len(ds) == 2
    assert ds.skipped["missing_caption"] == 1
    assert ds.captions == ["a red rectangle", "a blue one"]
    for i in range(2):
        assert ds[i]["pixel_values"].shape == (3, 16, 16)
    flipped = ImageCaptionFolder(tmp_path, resolution=16, center_crop=False, random_flip=True)
    a, b = flipped[1]["pixel_values"], flipped[1]["pixel_values"]
    assert a.shape == b.shape == (3, 16, 16)


def test_resize_and_crop_keeps_native_images_and_centres_crops():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    out = resize_and_crop(img, 32)
    assert out.size == (32, 32)
    assert np.array_equal(np.asarray(out), np.asarray(img)[:, 8:40])
    assert resize_and_crop(img, 64).size == (64, 64)
    assert resize_and_crop(img, 16).size == (16, 16)


def _jsonl(root, records):
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    for name in ("0", "1", "2"):
        _save(tmp_path / f"{name}.png", (16, 16), (10 * int(name), 0, 0))
    (tmp_path / "1.png").write_bytes(b"this is not a png")
    _jsonl(tmp_path, [{"file": f"{i}.png", "caption": f"image {i}"} for i in range(3)])
    ds = ImageCaptionFolder(tmp_path, resolution=16)
    assert len(ds) == 3 and ds.skipped["corrupt_image"] == 0  # decoding is lazy
    item = ds[1]
    assert item["index"] == 2 and item["caption"] == "image 2"  # the next readable item
    assert ds.skipped["corrupt_image"] == 1
    assert ds[1]["index"] == 2 and ds.skipped["corrupt_image"] == 1  # counted once per file
    assert [ds[i]["index"] for i in range(3)] == [0, 2, 2]


def test_missing_caption_file_and_bad_records_are_counted(tmp_path):
    for i in range(4):
        _save(tmp_path / "img" / f"{i}.png", (16, 16))
    _jsonl(tmp_path, [
        {"file": "img/0.png", "caption": "ok"},
        {"file": "img/1.png", "text": "text key works too"},
        {"file": "img/2.png", "caption": "   "},
        {"file": "img/3.png"},
        {"file": "img/404.png", "caption": "gone"},
        "{not json",
        {"caption": "no file key"},
    ])
    ds = ImageCaptionFolder(tmp_path, resolution=16)
    assert ds.captions == ["ok", "text key works too"]
    assert ds.skipped == {"missing_caption": 2, "missing_file": 1, "bad_record": 2, "corrupt_image": 0}
    assert "skipped" in repr(ds)


def test_empty_and_wrong_paths_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nope", resolution=32)
    with pytest.raises(ValueError, match=r"no images with captions found in .*captions\.jsonl.*IMG\.txt"):
        ImageCaptionFolder(tmp_path, resolution=32)
    _save(tmp_path / "x.png", (8, 8))
    with pytest.raises(ValueError, match="missing_caption"):
        ImageCaptionFolder(tmp_path, resolution=32)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        ImageCaptionFolder(tmp_path / "file.txt", resolution=32)


def test_all_corrupt_raises_and_load_image_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "a.txt").write_text("caption")
    ds = ImageCaptionFolder(tmp_path, resolution=8)
    with pytest.raises(RuntimeError, match="could be decoded"):
        ds[0]
    with pytest.raises(ImageLoadError, match="could not decode image"):
        load_image(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(IndexError):
        ds[5]


def test_transparent_images_are_composited(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_captions_csv_index(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.csv").write_text(
        'file,caption,source\n0.png,"a red, round thing",web\n1.png,,web\nmissing.png,x,web\n2.png,second,web\n')
    data = ImageCaptionFolder(tmp_path, resolution=16)
    assert data.source == "captions.csv" and data.captions == ["a red, round thing", "second"]
    assert data.skipped["missing_caption"] == 1 and data.skipped["missing_file"] == 1
    assert data[1]["pixel_values"].shape == (3, 16, 16)
    (tmp_path / "captions.csv").write_text("path,label\n0.png,x\n")
    with pytest.raises(ValueError, match="header must name a file column"):
        ImageCaptionFolder(tmp_path, resolution=16)
