"""What both caption decoders share: prefix tokens from aligned features, then caption tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge_glass.decoders.conditioning import Conditioning


class CaptionDecoder(nn.Module):
    """Subclasses give ``logits(cond, ids, mask)`` over [prefix; caption] positions and a ``tokenizer``."""

    tokenizer = None

    def logits(self, cond: Conditioning, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encode_captions(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded caption token ids ending in EOS (truncated to ``max_tokens``), and their mask."""
        eos = self.tokenizer.eos_token_id
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"][: max_tokens - 1] + [eos] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), eos, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def loss(self, cond: Conditioning, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on caption tokens only (the prefix positions carry no labels)."""
        logits = self.logits(cond, ids, mask)
        p = logits.shape[1] - ids.shape[1]
        pred = logits[:, p - 1 : p - 1 + ids.shape[1]]
        return F.cross_entropy(pred[mask].float(), ids[mask])

    def next_logits(self, cond: Conditioning, ids: torch.Tensor) -> torch.Tensor:
        """(b, vocab) logits of the token after ``ids`` (all rows the same length)."""
        return self.logits(cond, ids, torch.ones_like(ids, dtype=torch.bool))[:, -1].float()

    def stepper(self, cond: Conditioning) -> "UncachedStepper":
        """Token-by-token generation state; decoders with a KV cache return a cached stepper."""
        return UncachedStepper(self, cond)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]


class UncachedStepper:
    """Generation by re-running the decoder over prefix + every token so far at each step.

    The reference for cached steppers (same logits), and the TRM decoder's own loop: its recursion
    re-reads the whole sequence at every application, so there is nothing to cache."""

    def __init__(self, decoder: CaptionDecoder, cond: Conditioning):
        self.decoder, self.cond = decoder, cond
        self.ids = torch.empty(len(cond), 0, dtype=torch.long, device=cond.latents.device)

    def start(self) -> torch.Tensor:
        return self.decoder.next_logits(self.cond, self.ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        return self.decoder.next_logits(self.cond, self.ids)

    def select(self, rows: torch.Tensor) -> None:
        self.cond, self.ids = self.cond.select(rows), self.ids[rows]
