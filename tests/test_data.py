"""The procedural dataset and the word tokenizer."""
import torch

from aconvlib.mini import dataset as data
from aconvlib.mini.tokenizer import WordTokenizer


def test_deterministic_per_seed_and_index():
    a = data.make_batch([3, 7, 11], seed=5)
    b = data.make_batch([11, 3], seed=5)
    assert torch.equal(a["pixel_values"][0], b["pixel_values"][1])
    assert torch.equal(a["pixel_values"][2], b["pixel_values"][0])
    assert a["captions"][0] == b["captions"][1]
    c = data.make_batch([3], seed=6)
    assert not torch.equal(a["pixel_values"][0], c["pixel_values"][0])
    ds = data.MiniScenes("train", length=20, seed=5)
    assert torch.equal(ds[7]["pixel_values"], a["pixel_values"][1])


def test_labels_match_captions_and_pixels():
    b = data.make_batch(range(64), seed=1)
    img = b["pixel_values"] * 0.5 + 0.5
    for i, (cap, objs) in enumerate(zip(b["captions"], b["objects"])):
        assert data.parse_caption(cap) == objs
        assert 1 <= len(objs) <= 2 and len({o.position for o in objs}) == len(objs)
        assert int((b["shape"][i] > 0).sum()) == len(objs)
        for o in objs:
            assert b["shape"][i, o.position] == 1 + o.shape and b["color"][i, o.position] == o.color
            # the object's colour is present near its cell centre
            cx, cy = 12 + 20 * (o.position % 3), 12 + 20 * (o.position // 3)
            patch = img[i, :, cy - 4:cy + 5, cx - 4:cx + 5].reshape(3, -1)
            d = (patch - data.RGB[o.color][:, None]).abs().amax(0)
            if o.shape != 3:  # rings are hollow in the middle
                assert d.min() < 0.1, (cap, d.min())


def test_heldout_split_disjoint_from_train():
    def combos(objs):
        return {(o.shape, o.color, o.position) for o in objs}

    train = data.sample_scenes(range(500), 0, "train").objects
    held = data.sample_scenes(range(300), 0, "heldout").objects
    assert all(not combos(o) & data.HELDOUT_COMBOS for o in train)
    assert all(combos(o) & data.HELDOUT_COMBOS for o in held)
    assert set(data.prompts(50)).isdisjoint({data.caption(o) for o in train})


def test_images_in_range_and_other_sizes():
    b = data.make_batch(range(4), size=96)
    assert b["pixel_values"].shape == (4, 3, 96, 96)
    assert b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1


def test_tokenizer_round_trip(tmp_path):
    tok = WordTokenizer.for_grammar()
    caps = data.prompts(20, "train")
    enc = tok(caps, return_tensors="pt")
    assert enc["input_ids"].shape == (20, tok.model_max_length) == enc["attention_mask"].shape
    assert all(tok.decode(ids) == c for ids, c in zip(enc["input_ids"], caps))
    assert (enc["input_ids"][:, 0] == tok.bos_token_id).all()
    assert tok(["a purple circle"])["input_ids"][0, 2] == tok.unk_token_id
    tok.save_pretrained(tmp_path)
    tok2 = WordTokenizer.from_pretrained(tmp_path)
    assert torch.equal(tok2(caps)["input_ids"], enc["input_ids"])
    assert set(data.vocabulary()) <= set(tok.vocab)
