"""Webdataset tar shards: folder round trip, index cache, messy tars that must not crash, step loader."""

import io
import json
import os
import pickle
import tarfile

import pytest
import torch
from PIL import Image

import gentron.data.shards as shards_mod
from gentron.data.folder import ImageCaptionFolder, load_image
from gentron.data.loader import StepBatchLoader
from gentron.data.shapes import write_shapes_dataset
from gentron.data.shards import TarShardDataset, expand_braces, index_path, resolve_shards, write_tar_shards


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    folder = write_shapes_dataset(base / "folder", num=40, resolution=16, seed=0)
    paths = write_tar_shards(folder, base / "tars", shard_size=16)
    return folder, base / "tars", paths


def png_bytes(color=(200, 30, 30), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, members):
    """A tar written by hand: ``members`` is a list of (name, bytes)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def assert_same_items(ds, ref):
    assert len(ds) == len(ref)
    assert ds.captions == ref.captions
    for i in range(len(ref)):
        a, b = ds[i], ref[i]
        assert a["index"] == b["index"] == i
        assert a["caption"] == b["caption"]
        assert a["pixel_values"].dtype == torch.float32 and a["pixel_values"].shape == b["pixel_values"].shape
        assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_write_tar_shards_layout(folder_and_shards):
    folder, out, paths = folder_and_shards
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(out.glob("*.tmp"))
    with tarfile.open(paths[2]) as tf:
        names = tf.getnames()
    assert names[:2] == ["000032.png", "000032.txt"] and len(names) == 16  # 8 samples of 40 - 32
    assert (folder / "images" / "000032.png").read_bytes() == tarfile.open(paths[2]).extractfile(names[0]).read()
    with pytest.raises(FileExistsError):
        write_tar_shards(folder, out, shard_size=16)


def test_shards_match_folder_items_in_order(folder_and_shards):
    """Shard order (sorted) then member order equals the folder's order, so items match one to one."""
    folder, out, paths = folder_and_shards
    ref = ImageCaptionFolder(folder, resolution=16)
    for spec in (out, str(out / "shard-*.tar"), str(out / "shard-{000000..000002}.tar"), [str(p) for p in paths]):
        ds = TarShardDataset(spec, resolution=16)
        assert ds.shards == paths
        assert_same_items(ds, ref)
        assert ds.skipped == {k: 0 for k in ds.skipped}
    # resampling and seeded random crops go through the same code, so they match too
    assert_same_items(TarShardDataset(out, resolution=12, center_crop=False),
                      ImageCaptionFolder(folder, resolution=12, center_crop=False))


def test_index_sidecar_written_and_reused(folder_and_shards, monkeypatch):
    _, out, paths = folder_and_shards
    first = TarShardDataset(out, resolution=16)
    for p in paths:
        idx = json.loads(index_path(p).read_text())
        st = p.stat()
        assert idx["format"] == "gentron.tar-index" and idx["version"] == 1 and idx["complete"] is True
        assert (idx["tar_size"], idx["tar_mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert idx["columns"] == ["key", "ext", "offset", "size", "caption"]
    key, ext, offset, size, caption = json.loads(index_path(paths[0]).read_text())["samples"][0]
    assert (key, ext, caption) == ("000000", "png", first.captions[0])
    with open(paths[0], "rb") as f:
        f.seek(offset)
        assert f.read(size) == first.read_bytes(0)

    scans = []
    real_scan = shards_mod.scan_shard
    monkeypatch.setattr(shards_mod, "scan_shard", lambda path: scans.append(path) or real_scan(path))
    again = TarShardDataset(out, resolution=16)
    assert scans == [] and again.captions == first.captions
    assert torch.equal(again[5]["pixel_values"], first[5]["pixel_values"])

    st = paths[1].stat()  # a changed shard (new mtime) is re-indexed, the others are not
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    TarShardDataset(out, resolution=16)
    assert scans == [paths[1]]
    TarShardDataset(out, resolution=16, index_cache=False)
    assert scans == [paths[1]] + paths


def test_unwritable_index_stays_in_memory(tmp_path):
    shard = write_tar(tmp_path / "a.tar", [("k.png", png_bytes()), ("k.txt", b"a red square")])
    index_path(shard).mkdir()  # neither readable nor replaceable as a file, like a read-only folder
    ds = TarShardDataset(shard, resolution=16)
    assert len(ds) == 1 and ds[0]["caption"] == "a red square"
    assert sorted(tmp_path.iterdir()) == sorted([shard, index_path(shard)])  # no temporary file left behind


def test_corrupt_image_member_is_skipped_and_counted(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.png", png_bytes((200, 0, 0))), ("a.txt", b"red"),
        ("b.png", png_bytes((0, 200, 0))), ("b.txt", b"green"),
        ("c.png", png_bytes((0, 0, 200))), ("c.txt", b"blue"),
    ])
    with tarfile.open(shard) as tf:
        member = tf.getmember("b.png")
    with open(shard, "r+b") as f:  # overwrite the image's bytes inside the tar
        f.seek(member.offset_data)
        f.write(b"\x00" * member.size)
    ds = TarShardDataset(shard, resolution=16)
    assert len(ds) == 3 and ds.captions == ["red", "green", "blue"]
    item = ds[1]
    assert item["index"] == 2 and item["caption"] == "blue" and ds.skipped["corrupt_image"] == 1
    assert ds[1]["index"] == 2 and ds.skipped["corrupt_image"] == 1  # remembered, counted once
    assert ds[0]["caption"] == "red"


def test_missing_captions_and_images_are_counted(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.png", png_bytes()), ("a.txt", b"a caption"),
        ("nocap.png", png_bytes()),                               # no caption
        ("empty.png", png_bytes()), ("empty.txt", b"  \n"),       # empty caption
        ("noimg.txt", b"caption without an image"),               # no image
        ("dir/j.seg.png", png_bytes()), ("dir/j.txt", b"x"),      # "seg.png" is not an image field
        ("js.jpg", png_bytes()), ("js.json", json.dumps({"text": "from json"}).encode()),
        ("badjs.webp", png_bytes()), ("badjs.json", b"{not json"),
        ("notes.cls", b"3"),                                      # unknown field only: no image
    ])
    ds = TarShardDataset(shard, resolution=16)
    assert ds.captions == ["a caption", "from json"]
    assert ds[1]["pixel_values"].shape == (3, 16, 16)
    assert ds.skipped["missing_caption"] == 2 and ds.skipped["bad_record"] == 1
    assert ds.skipped["missing_file"] == 3 and ds.skipped["corrupt_shard"] == 0
    assert "missing_file" in repr(ds)


def test_truncated_tar_keeps_earlier_samples(tmp_path, folder_and_shards):
    _, _, paths = folder_and_shards
    good = tmp_path / "a.tar"
    good.write_bytes(paths[0].read_bytes())
    members = [(f"{k}.{ext}", png_bytes((k * 40, 0, 0)) if ext == "png" else f"item {k}".encode())
               for k in range(5) for ext in ("png", "txt")]
    bad = write_tar(tmp_path / "b.tar", members)
    with tarfile.open(bad) as tf:
        cut = tf.getmember("3.png").offset_data + 10
    with open(bad, "r+b") as f:
        f.truncate(cut)
    ds = TarShardDataset(tmp_path, resolution=16)
    assert len(ds) == 16 + 3 and ds.captions[16:] == ["item 0", "item 1", "item 2"]
    assert ds.skipped["corrupt_shard"] == 1 and ds.skipped["missing_file"] == ds.skipped["missing_caption"] == 0
    assert ds[18]["caption"] == "item 2"
    assert json.loads(index_path(bad).read_text())["complete"] is False
    assert TarShardDataset(tmp_path, resolution=16).skipped == ds.skipped  # counters survive the cache

    header_cut = tmp_path / "c.tar"  # cut in the middle of a header block: tarfile itself stops quietly
    write_tar(header_cut, members)
    with tarfile.open(header_cut) as tf:
        cut = tf.getmember("2.png").offset + 100
    with open(header_cut, "r+b") as f:
        f.truncate(cut)
    ds = TarShardDataset(header_cut, resolution=16)
    assert ds.captions == ["item 0", "item 1"] and ds.skipped["corrupt_shard"] == 1

    garbage = tmp_path / "g" / "junk.tar"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ValueError, match="no images with captions.*corrupt_shard"):
        TarShardDataset(garbage.parent, resolution=16)


def test_unresolvable_patterns_raise_naming_them(tmp_path):
    for spec in (str(tmp_path / "nothing-*.tar"), str(tmp_path / "x-{000..003}.tar"), str(tmp_path)):
        with pytest.raises(FileNotFoundError) as e:
            TarShardDataset(spec, resolution=16)
        assert spec in str(e.value)
    write_tar(tmp_path / "x-000.tar", [("a.png", png_bytes()), ("a.txt", b"c")])
    with pytest.raises(FileNotFoundError, match="3 tar shard"):
        resolve_shards(str(tmp_path / "x-{000..003}.tar"))
    gz = tmp_path / "z" / "s.tar"
    gz.parent.mkdir()
    gz.write_bytes(b"\x1f\x8b\x08" + b"\x00" * 100)
    with pytest.raises(ValueError, match="gzip-compressed"):
        TarShardDataset(gz, resolution=16)


def test_expand_braces():
    assert expand_braces("d/t-{000..002}.tar") == ["d/t-000.tar", "d/t-001.tar", "d/t-002.tar"]
    assert expand_braces("{8..10}{a,b}") == ["8a", "8b", "9a", "9b", "10a", "10b"]
    assert expand_braces("p{a,{b,c}}") == ["pa", "pb", "pc"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_load_image_accepts_bytes_and_files(folder_and_shards):
    folder = folder_and_shards[0]
    path = folder / "images" / "000003.png"
    ref = load_image(path)
    with open(path, "rb") as f:
        from_file = load_image(f)
    assert ref.tobytes() == load_image(path.read_bytes()).tobytes() == from_file.tobytes()


def test_dataset_pickles_with_open_handles(folder_and_shards):
    ds = TarShardDataset(folder_and_shards[1], resolution=16)
    item = ds[20]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[20]["pixel_values"], item["pixel_values"])


def test_step_batch_loader_workers_and_resume(folder_and_shards):
    ds = TarShardDataset(folder_and_shards[1], resolution=16)
    ds[0]  # the parent holds open handles before the workers fork

    def indices_for_step(s):
        return [(s * 4 + j) % 40 for j in range(4)]

    def run(start, workers):
        loader = StepBatchLoader(ds, indices_for_step, start, 8, num_workers=workers)
        assert len(loader) == 8 - start
        return [(step, [(it["index"], it["caption"], it["pixel_values"]) for it in items]) for step, items in loader]

    main = run(3, 0)
    assert [s for s, _ in main] == [3, 4, 5, 6, 7]
    assert [[i for i, _, _ in b] for _, b in main] == [indices_for_step(s) for s in range(3, 8)]
    for got in (run(3, 2), run(5, 0)):
        want = main[-len(got):]
        assert [s for s, _ in got] == [s for s, _ in want]
        for (_, a), (_, b) in zip(got, want):
            assert [(i, c) for i, c, _ in a] == [(i, c) for i, c, _ in b]
            assert all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(a, b))


# -- training from shards, with worker processes ------------------------------------------------


def _losses(sets, out):
    import json

    from gentron.train.config import load_config
    from gentron.train.trainer import Trainer

    Trainer(load_config(None, sets), out, log=lambda s: None, show_progress=False).fit()
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_from_shards_with_workers_equals_training_from_the_folder(shapes_data, tmp_path):
    from conftest import tiny_overrides

    write_tar_shards(shapes_data, tmp_path / "shards", shard_size=40)
    base = tiny_overrides(shapes_data) + ["train.steps=4"]
    folder = _losses(base, tmp_path / "a")
    shards = _losses(base + ["data.kind=shards", f"data.path={tmp_path / 'shards'}"], tmp_path / "b")
    streamed = _losses(base + ["data.kind=shards", f"data.path={tmp_path / 'shards'}/shard-{{000000..000002}}.tar",
                               "data.preload=false", "train.num_workers=2"], tmp_path / "c")
    assert shards == folder
    torch.testing.assert_close(torch.tensor(streamed), torch.tensor(folder), rtol=1e-4, atol=1e-6)
