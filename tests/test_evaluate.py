"""Evaluate: the ridge baseline, per-query ranks and intervals, per-source metrics, paired comparison."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from edge_glass.config import parse_params
from edge_glass.evaluate import baseline_ranks, pick_ridge
from edge_glass.synthetic import write_synthetic


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
    from edge_glass.retrieval import query_ranks, recall_at_k

    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # entries 0 and 1 tie for any query
    query = torch.tensor([[1.0, 0.0]])
    assert query_ranks(query, ["b"], gallery, ["a", "b", "c"]).tolist() == [1]  # "a" (index 0) ranks first
    assert query_ranks(query, ["a"], gallery, ["a", "b", "c"]).tolist() == [0]
    assert query_ranks(query, ["z"], gallery, ["a", "b", "c"]).tolist() == [3]  # no true entry: never a hit
    assert recall_at_k(query, ["b"], gallery, ["a", "b", "c"], [1, 2]) == {1: 0.0, 2: 1.0}


def test_paired_comparison_marks_a_real_change_and_not_noise(tmp_path):
    from edge_glass.compare import compare

    rng = np.random.default_rng(0)
    n = 600
    base_rank = rng.integers(0, 20, n)
    better = np.where(rng.random(n) < 0.25, 0, base_rank)  # a quarter of the queries now hit first
    jitter = base_rank.copy()  # noise: as many first hits gained as lost
    hits, misses = np.flatnonzero(base_rank == 0), np.flatnonzero(base_rank > 0)
    jitter[rng.choice(misses, 6, replace=False)] = 0
    jitter[rng.choice(hits, 6, replace=False)] = 5
    for name, ranks in (("base", base_rank), ("better", better), ("jitter", jitter)):
        (tmp_path / name / "metrics").mkdir(parents=True)
        pd.DataFrame({"model": "trained", "task": "image_to_text", "query": [f"q{i}" for i in range(n)],
                      "item_id": [f"q{i}" for i in range(n)], "source": "s", "rank": ranks}).to_parquet(
            tmp_path / name / "metrics" / "retrieval_queries.parquet")
    real = {r["metric"]: r for r in compare(tmp_path / "better", tmp_path / "base", None, resamples=500)}
    noise = {r["metric"]: r for r in compare(tmp_path / "jitter", tmp_path / "base", None, resamples=500)}
    assert real["trained image_to_text R@1"]["significant"] and real["trained image_to_text R@1"]["diff"] > 0.15
    assert not noise["trained image_to_text R@1"]["significant"]
    r = noise["trained image_to_text R@1"]
    assert r["lo"] <= r["diff"] <= r["hi"]


def test_read_metadata_raises_io_errors_and_returns_none_for_missing_or_broken(tmp_path):
    from edge_glass.io import read_metadata

    assert read_metadata(tmp_path / "missing.safetensors") is None
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    assert read_metadata(tmp_path / "truncated.safetensors") is None
    (tmp_path / "a_folder.safetensors").mkdir()
    with pytest.raises(OSError):
        read_metadata(tmp_path / "a_folder.safetensors")


def test_align_refuses_a_batch_that_the_world_does_not_divide(separable, tmp_path):
    from edge_glass.align import train
    from edge_glass.config import ParamsError
    from edge_glass.distributed import DistInfo

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
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"recall_k": [10], "bootstrap_resamples": 200}}))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--features", str(features),
                           "--manifest", str(manifest), "--model", str(align_dir), "--captions", "",
                           "--metrics", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.csv"),
                           "--queries", str(tmp_path / "q.parquet")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())
    r = metrics["trained"]["image_to_text"]
    assert set(r) == {"R@10", "R@10_ci95_lo", "R@10_ci95_hi"} and r["R@10_ci95_lo"] <= r["R@10"] <= r["R@10_ci95_hi"]
    assert {"openmoji", "asterisk"} <= set(metrics["by_source"])
    assert "espeak" in metrics["by_source"]["openmoji"]["audio"]
    queries = pd.read_parquet(tmp_path / "q.parquet")
    moji = queries[(queries.model == "trained") & (queries.task == "audio_to_text") & (queries.source == "openmoji")]
    assert metrics["by_source"]["openmoji"]["audio_to_text"]["R@10"] == pytest.approx(float((moji["rank"] < 10).mean()), abs=1e-4)
