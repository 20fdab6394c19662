"""Your own data end to end: every local format through download -> preprocess -> align -> evaluate,
and `dvc repro` on a fresh clone with a COCO JSON and a Clotho CSV and the packaged sources off."""

import json
import shutil
import subprocess

import pytest
import yaml
from helpers.local_data import CLOTHO_CAPTIONS, write_all
from helpers.setup import REPO, TINY_ALIGN

from edge_glass.config import parse_params
from edge_glass.data.manifest import read_manifest
from edge_glass.download import build_manifest
from edge_glass.tools import sample_datasets as sd


@pytest.mark.slow
def test_every_format_runs_through_align_and_evaluate(tmp_path):
    from edge_glass.align import train
    from edge_glass.evaluate import run_evaluate
    from edge_glass.models.aligner import load_model
    from edge_glass.preprocess import run_preprocess

    raw = {"seed": 0, "download": {"sources": [], "local": write_all(tmp_path / "raw", 12)},
           "preprocess": {"shard_size": 16, "vision": {"batch_size": 16}, "audio": {"batch_size": 8}},
           "align": {**TINY_ALIGN, "train": {**TINY_ALIGN["train"], "batch_size": 16}}}
    params = parse_params(raw)
    out = tmp_path / "data"
    stats = build_manifest(params, out / "download")
    manifest = read_manifest(out / "download" / "manifest.parquet")
    pre = run_preprocess(params, out / "download" / "manifest.parquet", out / "features")
    assert pre["image"]["encoded"] == manifest.image_shard.notna().sum() == stats["with_image"]
    assert pre["audio"]["encoded"] == manifest.audio_shard.notna().sum() == stats["with_audio"]
    assert pre["text"]["encoded"] == stats["captions"] and pre["image"]["rejected"] == pre["audio"]["rejected"] == 0
    train(params, out / "features", out / "download" / "manifest.parquet", out / "align", None)
    metrics, by_dim, _ = run_evaluate(params, out / "features", out / "download" / "manifest.parquet", load_model(out / "align"))
    assert {"image_to_text", "audio_to_text", "text_to_image", "text_to_audio"} <= set(metrics["trained"])
    test_items = (manifest.split == "test").sum()
    assert 0 < test_items and set(by_dim.dim) == {24, 12}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc not installed")
def test_dvc_repro_on_coco_and_clotho_from_disk(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    raw = tmp_path / "raw"
    coco = sd.write_coco(raw / "coco", 30)
    sd.write_clotho(raw / "clotho", 30)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["download"].update(sources=[], shard_size=8, split={"train": 0.6, "val": 0.2, "test": 0.2}, local=[
        {"name": "coco", "format": "coco", "path": str(coco), "media_root": str(raw / "coco" / "val2017")},
        *[{"name": f"clotho-{part}", "format": "table", "path": str(raw / "clotho" / f"clotho_captions_{part}.csv"),
           "media_root": str(raw / "clotho" / part), "audio_key": "file_name", "caption_keys": CLOTHO_CAPTIONS,
           "split": split} for part, split in (("development", "train"), ("validation", "val"), ("evaluation", "test"))],
    ])
    params["preprocess"]["shard_size"] = 8
    tiny = json.loads(json.dumps(TINY_ALIGN))
    params["align"]["train"].update(tiny.pop("train"), batch_size=8, steps=4)
    params["align"]["perceiver"].update(tiny.pop("perceiver"))
    params["align"].update(tiny)
    params["decode"].update(kind="trm", prefix_tokens=2)
    params["decode"]["trm"].update(dim=32, heads=2)
    params["decode"]["train"].update(steps=2, batch_size=4, checkpoint_every=2, log_every=1)
    params["decode"]["generate"].update(max_new_tokens=4)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run("dvc repro", cwd=clone, shell=True, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("download", "preprocess", "align", "decode", "evaluate"):
        assert f"Running stage '{stage}'" in proc.stdout
    stats = json.loads((clone / "metrics" / "download.json").read_text())
    assert stats["sources"]["coco"]["kept"] == 30 and stats["splits"]["test"] >= 6 + 2
    assert sum(stats["sources"][f"clotho-{p}"]["kept"] for p in ("development", "validation", "evaluation")) == 30
    assert stats["triples"] == 0 and stats["split_hygiene"]["train_test"]["caption_overlap"] == 0
    retrieval = json.loads((clone / "metrics" / "retrieval.json").read_text())
    assert {"image_to_text", "audio_to_text"} <= set(retrieval["trained"])
    files = [p for p in (clone / "data" / "download").rglob("*") if p.is_file()]
    assert len(files) < 60 / 2, "media must be sharded, not one file per item"
