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
def tiny_workspace(tmp_path_factory):
    """A fresh clone of the committed HEAD with tiny params after one whole `dvc repro` (~2.5 min):
    (clone, output of that repro). One per session: the pipeline test changes a copy of it
    (helpers.setup.copy_workspace), the notebook tests only read it."""
    if shutil.which("dvc") is None:
        pytest.skip("dvc not installed")
    root = tmp_path_factory.mktemp("tiny_workspace")
    clone = root / "clone"
    run(f"git clone -q {REPO} {clone}", root)
    params = tiny_pipeline_params(yaml.safe_load((clone / "params.yaml").read_text()))
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return clone, run("dvc repro", clone)
