"""Caption metrics: BLEU-4 and CIDEr-D (pycocoevalcap's scorers) and embedding similarity to references.

pycocoevalcap's PTB tokenizer needs Java; captions are tokenised here the same simple way instead:
lower-case, punctuation removed, split on whitespace.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from edge_glass.metrics.bootstrap import RESAMPLES, bootstrap, interval


def simple_tokenize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


BLEU_COLUMNS = ["testlen", "reflen", *[f"guess{n}" for n in range(1, 5)], *[f"correct{n}" for n in range(1, 5)]]


def bleu_stats(generated: list[str], references: list[list[str]]) -> np.ndarray:
    """Per item: generated length, closest reference length, and n-gram guesses / clipped matches
    (n = 1..4), from pycocoevalcap's BleuScorer; corpus BLEU is a function of their sums."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for g, refs in zip(generated, references):
        scorer += (simple_tokenize(g) or "<empty>", [simple_tokenize(r) or "<empty>" for r in refs])
    rows = []
    for comps in scorer.ctest:
        reflen = scorer._single_reflen(comps["reflen"], "closest", comps["testlen"])
        rows.append([comps["testlen"], reflen, *comps["guess"][:4], *comps["correct"][:4]])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(BLEU_COLUMNS))


def corpus_bleu(sums: np.ndarray, n: int = 4) -> np.ndarray:
    """Corpus BLEU-n from summed ``bleu_stats`` rows, (r, 10) -> (r,): pycocoevalcap's formula, vectorised."""
    sums = np.atleast_2d(sums)
    tiny, small = 1e-15, 1e-9
    log_p = sum(np.log((sums[:, 6 + k] + tiny) / (sums[:, 2 + k] + small)) for k in range(n)) / n
    ratio = (sums[:, 0] + tiny) / (sums[:, 1] + small)
    brevity = np.where(ratio < 1, 1 - 1 / ratio, 0.0)
    return np.exp(log_p + brevity)


def coco_scores(generated: list[str], references: list[list[str]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Corpus BLEU-1/BLEU-4 and CIDEr-D (an empty generation scores zero), and the per-item statistics
    they are computed from (``bleu``: ``BLEU_COLUMNS`` rows; ``CIDEr-D``: per-item scores)."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [simple_tokenize(r) or "<empty>" for r in refs] for i, refs in enumerate(references)}
    res = {i: [simple_tokenize(g) or "<empty>"] for i, g in enumerate(generated)}
    cider, per_item = Cider().compute_score(gts, res)
    stats = bleu_stats(generated, references)
    total = stats.sum(0)
    scores = {"BLEU-1": float(corpus_bleu(total, 1)[0]), "BLEU-4": float(corpus_bleu(total, 4)[0]), "CIDEr-D": float(cider)}
    return scores, {"bleu": stats, "CIDEr-D": np.asarray(per_item, dtype=np.float64)}


@torch.no_grad()
def embedding_similarity(generated: list[str], references: list[list[str]], text_model: str) -> np.ndarray:
    """Per item: the best cosine similarity between the generated caption and a reference, both
    embedded by the frozen text encoder used in preprocess."""
    from sentence_transformers import SentenceTransformer

    from edge_glass.encoders.text import resolve_text_model

    model = SentenceTransformer(resolve_text_model(text_model), device="cpu")
    flat = [r for refs in references for r in refs]
    g = F.normalize(model.encode(generated, convert_to_tensor=True, batch_size=128), dim=-1)
    r = F.normalize(model.encode(flat, convert_to_tensor=True, batch_size=128), dim=-1)
    best, start = [], 0
    for i, refs in enumerate(references):
        best.append(float((r[start : start + len(refs)] @ g[i]).max()))
        start += len(refs)
    return np.asarray(best)


def caption_metrics(captions: pd.DataFrame, text_model: str, *, resamples: int = RESAMPLES,
                    seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Corpus caption metrics with bootstrap 95% intervals over items (flat ``<metric>_ci95_lo/hi``),
    and the per-item statistics (one row per item) that a PR's paired bootstrap compares."""
    generated = [str(g) for g in captions.generated]
    references = [list(r) for r in captions.references]
    if not generated:
        raise ValueError("captions file has no rows")
    corpus, per = coco_scores(generated, references)
    similarity = embedding_similarity(generated, references, text_model)
    exact = np.array([simple_tokenize(g) in {simple_tokenize(r) for r in refs} for g, refs in zip(generated, references)],
                     dtype=np.float64)
    n = len(generated)
    metrics = {**corpus, "embedding_similarity": float(similarity.mean()), "exact_match": float(exact.mean())}
    values = {"CIDEr-D": per["CIDEr-D"], "embedding_similarity": similarity, "exact_match": exact}
    out = {}
    for name, value in metrics.items():
        out[name] = round(value, 4)
        if name.startswith("BLEU"):
            order = int(name[-1])
            draws = bootstrap(per["bleu"], lambda sums, o=order: corpus_bleu(sums, o), resamples=resamples, seed=seed)
        else:
            draws = bootstrap(values[name], lambda sums: sums[:, 0] / n, resamples=resamples, seed=seed)
        lo, hi = interval(draws)
        out[f"{name}_ci95_lo"], out[f"{name}_ci95_hi"] = round(lo, 4), round(hi, 4)
    out["empty_captions"] = int(sum(not simple_tokenize(g) for g in generated))
    out["items"] = n
    out["bootstrap"] = {"resamples": resamples, "level": 0.95, "over": "items", "seed": seed}
    items = pd.DataFrame({"item_id": captions.item_id.to_numpy(), "CIDEr-D": per["CIDEr-D"],
                          "embedding_similarity": similarity, "exact_match": exact,
                          **{c: per["bleu"][:, j] for j, c in enumerate(BLEU_COLUMNS)}})
    return out, items


def sample_table(captions: pd.DataFrame, n: int, seed: int = 0) -> str:
    """Markdown table of ``n`` seeded-random items: generated caption next to its references."""
    rows = captions.sample(n=min(n, len(captions)), random_state=seed).sort_values("item_id")
    lines = ["| item | generated | references |", "|---|---|---|"]
    for r in rows.itertuples(index=False):
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {esc(r.item_id)} | {esc(r.generated) or '*(empty)*'} | {esc('; '.join(r.references))} |")
    return "\n".join(lines) + "\n"
