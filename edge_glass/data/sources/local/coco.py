"""``format: coco``: a COCO captions JSON (``images`` + ``annotations``) and its image folder."""

from __future__ import annotations

from collections import defaultdict

from edge_glass.core.errors import DataError
from edge_glass.data.sources.base import Candidate, file_stamp
from edge_glass.data.sources.local.base import (
    LocalSource,
    brief,
    hashable,
    load_json,
    looks_like_hint,
)
from edge_glass.data.sources.registry import register_format


@register_format("coco")
class CocoCaptions(LocalSource):
    """COCO captions JSON: ``images[].id, file_name``; ``annotations[].image_id, caption`` (grouped per image)."""

    def items(self):
        data = load_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise DataError(f"{self.path}: not a COCO captions file (needs lists 'images' and 'annotations')"
                            f"{looks_like_hint(data, 'coco')}")
        image_ids = {hashable(img.get("id")) for img in data["images"] if isinstance(img, dict)}
        captions = defaultdict(list)
        for i, ann in enumerate(data["annotations"]):
            # an annotation that names no image is a caption without media: a reject, not a silent loss
            if not isinstance(ann, dict):
                yield Candidate(f"{self.name}/annotations[{i}]", None, reject=f"annotation is not an object ({brief(ann)})")
            elif hashable(ann.get("image_id")) not in image_ids:
                yield Candidate(f"{self.name}/annotations[{i}]", None,
                                reject=f"annotation's image_id has no entry in 'images' (image_id {ann.get('image_id')!r}, "
                                       f"caption {str(ann.get('caption'))[:40]!r})")
            else:
                captions[hashable(ann.get("image_id"))].append(ann.get("caption"))
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict):
                yield Candidate(f"{self.name}/images[{i}]", None, reject=f"images entry is not an object ({brief(img)})")
                continue
            key = next((img[k] for k in ("id", "file_name") if img.get(k) is not None), f"images[{i}]")
            file_name = img.get("file_name")
            yield Candidate(f"{self.name}/{key}", (file_name, captions.get(hashable(img.get("id")), [])),
                            file_stamp(self.root / str(file_name)))

    def process(self, cand):
        file_name, captions = cand.payload
        return self.make(cand, captions, image=file_name)
