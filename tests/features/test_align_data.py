"""Align at scale: memory-mapped features, vectorised batches and dropout, thread- and process-count
independence with the shipped params (scaled down in size only), flat memory in N, CUDA when present."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers.run_if import requires_cuda
from helpers.setup import REPO
from safetensors.torch import load_file

from edge_glass.config import parse_params
from edge_glass.features.dataset import (
    FeatureSplit,
    drop_tokens,
    dropout_uniforms,
    pad_tokens,
)
from edge_glass.features.keyed_random import splitmix64
from edge_glass.features.store import FeatureStore, read_shard, shard_name
from edge_glass.tools.synthetic import write_synthetic

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """400 synthetic items (default encoder shapes, 2 captions each): enough captions for the PCA head."""
    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(root, 400, shard_size=64)


def shipped_params(**train) -> dict:
    """params.yaml as shipped, scaled down in size only (steps, batch, eval schedule)."""
    raw = json.loads(json.dumps(SHIPPED))
    raw["align"]["train"].update({"steps": 8, "batch_size": 32, "warmup_steps": 2, "checkpoint_every": 4,
                                  "log_every": 1, "eval_every": 8, **train})
    return raw


def test_memory_mapped_store_equals_in_ram_reads(synthetic):
    store = FeatureStore(synthetic["features"] / "audio")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(store), 37, replace=False)
    rows[5] = -1  # an item without audio
    tokens, mask = store.gather_tokens(rows)
    pooled = store.gather_pooled(rows[rows >= 0])
    shards = {}
    for j, r in enumerate(rows):
        if r < 0:
            assert not mask[j].any() and not tokens[j].any()
            continue
        k, row = int(store.shard_of[r]), int(store.row_of[r])
        shard = shards.setdefault(k, read_shard(store.dir / shard_name(k)))
        ref = shard.item_tokens(row).float().numpy()
        n = len(ref)
        assert mask[j].sum() == n and np.array_equal(tokens[j, :n], ref) and not tokens[j, n:].any()
        assert np.array_equal(store.tokens(store.index.id[r]).float().numpy(), ref)
    ref_pooled = [shards[int(store.shard_of[r])].pooled[int(store.row_of[r])].float().numpy() for r in rows if r >= 0]
    assert np.array_equal(pooled, np.stack(ref_pooled))


def test_vectorised_batch_equals_per_item_padding(synthetic):
    data = FeatureSplit(synthetic["features"], synthetic["manifest"], "train")
    idx = np.random.default_rng(1).choice(len(data), 24, replace=False)
    choice = np.random.default_rng(2).integers(data.caption_counts[idx])
    batch = data.batch(idx, choice)
    for m, store in data.stores.items():
        items = [store.tokens(data.item_ids[i]) if data.media_rows[m][i] >= 0 else None for i in idx]
        x, mask, present = pad_tokens(items, data.token_dims[m])
        assert torch.equal(batch.tokens[m], x) and torch.equal(batch.masks[m], mask) and torch.equal(batch.present[m], present)
    text = data.text_store
    want = [text.gather_pooled(text.rows([f"{data.item_ids[i]}#{k}"]))[0] for i, k in zip(idx, choice)]
    assert np.array_equal(batch.text.numpy(), np.stack(want))


def _reference_uniform(seed, step, micro, pos, modality_index, t) -> float:
    """One token's draw of the keyed scheme, computed alone with scalar calls (the per-item reference)."""
    k = np.uint64(0)
    for part in (seed, step, micro, modality_index):
        k = splitmix64(np.asarray(k ^ np.uint64(part), dtype=np.uint64))
    row = splitmix64(np.asarray(k ^ np.uint64(pos), dtype=np.uint64))
    col = np.uint64((t * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    return float(splitmix64(np.asarray(row ^ col, dtype=np.uint64)) >> np.uint64(11)) / float(1 << 53)


def test_vectorised_token_dropout_equals_per_item_reference(synthetic):
    data = FeatureSplit(synthetic["features"], synthetic["manifest"], "train")
    batch = data.batch(np.arange(12))
    positions = np.arange(100, 112)
    dropped = drop_tokens(batch, positions, 0.3, seed=0, step=5, micro=1)
    for m, index in (("image", 1), ("audio", 2)):
        for j, pos in enumerate(positions):
            n = int(batch.masks[m][j].sum())
            keep = np.array([_reference_uniform(0, 5, 1, pos, index, t) >= 0.3 for t in range(n)])
            want = keep if keep.any() else np.ones(n, bool)
            assert np.array_equal(dropped.masks[m][j, :n].numpy(), want)
            assert not dropped.masks[m][j, n:].any()
    # the modality is in the key: image and audio of one item get different patterns
    assert not np.array_equal(dropout_uniforms(0, 5, 1, positions, "image", 25), dropout_uniforms(0, 5, 1, positions, "audio", 25))
    # a rank's slice draws what the whole batch draws for the same positions
    assert np.array_equal(dropout_uniforms(0, 5, 1, positions[6:], "audio", 30),
                          dropout_uniforms(0, 5, 1, positions, "audio", 30)[6:])


def test_initial_model_does_not_depend_on_thread_count(synthetic):
    from edge_glass.align import build_model

    params = parse_params(shipped_params())
    data = FeatureSplit(synthetic["features"], synthetic["manifest"], "train")
    val = FeatureSplit(synthetic["features"], synthetic["manifest"], "val")
    threads = torch.get_num_threads()
    states = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            states.append(build_model(params.align, data, params.seed, val).state_dict())
    finally:
        torch.set_num_threads(threads)
    assert "linear.image.weight" in states[0] and "heads.text.net.2.weight" in states[0]
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], rtol=0, atol=1e-6), (k, (states[0][k] - states[1][k]).abs().max())


def _align(workdir, raw, nproc, threads, synthetic):
    workdir.mkdir()
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "stages" / "align.py"), "--features", str(synthetic["features"]), "--manifest",
           str(synthetic["manifest"]), "--out", str(workdir / "align"), "--live", str(workdir / "live")]
    proc = subprocess.run(cmd, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(workdir / "align" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_shipped_params(synthetic, tmp_path):
    """1 process x 2 threads == 2 processes x 1 thread, with PCA head, linear path, dropout, token dropout."""
    raw = shipped_params()
    assert raw["align"]["dropout"] > 0 and raw["align"]["token_dropout"] > 0 and raw["align"]["text_head"] == "pca"
    one = _align(tmp_path / "one", raw, 1, 2, synthetic)
    two_raw = json.loads(json.dumps(raw))
    two_raw["align"]["train"]["nproc_per_node"] = 2
    two = _align(tmp_path / "two", two_raw, 2, 1, synthetic)
    worst = max(((one[k] - two[k]).abs().max().item(), k) for k in one)
    print("largest 1 vs 2 process difference:", worst)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=2e-5, rtol=1e-4), (k, (one[k] - two[k]).abs().max())


RSS_PROBE = """
import sys, numpy as np
from edge_glass.features.dataset import FeatureSplit
data = FeatureSplit(sys.argv[1] + "/features", sys.argv[1] + "/download/manifest.parquet", "train")
for start in range(0, len(data), 64):  # touch every item's features once
    data.batch(np.arange(start, min(start + 64, len(data))))
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")][0])
"""


@pytest.mark.slow
def test_align_memory_stays_flat_as_items_grow(tmp_path):
    """8x the items (1.3 GB more features on disk) must not raise anonymous RSS by more than 100 MB."""
    rss = {}
    for n in (500, 4000):
        write_synthetic(tmp_path / str(n), n, shard_size=256)
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(tmp_path / str(n))], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        rss[n] = int(out.stdout.strip()) / 1024  # MB
    feature_mb = sum(p.stat().st_size for p in (tmp_path / "4000").rglob("*.safetensors")) / 2**20
    assert feature_mb > 700
    assert rss[4000] - rss[500] < 100, rss


@pytest.fixture(scope="module")
def initial_state(synthetic):
    """The shipped recipe's initial model (PCA head, ridge linear path: the slow part), built once on the CPU."""
    from edge_glass.align import build_model

    data = FeatureSplit(synthetic["features"], synthetic["manifest"], "train")
    return build_model(parse_params(shipped_params()).align, data, 0).state_dict()


def steps_and_val_embeddings(synthetic, initial_state, device: str, precision: str = "fp32", seed: int = 0,
                             steps: int = 2):
    """Training steps of the shipped recipe from one initial model on ``device`` (``seed``: batches and
    dropout): the losses, the val embeddings (on the CPU) and the val recalls of the top MRL dim."""
    from edge_glass.align import make_optimizer, train_step
    from edge_glass.metrics.retrieval import embed_split, trained_recalls
    from edge_glass.models.aligner import AlignModel
    from edge_glass.train.distributed import DistInfo

    params = parse_params(shipped_params(precision=precision, seed=seed))
    data = FeatureSplit(synthetic["features"], synthetic["manifest"], "train")
    val = FeatureSplit(synthetic["features"], synthetic["manifest"], "val")
    info = DistInfo(0, 1, torch.device(device))
    model = AlignModel(params.align, data.token_dims, data.text_dim)
    model.load_state_dict(initial_state)
    model.heads["text"].requires_grad_(not params.align.freeze_text_head)
    model = model.to(info.device)
    opt = make_optimizer(model, params.align)
    losses = [train_step(model, opt, data, step, params, info)["loss"] for step in range(steps)]
    model.eval()
    with torch.no_grad():
        emb = embed_split(model, val)
        recalls = trained_recalls(model, val, dims=[256], ks=[1, 5])[256]
    return losses, emb, recalls


def assert_runs_match(got, ref, loss_rtol: float, min_cosine: float) -> None:
    """Same losses (to ``loss_rtol``), every val embedding within ``min_cosine`` of the reference's, and
    every val R@K within two queries of it (near-ties may flip under other rounding)."""
    (losses, emb, recalls), (ref_losses, ref_emb, ref_recalls) = got, ref
    assert np.allclose(losses, ref_losses, rtol=loss_rtol, atol=0), (losses, ref_losses)
    assert emb.keys() == ref_emb.keys()
    for m, (z, ids) in emb.items():
        assert ids == ref_emb[m][1]
        cos = torch.nn.functional.cosine_similarity(z, ref_emb[m][0], dim=-1)
        assert cos.min() >= min_cosine, (m, float(cos.min()))
    for task, r in recalls.items():
        n = len(ref_emb["text"][1]) if task.startswith("text_to") else len(ref_emb[task.split("_to_")[0]][1])
        for k, v in r.items():
            assert abs(v - ref_recalls[task][k]) <= 2 / n + 1e-9, (task, k, v, ref_recalls[task][k])


@pytest.mark.slow
def test_run_comparison_tells_other_runs_apart(synthetic, initial_state):
    """What the CUDA test asserts holds for two CPU runs and fails for a run of other batches and dropout."""
    ref = steps_and_val_embeddings(synthetic, initial_state, "cpu")
    assert_runs_match(steps_and_val_embeddings(synthetic, initial_state, "cpu"), ref, 1e-6, 0.99999)
    with pytest.raises(AssertionError):
        assert_runs_match(steps_and_val_embeddings(synthetic, initial_state, "cpu", seed=1), ref, 2e-3, 0.999)


@requires_cuda
def test_cuda_training_steps_and_evaluation_match_the_cpu(synthetic, initial_state):
    """Training steps, val embeddings and recalls on CUDA equal the CPU's: to TF32 rounding at fp32, to
    bf16 rounding under the default autocast."""
    ref = steps_and_val_embeddings(synthetic, initial_state, "cpu")
    assert_runs_match(steps_and_val_embeddings(synthetic, initial_state, "cuda", "fp32"), ref, 2e-3, 0.999)
    assert_runs_match(steps_and_val_embeddings(synthetic, initial_state, "cuda", "auto"), ref, 3e-2, 0.98)


def test_device_rule_names_the_key():
    from edge_glass.core.device import resolve_device, resolve_precision
    from edge_glass.core.errors import ParamsError

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ParamsError, match="align.device=cuda: CUDA is not available"):
            resolve_device("cuda", "align.device")
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cuda", 0)) == torch.bfloat16


@pytest.fixture
def kernel_flags(monkeypatch):
    """Restore torch's global kernel switches (and CUBLAS_WORKSPACE_CONFIG) after a test sets them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.utils.deterministic.fill_uninitialized_memory) = saved[2:]


def test_configure_kernels_makes_cuda_deterministic_and_leaves_the_cpu_alone(kernel_flags):
    from edge_glass.core.device import configure_kernels

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    configure_kernels(torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    # The CUDA branch only sets flags and an environment variable, so it can be checked without a GPU.
    configure_kernels(torch.device("cuda", 0))
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"  # a user's own setting is kept
    configure_kernels(torch.device("cuda", 0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@requires_cuda
def test_configured_cuda_sums_repeat_bit_for_bit(kernel_flags):
    """index_add_ with repeated indices is an atomic-add race on CUDA unless deterministic kernels are on."""
    from edge_glass.core.device import configure_kernels

    configure_kernels(torch.device("cuda", 0))
    gen = torch.Generator(device="cuda").manual_seed(0)
    values = torch.randn(1 << 20, 64, device="cuda", generator=gen)
    index = torch.randint(0, 16, (1 << 20,), device="cuda", generator=gen)
    runs = [torch.zeros(16, 64, device="cuda").index_add_(0, index, values) for _ in range(5)]
    assert all(torch.equal(runs[0], run) for run in runs[1:])


@pytest.mark.slow
def test_gpu_smoke_script_runs_every_stage_on_the_cpu(tmp_path):
    """benchmarks/gpu_smoke.sh is the device check; CI runs it with --device cpu at tiny sizes:
    smoke media + random-weight models -> download -> preprocess -> align -> decode -> evaluate, then
    the preprocess, decode and align benchmarks."""
    env = {**os.environ, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    committed = {p: p.read_bytes() for p in sorted((REPO / "metrics").rglob("*")) if p.is_file()}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_smoke.sh"), "--device", "cpu", "--tiny", "--items", "48",
                           "--bench-items", "300", "--steps", "4", "--bench-steps", "2", "--batch", "32", "--workers", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "smoke_stages device=cpu" in proc.stdout
    assert {p: p.read_bytes() for p in committed} == committed  # it writes nothing into the repository's metrics/
    pre = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert {m: pre[m]["encoded"] for m in ("image", "audio")} == {"image": 48, "audio": 48} and pre["text"]["encoded"] == 96
    captions = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert captions["items"] > 0 and "CIDEr-D" in captions
    assert json.loads((tmp_path / "out" / "retrieval.json").read_text())["trained"]["image_to_text"]["R@1"] >= 0
    lines = proc.stdout.splitlines()
    assert any(line.startswith("preprocess_bench image=") for line in lines)
    assert any(line.startswith("decode_bench gen_speedup=") and "identical=True" in line for line in lines)
    bench = [line for line in lines if line.startswith("align_bench ")]
    assert [b.split("pool=")[1].split()[0] for b in bench] == ["mean", "perceiver"]


def test_a_split_without_usable_items_is_a_data_error(tmp_path):
    """No test items at all (split fractions that leave test empty) stops with a DataError (exit 3, one
    line) that says how many items the manifest has and why they were left out, not a bare ValueError."""
    from edge_glass.core.errors import DataError

    paths = write_synthetic(tmp_path, 40, shard_size=16, split=(0.9, 0.1))  # nothing left for test
    with pytest.raises(DataError, match=r"no test items with captions and media features .*\(0 test items"):
        FeatureSplit(paths["features"], paths["manifest"], "test")
    assert len(FeatureSplit(paths["features"], paths["manifest"], "train")) > 0
