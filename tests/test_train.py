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
from safetensors.torch import load_file

from conftest import REPO, TINY_ALIGN
from edge_glass.config import parse_params
from edge_glass.data import FeatureSplit, global_batch
from edge_glass.evaluate import run_evaluate
from edge_glass.align import load_model, train
from edge_glass.loop import lr_at


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


def test_loss_decreases_and_model_round_trips(small_features, tmp_path):
    manifest, features = small_features
    params = _params(steps=30, lr=3e-3)
    summary = train(params, features, manifest, tmp_path / "align", tmp_path / "live")
    losses = [h["loss"] for h in _history(tmp_path / "align")]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    model = load_model(tmp_path / "align")
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    metrics, by_dim = run_evaluate(params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": "train"})}),
                                   features, manifest, model)
    assert set(by_dim.dim) == {32, 16}
    assert 0 <= metrics["trained"]["image_to_text"]["R@1"] <= 1


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


def test_kill_9_then_resume_ends_with_the_same_model(small_features, tmp_path):
    manifest, features = small_features
    params = _params(steps=40, checkpoint_every=5)
    (tmp_path / "ref").mkdir()
    reference = _run_stage(tmp_path / "ref", params, features=features, manifest=manifest)
    work = tmp_path / "killed"
    work.mkdir()
    proc = _run_stage(work, params, features=features, manifest=manifest, wait=False)
    ckpt = work / "align" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    subprocess.run(["pkill", "-9", "-f", str(work / "align")], check=False)  # the worker, then its launcher
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (work / "align" / "model.safetensors").exists(), "killed too late"
    resumed = _run_stage(work, params, features=features, manifest=manifest)
    summary = json.loads((work / "align" / "train_summary.json").read_text())
    assert summary["resumed_from"] > 0
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_two_gloo_processes_match_one_at_equal_global_batch(small_features, tmp_path):
    manifest, features = small_features
    params = _params(steps=5)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _run_stage(tmp_path / "one", params, 1, features, manifest)
    two = _run_stage(tmp_path / "two", params, 2, features, manifest)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=2e-5, rtol=1e-4), k
    assert not torch.equal(one["heads.text.net.1.weight"], _initial_text_weight(params, features, manifest))


def _initial_text_weight(params, features, manifest):
    from edge_glass.align import build_model

    return build_model(params.align, FeatureSplit(features, manifest, "train"), params.seed).state_dict()["heads.text.net.1.weight"]


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
