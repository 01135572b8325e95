"""A word-level tokenizer for the mini caption grammar, called like a Hugging Face tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


class WordTokenizer:
    """Maps captions to ``<bos> w1 ... wn <eos> <pad>...`` ids of a fixed length.

    ``tok(["a red circle at the top"], return_tensors="pt")`` returns a dict with ``input_ids`` and
    ``attention_mask``, both (B, model_max_length) long tensors, like ``CLIPTokenizer``.
    """

    def __init__(self, vocab: list[str], model_max_length: int = 24):
        self.vocab = list(SPECIAL) + [w for w in vocab if w not in SPECIAL]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.model_max_length = model_max_length
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3

    @classmethod
    def for_grammar(cls, model_max_length: int = 24) -> "WordTokenizer":
        """The tokenizer of :mod:`aconvlib.mini.dataset`'s caption grammar."""
        from .dataset import vocabulary

        return cls(vocabulary(), model_max_length)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def words(text: str) -> list[str]:
        """The words of a caption as the tokenizer splits them (lower case; commas are separators)."""
        return text.lower().replace(",", " ").split()

    def unknown_words(self, text) -> list[str]:
        """Words of ``text`` (a string or a list of strings) outside the vocabulary, in order, without repeats.

        The model sees each of them as ``<unk>``: for the embedded models, that word is lost."""
        texts = [text] if isinstance(text, str) else list(text)
        return list(dict.fromkeys(w for t in texts for w in self.words(t) if w not in self.index or w in SPECIAL))

    def encode(self, text: str) -> list[int]:
        """Ids of one caption with bos/eos, truncated to ``model_max_length``, not padded."""
        ids = [self.index.get(w, self.unk_token_id) for w in self.words(text)]
        return [self.bos_token_id] + ids[: self.model_max_length - 2] + [self.eos_token_id]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < len(SPECIAL)))

    def __call__(self, text, padding="max_length", max_length=None, truncation=True, return_tensors="pt",
                 **_):
        """Tokenize a string or a list of strings; always pads to ``max_length`` (default model_max_length)."""
        texts = [text] if isinstance(text, str) else list(text)
        n = max_length or self.model_max_length
        ids = torch.full((len(texts), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), n), dtype=torch.long)
        for b, t in enumerate(texts):
            e = self.encode(t)[:n]
            ids[b, : len(e)] = torch.tensor(e)
            mask[b, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "tokenizer.json").write_text(json.dumps(
            {"type": "WordTokenizer", "vocab": self.vocab, "model_max_length": self.model_max_length}, indent=1))

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None) -> "WordTokenizer":
        path = Path(path) / (subfolder or "")
        d = json.loads((path / "tokenizer.json").read_text())
        return cls(d["vocab"], d["model_max_length"])
