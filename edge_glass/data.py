"""Cached features of one split as training items, and a step-deterministic batch sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge_glass.features import FeatureStore
from edge_glass.manifest import read_manifest
from edge_glass.models.align import MEDIA, Batch


class AlignData:
    """Items of ``split`` with their media tokens and caption features, all held in memory."""

    def __init__(self, features_dir: str | Path, manifest_path: str | Path, split: str):
        features_dir = Path(features_dir)
        manifest = read_manifest(manifest_path)
        manifest = manifest[manifest.split == split]
        self.encoders = json.loads((features_dir / "encoders.json").read_text())
        if "text" not in self.encoders:
            raise FileNotFoundError(f"{features_dir}: no text features; align needs preprocess.modalities to include text")
        media_tokens = {m: FeatureStore(features_dir / m).load_all()[0] for m in MEDIA if m in self.encoders}
        text_store = FeatureStore(features_dir / "text")
        _, text_pooled = text_store.load_all()
        caption_ids = text_store.index.groupby("item_id")["id"].apply(list).to_dict()
        self.item_ids, self.captions, self.caption_texts = [], [], []
        self.tokens: dict[str, list[torch.Tensor | None]] = {m: [] for m in media_tokens}
        for row in manifest.itertuples(index=False):
            caps = caption_ids.get(row.item_id, [])
            media = {m: media_tokens[m].get(row.item_id) for m in media_tokens}
            if not caps or all(t is None for t in media.values()):
                continue
            self.item_ids.append(row.item_id)
            self.captions.append(torch.stack([text_pooled[c] for c in caps]).float())
            self.caption_texts.append([str(row.captions[int(c.rsplit("#", 1)[1])]) for c in caps])
            for m, t in media.items():
                self.tokens[m].append(t)
        if not self.item_ids:
            raise ValueError(f"no {split} items with captions and media features in {features_dir}")
        self.token_dims = {m: self.encoders[m]["token_dim"] for m in media_tokens}
        self.text_dim = self.encoders["text"]["pooled_dim"]

    def __len__(self) -> int:
        return len(self.item_ids)

    def batch(self, indices: list[int] | np.ndarray, caption_choice: list[int] | np.ndarray | None = None) -> Batch:
        """Pad each modality's tokens to the longest present item; caption k of item i (default 0)."""
        tokens, masks, present = {}, {}, {}
        for m, per_item in self.tokens.items():
            tokens[m], masks[m], present[m] = pad_tokens([per_item[i] for i in indices], self.token_dims[m])
        choice = caption_choice if caption_choice is not None else [0] * len(indices)
        text = torch.stack([self.captions[i][k] for i, k in zip(indices, choice)])
        return Batch(tokens, masks, present, text)


def pad_tokens(items: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad variable-length (n_i, dim) token sets (None: item lacks the modality).

    Returns tokens (b, max n_i, dim), mask (b, max n_i) for real tokens, and presence (b,).
    """
    length = max((t.shape[0] for t in items if t is not None), default=1)
    x = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for j, t in enumerate(items):
        if t is not None:
            x[j, : t.shape[0]] = t.float()
            mask[j, : t.shape[0]] = True
    return x, mask, torch.tensor([t is not None for t in items], dtype=torch.bool)


def global_batch(step: int, micro: int, grad_accum: int, batch_size: int, n_items: int, seed: int,
                 captions_per_item: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Item indices and caption choices of one micro-batch, a pure function of (seed, step, micro).

    Items are drawn epoch by epoch from seeded permutations, so a resumed run sees the same batches.
    """
    start = (step * grad_accum + micro) * batch_size
    positions = np.arange(start, start + batch_size)
    epochs, offsets = positions // n_items, positions % n_items
    indices = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n_items)
        indices[epochs == e] = perm[offsets[epochs == e]]
    rng = np.random.default_rng([seed, step, micro, 7])
    choice = np.array([rng.integers(captions_per_item[i]) for i in indices])
    return indices, choice


def drop_tokens(batch: Batch, positions: np.ndarray, rate: float, seed: int, step: int, micro: int) -> Batch:
    """Hide a ``rate`` share of each item's media tokens (keeping at least one).

    The pattern is seeded by (seed, step, micro, global position), so it does not depend on how the
    global batch is split over ranks, and a resumed run draws the same one.
    """
    if rate <= 0:
        return batch
    masks = {}
    for m, mask in batch.masks.items():
        mask = mask.clone()
        for j, pos in enumerate(positions):
            n = int(mask[j].sum())  # real tokens are a prefix; draw for them only (padding varies by rank)
            rng = np.random.default_rng([seed, step, micro, int(pos), len(m)])
            keep = torch.from_numpy(rng.random(n) >= rate)
            if keep.any():
                mask[j, :n] = keep
        masks[m] = mask
    return Batch(batch.tokens, masks, batch.present, batch.text)
