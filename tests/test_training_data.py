"""Data pipelines for distilling real models: sources, validation errors, buckets, preprocessing,
sampling and the latent cache (tiny images made with PIL, fake encoders)."""
import io
import itertools
import json
import tarfile
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aconvlib.training import datasets as D
from aconvlib.training import latent_cache as LC


# ----- helpers ------------------------------------------------------------------------------------

def _pattern(w, h, seed=0):
    """An RGB array whose left half is red and right half blue, with a little noise."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (220, 20, 20)
    a[:, w // 2:] = (20, 20, 220)
    return np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)


def _save(path, w=40, h=30, seed=0, caption="a photo"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pattern(w, h, seed)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
    return path


def _folder(tmp_path, name="imgs"):
    root = tmp_path / name
    _save(root / "wide1.png", 40, 30, 1, "a wide red and blue picture")
    _save(root / "wide2.jpg", 40, 30, 2, "another wide one")
    _save(root / "sub" / "tall.webp", 30, 40, 3, "a tall picture")
    _save(root / "square.png", 33, 33, 4, "a square")
    return root


def _encoded(img, fmt):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _tar(path, samples):
    with tarfile.open(path, "w") as tf:
        for name, data in samples:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


TINY = D.BucketTable([(32, 48), (48, 32), (32, 32)], "tiny")


# ----- sources and their errors -------------------------------------------------------------------

def test_folder_lists_validates_and_loads(tmp_path):
    src = D.ImageCaptionFolder(_folder(tmp_path))
    assert len(src) == 4
    by_key = {r.key: r for r in src.records}
    assert set(by_key) == {"wide1", "wide2", "sub/tall", "square"}
    assert (by_key["sub/tall"].width, by_key["sub/tall"].height) == (30, 40)
    assert by_key["wide1"].caption == "a wide red and blue picture"  # newline stripped
    s = src[[r.key for r in src.records].index("wide1")]
    assert s.image.mode == "RGB" and s.image.size == (40, 30)
    assert [x.key for x in src] == [r.key for r in src.records]
    # the fingerprint is content-based: same files -> same, a changed caption -> different
    assert D.ImageCaptionFolder(tmp_path / "imgs").fingerprint() == src.fingerprint()
    (tmp_path / "imgs" / "square.txt").write_text("a different caption")
    assert D.ImageCaptionFolder(tmp_path / "imgs").fingerprint() != src.fingerprint()


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(D.DataError, match="does not exist") as e:
        D.ImageCaptionFolder(tmp_path / "nope")
    assert "nope" in str(e.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    (tmp_path / "empty" / "anim.gif").write_bytes(b"GIF89a")
    with pytest.raises(D.DataError, match="no images") as e:
        D.ImageCaptionFolder(tmp_path / "empty")
    assert "empty" in str(e.value) and "anim.gif" in str(e.value)
    # images without captions: the first is named, and how many more
    root = tmp_path / "nocap"
    _save(root / "a.png")
    for n in ("b", "c", "d"):
        _save(root / f"{n}.png", caption=None)
    with pytest.raises(D.DataError) as e:
        D.ImageCaptionFolder(root)
    msg = str(e.value)
    assert "b.png" in msg and "b.txt" in msg and "2 more" in msg and "c.png" in msg
    # two images sharing one caption file
    root = tmp_path / "shared"
    _save(root / "x.png")
    _save(root / "x.jpg")
    with pytest.raises(D.DataError, match="share the caption file x.txt"):
        D.ImageCaptionFolder(root)


def test_corrupt_and_truncated_images_are_named(tmp_path):
    root = tmp_path / "bad"
    _save(root / "good.png")
    (root / "garbage.png").write_bytes(b"this is not an image at all")
    (root / "garbage.txt").write_text("x")
    data = _encoded(Image.fromarray(_pattern(64, 48, 7)), "JPEG")
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "trunc.txt").write_text("y")
    with pytest.raises(D.DataError) as e:
        D.ImageCaptionFolder(root)
    msg = str(e.value)
    assert "garbage.png" in msg and "unreadable or corrupt" in msg
    assert "trunc.jpg" in msg and "1 more bad image" in msg
    (root / "garbage.png").unlink()
    with pytest.raises(D.DataError, match="trunc.jpg"):  # a full decode catches truncation
        D.ImageCaptionFolder(root)


def test_mode_conversion_rules(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    # palette with a transparent index -> composited on the background
    p = Image.new("P", (4, 2), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(root / "pal.png", transparency=0)
    # RGBA, LA, CMYK JPEG, 16-bit grey PNG, plain RGB
    Image.new("RGBA", (4, 2), (0, 0, 255, 0)).save(root / "rgba.png")
    Image.new("LA", (4, 2), (100, 255)).save(root / "la.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.array([[0, 65535], [32768, 1000]], np.uint16)).save(root / "grey16.png")
    _save(root / "rgb.png", caption=None)
    for f in root.iterdir():
        f.with_suffix(".txt").write_text(f.stem)
    src = D.ImageCaptionFolder(root, background=(0, 0, 0))
    img = {r.key: np.asarray(src.image(i)) for i, r in enumerate(src.records)}
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in img.values())
    assert img["pal"][0, 0].tolist() == [0, 0, 0]  # transparent -> background
    assert img["pal"][0, 1].tolist() == [0, 255, 0]  # opaque palette colour kept
    assert img["rgba"][0, 0].tolist() == [0, 0, 0]
    assert img["la"][0, 0].tolist() == [100, 100, 100]
    r, g, b = img["cmyk"][15, 20].tolist()
    assert r > 200 and g < 60 and b < 60
    assert img["grey16"][:, :, 0].tolist() == [[0, 255], [128, 4]]  # scaled, not clipped
    # a float image (a TIFF named .png) has no 8-bit range: refused, naming file and mode
    Image.new("F", (8, 8), 0.5).save(root / "float.png", format="TIFF")
    (root / "float.txt").write_text("f")
    with pytest.raises(D.DataError) as e:
        D.ImageCaptionFolder(root)
    assert "float.png" in str(e.value) and "'F'" in str(e.value)


def test_exif_orientation_swaps_size(tmp_path):
    root = tmp_path / "exif"
    root.mkdir()
    im = Image.fromarray(_pattern(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(root / "rot.jpg", exif=exif)
    (root / "rot.txt").write_text("rotated")
    src = D.ImageCaptionFolder(root)
    assert (src.records[0].width, src.records[0].height) == (30, 40)
    assert src.image(0).size == (30, 40)


def test_empty_captions_policy(tmp_path):
    root = tmp_path / "empty_caps"
    _save(root / "a.png", caption="fine")
    _save(root / "b.png", caption="   ")
    with pytest.warns(D.DataWarning, match="b.png"):
        src = D.ImageCaptionFolder(root)
    assert [r.caption for r in src.records] == ["fine", ""]
    with pytest.raises(D.DataError, match="b.png.*empty caption"):
        D.ImageCaptionFolder(root, empty_captions="error")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.ImageCaptionFolder(root, empty_captions="allow")


def test_manifests_jsonl_and_csv(tmp_path):
    root = _folder(tmp_path)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": "imgs/wide1.png", "caption": "from jsonl"}) + "\n\n"
        + json.dumps({"image": str(root / "sub" / "tall.webp"), "caption": "absolute path"}) + "\n")
    src = D.ImageCaptionFolder.from_manifest(tmp_path / "m.jsonl")
    assert [(r.key, r.caption) for r in src.records] == [("imgs/wide1.png", "from jsonl"),
                                                         (str(root / "sub" / "tall.webp"), "absolute path")]
    (tmp_path / "m.csv").write_text('image,caption\nimgs/wide2.jpg,"a, quoted caption"\nimgs/square.png,sq\n')
    src = D.from_manifest(tmp_path / "m.csv")
    assert [r.caption for r in src.records] == ["a, quoted caption", "sq"]
    assert src.records[0].width == 40

    (tmp_path / "missing.jsonl").write_text(json.dumps({"image": "imgs/wide1.png", "caption": "ok"}) + "\n"
                                            + json.dumps({"image": "imgs/ghost.png", "caption": "x"}) + "\n")
    with pytest.raises(D.DataError) as e:
        D.ImageCaptionFolder.from_manifest(tmp_path / "missing.jsonl")
    assert "missing.jsonl" in str(e.value) and "line 2" in str(e.value) and "imgs/ghost.png" in str(e.value)
    (tmp_path / "bad.jsonl").write_text('{"image": "imgs/wide1.png", "caption": "ok"}\n{not json\n')
    with pytest.raises(D.DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        D.from_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "nocol.csv").write_text("image,text\nimgs/wide1.png,x\n")
    with pytest.raises(D.DataError, match=r"nocol.csv: no column 'caption'"):
        D.from_manifest(tmp_path / "nocol.csv")
    with pytest.raises(D.DataError, match="does not exist"):
        D.from_manifest(tmp_path / "nothere.jsonl")


def test_tar_shards(tmp_path):
    a = _encoded(Image.fromarray(_pattern(40, 30, 1)), "JPEG")
    b = _encoded(Image.fromarray(_pattern(30, 40, 2)), "PNG")
    _tar(tmp_path / "data-000.tar", [("k1.jpg", a), ("k1.txt", b"first"), ("k1.json", b"{}"),
                                     ("dir/k2.png", b), ("dir/k2.txt", b"second")])
    _tar(tmp_path / "data-001.tar", [("k1.png", b), ("k1.txt", "third ünïcode".encode())])
    src = D.TarShards(str(tmp_path / "data-{000..001}.tar"))
    assert [(r.key, r.caption, r.width, r.height) for r in src.records] == [
        ("data-000/k1", "first", 40, 30), ("data-000/dir/k2", "second", 30, 40), ("data-001/k1", "third ünïcode", 30, 40)]
    assert [s.image.size for s in src] == [(40, 30), (30, 40), (30, 40)]
    assert len(D.TarShards([tmp_path / "data-000.tar"])) == 2
    assert D.expand_shards("s-{08..10}-{a,b}.tar") == ["s-08-a.tar", "s-08-b.tar", "s-09-a.tar", "s-09-b.tar",
                                                      "s-10-a.tar", "s-10-b.tar"]

    with pytest.raises(D.DataError, match=r"1 of 3 tar shards do not exist: .*data-002.tar"):
        D.TarShards(str(tmp_path / "data-{000..002}.tar"))
    _tar(tmp_path / "nocap.tar", [("x.jpg", a), ("y.jpg", a), ("y.txt", b"ok"), ("z.jpg", a)])
    with pytest.raises(D.DataError) as e:
        D.TarShards(tmp_path / "nocap.tar")
    assert "nocap.tar" in str(e.value) and "'x'" in str(e.value) and "no .txt caption" in str(e.value) and "1 more" in str(e.value)
    with tarfile.open(tmp_path / "gz.tar", "w:gz") as tf:
        ti = tarfile.TarInfo("k.txt")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(D.DataError, match=r"gz.tar: gzip-compressed"):
        D.TarShards(tmp_path / "gz.tar")
    _tar(tmp_path / "corrupt.tar", [("c.png", b"\x89PNG broken"), ("c.txt", b"c")])
    with pytest.raises(D.DataError, match=r"corrupt.tar:c.png: unreadable or corrupt"):
        D.TarShards(tmp_path / "corrupt.tar")
    with pytest.raises(D.DataError, match="only local"):
        D.TarShards("https://example.com/data-{000..001}.tar")


# ----- buckets ------------------------------------------------------------------------------------

def test_bucket_tables_nearest_and_validate():
    sdxl = D.BucketTable.for_model("stabilityai/stable-diffusion-xl-base-1.0")
    for hw in [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768),
               (640, 1536), (1536, 640)]:
        assert hw in sdxl
    assert len(sdxl) == 40
    assert sdxl.nearest(1080, 1920).name == "768x1344"  # 16:9 landscape (height x width)
    assert sdxl.nearest(1920, 1080).name == "1344x768"
    assert sdxl.nearest(1000, 1001).name == "1024x1024"
    assert TINY.nearest(30, 40).name == "32x48" and TINY.nearest(40, 30).name == "48x32"

    p1024 = D.BucketTable.for_model("pixart-sigma")
    p512 = D.BucketTable.for_model("PixArt-alpha/PixArt-Sigma-XL-2-512-MS")
    assert len(p1024) == len(p512) == 33
    assert (1024, 1024) in p1024 and (512, 2048) in p1024 and (2048, 512) in p1024
    assert sorted(p512.sizes) == sorted((h // 2, w // 2) for h, w in p1024.sizes)
    sd15 = D.BucketTable.for_model("runwayml/stable-diffusion-v1-5")
    assert (512, 512) in sd15 and all(h % 64 == 0 and w % 64 == 0 and h * w <= 512 * 512 for h, w in sd15.sizes)

    with pytest.raises(D.DataError) as e:
        D.BucketTable([(512, 512), (520, 512)], "odd").validate(8, downsample=8)
    assert "520x512" in str(e.value) and "multiples of 64" in str(e.value) and "512x512 " not in str(e.value)
    D.BucketTable([(512, 512), (520, 512)]).validate(8)  # fine for a bare VAE
    with pytest.raises(D.DataError, match="288x"):  # PixArt's 32-px grid does not fit SD1.5's UNet
        p512.validate(*D.MODEL_GRIDS["sd15"])
    with pytest.raises(D.DataError, match="no bucket table"):
        D.BucketTable.for_model("some-other-model")


# ----- preprocessing ------------------------------------------------------------------------------

def test_prepare_buckets_sizes_crops_and_idempotence(tmp_path):
    src = D.ImageCaptionFolder(_folder(tmp_path))
    out = tmp_path / "prep"
    data = D.prepare_buckets(src, TINY, out, progress=False)
    assert len(data) == 4
    buckets = {data[i]["key"]: data[i]["bucket"] for i in range(len(data))}
    assert buckets == {"wide1": "32x48", "wide2": "32x48", "sub/tall": "48x32", "square": "32x32"}
    for i in range(len(data)):
        item = data[i]
        h, w = item["target_size"]
        assert tuple(item["image"].shape) == (3, h, w) and item["image"].dtype == torch.uint8
    wide = data[[data[i]["key"] for i in range(4)].index("wide1")]
    assert wide["original_size"] == (30, 40) and wide["crop_top_left"] == (2, 0)  # 30x40 -> 36x48, crop 2 rows
    img = wide["image"]
    assert img[0, 16, 4] > 150 and img[2, 16, 4] < 80  # left stays red
    assert img[2, 16, 44] > 150 and img[0, 16, 44] < 80  # right stays blue
    index = json.loads((out / "index.json").read_text())
    assert index["done"] and index["stats"]["upscaled"] == 3  # all but the 33x33 square
    # the PNG shards are webdataset-style tars
    assert len(D.TarShards(str(out / "32x48" / "shard-00000.tar"))) == 2

    # second run: skipped (no image is loaded, the index is not rewritten)
    stamp = (out / "index.json").stat().st_mtime_ns
    src.image = lambda i: (_ for _ in ()).throw(AssertionError("should not load images"))
    D.prepare_buckets(src, TINY, out, progress=False)
    assert (out / "index.json").stat().st_mtime_ns == stamp

    # an interrupted run resumes: finished shards are kept
    src2 = D.ImageCaptionFolder(tmp_path / "imgs")
    calls = []
    orig = src2.image
    src2.image = lambda i: (calls.append(i), orig(i))[1]
    (out / "32x32" / "shard-00000.tar").unlink()
    D.prepare_buckets(src2, TINY, out, progress=False)
    assert len(calls) == 1  # only the square image was redone

    # a changed source (caption) rebuilds
    (tmp_path / "imgs" / "square.txt").write_text("changed")
    data3 = D.prepare_buckets(D.ImageCaptionFolder(tmp_path / "imgs"), TINY, out, progress=False)
    assert "changed" in [s["caption"] for s in data3.samples]

    # uint8 safetensors output
    st = D.prepare_buckets(src2, TINY, tmp_path / "prep_st", format="safetensors", progress=False)
    assert all(torch.equal(st[i]["image"], data[i]["image"]) for i in range(4))  # same pixels as the PNGs
    b = st.load_batch([i for i, s in enumerate(st.samples) if s["bucket"] == "32x48"], drop=[True, False])
    assert b["pixel_values"].shape == (2, 3, 32, 48) and b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1
    assert b["captions"][0] == "" and b["captions"][1] != ""
    assert b["original_size"].tolist() == [[30, 40], [30, 40]] and b["target_size"].tolist() == [[32, 48]] * 2
    with pytest.raises(D.DataError, match="one bucket"):
        st.load_batch([0, len(st) - 1])


# ----- sampling -----------------------------------------------------------------------------------

GROUPS = {"a": list(range(10)), "b": list(range(10, 17)), "c": [17]}


def test_sampler_one_bucket_per_batch_and_epoch_coverage():
    s = D.BucketBatchSampler(GROUPS, 3, seed=1, caption_dropout=0.0)
    assert len(s) == 4 + 3 + 1
    epoch = [s.batch(k) for k in range(len(s))]
    for b in epoch:
        assert set(b.indices) <= set(GROUPS[b.bucket]) and len(b.indices) <= 3 and not any(b.drop)
    assert sorted(i for b in epoch for i in b.indices) == list(range(18))
    nxt = [s.batch(k).indices for k in range(len(s), 2 * len(s))]
    assert nxt != [b.indices for b in epoch]  # reshuffled every epoch
    full = D.BucketBatchSampler(GROUPS, 3, drop_last=True)
    assert len(full) == 3 + 2 and all(len(full.batch(k).indices) == 3 for k in range(20))


def test_sampler_deterministic_and_resumable():
    run = [(b.bucket, b.indices, b.drop) for b in itertools.islice(D.BucketBatchSampler(GROUPS, 3, seed=7), 40)]
    again = [(b.bucket, b.indices, b.drop) for b in itertools.islice(D.BucketBatchSampler(GROUPS, 3, seed=7), 40)]
    assert run == again
    resumed = D.BucketBatchSampler(GROUPS, 3, seed=7, start_step=13)
    assert [(b.bucket, b.indices, b.drop) for b in itertools.islice(resumed, 27)] == run[13:]
    assert [b.step for b in itertools.islice(D.BucketBatchSampler(GROUPS, 3, start_step=5), 3)] == [5, 6, 7]
    other = [(b.bucket, b.indices) for b in itertools.islice(D.BucketBatchSampler(GROUPS, 3, seed=8), 40)]
    assert other != [(b, i) for b, i, _ in run]
    assert list(itertools.islice(D.BucketBatchSampler(GROUPS, 3, seed=7).index_batches(13), 3)) == [r[1] for r in run[13:16]]


def test_caption_dropout_rate_and_determinism():
    groups = {"a": list(range(64)), "b": list(range(64, 100))}
    s = D.BucketBatchSampler(groups, 4, seed=3, caption_dropout=0.25)
    drops = [d for k in range(1500) for d in s.batch(k).drop]
    assert abs(sum(drops) / len(drops) - 0.25) < 0.03
    s2 = D.BucketBatchSampler(groups, 4, seed=3, caption_dropout=0.25)
    assert [d for k in range(1500) for d in s2.batch(k).drop] == drops
    assert not any(d for k in range(50) for d in D.BucketBatchSampler(groups, 4, caption_dropout=0.0).batch(k).drop)
    assert all(d for k in range(50) for d in D.BucketBatchSampler(groups, 4, caption_dropout=1.0).batch(k).drop)
    with pytest.raises(D.DataError, match="caption_dropout"):
        D.BucketBatchSampler(groups, 4, caption_dropout=1.5)


# ----- latent cache -------------------------------------------------------------------------------

class FakeEncoders:
    """avg-pool as the "VAE", a caption-hash text encoder returning SDXL-like dict states."""

    def __init__(self, scale=1.0):
        self.image_calls = self.text_calls = 0
        self.scale = scale

    def images(self, px):
        self.image_calls += 1
        return F.avg_pool2d(px, 8) * self.scale

    def text(self, captions):
        self.text_calls += 1
        e = torch.tensor([[(zlib.crc32(f"{c}|{j}".encode()) % 1000) / 1000 for j in range(4 * 6)] for c in captions])
        e = e.view(len(captions), 4, 6)
        return {"prompt_embeds": e, "pooled_prompt_embeds": e.mean(1)}


def _batches(n=5):
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        h, w = (16, 24) if k < 3 else (24, 16)
        out.append({"pixel_values": torch.rand(2, 3, h, w, generator=g) * 2 - 1,
                    "captions": [f"caption {k}-{i}" for i in range(2)], "keys": [f"k{k}-{i}" for i in range(2)],
                    "original_size": [[30 + k, 40], [30, 40 + k]], "crop_top_left": [[2, 0], [0, 1]]})
    return out


def test_latent_cache_build_read_back_and_reuse(tmp_path):
    enc, batches = FakeEncoders(), _batches()
    cache = LC.LatentCache(tmp_path / "c", "fp-1", dataset="data-1")
    assert not cache.valid()
    cache.build(batches, enc.images, enc.text, progress=False)
    assert cache.valid() and len(cache) == 5 and cache.num_samples == 10
    assert enc.image_calls == 5 and enc.text_calls == 6  # 5 batches + the uncond entry, once
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "meta.json", *[f"shard-{k:05d}.safetensors" for k in range(5)], "uncond.safetensors"]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["fingerprint"] == "fp-1" and meta["count"] == 10 and meta["complete"]
    assert meta["shards"][0]["shapes"]["latents"] == [3, 2, 3] and meta["shards"][4]["bucket"] == "24x16"
    assert meta["dtypes"]["latents"] == "float32"
    for k, b in enumerate(cache):
        ref = batches[k]
        assert torch.equal(b["latents"], F.avg_pool2d(ref["pixel_values"], 8))
        assert torch.equal(b["text"]["prompt_embeds"], FakeEncoders().text(ref["captions"])["prompt_embeds"])
        assert b["keys"] == ref["keys"] and b["captions"] == ref["captions"]
        assert b["add_time_ids"][0].tolist() == [30 + k, 40, 2, 0, *ref["pixel_values"].shape[-2:]]
    unc = cache.uncond()
    assert torch.equal(unc["pooled_prompt_embeds"], FakeEncoders().text([""])["pooled_prompt_embeds"])

    # same fingerprint and dataset: reused, the encoders are not called again
    enc2 = FakeEncoders()
    again = LC.LatentCache(tmp_path / "c", "fp-1", dataset="data-1").build(batches, enc2.images, enc2.text, progress=False)
    assert enc2.image_calls == enc2.text_calls == 0 and torch.equal(again.batch(2)["latents"], cache.batch(2)["latents"])
    # another dataset listing invalidates
    assert not LC.LatentCache(tmp_path / "c", "fp-1", dataset="data-2").valid()
    # another fingerprint: invalid, then rebuilt with the new encoders
    enc3 = FakeEncoders(scale=2.0)
    new = LC.LatentCache(tmp_path / "c", "fp-2", dataset="data-1")
    assert not new.valid()
    new.build(batches, enc3.images, enc3.text, dtype=torch.float16, progress=False)
    assert enc3.image_calls == 5 and new.valid() and not cache.valid()
    assert new.batch(0)["latents"].dtype == torch.float16
    assert torch.allclose(new.batch(0)["latents"].float(), 2 * F.avg_pool2d(batches[0]["pixel_values"], 8), atol=1e-3)


def test_latent_cache_resumes_after_a_kill(tmp_path):
    batches = _batches()

    def killed_midway():
        for k, b in enumerate(batches):
            if k == 3:
                raise KeyboardInterrupt("simulated kill")
            yield b

    enc = FakeEncoders()
    cache = LC.LatentCache(tmp_path / "c", "fp")
    with pytest.raises(KeyboardInterrupt):
        cache.build(killed_midway(), enc.images, enc.text, progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert not meta["complete"] and len(meta["shards"]) == 3 and not cache.valid()
    enc2 = FakeEncoders()
    cache.build(iter(batches), enc2.images, enc2.text, progress=False)  # an iterator: advanced past 3 batches
    assert enc2.image_calls == 2 and enc2.text_calls == 2  # only the missing batches; uncond kept
    assert cache.valid() and len(cache) == 5
    clean = LC.LatentCache(tmp_path / "clean", "fp").build(batches, FakeEncoders().images, FakeEncoders().text, progress=False)
    for k in range(5):
        assert torch.equal(cache.batch(k)["latents"], clean.batch(k)["latents"])
        assert cache.batch(k)["keys"] == clean.batch(k)["keys"]

    # a Sequence resumes by index (nothing before is touched); a reordered iterator is caught
    class Lazy(list):
        def __getitem__(self, k):
            assert k >= 4, "finished batches must not be loaded"
            return super().__getitem__(k)

    (tmp_path / "c" / "shard-00004.safetensors").unlink()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["complete"] = False
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    enc3 = FakeEncoders()
    cache.build(Lazy(batches), enc3.images, enc3.text, progress=False)
    assert enc3.image_calls == 1 and cache.valid()
    (tmp_path / "c" / "shard-00004.safetensors").unlink()
    with pytest.raises(LC.CacheError, match="batch 0 differs"):
        cache.build(iter(batches[::-1]), enc3.images, enc3.text, progress=False)


def test_latent_cache_gather_with_sampler_and_dropout(tmp_path):
    batches = _batches()
    enc = FakeEncoders()
    cache = LC.LatentCache(tmp_path / "c", "fp").build(batches, enc.images, enc.text, progress=False)
    assert cache.groups() == {"16x24": list(range(6)), "24x16": list(range(6, 10))}
    sampler = D.BucketBatchSampler(cache, 3, seed=0, caption_dropout=0.5)
    flat_lat = [F.avg_pool2d(b["pixel_values"], 8)[i] for b in batches for i in range(2)]
    flat_caps = [c for b in batches for c in b["captions"]]
    unc = cache.uncond()
    seen_drop = False
    for k in range(12):
        sb = sampler.batch(k)
        out = cache.gather(sb)
        assert out["bucket"] == sb.bucket and out["keys"] == [f"k{i // 2}-{i % 2}" for i in sb.indices]
        for row, (i, d) in enumerate(zip(sb.indices, sb.drop)):
            assert torch.equal(out["latents"][row], flat_lat[i])
            want = unc["prompt_embeds"][0] if d else enc.text([flat_caps[i]])["prompt_embeds"][0]
            assert torch.equal(out["text"]["prompt_embeds"][row], want)
            seen_drop |= d
    assert seen_drop
    with pytest.raises(LC.CacheError, match="several buckets"):
        cache.gather([0, 9])
    # a batch outside [-1, 1] is refused with its number
    bad = [{"pixel_values": torch.full((1, 3, 8, 8), 255.0), "captions": ["x"]}]
    with pytest.raises(LC.CacheError, match=r"batch 0: pixel_values must lie in \[-1, 1\]"):
        LC.LatentCache(tmp_path / "bad", "fp").build(bad, enc.images, enc.text, progress=False)


def test_model_fingerprint():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    b = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    b.load_state_dict(a.state_dict())
    for full in (True, False):
        assert LC.model_fingerprint(a, full=full) == LC.model_fingerprint(b, full=full)
        with torch.no_grad():
            b[0].weight[1, 3] += 1.0
        assert LC.model_fingerprint(a, full=full) != LC.model_fingerprint(b, full=full)
        b.load_state_dict(a.state_dict())
    assert LC.model_fingerprint(a, "scale=0.18215") != LC.model_fingerprint(a, "scale=0.13025")
    assert LC.model_fingerprint(a, None) != LC.model_fingerprint(None, a)
    a.config = {"latent_channels": 4, "_name_or_path": "/somewhere"}
    b.config = {"latent_channels": 4, "_name_or_path": "/elsewhere"}  # load paths do not matter
    assert LC.model_fingerprint(a) == LC.model_fingerprint(b)
    b.config = {"latent_channels": 16}
    assert LC.model_fingerprint(a) != LC.model_fingerprint(b)


def test_end_to_end_prepared_buckets_to_cache(tmp_path):
    data = D.prepare_buckets(D.ImageCaptionFolder(_folder(tmp_path)), TINY, tmp_path / "prep", progress=False)
    enc = FakeEncoders()
    batches = data.encoding_batches(2)
    assert len(batches) == 3  # 32x48: 2, 48x32: 1, 32x32: 1 (bucket by bucket)
    cache = LC.LatentCache(tmp_path / "cache", "fp", dataset=data.fingerprint)
    cache.build(batches, enc.images, enc.text, progress=False)
    assert cache.num_samples == 4
    b = cache.batch(0)
    assert b["latents"].shape == (2, 3, 4, 6) and b["add_time_ids"][0].tolist() == [30, 40, 2, 0, 32, 48]
    assert set(b["keys"]) == {"wide1", "wide2"}
