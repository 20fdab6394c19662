"""Evaluate: the ridge baseline, per-query ranks, item-level intervals, per-source metrics, left-out items."""

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from edge_glass.config import parse_params
from edge_glass.evaluate import recalls_with_ci
from edge_glass.metrics.baseline import baseline_ranks, pick_ridge
from edge_glass.tools.synthetic import write_synthetic


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Synthetic features where media and captions share a strong per-item signal (low noise)."""
    return write_synthetic(tmp_path_factory.mktemp("separable"), 240, noise=0.5, item_scale=3.0, shard_size=128)


def test_ridge_baseline_beats_chance_on_a_separable_fixture(separable):
    manifest = pd.read_parquet(separable["manifest"], columns=["item_id", "split"])
    ranks, chosen = baseline_ranks(separable["features"], manifest, "test", parse_params({}))
    i2t = ranks["image_to_text"]
    n_items = i2t.item_id.nunique()
    chance = 1 / n_items  # two captions per item among 2 x n_items: a random ranking hits first 1/n of the time
    assert (i2t["rank"] < 1).mean() > 10 * chance
    assert set(chosen) == {"image", "audio"} and all(r in (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)
                                                    for r in chosen.values())


def test_pick_ridge_takes_the_best_validation_score_and_the_smaller_on_ties():
    scores = {0.1: 0.20, 1.0: 0.31, 10.0: 0.35, 100.0: 0.35, 1000.0: 0.10}
    assert pick_ridge(scores.get, list(scores)) == 10.0
    assert pick_ridge({1.0: 0.5, 10.0: 0.9}.get, [10.0, 1.0]) == 10.0


def test_baseline_without_val_uses_baseline_ridge_even_outside_the_grid(separable, tmp_path):
    manifest = pd.read_parquet(separable["manifest"], columns=["item_id", "split"])
    manifest["split"] = manifest["split"].replace({"val": "train"})
    ranks, chosen = baseline_ranks(separable["features"], manifest, "test", parse_params({"evaluate": {"baseline_ridge": 37.0}}))
    assert chosen == {"image": 37.0, "audio": 37.0} and len(ranks["image_to_text"]) > 0


def test_query_ranks_break_ties_by_gallery_index():
    from edge_glass.metrics.retrieval import query_ranks, recall_at_k

    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # entries 0 and 1 tie for any query
    query = torch.tensor([[1.0, 0.0]])
    assert query_ranks(query, ["b"], gallery, ["a", "b", "c"]).tolist() == [1]  # "a" (index 0) ranks first
    assert query_ranks(query, ["a"], gallery, ["a", "b", "c"]).tolist() == [0]
    assert query_ranks(query, ["z"], gallery, ["a", "b", "c"]).tolist() == [3]  # no true entry: never a hit
    assert recall_at_k(query, ["b"], gallery, ["a", "b", "c"], [1, 2]) == {1: 0.0, 2: 1.0}


def test_read_metadata_raises_io_errors_and_returns_none_for_missing_or_broken(tmp_path):
    from edge_glass.core.io import read_metadata

    assert read_metadata(tmp_path / "missing.safetensors") is None
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    assert read_metadata(tmp_path / "truncated.safetensors") is None
    (tmp_path / "a_folder.safetensors").mkdir()
    with pytest.raises(OSError):
        read_metadata(tmp_path / "a_folder.safetensors")


def test_align_refuses_a_batch_that_the_world_does_not_divide(separable, tmp_path):
    from edge_glass.align import train
    from edge_glass.core.errors import ParamsError
    from edge_glass.train.distributed import DistInfo

    params = parse_params({"align": {"train": {"batch_size": 8}}})
    with pytest.raises(ParamsError, match=r"align.train.batch_size=8 must be divisible by the world size 3"):
        train(params, separable["features"], separable["manifest"], tmp_path, None, DistInfo(0, 3, torch.device("cpu")))


def test_evaluate_stage_with_recall_k_without_1_or_5(tiny_align, tmp_path):
    """evaluate.recall_k: [10] must not crash the stage's summary, and every metric carries its interval."""
    import subprocess
    import sys

    import yaml
    from helpers.setup import REPO

    manifest, features, align_dir = tiny_align
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"recall_k": [10], "bootstrap_resamples": 200, "zeroshot": []}}))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--features", str(features),
                           "--manifest", str(manifest), "--model", str(align_dir), "--captions", "",
                           "--metrics", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.csv"),
                           "--queries", str(tmp_path / "q.parquet")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())
    r = metrics["trained"]["image_to_text"]
    assert set(r) == {"R@10", "R@10_ci95_lo", "R@10_ci95_hi"} and r["R@10_ci95_lo"] <= r["R@10"] <= r["R@10_ci95_hi"]
    assert len(metrics["test_items_sha256"]) == 64 and metrics["items_left_out"] >= 0
    by_dim = pd.read_csv(tmp_path / "p.csv")
    assert {"dim", "task", "R@10", "R@10_ci95_lo", "R@10_ci95_hi"} <= set(by_dim.columns) and by_dim.notna().all().all()
    assert {"openmoji", "asterisk"} <= set(metrics["by_source"])
    assert "espeak" in metrics["by_source"]["openmoji"]["audio"]
    queries = pd.read_parquet(tmp_path / "q.parquet")
    moji = queries[(queries.model == "trained") & (queries.task == "audio_to_text") & (queries.source == "openmoji")]
    assert metrics["by_source"]["openmoji"]["audio_to_text"]["R@10"] == pytest.approx(float((moji["rank"] < 10).mean()), abs=1e-4)


def with_items_left_out(manifest_path) -> None:
    """Two more test items the features lack: one without any caption, one whose captions were never encoded;
    rows in reverse id order, so a hash of the ids in manifest order would differ from the sorted one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(manifest_path)
    row = table.slice(0, 1).to_pylist()[0]
    extra = [{**row, "item_id": "synthetic/no-captions", "split": "test", "captions": []},
             {**row, "item_id": "synthetic/not-encoded", "split": "test", "captions": ["a caption nobody encoded"]}]
    table = pa.concat_tables([table, pa.Table.from_pylist(extra, schema=table.schema)])
    pq.write_table(table.take(np.arange(len(table))[::-1]), manifest_path)


@pytest.fixture(scope="module")
def three_captions(tmp_path_factory):
    """A run whose test items carry 3 near-identical captions each (low caption noise; items within a concept
    of 4 nearly alike, so a query misses for its item, not for its caption), evaluated end to end."""
    from helpers.setup import TINY_ALIGN

    from edge_glass.align import build_model
    from edge_glass.evaluate import run_evaluate
    from edge_glass.features.dataset import FeatureSplit

    paths = write_synthetic(tmp_path_factory.mktemp("three"), 300, captions_per_item=3, modalities=("image",),
                            noise=0.1, item_scale=0.01, split=(0.5, 0.1))
    with_items_left_out(paths["manifest"])
    params = parse_params({"seed": 0, "align": TINY_ALIGN, "evaluate": {"bootstrap_resamples": 1000}})
    model = build_model(params.align, FeatureSplit(paths["features"], paths["manifest"], "train"), 0)
    metrics, by_dim, queries = run_evaluate(params, paths["features"], paths["manifest"], model)
    return {**paths, "params": params, "model": model, "metrics": metrics, "by_dim": by_dim, "queries": queries}


def independent_item_bootstrap(frame: pd.DataFrame, k: int, resamples: int = 2000, seed: int = 12345) -> tuple[float, float]:
    """The item-level bootstrap written out plainly (per-item hits and query counts, items drawn with
    replacement by index, a loop): what the acceptance check computes from retrieval_queries.parquet."""
    per_item = frame.assign(hit=frame["rank"] < k).groupby("item_id")["hit"].agg(["sum", "count"])
    hits, counts = per_item["sum"].to_numpy(float), per_item["count"].to_numpy(float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        draw = rng.integers(0, len(per_item), len(per_item))
        values.append(hits[draw].sum() / counts[draw].sum())
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.parametrize("model", ["trained", "baseline"])
def test_text_to_media_interval_matches_an_independent_item_bootstrap(three_captions, model):
    q = three_captions["queries"]
    frame = q[(q.model == model) & (q.task == "text_to_image")]
    assert frame.groupby("item_id").size().eq(3).all()
    r = three_captions["metrics"][model]["text_to_image"]
    lo, hi = independent_item_bootstrap(frame, 1)  # R@1: R@5 saturates here (a concept has 4 items)
    width = hi - lo
    assert width > 0.05, (lo, hi)  # a real interval
    assert abs(r["R@1_ci95_lo"] - lo) <= 0.15 * width and abs(r["R@1_ci95_hi"] - hi) <= 0.15 * width, (r, lo, hi)


@pytest.mark.parametrize("model", ["trained", "baseline"])
def test_near_identical_captions_widen_the_text_to_media_interval(three_captions, model):
    """The old bootstrap treated the 3 captions of an item as independent queries: about sqrt(3) too narrow."""
    from edge_glass.metrics.bootstrap import mean_ci

    q = three_captions["queries"]
    frame = q[(q.model == model) & (q.task == "text_to_image")]
    agree = frame.assign(hit=frame["rank"] < 1).groupby("item_id")["hit"].agg(lambda h: h.all() or not h.any())
    # the fixture does what it says: an item's captions mostly hit or miss together (independent captions
    # with R@1 near 0.6 would agree on 28% of the items)
    assert agree.mean() > 0.6
    r = three_captions["metrics"][model]["text_to_image"]
    q_lo, q_hi = mean_ci((frame["rank"] < 1).to_numpy(float), resamples=1000, seed=0)
    assert r["R@1_ci95_hi"] - r["R@1_ci95_lo"] > 1.3 * (q_hi - q_lo)


def test_duplicating_text_queries_leaves_the_interval_unchanged(three_captions):
    """Each text->media query listed 5 times (and the rows shuffled): the same items, the same interval."""
    q = three_captions["queries"]
    frame = q[(q.model == "trained") & (q.task == "text_to_image")][["query", "item_id", "rank"]]
    copies = pd.concat([frame.assign(query=frame["query"] + f"/copy{j}") for j in range(5)], ignore_index=True)
    copies = copies.sample(frac=1.0, random_state=0)
    ks = [1, 5, 10]
    once = recalls_with_ci(frame, ks, 1000, 0)
    assert recalls_with_ci(copies, ks, 1000, 0) == once
    assert recalls_with_ci(frame, ks, 1000, 0) == once  # seeded
    assert any(recalls_with_ci(frame, ks, 1000, s) != once for s in (1, 2, 3))  # ... and the seed is used


def test_metrics_name_the_test_items_and_count_those_left_out(three_captions):
    from edge_glass.features.dataset import FeatureSplit

    m = three_captions["metrics"]
    manifest = pd.read_parquet(three_captions["manifest"])
    test_ids = manifest.item_id[manifest.split == "test"]
    scored = sorted(i for i in test_ids if i not in ("synthetic/no-captions", "synthetic/not-encoded"))
    assert m["test_items_sha256"] == hashlib.sha256("\n".join(scored).encode()).hexdigest()
    assert m["items_left_out"] == 2 and m["items"] + m["items_left_out"] == len(test_ids)
    assert m["items_left_out_by_reason"] == {"no_captions": 1, "no_caption_features": 1, "no_media_features": 0}
    data = FeatureSplit(three_captions["features"], three_captions["manifest"], "test")
    assert data.left_out_ids["no_captions"] == ["synthetic/no-captions"]
    assert data.left_out_ids["no_caption_features"] == ["synthetic/not-encoded"]
    assert m["bootstrap"]["over"] == "test items"


def test_recall_by_dim_carries_an_item_level_interval_for_every_k(three_captions):
    by_dim, m = three_captions["by_dim"], three_captions["metrics"]
    ks = three_captions["params"].evaluate.recall_k
    assert {f"R@{k}_ci95_{s}" for k in ks for s in ("lo", "hi")} <= set(by_dim.columns)
    assert set(by_dim["dim"]) == set(three_captions["model"].cfg.mrl.dims) and by_dim.notna().all().all()
    for k in ks:
        assert (by_dim[f"R@{k}_ci95_lo"] <= by_dim[f"R@{k}"] + 1e-4).all()
        assert (by_dim[f"R@{k}"] <= by_dim[f"R@{k}_ci95_hi"] + 1e-4).all()
    top = by_dim[(by_dim.dim == by_dim.dim.max()) & (by_dim.task == "text_to_image")].iloc[0]
    r = m["trained"]["text_to_image"]
    assert (top["R@1_ci95_lo"], top["R@1_ci95_hi"]) == (r["R@1_ci95_lo"], r["R@1_ci95_hi"])


def test_evaluating_val_warns_that_val_also_picked_the_checkpoint(three_captions, caplog, capsys):
    from edge_glass.evaluate import run_evaluate

    fx = three_captions
    for split, warned in (("val", True), ("test", False)):
        caplog.clear()
        params = fx["params"].model_copy(update={"evaluate": fx["params"].evaluate.model_copy(update={"split": split})})
        with caplog.at_level(logging.WARNING):
            metrics, _, _ = run_evaluate(params, fx["features"], fx["manifest"], fx["model"])
        assert metrics["split"] == split
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        err = capsys.readouterr().err
        assert any("selected the align checkpoint" in msg for msg in logged) == warned
        assert ("selected the align checkpoint" in err) == warned


def test_evaluate_scores_only_captions_of_its_own_split():
    """captions.parquet must say it is of evaluate.split: a file from an older decode (no split column) or of
    another split stops the stage with a DataError instead of being scored as the test split."""
    import importlib.util

    import pandas as pd
    from helpers.setup import REPO

    from edge_glass.core.errors import DataError

    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    frame = pd.DataFrame({"item_id": ["a", "b"], "generated": ["x", "y"], "references": [["x"], ["y"]]})
    with pytest.raises(DataError, match="no 'split' column"):
        stage.caption_split(frame, "captions.parquet", "test")
    with pytest.raises(DataError, match=r"split\(s\) \['val'\], but evaluate.split is 'test'"):
        stage.caption_split(frame.assign(split="val"), "captions.parquet", "test")
    assert stage.caption_split(frame.assign(split="test"), "captions.parquet", "test") == "test"


def test_resample_chunks_bound_memory_and_leave_the_counts_unchanged(monkeypatch):
    """Many items draw fewer resamples per chunk (memory flat in N), and the counts are the same draws."""
    from edge_glass.metrics import bootstrap as bs

    whole = np.concatenate(list(bs.resample_counts(500, 40, seed=5)))
    monkeypatch.setattr(bs, "CHUNK_ELEMENTS", 500 * 3)  # at most 3 resamples of 500 items at once
    chunks = list(bs.resample_counts(500, 40, seed=5))
    assert max(len(c) for c in chunks) == 3 and sum(len(c) for c in chunks) == 40
    assert np.array_equal(np.concatenate(chunks), whole)
