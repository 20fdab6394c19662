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


def simple_tokenize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def coco_scores(generated: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr-D; an empty generation scores zero against its references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [simple_tokenize(r) or "<empty>" for r in refs] for i, refs in enumerate(references)}
    res = {i: [simple_tokenize(g) or "<empty>"] for i, g in enumerate(generated)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-1": float(bleu[0]), "BLEU-4": float(bleu[3]), "CIDEr-D": float(cider)}


@torch.no_grad()
def embedding_similarity(generated: list[str], references: list[list[str]], text_model: str) -> float:
    """Mean over items of the best cosine similarity between the generated caption and a reference,
    both embedded by the frozen text encoder used in preprocess."""
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
    return float(np.mean(best))


def caption_metrics(captions: pd.DataFrame, text_model: str) -> dict:
    generated = [str(g) for g in captions.generated]
    references = [list(r) for r in captions.references]
    if not generated:
        raise ValueError("captions file has no rows")
    scores = coco_scores(generated, references)
    scores["embedding_similarity"] = embedding_similarity(generated, references, text_model)
    scores["exact_match"] = float(np.mean([simple_tokenize(g) in {simple_tokenize(r) for r in refs}
                                           for g, refs in zip(generated, references)]))
    scores["empty_captions"] = int(sum(not simple_tokenize(g) for g in generated))
    scores["items"] = len(generated)
    return scores


def sample_table(captions: pd.DataFrame, n: int, seed: int = 0) -> str:
    """Markdown table of ``n`` seeded-random items: generated caption next to its references."""
    rows = captions.sample(n=min(n, len(captions)), random_state=seed).sort_values("item_id")
    lines = ["| item | generated | references |", "|---|---|---|"]
    for r in rows.itertuples(index=False):
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {esc(r.item_id)} | {esc(r.generated) or '*(empty)*'} | {esc('; '.join(r.references))} |")
    return "\n".join(lines) + "\n"
