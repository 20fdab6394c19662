"""``format: karpathy``: Karpathy's ``dataset_*.json`` split files (images with sentences and a split each)."""

from __future__ import annotations

from pathlib import Path

from edge_glass.core.errors import DataError
from edge_glass.data.sources.base import Candidate, file_stamp
from edge_glass.data.sources.local.base import (
    LocalSource,
    brief,
    load_json,
    looks_like_hint,
)
from edge_glass.data.sources.registry import register_format


@register_format("karpathy")
class KarpathySplits(LocalSource):
    """Karpathy's dataset_coco.json / dataset_flickr30k.json: ``images[].filepath?, filename, split,
    sentences[].raw``; item id from ``cocoid`` or ``filename``; ``restval`` is train."""

    def items(self):
        data = load_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{self.path}: not a Karpathy split file (needs a list 'images')"
                            f"{looks_like_hint(data, 'karpathy')}")
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict):
                yield Candidate(f"{self.name}/images[{i}]", None, reject=f"images entry is not an object ({brief(img)})")
                continue
            rel = str(Path(img.get("filepath") or "") / str(img.get("filename", "")))
            key = next((img[k] for k in ("cocoid", "filename") if img.get(k) is not None), f"images[{i}]")
            sentences = [s.get("raw") if isinstance(s, dict) else s for s in img.get("sentences") or []]
            yield Candidate(f"{self.name}/{key}", (rel, sentences, img.get("split")), file_stamp(self.root / rel))

    def process(self, cand):
        rel, sentences, split = cand.payload
        return self.make(cand, sentences, image=rel, split_value=split)
