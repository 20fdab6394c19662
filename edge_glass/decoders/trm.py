"""TRM-style tiny recursive caption decoder ("Less is More: Recursive Reasoning with Tiny Networks").

One small causal transformer (``layers`` blocks) is applied again and again with shared weights: each
cycle updates a latent state ``z`` ``latent_steps`` times from (input x, answer y, z), then updates the
answer ``y`` from (y, z). All cycles but the last run without gradient, as in TRM. Causal attention
at every application keeps next-token prediction valid, so captions decode autoregressively.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from edge_glass.config.decode import TRMParams
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import Conditioning, Projector
from edge_glass.decoders.registry import register_decoder

MAX_POSITIONS = 256


class CausalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm_attn(x)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.dropout(self.out(rearrange(attn, "b h n d -> b n (h d)")))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class RecursiveNet(nn.Module):
    """The weight-tied network; ``calls`` counts its applications (one per latent or answer update)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class TRMDecoder(CaptionDecoder):
    """``vocabulary`` (tokenizer ids seen in training captions) makes a closed output vocabulary: the
    embedding and output layer cover only those tokens and EOS (``trm.vocab: caption``)."""

    def __init__(self, tokenizer, params: TRMParams, latent_dim: int, embedding_dim: int,
                 vocabulary: list[int] | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.cfg = params
        ids = sorted(set(vocabulary) | {tokenizer.eos_token_id}) if vocabulary is not None else list(range(len(tokenizer)))
        self.register_buffer("vocab_ids", torch.tensor(ids), persistent=False)  # local index -> tokenizer id
        to_local = torch.full((max(len(tokenizer), max(ids) + 1),), ids.index(tokenizer.eos_token_id))
        to_local[self.vocab_ids] = torch.arange(len(ids))
        self.register_buffer("to_local", to_local, persistent=False)  # unseen tokens read as EOS
        self.token_embedding = nn.Embedding(len(ids), params.dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positions = nn.Parameter(torch.randn(MAX_POSITIONS, params.dim) * 0.02)
        # the latent state starts from a fixed vector (a buffer, as TRM's own z_init): with cycles >= 2 the
        # first cycle runs without gradient, so a parameter here would never train
        self.register_buffer("z_init", torch.zeros(params.dim), persistent=False)
        self.projector = Projector(latent_dim, embedding_dim, params.dim)
        self.net = RecursiveNet(params.dim, params.layers, params.heads, params.dropout)
        self.norm_out = nn.LayerNorm(params.dim)

    @property
    def eos_id(self) -> int:
        return int(self.to_local[self.tokenizer.eos_token_id])

    def encode_captions(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = super().encode_captions(texts, max_tokens)
        return self.to_local[ids], mask

    def decode(self, ids: list[list[int]]) -> list[str]:
        return super().decode([self.vocab_ids[torch.tensor(r, dtype=torch.long)].tolist() for r in ids])

    def recurse(self, x: torch.Tensor) -> torch.Tensor:
        """Answer state after ``cycles`` x (``latent_steps`` latent updates + one answer update)."""
        y = x
        z = self.z_init.expand_as(x)
        for cycle in range(self.cfg.cycles):
            last = cycle == self.cfg.cycles - 1
            with contextlib.nullcontext() if last or not self.training else torch.no_grad():
                for _ in range(self.cfg.latent_steps):
                    z = self.net(x + y + z)
                y = self.net(y + z)
        return y

    def logits(self, cond: Conditioning, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.projector(cond), self.token_embedding(ids)], dim=1)
        if x.shape[1] > MAX_POSITIONS:
            raise ValueError(f"TRM decoder handles {MAX_POSITIONS} positions (got {x.shape[1]}); shorten captions")
        x = x + self.positions[: x.shape[1]]
        return self.norm_out(self.recurse(x)) @ self.token_embedding.weight.t()


def caption_vocabulary(tokenizer, captions: list[str]) -> list[int]:
    """Tokenizer ids that occur in ``captions``: the TRM's closed output vocabulary (``trm.vocab: caption``)."""
    return sorted({i for c in captions for i in tokenizer(c, add_special_tokens=False)["input_ids"]})


@register_decoder("trm")
def build(params, latent_dim: int, embedding_dim: int, lm_dir, captions, device: torch.device) -> TRMDecoder:
    """A fresh TRM with the LM's tokenizer (``decode.lm.model``), seeded by ``params.decode_seed``."""
    from transformers import AutoTokenizer

    from edge_glass.decoders.lm import resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm(params.decode.lm.model, lm_dir))
    vocabulary = None
    if params.decode.trm.vocab == "caption":
        if not captions:
            raise ValueError("decode.trm.vocab=caption needs the training captions")
        vocabulary = caption_vocabulary(tokenizer, captions)
    torch.manual_seed(params.decode_seed)
    return TRMDecoder(tokenizer, params.decode.trm, latent_dim, embedding_dim, vocabulary).to(device)
