"""The DVC wiring: a fresh clone with small params reproduces both stages, then a rerun is a no-op."""

import json

import yaml
from helpers.setup import copy_workspace, run


def test_dvc_repro_then_noop(repro_workspace, tmp_path):
    workspace, out = repro_workspace  # a clone with tiny params after one `dvc repro` (conftest)
    for stage in ("download", "preprocess", "zeroshot_features", "align", "prepare_lm", "decode", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    clone = copy_workspace(workspace, tmp_path / "clone")  # the steps below change params and outputs
    params = yaml.safe_load((clone / "params.yaml").read_text())
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
