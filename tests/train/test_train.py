import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from helpers.setup import REPO, TINY_ALIGN
from safetensors.torch import load_file

from edge_glass.align import train
from edge_glass.config import parse_params
from edge_glass.evaluate import run_evaluate
from edge_glass.features.dataset import FeatureSplit, global_batch
from edge_glass.models.aligner import load_model
from edge_glass.train.loop import lr_at


def _params(**align):
    raw = {"seed": 0, "align": json.loads(json.dumps(TINY_ALIGN))}
    for k, v in align.items():
        raw["align"]["train"][k] = v
    return parse_params(raw)


def _run_stage(workdir, params, nproc=1, features=None, manifest=None, wait=True):
    (workdir / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "stages" / "align.py"), "--features", str(features), "--manifest", str(manifest),
           "--out", str(workdir / "align"), "--live", str(workdir / "live")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(workdir / "align" / "model.safetensors"))


def test_clean_loss_falls_and_the_model_retrieves_far_above_chance(small_features, tmp_path):
    manifest, features = small_features
    # the shipped linear path starts at the ridge solution, which already ranks the tiny train split
    # perfectly: to see the optimiser learn, start from the random resampler path alone
    raw = json.loads(json.dumps(TINY_ALIGN))
    raw["linear_path"] = False
    raw["train"].update(steps=30, lr=3e-3)
    params = parse_params({"seed": 0, "align": raw})
    summary = train(params, features, manifest, tmp_path / "align", tmp_path / "live")
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    model = load_model(tmp_path / "align")
    # the training loss is noisy at batch 8 with dropout; the clean (eval-mode, whole train split) loss
    # must fall from the initial model's
    from edge_glass.align import build_model, validation_loss
    from edge_glass.train.distributed import DistInfo

    data = FeatureSplit(features, manifest, "train")
    initial = build_model(params.align, data, params.align_seed, FeatureSplit(features, manifest, "val"))
    before, after = (validation_loss(m, data, params, DistInfo()) for m in (initial, model))
    assert after < 0.8 * before, (before, after)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    on_train = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": "train"})})
    metrics, by_dim, ranks = run_evaluate(on_train, features, manifest, model)
    assert set(by_dim.dim) == {24, 12}
    # R@1 of a random ranking, per query: its true entries over the gallery size; over all six tasks
    trained = ranks[ranks.model == "trained"]
    hits, chance = [], []
    for medium in ("image", "audio", "fused"):
        m2t, t2m = trained[trained.task == f"{medium}_to_text"], trained[trained.task == f"text_to_{medium}"]
        per_item = t2m.groupby("item_id").size()
        hits += [*(m2t["rank"] < 1), *(t2m["rank"] < 1)]
        chance += [*(per_item[m2t.item_id] / len(t2m)), *([1 / len(m2t)] * len(t2m))]
    assert np.mean(hits) > 2 * np.mean(chance), (np.mean(hits), np.mean(chance))
    i2t = trained[trained.task == "image_to_text"]
    assert metrics["trained"]["image_to_text"]["R@1"] == pytest.approx(float((i2t["rank"] < 1).mean()), abs=1e-4)
    r = metrics["trained"]["image_to_text"]
    assert r["R@1_ci95_lo"] <= r["R@1"] <= r["R@1_ci95_hi"] and r["R@1_ci95_hi"] - r["R@1_ci95_lo"] > 0


def _history(out_dir):
    from safetensors import safe_open

    with safe_open(str(out_dir / "checkpoints" / "last.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["edge_glass"])["history"]


def test_schedule_and_sampler_are_deterministic():
    p = _params(steps=100, warmup_steps=10).align
    assert lr_at(0, p.train) == pytest.approx(p.train.lr / 10)
    assert lr_at(9, p.train) == pytest.approx(p.train.lr)
    assert lr_at(99, p.train) == pytest.approx(p.train.lr * p.train.min_lr_ratio, rel=1e-2)
    a = global_batch(5, 0, 1, 8, 20, 0, [2] * 20)
    b = global_batch(5, 0, 1, 8, 20, 0, [2] * 20)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    epoch = [global_batch(s, 0, 1, 5, 20, 0, [1] * 20)[0] for s in range(4)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(20))  # one epoch covers every item once


def test_kill_9_between_checkpoints_then_resume_ends_with_the_same_model(small_features, tmp_path):
    """The shipped recipe (dropout, token dropout, PCA head, linear path) scaled down in size: killed
    two steps after a checkpoint, resumed from it, it ends bit-identical to an uninterrupted run."""
    manifest, features = small_features
    params = _params(steps=40, checkpoint_every=5)
    assert params.align.dropout > 0 and params.align.token_dropout > 0 and params.align.text_head == "pca"
    (tmp_path / "ref").mkdir()
    reference = _run_stage(tmp_path / "ref", params, features=features, manifest=manifest)
    work = tmp_path / "killed"
    work.mkdir()
    proc = _run_stage(work, params, features=features, manifest=manifest, wait=False)
    losses = work / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if losses.exists() and len(losses.read_text().splitlines()) >= 8:  # header + steps 0..6: past step 5's checkpoint
            break
        time.sleep(0.01)
    subprocess.run(["pkill", "-9", "-f", str(work / "align")], check=False)  # the worker, then its launcher
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = len(losses.read_text().splitlines()) - 1
    assert not (work / "align" / "model.safetensors").exists(), "killed too late"
    resumed = _run_stage(work, params, features=features, manifest=manifest)
    summary = json.loads((work / "align" / "train_summary.json").read_text())
    assert 0 < summary["resumed_from"] < killed_after  # steps after the checkpoint were lost and redone
    assert summary["resumed_from"] % params.align.train.checkpoint_every == 0
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def _variant(steps, kind="infonce", weights=None, **train_params):
    """TINY_ALIGN with ``steps``, the loss ``kind`` and source ``weights`` (align.data.weights)."""
    raw = json.loads(json.dumps(TINY_ALIGN))
    raw["train"].update(steps=steps, **train_params)
    raw["loss"] = {"kind": kind}
    raw["data"] = {"weights": weights or {}}
    return parse_params({"seed": 0, "align": raw})


@pytest.mark.parametrize("kind,weights,steps", [("infonce", None, 5), ("siglip", None, 10),
                                                ("infonce", {"asterisk": 4.0}, 5)],
                         ids=["infonce", "siglip", "infonce-mixed"])
def test_two_gloo_processes_match_one_at_equal_global_batch(small_features, tmp_path, kind, weights, steps):
    """SigLIP: the sigmoid terms of every (media, caption) pair of the global batch, with negatives from
    the other rank; data mixing: the weighted draws of the global batch, sliced by rank."""
    manifest, features = small_features
    params = _variant(steps, kind, weights)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _run_stage(tmp_path / "one", params, 1, features, manifest)
    two = _run_stage(tmp_path / "two", params, 2, features, manifest)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=2e-5, rtol=1e-4), k
    initial = _initial_weights(params, features, manifest)
    trained = [k for k in one if not torch.equal(one[k], initial[k])]
    assert len(trained) > len(one) // 2  # the run trained (the frozen PCA text head is all that must not move)
    assert all(torch.equal(one[k], initial[k]) for k in one if k.startswith("heads.text"))
    if kind == "siglip":  # the scales and biases trained, each (pair, dim) its own, and load_model rebuilds them
        loss_keys = [k for k in one if k.startswith("siglip_")]
        assert len(loss_keys) == 2 * len(params.align.loss.pairs) and "logit_scale" not in one
        assert all(not torch.equal(one[k], initial[k]) for k in loss_keys)
        assert all(len(set(one[k].tolist())) == len(params.align.mrl.dims) for k in loss_keys)
        model = load_model(tmp_path / "one" / "align")
        assert all(torch.equal(model.state_dict()[k], one[k]) for k in loss_keys)


@pytest.mark.parametrize("kind,weights", [("siglip", None), ("infonce", {"asterisk": 3.0, "openmoji": 0.5})],
                         ids=["siglip", "infonce-mixed"])
def test_stopped_run_resumes_to_the_same_model(small_features, tmp_path, monkeypatch, kind, weights):
    """A run that dies after step 5 (checkpoint at 4) resumes to the model of an uninterrupted run, bit for
    bit: SigLIP's scales and biases and their AdamW moments are in the checkpoint; weighted draws are keyed.
    (The kill -9 test above does the same through the stage for the default recipe.)"""
    import edge_glass.align as align

    manifest, features = small_features
    params = _variant(8, kind, weights, checkpoint_every=4, eval_every=4)
    train(params, features, manifest, tmp_path / "ref", None)
    step = align.train_step

    def dies_at_step_5(model, opt, data, i, *args):
        if i == 5:
            raise KeyboardInterrupt
        return step(model, opt, data, i, *args)

    monkeypatch.setattr(align, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(params, features, manifest, tmp_path / "run", None)
    monkeypatch.setattr(align, "train_step", step)
    summary = train(params, features, manifest, tmp_path / "run", None)
    assert summary["resumed_from"] == 4
    reference, resumed = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ref", "run"))
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_logs_have_throughput_and_per_source_curves_but_metrics_json_does_not(small_features, tmp_path):
    """samples/s, step seconds and peak RSS are curves (one row per log line), never in metrics.json:
    a forced rerun must give an equal metrics.json. Per-source losses are curves too."""
    manifest, features = small_features
    params = _variant(6, weights={"openmoji": 2.0})
    data = FeatureSplit(features, manifest, "train")
    assert set(data.sources) == {"asterisk", "openmoji"}
    runs = []
    for name in ("a", "b"):
        train(params, features, manifest, tmp_path / name / "align", tmp_path / name / "live")
        runs.append(json.loads((tmp_path / name / "live" / "metrics.json").read_text()))
    assert runs[0] == runs[1]
    assert runs[0]["train"].keys() == {"loss", "loss_image_text", "loss_audio_text", "loss_fused_text", "grad_norm",
                                       "lr", "temperature"}
    plots = tmp_path / "a" / "live" / "plots" / "metrics" / "train"
    logged_steps = list(range(1, 7))  # log_every 1
    for name in ("samples_per_s", "step_seconds", "peak_rss_mb", "source_loss/asterisk", "source_loss/openmoji"):
        rows = [line.split("\t") for line in (plots / f"{name}.tsv").read_text().splitlines()]
        assert rows[0] == ["step", name.split("/")[-1]], name
        steps = [int(r[0]) for r in rows[1:]]
        # a source absent from a logged step's batch has no point there
        assert steps == logged_steps if "/" not in name else set(steps) <= set(logged_steps) and len(steps) > 3, name
        assert all(float(r[1]) > 0 if "/" not in name else float(r[1]) >= 0 for r in rows[1:]), name
    step_s = [float(r.split("\t")[1]) for r in (plots / "step_seconds.tsv").read_text().splitlines()[1:]]
    rate = [float(r.split("\t")[1]) for r in (plots / "samples_per_s.tsv").read_text().splitlines()[1:]]
    assert rate == pytest.approx([params.align.train.batch_size / s for s in step_s], rel=1e-3)
    assert not (plots / "peak_gpu_mb.tsv").exists()  # CPU run


def test_weights_naming_an_unknown_source_stop_align_before_training(small_features, tmp_path):
    from edge_glass.core.errors import ParamsError

    manifest, features = small_features
    with pytest.raises(ParamsError, match=r"align\.data\.weights\.coco: no training item comes from source 'coco' "
                                          r"\(the training split's sources: asterisk, openmoji\)"):
        train(_variant(4, weights={"coco": 2.0}), features, manifest, tmp_path / "align", None)
    assert not (tmp_path / "align" / "checkpoints" / "last.safetensors").exists()


def _initial_weights(params, features, manifest):
    from edge_glass.align import build_model

    return build_model(params.align, FeatureSplit(features, manifest, "train"), params.align_seed).state_dict()


def test_two_nodes_rendezvous_over_c10d_match_one_process(small_features, tmp_path):
    """Multi-node launch as on a cluster (--nnodes=2, c10d rendezvous), both "nodes" on localhost."""
    import socket

    manifest, features = small_features
    params = _params(steps=3)
    (tmp_path / "one").mkdir()
    one = _run_stage(tmp_path / "one", params, 1, features, manifest)
    work = tmp_path / "nodes"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=edge_glass_test",
               str(REPO / "stages" / "align.py"), "--features", str(features), "--manifest", str(manifest),
               "--out", str(work / "align"), "--live", str(work / "live")]
        procs.append(subprocess.Popen(cmd, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    two = load_file(str(work / "align" / "model.safetensors"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=2e-5, rtol=1e-4), k


def test_perceiver_pool_trains_its_resampler(small_features, tmp_path):
    """pool: perceiver (the perceiver_ablation experiment) runs the resampler; mean pool is the default."""
    manifest, features = small_features
    raw = json.loads(json.dumps(TINY_ALIGN))
    raw["perceiver"]["pool"] = "perceiver"
    raw["train"].update(steps=8, lr=3e-3)
    params = parse_params({"seed": 0, "align": raw})
    train(params, features, manifest, tmp_path / "align", None)
    model = load_model(tmp_path / "align")
    initial = _initial_weights(params, features, manifest)
    latents = [k for k in model.state_dict() if "latents" in k and k.startswith("resamplers.")]
    assert latents, "the Perceiver's learned latents are in the model"
    assert all(not torch.equal(model.state_dict()[k], initial[k]) for k in latents)


def _manifest_copy(manifest, path, edit):
    """The manifest with ``edit(frame)`` applied, written (same schema) to ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edge_glass.data.manifest import read_manifest

    frame = read_manifest(manifest)
    edit(frame)
    pq.write_table(pa.Table.from_pandas(frame, schema=pq.read_schema(manifest), preserve_index=False), path)
    return path


def test_best_val_without_a_val_split_is_an_error_and_select_last_trains(small_features, tmp_path):
    """Without val items, select: best_val used to fall back to the last step silently."""
    from edge_glass.core.errors import ParamsError

    manifest, features = small_features
    no_val = _manifest_copy(manifest, tmp_path / "no_val.parquet",
                            lambda f: f.__setitem__("split", f.split.replace({"val": "train"})))
    with pytest.raises(ParamsError, match=r"align.train.select: best_val needs a val split.*align.train.select: last"):
        train(_params(), features, no_val, tmp_path / "best", None)
    assert not (tmp_path / "best" / "model.safetensors").exists()
    summary = train(_params(select="last"), features, no_val, tmp_path / "last", None)
    assert summary["val_items"] == 0 and summary["selected"] == {"step": summary["steps"]}
    assert (tmp_path / "last" / "model.safetensors").exists()


def test_val_items_without_features_stop_align_naming_the_files(small_features, tmp_path):
    """Val items the features do not cover (another manifest, a preprocess that failed on them) are not
    "no val split": the stage stops, whatever select is (before: a silent fallback to the last step)."""
    from edge_glass.core.errors import DataError

    manifest, features = small_features
    foreign = _manifest_copy(manifest, tmp_path / "foreign_val.parquet", lambda f: f.__setitem__(
        "item_id", [f"other/{i}" if s == "val" else i for i, s in zip(f.item_id, f.split)]))
    for select in ("best_val", "last"):
        with pytest.raises(DataError, match=rf"val split .* in {foreign}.*features in {features}.*no val items"):
            train(_params(select=select), features, foreign, tmp_path / select, None)


def test_corrupt_val_shard_stops_align_before_training_naming_the_shard(small_features, tmp_path):
    import shutil

    from edge_glass.core.errors import DataError
    from edge_glass.data.manifest import read_manifest
    from edge_glass.features.store import FeatureStore, shard_name

    manifest, features = small_features
    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    m = read_manifest(manifest)
    store = FeatureStore(copy / "audio")  # every item of the small set has audio (spoken emoji, prompts)
    val_rows = store.rows(m.item_id[m.split == "val"])
    shard = copy / "audio" / shard_name(int(store.shard_of[val_rows[val_rows >= 0][0]]))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=rf"val split.*{shard}"):
        train(_params(), copy, manifest, tmp_path / "align", None)
    assert not (tmp_path / "align" / "checkpoints").exists()  # stopped before the first step


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_frozen_random_text_head_is_refused(head):
    from edge_glass.core.errors import ParamsError

    with pytest.raises(ParamsError, match=rf"freeze_text_head: true with text_head: {head}.*align.freeze_text_head: false"):
        parse_params({"align": {"text_head": head}})
    assert parse_params({"align": {"text_head": head, "freeze_text_head": False}}).align.text_head == head
    assert parse_params({"align": {"text_head": "pca"}}).align.freeze_text_head
