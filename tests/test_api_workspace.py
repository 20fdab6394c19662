"""The agreement check on the default data: after the README's ``dvc repro`` in this checkout, every item of
the evaluated split embeds through ``edge_glass.load(".")`` as the pipeline embedded it.

The API is fed each item's *original* input (what the source read before download normalised it: the
rendered emoji, the prompt's .wav, the spoken caption, the caption text) and compared with the pipeline's
embedding of the same item (cached features -> align, ``metrics.retrieval.embed_split``): ``1 - cos <= 1e-4``
in fp32. It needs the workspace's outputs, so it skips on a clone that has not run ``dvc repro`` (CI runs
the same check on the tiny pipeline in tests/test_api.py); run it after ``dvc repro`` with
``python -m pytest -q tests/test_api_workspace.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from helpers.setup import REPO

WORKSPACE_FILES = ("data/align/model.json", "data/align/model.safetensors", "data/features/encoders.json",
                   "data/download/manifest.parquet")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all((REPO / f).exists() for f in WORKSPACE_FILES),
                       reason="needs this checkout's dvc repro outputs (data/align, data/features, data/download)"),
]


def _originals(params, wanted: set[str], out) -> dict[str, dict]:
    """item id -> {"image": file, "audio": file}: the source's own input for every wanted item, written to files."""
    from edge_glass.data.sources.registry import build_sources

    files: dict[str, dict] = {}
    for source in build_sources(params):
        for cand in source.candidates():
            if cand.item_id not in wanted:
                continue
            sample = source.process(cand)
            stem = cand.item_id.replace("/", "_")
            files[cand.item_id] = {}
            for medium in ("image", "audio"):
                data = getattr(sample, medium, None)
                if data is not None:
                    path = out / f"{stem}.{getattr(sample, f'{medium}_ext')}"
                    path.write_bytes(data)
                    files[cand.item_id][medium] = path
    return files


def test_every_evaluated_item_embeds_through_the_api_as_the_pipeline_embedded_it(tmp_path):
    import edge_glass
    from edge_glass.config import load_params
    from edge_glass.features.dataset import FeatureSplit
    from edge_glass.metrics.retrieval import embed_split
    from edge_glass.models.aligner import load_model

    params = load_params(REPO / "params.yaml")
    data = FeatureSplit(REPO / "data" / "features", REPO / "data" / "download" / "manifest.parquet", params.evaluate.split)
    files = _originals(params, set(data.item_ids), tmp_path)
    assert set(files) == set(data.item_ids), sorted(set(data.item_ids) - set(files))[:5]
    model = edge_glass.load(REPO)
    pipeline = embed_split(load_model(REPO / "data" / "align"), data)
    gaps = {}
    for m in ("image", "audio", "fused"):
        if m not in pipeline:
            continue
        z, owners = pipeline[m]
        if m == "fused":
            api = model.embed_fused([files[o]["image"] for o in owners], [files[o]["audio"] for o in owners])
        else:
            api = getattr(model, "embed_images" if m == "image" else "embed_audio")([files[o][m] for o in owners])
        gaps[m] = 1 - (api * F.normalize(z.float(), dim=-1).numpy()).sum(axis=1)
        assert api.dtype == np.float32 and api.shape == (len(owners), model.dims[0])
    z, _ = pipeline["text"]
    api = model.embed_texts([c for caps in data.caption_texts for c in caps])
    gaps["text"] = 1 - (api * F.normalize(z.float(), dim=-1).numpy()).sum(axis=1)
    print({m: (len(g), float(g.max())) for m, g in gaps.items()})
    for m, g in gaps.items():
        assert len(g) and g.max() <= 1e-4, (m, float(g.max()))
