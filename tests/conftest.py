import os
import shutil

import pytest
import yaml
from helpers.setup import REPO, TINY_ALIGN, run, small_params, tiny_pipeline_params

from edge_glass.config import parse_params
from edge_glass.download import build_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_download(tmp_path_factory):
    """A real download of 12 emoji (rendered + spoken) and 12 Asterisk prompts."""
    root = tmp_path_factory.mktemp("small")
    raw = small_params(root)
    stats = build_manifest(parse_params(raw), root / "data" / "download")
    return root, raw, stats


@pytest.fixture(scope="session")
def small_features(small_download, tmp_path_factory):
    """Features of the small download (real encoders), shared by the align/evaluate tests."""
    from edge_glass.preprocess import run_preprocess

    root, raw, _ = small_download
    out = tmp_path_factory.mktemp("small_features")
    run_preprocess(parse_params(raw), root / "data" / "download" / "manifest.parquet", out)
    return root / "data" / "download" / "manifest.parquet", out


@pytest.fixture(scope="session")
def prepared_lm(tmp_path_factory):
    """The packaged SmolLM2-135M GGUF converted once into a plain folder (what the prepare_lm stage writes)."""
    from edge_glass.decoders.lm import convert_gguf, packaged_gguf

    out = tmp_path_factory.mktemp("lm")
    convert_gguf(packaged_gguf("SmolLM2-135M-Instruct"), out)
    return out


@pytest.fixture(scope="session")
def tiny_align(small_features, tmp_path_factory):
    """A tiny align model trained on the small real features: (manifest, features, align dir)."""
    from edge_glass.align import train

    manifest, features = small_features
    out = tmp_path_factory.mktemp("tiny_align")
    train(parse_params({"seed": 0, "align": TINY_ALIGN}), features, manifest, out, None)
    return manifest, features, out


@pytest.fixture(scope="session")
def conditioned(tiny_align):
    """The tiny align model's decoder conditioning of the train split (2 prefix tokens): (FeatureSplit, Conditioning)."""
    from edge_glass.decoders.conditioning import aligned_conditioning
    from edge_glass.features.dataset import FeatureSplit
    from edge_glass.models.aligner import load_model

    manifest, features, align_dir = tiny_align
    data = FeatureSplit(features, manifest, "train")
    return data, aligned_conditioning(load_model(align_dir), data, prefix_tokens=2)


@pytest.fixture(scope="session")
def tiny_workspace(tiny_align, prepared_lm, tmp_path_factory):
    """A workspace after dvc repro in miniature (what edge_glass.load reads): data/align (the tiny align
    model), data/decode/model (a few-step TRM saved by the decode stage), data/lm (the prepared LM)."""
    import shutil

    from edge_glass.decode import run_decode

    manifest, features, align_dir = tiny_align
    ws = tmp_path_factory.mktemp("tiny_workspace")
    (ws / "data" / "align").mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copy(align_dir / name, ws / "data" / "align" / name)
    (ws / "data" / "lm").symlink_to(prepared_lm, target_is_directory=True)
    params = parse_params({"seed": 0, "evaluate": {"split": "train"}, "decode": {
        "kind": "trm", "prefix_tokens": 2, "max_caption_tokens": 12, "split": "train",
        "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 4},
        "generate": {"max_new_tokens": 5, "batch_size": 8}}})
    run_decode(params, features, manifest, ws / "data" / "align", ws / "data" / "lm", ws / "data" / "decode")
    return ws


@pytest.fixture(scope="session")
def repro_workspace(tmp_path_factory):
    """A fresh clone of the committed HEAD with tiny params after one whole `dvc repro` (~2.5 min):
    (clone, output of that repro). One per session: the pipeline test changes a copy of it
    (helpers.setup.copy_workspace), the notebook tests only read it."""
    if shutil.which("dvc") is None:
        pytest.skip("dvc not installed")
    root = tmp_path_factory.mktemp("repro_workspace")
    clone = root / "clone"
    run(f"git clone -q {REPO} {clone}", root)
    params = tiny_pipeline_params(yaml.safe_load((clone / "params.yaml").read_text()))
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return clone, run("dvc repro", clone)
