"""The DVC wiring: a fresh clone with small params reproduces both stages, then a rerun is a no-op."""

import json
import shutil
import subprocess

import pytest
import yaml
from helpers.setup import REPO, TINY_ALIGN


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
    # 6 items per source leave no val split: select the last step (best_val without val is a params error)
    params["align"]["train"].update(tiny.pop("train"), batch_size=4, steps=4, select="last")
    params["align"]["perceiver"].update(tiny.pop("perceiver"))
    params["align"].update(tiny)
    params["align"]["projection_dim"] = 8  # the PCA text head needs >= projection_dim captions (12 in train here)
    params["align"]["mrl"]["dims"] = [8, 4]
    params["evaluate"]["split"] = "train"  # 12 items leave too few in test for a meaningful gallery
    params["decode"].update(kind="trm", split="train", prefix_tokens=2)
    params["decode"]["trm"].update(dim=32, heads=2)
    params["decode"]["train"].update(steps=3, batch_size=4, checkpoint_every=2, log_every=1)
    params["decode"]["generate"].update(max_new_tokens=4)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run("dvc repro", clone)
    for stage in ("download", "preprocess", "zeroshot_features", "align", "prepare_lm", "decode", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    assert (clone / "reports" / "index.html").read_text().count('class=query') > 0
    captions = json.loads((clone / "metrics" / "captions.json").read_text())
    train_items = json.loads((clone / "metrics" / "download.json").read_text())["splits"]["train"]
    assert captions["items"] == train_items and {"BLEU-4", "CIDEr-D", "embedding_similarity"} <= set(captions)
    assert captions["split"] == "train"  # the split decode captioned and evaluate scored
    assert (clone / "metrics" / "caption_samples.md").read_text().startswith("# Generated captions")
    retrieval = json.loads((clone / "metrics" / "retrieval.json").read_text())
    assert set(retrieval["trained"]) >= {"image_to_text", "audio_to_text", "fused_to_text"}
    stats = json.loads((clone / "metrics" / "download.json").read_text())
    assert stats["sources"]["openmoji"]["kept"] == 6 and stats["sources"]["asterisk"]["kept"] == 6
    pre = json.loads((clone / "metrics" / "preprocess.json").read_text())
    assert pre["image"]["encoded"] == 6 and pre["audio"]["encoded"] == 12
    again = run("dvc repro", clone)
    assert "Running stage" not in again
    assert "up to date" in again.lower()
    params["decode"]["kind"] = "lora_lm"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    switched = run("dvc repro", clone)
    assert "Running stage 'decode'" in switched and "Running stage 'evaluate'" in switched
    assert not any(f"Running stage '{s}'" in switched for s in ("download", "preprocess", "zeroshot_features", "align", "prepare_lm"))
    assert json.loads((clone / "data" / "decode" / "decode_summary.json").read_text())["kind"] == "lora_lm"
    params["align"]["perceiver"]["num_latents"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = run("dvc repro", clone)
    assert all(f"Running stage '{s}'" in fourth for s in ("align", "decode", "evaluate"))
    assert not any(f"Running stage '{s}'" in fourth for s in ("download", "preprocess", "zeroshot_features", "prepare_lm"))
    metric_files = ["metrics/download.json", "metrics/headline.json", "metrics/retrieval.json", "metrics/zeroshot.json",
                    "metrics/zeroshot_confusion.csv", "metrics/captions.json", "metrics/recall_by_dim.csv",
                    "dvclive/align/metrics.json", "dvclive/decode/metrics.json"]
    before = {f: (clone / f).read_text() for f in metric_files}
    forced = run("dvc repro --force", clone)
    assert "Running stage 'download'" in forced and "Running stage 'evaluate'" in forced
    assert {f: (clone / f).read_text() for f in metric_files} == before, "a forced rerun changed the metrics"
    remote = tmp_path / "remote"
    run(f"dvc remote add -d local {remote} && dvc push -q", clone)
    second = tmp_path / "second"
    run(f"git clone -q {clone} {second} && cp {clone}/params.yaml {clone}/dvc.lock {second}/ "
        f"&& cp {clone}/.dvc/config {second}/.dvc/config", tmp_path)
    run("dvc pull -q", second)  # a fresh machine gets the cached outputs from the remote instead of recomputing
    for out in ("data/decode/captions.parquet", "data/align/model.safetensors", "data/features/image/index.parquet"):
        assert (second / out).read_bytes() == (clone / out).read_bytes(), out
    params["preprocess"]["dtype"] = "float32"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("dvc repro", clone)
    assert "Running stage 'preprocess'" in third and "Running stage 'download'" not in third
