"""Tiny tokenizer files for the hub fixtures (:mod:`aconvlib.testing.hub_fixtures`), built offline: a CLIP BPE
vocabulary learnt from a small corpus and a T5 SentencePiece model, in the published files' formats."""
from __future__ import annotations

import io
import json


_CORPUS_WORDS = (
    "a photo of an astronaut riding a horse on the moon . a small cactus with a happy face in the sahara desert . "
    "a cat sitting on a red chair , oil painting . a dog running through the snow at sunset . "
    "portrait of an old man with a white beard , high quality , detailed . an apple and a banana on a wooden table . "
    "a city street at night with neon lights and rain . a bowl of soup that looks like a monster , made of wool . "
    "a lighthouse on a rocky coast , waves , storm clouds . the quick brown fox jumps over the lazy dog !"
).split()


def _clip_base_chars() -> list[str]:
    # CLIP's byte-level alphabet starts with the printable ASCII bytes 33..126 ('!'..'~') in byte order, so '!' has
    # id 0 as in the real vocabulary (SDXL's second tokenizer pads with '!'). Other bytes map to the unknown token.
    return [chr(b) for b in range(33, 127)]


def _clip_bpe(n_merges: int = 96) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tiny CLIP-style BPE (``</w>`` word ends) learnt from a fixed corpus: vocab and merges, deterministic."""
    words: dict[tuple[str, ...], int] = {}
    for w in _CORPUS_WORDS:
        w = w.lower()
        sym = tuple(w[:-1]) + (w[-1] + "</w>",)
        words[sym] = words.get(sym, 0) + 1
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for sym, c in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        new: dict[tuple[str, ...], int] = {}
        for sym, c in words.items():
            out: list[str] = []
            i = 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    base = _clip_base_chars()
    tokens = base + [c + "</w>" for c in base]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


_CLIP_VOCAB, _CLIP_MERGES = _clip_bpe()
CLIP_VOCAB_SIZE = len(_CLIP_VOCAB)


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def _clip_tokenizer_files(pad_token: str, sdxl: bool) -> dict[str, bytes]:
    """vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json as the published CLIP tokenizers."""
    special = {k: {"content": v, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
               for k, v in (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                            ("unk_token", "<|endoftext|>"))}
    special["pad_token"] = pad_token
    config = {
        "add_prefix_space": False,
        "bos_token": _added_token("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token("<|endoftext|>"),
    }
    if sdxl:
        config["clean_up_tokenization_spaces"] = True
    else:
        config["name_or_path"] = "openai/clip-vit-large-patch14"
        config["special_tokens_map_file"] = "./special_tokens_map.json"
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _CLIP_MERGES)
    return {
        "merges.txt": merges.encode("utf-8"),
        "special_tokens_map.json": (json.dumps(special, indent=2) + "\n").encode(),
        "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "vocab.json": json.dumps(_CLIP_VOCAB, ensure_ascii=False).encode("utf-8"),
    }


_T5_SP_VOCAB = 96  # sentencepiece pieces (incl. <pad>, </s>, <unk>); + 100 <extra_id_*> tokens as in T5


def _t5_spiece() -> bytes:
    """A small unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2, no bos), trained offline."""
    import sentencepiece as spm

    text = " ".join(_CORPUS_WORDS)
    sentences = [s.strip() for s in text.replace("!", ".").split(".") if s.strip()]
    sentences += [s.capitalize() + "." for s in sentences]  # T5's vocabulary is cased
    corpus = [f"{s} {t}" for s in sentences for t in sentences]  # enough text for a stable unigram model
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=out, vocab_size=_T5_SP_VOCAB, model_type="unigram",
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", num_threads=1, shuffle_input_sentence=False, hard_vocab_limit=True,
        normalization_rule_name="nmt_nfkc", minloglevel=2)
    return out.getvalue()


def _t5_tokenizer_files() -> dict[str, bytes]:
    extra = [f"<extra_id_{i}>" for i in range(100)]
    config = {
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": 100,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    special = {"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    added = {tok: _T5_SP_VOCAB + 99 - i for i, tok in enumerate(extra)}  # T5: <extra_id_0> is the last id
    return {
        "added_tokens.json": (json.dumps(dict(sorted(added.items(), key=lambda kv: kv[1])), indent=2) + "\n").encode(),
        "special_tokens_map.json": (json.dumps(special, indent=2) + "\n").encode(),
        "spiece.model": _t5_spiece(),
        "tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode(),
    }
