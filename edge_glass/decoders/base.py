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

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
