"""Text conditioning in one place: captions read from a dataset, prompts turned into tokens, and the networks
that read those tokens.

    captions.py   a caption per image: a .txt beside it, or a metadata.jsonl / metadata.csv table
    encoders.py   prompts -> tensors: the word tokenizer trained with a run, or a frozen sentence-transformers model
    networks.py   tokens -> the U-Net: a small transformer over word ids, or a projection of frozen embeddings

    encoder = build_text_encoder(config.text, captions, run_dir)
    cond = encoder.cond(["a red circle", None])      # {"text": ..., "text_mask": ...}; None: the null caption
"""

from .captions import read_captions
from .encoders import (INSTALL_HINT, MAX_TOKENS, NULL, PAD, TOKENIZER, UNK, PretrainedTextEncoder, TextEncoder,
                       WordTokenizer, build_text_encoder, check_prompt, load_pretrained_encoder,
                       load_sentence_transformer, load_text_encoder, words)
from .networks import ScratchTextEncoder, TextUNet, TokenProjection

__all__ = [
    "INSTALL_HINT",
    "MAX_TOKENS",
    "NULL",
    "PAD",
    "TOKENIZER",
    "UNK",
    "PretrainedTextEncoder",
    "ScratchTextEncoder",
    "TextEncoder",
    "TextUNet",
    "TokenProjection",
    "WordTokenizer",
    "build_text_encoder",
    "check_prompt",
    "load_pretrained_encoder",
    "load_sentence_transformer",
    "load_text_encoder",
    "read_captions",
    "words",
]
