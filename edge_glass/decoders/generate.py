"""Caption generation for any CaptionDecoder: greedy, beam search and nucleus sampling.

Every strategy drives a *stepper* (``decoder.stepper(cond)``): ``start()`` gives the logits of the
first caption token, ``step(tokens)`` appends one token per row and gives the next logits, and
``select(rows)`` keeps or reorders rows (finished rows leave; beam search reorders). The LoRA LM's
stepper keeps a KV cache, so a step costs one position instead of the whole prefix + caption.
``cached=False`` is the reference that the tests and ``benchmarks/decode.py`` compare against: the
decoder re-run over everything at every step (``UncachedStepper``), every row to the end.
"""

from __future__ import annotations

import torch

from edge_glass.config.decode import GenerateParams
from edge_glass.decoders.base import CaptionDecoder, UncachedStepper
from edge_glass.decoders.conditioning import Conditioning


@torch.no_grad()
def generate(decoder: CaptionDecoder, cond: Conditioning, cfg: GenerateParams, seed: int = 0,
             cached: bool = True) -> list[str]:
    """One caption per conditioning row, in batches of ``cfg.batch_size``; sampling is seeded."""
    return decoder.decode(generate_ids(decoder, cond, cfg, seed, cached))


@torch.no_grad()
def generate_ids(decoder: CaptionDecoder, cond: Conditioning, cfg: GenerateParams, seed: int = 0,
                 cached: bool = True) -> list[list[int]]:
    """Token ids (EOS stripped) of one caption per conditioning row."""
    decoder.eval()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(cond), cfg.batch_size):
        part = cond.select(list(range(start, min(start + cfg.batch_size, len(cond)))))

        def stepper(c: Conditioning):
            return decoder.stepper(c) if cached else UncachedStepper(decoder, c)

        if cfg.strategy == "beam" and cfg.num_beams > 1:
            out.extend(beam_search(stepper, part, decoder.eos_id, cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty,
                                   cfg.min_new_tokens))
        else:
            out.extend(sample(stepper(part), len(part), decoder.eos_id, cfg, generator, drop_finished=cached))
    return out


def sample(stepper, b: int, eos: int, cfg: GenerateParams, generator: torch.Generator,
           drop_finished: bool = True) -> list[list[int]]:
    """Greedy (argmax) or nucleus sampling (top_p, temperature) until EOS or ``max_new_tokens``.

    ``drop_finished``: a row that has produced EOS leaves the batch (``stepper.select``), so later
    steps cost only the rows still generating; captions are mostly shorter than the longest in their
    batch. ``False`` is the reference loop, where finished rows keep receiving EOS to the end."""
    logits = stepper.start()
    device = logits.device
    ids = torch.full((b, cfg.max_new_tokens), eos, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)  # batch rows still generating, in the stepper's row order
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for t in range(cfg.max_new_tokens):
        if t < cfg.min_new_tokens:
            logits = forbid_eos(logits, eos)
        if cfg.strategy == "nucleus":
            nxt = nucleus_pick(logits.cpu() / cfg.temperature, cfg.top_p, generator).to(device)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done[alive], torch.full_like(nxt, eos), nxt)
        ids[alive, t] = nxt
        done[alive] |= nxt == eos
        if done.all() or t == cfg.max_new_tokens - 1:
            break
        if drop_finished and bool((nxt == eos).any()):
            keep = (nxt != eos).nonzero().squeeze(1)
            stepper.select(keep)
            alive, nxt = alive[keep], nxt[keep]
        logits = stepper.step(nxt)
    return [strip_eos(row.tolist(), eos) for row in ids]


def forbid_eos(logits: torch.Tensor, eos: int) -> torch.Tensor:
    logits = logits.clone()
    logits[:, eos] = float("-inf")
    return logits


def nucleus_pick(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Sample from the smallest set of tokens whose probability reaches ``top_p``."""
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def beam_search(make_stepper, cond: Conditioning, eos: int, num_beams: int, max_new_tokens: int,
                length_penalty: float = 1.0, min_new_tokens: int = 0) -> list[list[int]]:
    """Beam search with a separate pool of finished hypotheses, scored ``sum log p / length**length_penalty``.

    ``num_beams`` live beams per row compete on their raw log-prob sums (as in every beam search); a
    candidate that ends in EOS leaves the live set for the row's finished pool, so finished
    hypotheses never take a live beam's slot. A row stops when no live beam can still beat its best
    finished hypothesis (an exact bound: log-probs only fall, lengths are capped at ``max_new_tokens``).
    Length counts the generated tokens including EOS; ``length_penalty=0`` ranks by raw log-prob.
    """
    b, k = len(cond), num_beams
    stepper = make_stepper(cond.repeat_interleave(k))
    logp = stepper.start().float().log_softmax(-1)
    device, vocab = logp.device, logp.shape[-1]
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    ids = torch.empty(b * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    active = [True] * b
    for t in range(max_new_tokens):
        length = t + 1
        if t < min_new_tokens:
            logp = forbid_eos(logp, eos)
        cand = (scores[..., None] + logp.view(b, k, vocab)).view(b, -1)
        top, flat = cand.topk(min(2 * k, cand.shape[1]), dim=-1)  # >= k non-EOS among 2k: one EOS per beam
        top, beam, token = top.tolist(), (flat // vocab).tolist(), (flat % vocab).tolist()
        new_scores = [[float("-inf")] * k for _ in range(b)]
        new_beam, new_token = [[0] * k for _ in range(b)], [[eos] * k for _ in range(b)]
        for i in range(b):
            if not active[i]:
                continue
            live = 0
            for rank, (score, src, tok) in enumerate(zip(top[i], beam[i], token[i])):
                if score == float("-inf") or live == k:
                    break
                if tok == eos:
                    if rank < k:  # only EOS candidates that would have made the beam count
                        finished[i].append((score / length ** length_penalty, ids[i * k + src].tolist()))
                    continue
                new_scores[i][live], new_beam[i][live], new_token[i][live] = score, src, tok
                live += 1
            if length == max_new_tokens:  # out of length: live beams are hypotheses too
                finished[i] += [(new_scores[i][j] / length ** length_penalty, ids[i * k + new_beam[i][j]].tolist()
                                 + [new_token[i][j]]) for j in range(live)]
            finished[i] = sorted(finished[i], key=lambda h: -h[0])[:k]
            if not live or length == max_new_tokens:
                active[i] = False
            elif finished[i]:
                best_live = new_scores[i][0]
                longest = max_new_tokens if length_penalty > 0 else length + 1
                if finished[i][0][0] >= best_live / longest ** length_penalty:
                    active[i] = False
        scores = torch.tensor(new_scores, device=device)
        rows = (torch.arange(b, device=device)[:, None] * k + torch.tensor(new_beam, device=device)).view(-1)
        tokens = torch.tensor(new_token, device=device).view(-1)
        ids = torch.cat([ids[rows], tokens[:, None]], dim=1)
        if not any(active):
            break
        stepper.select(rows)
        logp = stepper.step(tokens).float().log_softmax(-1)
    return [strip_eos(pool[0][1], eos) for pool in finished]


def strip_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row
