"""Text conditioning inside the network: a small transformer over word ids trained with the model, or a
projection of a frozen encoder's token embeddings, in front of a U-Net that cross-attends to the tokens."""

from __future__ import annotations

import torch
from torch import nn

from ..nets.unet import UNet


class ScratchTextEncoder(nn.Module):
    """Word ids (B, L) and their mask (B, L) -> token embeddings (B, L, width).

    Learned token and position embeddings, a convolution over each `ngram` neighbouring words (0: none), then
    `layers` pre-norm transformer layers that ignore padding (PyTorch's TransformerEncoderLayer), then a LayerNorm.
    Trained from scratch with the diffusion model. The convolution starts each word with its phrase ("large red
    circle"), which binds attributes to their object sooner than the transformer learns to (docs/text.md).
    """

    def __init__(self, vocab_size: int, max_tokens: int, width: int = 128, layers: int = 2, heads: int = 4,
                 ngram: int = 0):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        # text.layers 0 (the embeddings and the word convolution alone): torch's encoder cannot be empty
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(width)
        self.ngram = nn.Conv1d(width, width, ngram, padding=ngram // 2) if ngram else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError(f"expected word ids (batch, tokens) as int64, got {ids.dtype} {tuple(ids.shape)}")
        h = self.token(ids) + self.position[: ids.shape[1]]
        if self.ngram is not None:  # padding reads as zeros, as past the caption's ends
            h = h + self.ngram((h * mask[..., None]).transpose(1, 2)).transpose(1, 2)
        return self.norm(h if self.layers is None else self.layers(h, src_key_padding_mask=~mask))


class TokenProjection(nn.Module):
    """A frozen encoder's token embeddings (B, L, embed_dim) -> (B, L, width): LayerNorm, then Linear (trained)."""

    def __init__(self, embed_dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Linear(embed_dim, width)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not embeddings.is_floating_point() or embeddings.ndim != 3:
            raise ValueError(f"expected token embeddings (batch, tokens, dims), got {embeddings.dtype} "
                             f"{tuple(embeddings.shape)}")
        return self.proj(self.norm(embeddings.float()))


class TextUNet(nn.Module):
    """F(x, noise_label, text, text_mask, class_labels=None, layout=None): `encoder` turns `text` (word ids, or a frozen
    encoder's embeddings) into tokens, which the U-Net reads through cross-attention.

    text_mask: (B, L) bool, True for real tokens. The null caption (classifier-free guidance's
    unconditional half) is just another text: the <null> word, or the frozen encoder's empty string.
    """

    def __init__(self, unet: UNet, encoder: nn.Module):
        super().__init__()
        if not unet.config.context_dim:
            raise ValueError("a text U-Net needs UNetConfig.context_dim > 0")
        self.unet, self.encoder = unet, encoder
        self.config = unet.config

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                layout: torch.Tensor | None = None) -> torch.Tensor:
        if text is None or text_mask is None:
            raise ValueError("this model is text-conditional: give text and text_mask (an encoded prompt, "
                             "or the null caption to sample unconditionally)")
        if text.shape[0] != x.shape[0]:
            raise ValueError(f"got text for {text.shape[0]} samples and a batch of {x.shape[0]}")
        context = self.encoder(text, text_mask)
        return self.unet(x, noise_label, class_labels=class_labels, context=context, context_mask=text_mask, layout=layout)
