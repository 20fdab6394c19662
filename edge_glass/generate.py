"""Caption generation for any CaptionDecoder: greedy, beam search and nucleus sampling."""

from __future__ import annotations

import torch

from edge_glass.config import GenerateParams
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import Conditioning


@torch.no_grad()
def generate(decoder: CaptionDecoder, cond: Conditioning, cfg: GenerateParams, seed: int = 0) -> list[str]:
    """One caption per conditioning row, in batches of ``cfg.batch_size``; sampling is seeded."""
    decoder.eval()
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for start in range(0, len(cond), cfg.batch_size):
        part = cond.select(list(range(start, min(start + cfg.batch_size, len(cond)))))
        if cfg.strategy == "beam" and cfg.num_beams > 1:
            ids = beam_search(decoder, part, cfg.num_beams, cfg.max_new_tokens)
        else:
            ids = sample(decoder, part, cfg, generator)
        texts.extend(decoder.decode(ids))
    return texts


def sample(decoder: CaptionDecoder, cond: Conditioning, cfg: GenerateParams, generator: torch.Generator) -> list[list[int]]:
    """Greedy (argmax) or nucleus sampling (top_p, temperature) until EOS or ``max_new_tokens``."""
    b = len(cond)
    ids = torch.empty(b, 0, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(cfg.max_new_tokens):
        logits = decoder.next_logits(cond, ids)
        if cfg.strategy == "nucleus":
            nxt = nucleus_pick(logits / cfg.temperature, cfg.top_p, generator)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, decoder.eos_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == decoder.eos_id
        if done.all():
            break
    return [strip_eos(row.tolist(), decoder.eos_id) for row in ids]


def nucleus_pick(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Sample from the smallest set of tokens whose probability reaches ``top_p``."""
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def beam_search(decoder: CaptionDecoder, cond: Conditioning, num_beams: int, max_new_tokens: int) -> list[list[int]]:
    """Beam search with length-normalised final scores; finished beams only extend with EOS at no cost."""
    b, eos = len(cond), decoder.eos_id
    cond = cond.repeat_interleave(num_beams)
    ids = torch.empty(b * num_beams, 0, dtype=torch.long)
    scores = torch.full((b, num_beams), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    lengths = torch.zeros(b, num_beams)
    done = torch.zeros(b, num_beams, dtype=torch.bool)
    for _ in range(max_new_tokens):
        logp = decoder.next_logits(cond, ids).log_softmax(-1).view(b, num_beams, -1)
        vocab = logp.shape[-1]
        frozen = torch.full_like(logp, float("-inf"))
        frozen[..., eos] = 0.0
        logp = torch.where(done[..., None], frozen, logp)
        top, flat = (scores[..., None] + logp).view(b, -1).topk(num_beams, dim=-1)
        beam, token = flat // vocab, flat % vocab
        rows = (torch.arange(b)[:, None] * num_beams + beam).view(-1)
        ids = torch.cat([ids[rows], token.view(-1, 1)], dim=1)
        lengths = lengths.gather(1, beam) + (~done.gather(1, beam)).float()
        done = done.gather(1, beam) | (token == eos)
        scores = top
        if done.all():
            break
    best = (scores / lengths.clamp(min=1)).argmax(-1)
    chosen = ids.view(b, num_beams, -1)[torch.arange(b), best]
    return [strip_eos(row.tolist(), eos) for row in chosen]


def strip_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row
