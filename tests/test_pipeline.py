"""The DVC wiring: a fresh clone with small params reproduces both stages, then a rerun is a no-op."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO


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
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run("dvc repro", clone)
    assert "Running stage 'download'" in out and "Running stage 'preprocess'" in out
    stats = json.loads((clone / "metrics" / "download.json").read_text())
    assert stats["sources"]["openmoji"]["kept"] == 6 and stats["sources"]["asterisk"]["kept"] == 6
    pre = json.loads((clone / "metrics" / "preprocess.json").read_text())
    assert pre["image"]["encoded"] == 6 and pre["audio"]["encoded"] == 12
    again = run("dvc repro", clone)
    assert "Running stage" not in again
    assert "up to date" in again.lower()
    params["preprocess"]["dtype"] = "float32"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("dvc repro", clone)
    assert "Running stage 'preprocess'" in third and "Running stage 'download'" not in third
