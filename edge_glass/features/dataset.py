"""Cached features of one split as training items, and step-deterministic batches and token dropout.

:class:`FeatureSplit` keeps integer arrays per item (rows into memory-mapped feature stores, caption
offsets), never the features themselves: a batch is gathered from the shards when it is asked for,
with index arithmetic (one gather per modality and shard). Peak memory therefore does not grow with
the number of items beyond those arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from edge_glass.core.errors import DataError, ParamsError
from edge_glass.data.manifest import read_manifest
from edge_glass.features.keyed_random import keyed_uniforms
from edge_glass.features.store import FeatureStore

MODALITY_INDEX = {"image": 1, "audio": 2}  # in the token-dropout seed (names would collide: len("image") == len("audio"))


MEDIA = ("image", "audio")


@dataclass
class Batch:
    """Padded media tokens with masks, presence flags and one caption feature per item."""

    tokens: dict[str, torch.Tensor]  # modality -> (b, n, d), zeros where absent
    masks: dict[str, torch.Tensor]  # modality -> (b, n) True for real tokens
    present: dict[str, torch.Tensor]  # modality -> (b,) bool
    text: torch.Tensor  # (b, text_dim) pooled caption features
    # training only: global batch positions of the rows and the (seed, step, micro) key of keyed dropout
    positions: np.ndarray | None = None
    noise_key: tuple[int, int, int] | None = None

    def to(self, device) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Batch(move(self.tokens), move(self.masks), move(self.present), self.text.to(device, non_blocking=True),
                     self.positions, self.noise_key)


class FeatureSplit:
    """Items of ``split`` that have captions and at least one medium with features; the others are
    counted by reason in ``left_out`` (ids in ``left_out_ids``), never dropped silently."""

    def __init__(self, features_dir: str | Path, manifest_path: str | Path, split: str):
        features_dir = Path(features_dir)
        manifest = read_manifest(manifest_path)
        manifest = manifest[manifest.split == split].reset_index(drop=True)
        self.encoders = json.loads((features_dir / "encoders.json").read_text())
        if "text" not in self.encoders:
            raise FileNotFoundError(f"{features_dir}: no text features; align needs preprocess.modalities to include text")
        self.stores = {m: FeatureStore(features_dir / m) for m in MEDIA if m in self.encoders}
        self.text_store = FeatureStore(features_dir / "text")
        media_rows = {m: store.rows(manifest.item_id) for m, store in self.stores.items()}
        # caption features of each item in caption order: text ids are "item_id#k"
        text = self.text_store.index[["item_id"]].copy()
        text["row"] = np.arange(len(text))
        text["k"] = self.text_store.index["id"].str.rsplit("#", n=1).str[1].astype(np.int64)
        text["item"] = pd.Index(manifest.item_id).get_indexer(text["item_id"])
        text = text[text["item"] >= 0].sort_values(["item", "k"], kind="stable")
        counts = np.bincount(text["item"].to_numpy(), minlength=len(manifest))
        has_media = np.zeros(len(manifest), dtype=bool)
        for rows in media_rows.values():
            has_media |= rows >= 0
        keep = (counts > 0) & has_media
        # every split item is scored or counted here: split items = len(self) + left_out_total. Each left-out
        # item under one reason, the first that applies (no caption at all, captions never encoded, no media)
        listed = manifest.captions.map(lambda c: c is not None and len(c) > 0).to_numpy(bool)
        reasons = np.select([keep, ~listed, counts == 0, ~has_media], ["", "no_captions", "no_caption_features", "no_media_features"], "")
        self.left_out: dict[str, int] = {r: int((reasons == r).sum()) for r in ("no_captions", "no_caption_features", "no_media_features")}
        self.left_out_ids: dict[str, list[str]] = {r: manifest.item_id[reasons == r].tolist() for r in self.left_out}
        self.split_items = len(manifest)
        if not keep.any():
            raise DataError(f"no {split} items with captions and media features in {features_dir} "
                            f"({len(manifest)} {split} items in the manifest; left out: "
                            f"{', '.join(f'{r} {n}' for r, n in self.left_out.items() if n) or 'none'})")
        text = text[keep[text["item"].to_numpy()]]
        self.item_ids: list[str] = manifest.item_id[keep].tolist()
        self.sources: np.ndarray = manifest.source[keep].to_numpy(dtype=object)  # each item's source name
        self.media_rows = {m: rows[keep] for m, rows in media_rows.items()}  # -1: the item lacks the medium
        self.caption_rows = text["row"].to_numpy(np.int64)  # rows in the text store, grouped by item
        self.caption_k = text["k"].to_numpy(np.int64)  # index into the manifest's caption list
        kept_counts = counts[keep]
        self.caption_offsets = np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64)
        self._manifest_captions = manifest.captions[keep].tolist()
        self.token_dims = {m: self.encoders[m]["token_dim"] for m in self.stores}
        self.text_dim = self.encoders["text"]["pooled_dim"]

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def left_out_total(self) -> int:
        """Split items not scored (lacking captions or media features); see ``left_out`` for the reasons."""
        return sum(self.left_out.values())

    @cached_property
    def source_names(self) -> list[str]:
        """The sources the items come from, sorted."""
        return sorted(set(self.sources))

    def mixing_cdf(self, weights: dict[str, float]) -> np.ndarray | None:
        """Cumulative draw probabilities of the items under source ``weights`` (see :func:`mixing_cdf`),
        built once per weights."""
        key = tuple(sorted(weights.items()))
        cache = self.__dict__.setdefault("_mixing_cdf", {})
        if key not in cache:
            cache[key] = mixing_cdf(self.sources, weights)
        return cache[key]

    @property
    def caption_counts(self) -> np.ndarray:
        return np.diff(self.caption_offsets)

    @cached_property
    def caption_texts(self) -> list[list[str]]:
        """Each item's caption strings, in the order of its caption features (built once, on first use)."""
        return [[str(caps[k]) for k in self.caption_k[self.caption_offsets[i]:self.caption_offsets[i + 1]]]
                for i, caps in enumerate(self._manifest_captions)]

    def has(self, modality: str) -> np.ndarray:
        return self.media_rows[modality] >= 0

    def caption_features(self, indices=None) -> tuple[torch.Tensor, np.ndarray]:
        """Caption features (float32) of ``indices`` (default: all items), and each caption's item index."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        counts = self.caption_counts[indices]
        flat = np.repeat(self.caption_offsets[indices], counts) + (
            np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
        feats = self.text_store.gather_pooled(self.caption_rows[flat])
        return torch.from_numpy(feats), np.repeat(indices, counts)

    def batch(self, indices, caption_choice=None) -> Batch:
        """Pad each modality's tokens to the longest present item; caption k of item i (default 0)."""
        indices = np.asarray(indices, dtype=np.int64)
        tokens, masks, present = {}, {}, {}
        for m, store in self.stores.items():
            rows = self.media_rows[m][indices]
            x, mask = store.gather_tokens(rows)
            tokens[m], masks[m] = torch.from_numpy(x), torch.from_numpy(mask)
            present[m] = torch.from_numpy(rows >= 0)
        choice = np.zeros(len(indices), dtype=np.int64) if caption_choice is None else np.asarray(caption_choice, np.int64)
        text = torch.from_numpy(self.text_store.gather_pooled(self.caption_rows[self.caption_offsets[indices] + choice]))
        return Batch(tokens, masks, present, text)


def pad_tokens(items: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad variable-length (n_i, dim) token sets (None: item lacks the modality).

    Returns tokens (b, max n_i, dim), mask (b, max n_i) for real tokens, and presence (b,). Used for
    batches encoded on the fly (benchmarks); cached batches come from :meth:`FeatureSplit.batch`.
    """
    length = max((t.shape[0] for t in items if t is not None), default=1)
    x = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for j, t in enumerate(items):
        if t is not None:
            x[j, : t.shape[0]] = t.float()
            mask[j, : t.shape[0]] = True
    return x, mask, torch.tensor([t is not None for t in items], dtype=torch.bool)


def mixing_cdf(sources: np.ndarray, weights: dict[str, float]) -> np.ndarray | None:
    """Cumulative draw probabilities of items whose source s has weight ``weights.get(s, 1)``.

    An item of source s is drawn with probability proportional to w_s, so a source's share of the
    draws is proportional to (its items x w_s): sources of 10:1 size with weights 1:10 get equal
    shares. ``{}``: None, the epoch-wise uniform sampler. A weight for a source with no training items,
    or weights that leave no item to draw, are params errors naming the key."""
    if not weights:
        return None
    names, inverse = np.unique(sources.astype(str), return_inverse=True)
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ParamsError(f"align.data.weights.{unknown[0]}: no training item comes from source {unknown[0]!r} "
                          f"(the training split's sources: {', '.join(names)})")
    cdf = np.cumsum(np.array([float(weights.get(n, 1.0)) for n in names])[inverse])
    if not cdf[-1] > 0:
        raise ParamsError(f"align.data.weights: every training source has weight 0 ({weights}); nothing to draw")
    return cdf / cdf[-1]


def global_batch(step: int, micro: int, grad_accum: int, batch_size: int, n_items: int, seed: int,
                 captions_per_item, cdf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Item indices and caption choices of one micro-batch, a pure function of (seed, step, micro).

    Without ``cdf``, items are drawn epoch by epoch from seeded permutations (each item once per
    epoch); with one (:func:`mixing_cdf`), each position independently from those probabilities, with
    replacement. Either way a resumed run, and every rank, sees the same global batch.
    """
    if cdf is not None:
        uniforms = np.random.default_rng([seed, step, micro, 11]).random(batch_size)
        # first item whose cumulative probability exceeds the draw: zero-weight items are never drawn
        indices = np.searchsorted(cdf, uniforms, side="right").astype(np.int64)
    else:
        start = (step * grad_accum + micro) * batch_size
        positions = np.arange(start, start + batch_size)
        epochs, offsets = positions // n_items, positions % n_items
        indices = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            perm = np.random.default_rng([seed, int(e)]).permutation(n_items)
            indices[epochs == e] = perm[offsets[epochs == e]]
    rng = np.random.default_rng([seed, step, micro, 7])
    choice = rng.integers(np.asarray(captions_per_item)[indices])  # the same draws as one call per item
    return indices, choice


def dropout_uniforms(seed: int, step: int, micro: int, positions: np.ndarray, modality: str, length: int) -> np.ndarray:
    """(b, length) uniforms in [0, 1): a pure function of (seed, step, micro, global position, modality,
    token index), so every rank and every resumed run draws the same pattern for the same token."""
    return keyed_uniforms((seed, step, micro, MODALITY_INDEX[modality]), positions, length)


def drop_tokens(batch: Batch, positions: np.ndarray, rate: float, seed: int, step: int, micro: int) -> Batch:
    """Hide a ``rate`` share of each item's media tokens (an item that would lose all keeps all).

    Drawn for the whole batch at once from :func:`dropout_uniforms`; real tokens are a prefix of each
    row, so the draw for a token does not depend on the padding (which varies with the rank's slice).
    """
    if rate <= 0:
        return batch
    masks = {}
    for m, mask in batch.masks.items():
        keep = torch.from_numpy(dropout_uniforms(seed, step, micro, positions, m, mask.shape[1]) >= rate) & mask
        emptied = ~keep.any(dim=1)
        masks[m] = torch.where(emptied[:, None], mask, keep)
    return Batch(batch.tokens, masks, batch.present, batch.text, batch.positions, batch.noise_key)
