"""edge_glass: a reproducible, cached DVC pipeline for multimodal alignment research.

The pipeline is ``download -> preprocess -> align -> decode -> evaluate -> report``, one DVC stage each
(``edge_glass.<name>``, configured by ``params.<name>``, run by ``stages/<name>.py`` or, for the report,
``python -m edge_glass.report``). What a user imports
from Python is listed in ``__all__`` below; names load on first use, so ``import edge_glass`` stays cheap
(no torch until a model is touched).

Layout (the import rule is a contract in pyproject.toml, checked by the tests):
    download, preprocess, align, decode, evaluate, report/   the stages
    compare, params, cli                                      commands and stage start-up
    api        edge_glass.load: embed and caption new files with a trained model (workspace or exported folder)
    config/    Params and one schema module per stage     data/      media, shards, manifest, splits, sources
    features/  cached feature shards and the training view encoders/  frozen encoders
    models/    aligner, resamplers, fusion, MRL, loss       decoders/  LoRA LM, TRM, generation
    train/     the one loop, checkpoints, distributed       metrics/   retrieval, bootstrap, captions, baseline
    core/      errors, io, hub names, registry, prefetch, device        tools/  helpers no stage imports
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "Params": "edge_glass.config",
    "load_params": "edge_glass.config",
    "parse_params": "edge_glass.config",
    "ParamsError": "edge_glass.core.errors",
    "DataError": "edge_glass.core.errors",
    "MediaError": "edge_glass.core.errors",
    "OutputError": "edge_glass.core.errors",
    "build_encoder": "edge_glass.encoders.registry",
    "load": "edge_glass.api",
    "EdgeGlassModel": "edge_glass.api",
    "ModelError": "edge_glass.core.errors",
    "AlignModel": "edge_glass.models.aligner",
    "load_model": "edge_glass.models.aligner",
    "FeatureSplit": "edge_glass.features.dataset",
    "FeatureStore": "edge_glass.features.store",
    "read_manifest": "edge_glass.data.manifest",
    "query_ranks": "edge_glass.metrics.retrieval",
    "recall_at_k": "edge_glass.metrics.retrieval",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edge_glass' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
