"""The DVC wiring: a fresh clone with small params reproduces both stages, then a rerun is a no-op."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, TINY_ALIGN


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, shell=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc not installed")
def test_dvc_repro_then_noop(tmp_path):
    clone = tmp_path / "clone"
    run(f"git clone -q {REPO} {clone}", tmp_path)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["download"]["limit_per_source"] = 6
    params["preprocess"]["shard_size"] = 4
    tiny = json.loads(json.dumps(TINY_ALIGN))
    params["align"]["train"].update(tiny.pop("train"), batch_size=4, steps=4)
    params["align"]["perceiver"].update(tiny.pop("perceiver"))
    params["align"].update(tiny)
    params["evaluate"]["split"] = "train"  # 12 items leave too few in test for a meaningful gallery
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run("dvc repro", clone)
    for stage in ("download", "preprocess", "align", "evaluate"):
        assert f"Running stage '{stage}'" in out
    retrieval = json.loads((clone / "metrics" / "retrieval.json").read_text())
    assert set(retrieval["trained"]) >= {"image_to_text", "audio_to_text", "fused_to_text"}
    stats = json.loads((clone / "metrics" / "download.json").read_text())
    assert stats["sources"]["openmoji"]["kept"] == 6 and stats["sources"]["asterisk"]["kept"] == 6
    pre = json.loads((clone / "metrics" / "preprocess.json").read_text())
    assert pre["image"]["encoded"] == 6 and pre["audio"]["encoded"] == 12
    again = run("dvc repro", clone)
    assert "Running stage" not in again
    assert "up to date" in again.lower()
    params["align"]["perceiver"]["num_latents"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = run("dvc repro", clone)
    assert "Running stage 'align'" in fourth and "Running stage 'evaluate'" in fourth
    assert "Running stage 'preprocess'" not in fourth and "Running stage 'download'" not in fourth
    params["preprocess"]["dtype"] = "float32"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("dvc repro", clone)
    assert "Running stage 'preprocess'" in third and "Running stage 'download'" not in third
