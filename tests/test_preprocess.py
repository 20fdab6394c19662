import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.run_if import requires_cuda
from helpers.setup import REPO

from edge_glass.config import parse_params
from edge_glass.data.manifest import media_ref, read_manifest
from edge_glass.features.store import FeatureStore, read_shard
from edge_glass.preprocess import run_preprocess


def stage(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "preprocess.py")], cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def shard_bytes(features: Path) -> dict[str, bytes]:
    return {str(p.relative_to(features)): p.read_bytes() for p in sorted(features.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def features(small_download, tmp_path_factory):
    root, raw, _ = small_download
    out = tmp_path_factory.mktemp("features")
    stats = run_preprocess(parse_params(raw), root / "data" / "download" / "manifest.parquet", out)
    return root, out, stats


def test_features_cover_manifest_with_token_and_pooled_shards(features):
    root, out, stats = features
    manifest = read_manifest(root / "data" / "download" / "manifest.parquet")
    n_captions = sum(len(c) for c in manifest.captions)
    assert stats["image"]["encoded"] == manifest.image_shard.notna().sum() == 12
    assert stats["audio"]["encoded"] == manifest.audio_shard.notna().sum() == 24
    assert stats["text"]["encoded"] == n_captions
    enc = json.loads((out / "encoders.json").read_text())
    assert enc["image"]["name"] == "efficientnet-lite0" and enc["image"]["token_dim"] == 1280
    assert enc["audio"]["weights"]["model.bin"] and enc["text"]["pooled_dim"] == 384

    image = FeatureStore(out / "image")
    assert (image.index.n_tokens == 49).all()
    shard = read_shard(out / "image" / "shard-00000.safetensors")
    assert shard.tokens.dtype == torch.float16 and shard.pooled.shape == (8, 1280)
    # pooled image feature is the mean of its tokens
    first = image.index.id.iloc[0]
    assert torch.allclose(image.tokens(first).float().mean(0), shard.pooled[0].float(), atol=2e-2)

    audio = FeatureStore(out / "audio")
    durations = manifest.set_index("item_id").audio_duration_s
    for row in audio.index.itertuples():  # 50 Hz encoder states pooled by 2: about 25 tokens per second
        assert abs(row.n_tokens - durations[row.item_id] * 25) <= 2
    text = FeatureStore(out / "text")
    assert text.index.id.str.contains("#").all()
    ids, pooled = text.pooled()
    assert pooled.shape == (n_captions, 384) and torch.allclose(pooled.float().norm(dim=1), torch.ones(n_captions), atol=1e-2)


def test_rerun_resumes_every_finished_shard(features, tmp_path):
    root, out, _ = features
    copy = tmp_path / "features"
    shutil.copytree(out, copy)
    before = shard_bytes(copy)
    stats = run_preprocess(parse_params(json.loads(json.dumps(_raw(root)))), root / "data" / "download" / "manifest.parquet", copy)
    assert all(s["resumed_shards"] == s["shards"] for s in stats.values())
    assert shard_bytes(copy) == before


def test_changed_encoder_code_or_dtype_recomputes_shards(features, tmp_path, monkeypatch):
    import edge_glass.preprocess as pre

    root, out, _ = features
    copy = tmp_path / "features"
    shutil.copytree(out, copy)
    manifest = root / "data" / "download" / "manifest.parquet"
    raw = _raw(root)
    raw["preprocess"]["modalities"] = ["text"]
    monkeypatch.setattr(pre, "code_fingerprint", lambda: "other code")
    stats = run_preprocess(parse_params(raw), manifest, copy)
    assert stats["text"]["resumed_shards"] == 0
    assert not (copy / "image").exists() and not (copy / "audio").exists()  # modalities no longer asked for
    monkeypatch.undo()
    raw["preprocess"]["dtype"] = "float32"
    stats = run_preprocess(parse_params(raw), manifest, copy)
    assert stats["text"]["resumed_shards"] == 0
    assert read_shard(copy / "text" / "shard-00000.safetensors").pooled.dtype == torch.float32


def test_precision_change_reencodes_every_shard_and_same_settings_reuse(features, tmp_path):
    """preprocess.precision is in the shard fingerprint as the *resolved* autocast dtype: bf16 on the CPU
    re-encodes every shard (and encoders.json, which align's fingerprint hashes, records it); the same
    settings again reuse every shard; back to auto (fp32 here) re-encodes to the original bytes."""
    root, out, _ = features
    copy = tmp_path / "features"
    shutil.copytree(out, copy)
    manifest = root / "data" / "download" / "manifest.parquet"
    raw = _raw(root)
    raw["preprocess"]["modalities"] = ["text"]  # the cheapest encoder; every encoder shares the fingerprint
    original = shard_bytes(copy / "text")
    encoders_before = json.loads((copy / "encoders.json").read_text())["text"]
    assert (encoders_before["device"], encoders_before["autocast"]) == ("cpu", "float32")
    bf16 = json.loads(json.dumps(raw))
    bf16["preprocess"]["precision"] = "bf16"
    stats = run_preprocess(parse_params(bf16), manifest, copy)
    assert stats["text"]["resumed_shards"] == 0 and stats["text"]["shards"] > 1
    assert json.loads((copy / "encoders.json").read_text())["text"]["autocast"] == "bfloat16"
    reencoded = shard_bytes(copy / "text")
    assert all(reencoded[k] != original[k] for k in original if k.startswith("shard-"))
    again = run_preprocess(parse_params(bf16), manifest, copy)
    assert again["text"]["resumed_shards"] == again["text"]["shards"] and shard_bytes(copy / "text") == reencoded
    back = run_preprocess(parse_params(raw), manifest, copy)
    assert back["text"]["resumed_shards"] == 0 and shard_bytes(copy / "text") == original


def test_fingerprint_holds_the_resolved_device_and_autocast():
    """``precision: auto`` resolves to bf16 on CUDA and fp32 on the CPU: the same params, other numbers."""
    from edge_glass.core.device import resolve_precision
    from edge_glass.encoders.base import EncoderInfo, FrozenEncoder
    from edge_glass.preprocess import encoder_fingerprint

    def placed(device: str) -> FrozenEncoder:
        enc = FrozenEncoder()
        enc.info = EncoderInfo("text", "fake", 4, 4, {"state_dict": "0" * 64})
        enc.device = torch.device(device)  # set, not moved: no GPU needed to build the fingerprint
        enc.precision = resolve_precision("auto", enc.device)
        return enc

    cpu, cuda = placed("cpu"), placed("cuda")
    assert encoder_fingerprint(cpu, "float16") == encoder_fingerprint(placed("cpu"), "float16")
    assert encoder_fingerprint(cpu, "float16") != encoder_fingerprint(cuda, "float16")
    cuda_fp32 = placed("cuda")
    cuda_fp32.precision = torch.float32
    assert encoder_fingerprint(cuda, "float16") != encoder_fingerprint(cuda_fp32, "float16")  # autocast alone
    assert encoder_fingerprint(cpu, "float16") != encoder_fingerprint(cpu, "float32")


def test_changed_caption_or_medium_under_the_same_id_reencodes_only_its_shard(features, tmp_path):
    """The fingerprint holds each input's content: an edited caption or a replaced image under the same
    item id re-encodes the shard that holds it (with the new input's features); the other shards are reused."""
    import pyarrow.parquet as pq

    root, out, _ = features
    data = tmp_path / "data"
    shutil.copytree(root / "data" / "download", data / "download")
    shutil.copytree(out, data / "features")
    manifest_path = data / "download" / "manifest.parquet"
    manifest = read_manifest(manifest_path)
    images = manifest.index[manifest.image_shard.notna()]
    a, b = images[0], images[1]  # first image shard (8 images): swap the first two items' images
    media_cols = [c for c in manifest.columns if c.startswith("image_")]
    manifest.loc[[a, b], media_cols] = manifest.loc[[b, a], media_cols].to_numpy()
    last = manifest.index[-1]
    manifest.at[last, "captions"] = ["a caption that no encoder has seen"] + list(manifest.at[last, "captions"])[1:]
    table = pq.read_table(root / "data" / "download" / "manifest.parquet")
    pq.write_table(pa_table(manifest, table.schema), manifest_path)
    raw = _raw(root)
    raw["preprocess"]["modalities"] = ["image", "text"]
    before_image, before_text = FeatureStore(out / "image"), FeatureStore(out / "text")
    stats = run_preprocess(parse_params(raw), manifest_path, data / "features")
    assert stats["image"]["resumed_shards"] == stats["image"]["shards"] - 1 and stats["image"]["shards"] >= 2
    assert stats["text"]["resumed_shards"] == stats["text"]["shards"] - 1 and stats["text"]["shards"] >= 2
    image = FeatureStore(data / "features" / "image")
    ida, idb = manifest.item_id[a], manifest.item_id[b]
    assert torch.allclose(image.tokens(ida).float(), before_image.tokens(idb).float(), atol=1e-2)
    text = FeatureStore(data / "features" / "text")
    changed = f"{manifest.item_id[last]}#0"
    assert not torch.allclose(text.tokens(changed).float().mean(0), before_text.tokens(changed).float().mean(0), atol=1e-2)


def pa_table(frame: pd.DataFrame, schema):
    import pyarrow as pa

    return pa.Table.from_pandas(frame.reset_index(drop=True), schema=schema, preserve_index=False)


def _raw(root):
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())


def copy_of_small_run(small_download, features, tmp_path) -> tuple[Path, Path]:
    """A copy of the small download + params to run the stage in, and the reference features folder."""
    root, _, _ = small_download
    work = tmp_path / "run"
    shutil.copytree(root / "data", work / "data")
    shutil.copy(root / "params.yaml", work / "params.yaml")
    return work, features[1]


def test_kill_9_then_resume_gives_byte_identical_shards(small_download, features, tmp_path):
    work, reference = copy_of_small_run(small_download, features, tmp_path)
    proc = stage(work)
    target = work / "data" / "features" / "image" / "shard-00000.safetensors"
    deadline = time.time() + 120
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the stage never finished a shard"
    assert not (work / "data" / "features" / "text" / "index.parquet").exists(), "killed too late to test resume"
    resumed = subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py")], cwd=work, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((work / "metrics" / "preprocess.json").read_text())
    assert metrics["image"]["resumed_shards"] >= 1
    assert shard_bytes(work / "data" / "features") == shard_bytes(reference)


def test_media_broken_after_download_is_quarantined(small_download, tmp_path):
    root, raw, _ = small_download
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    manifest = read_manifest(data / "download" / "manifest.parquet")
    img = media_ref(manifest[manifest.image_shard.notna()].iloc[3], "image")
    wav = media_ref(manifest[manifest.audio_shard.notna()].iloc[5], "audio")
    for ref in (img, wav):  # garbage over the member's bytes inside its tar shard, same length
        with open(data / "download" / ref.shard, "r+b") as f:
            f.seek(ref.offset)
            f.write(b"\0" * ref.size)
    stats = run_preprocess(parse_params(raw), data / "download" / "manifest.parquet", data / "features")
    rejects = pd.read_csv(data / "features" / "rejects.csv")
    assert stats["image"]["rejected"] == 1 and stats["audio"]["rejected"] == 1
    assert stats["image"]["encoded"] + 1 == stats["image"]["items"]
    reasons = dict(zip(rejects.modality, rejects.reason))
    assert reasons["image"].startswith("image decode failed")
    assert reasons["audio"].startswith("audio decode failed")
    assert len(FeatureStore(data / "features" / "image").index) == stats["image"]["encoded"]


def test_two_ranks_write_their_own_shards_and_match_one_process(small_download, features, tmp_path):
    """torchrun --nproc_per_node=2: shards split by rank, rank 0 indexes them; same bytes as one process."""
    work, reference = copy_of_small_run(small_download, features, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "stages" / "preprocess.py")], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1/2" in proc.stderr  # rank 1 encoded shards too
    metrics = json.loads((work / "metrics" / "preprocess.json").read_text())
    assert all(m["resumed_shards"] == m["shards"] for m in metrics.values())  # rank 0's pass found them all done
    assert shard_bytes(work / "data" / "features") == shard_bytes(reference)


def test_dataloader_workers_write_the_same_shards_as_one_loader_thread(small_download, features, tmp_path):
    """preprocess.num_workers=2 decodes media in two processes; the shards are byte-identical."""
    root, raw, _ = small_download
    _, reference, stats = features
    out = tmp_path / "features"
    workers = parse_params({**raw, "preprocess": {**raw.get("preprocess", {}), "num_workers": 2}})
    got = run_preprocess(workers, root / "data" / "download" / "manifest.parquet", out)
    assert {m: s["encoded"] for m, s in got.items()} == {m: s["encoded"] for m, s in stats.items()}
    assert shard_bytes(out) == shard_bytes(reference)


def test_loader_workers_deliver_batches_in_job_order_with_rejects(tmp_path):
    from edge_glass.encoders.base import FrozenEncoder
    from edge_glass.preprocess import WorkItem, loaded_batches

    class Upper(FrozenEncoder):
        def loader(self):
            return _upper_or_reject

    jobs = [[WorkItem(f"{j}-{i}", f"{j}-{i}", f"text {j} {i}") for i in range(3)] for j in range(7)]
    jobs[4][1].source = "bad"
    for workers in (0, 3):
        with loaded_batches(Upper(), jobs, workers) as batches:
            got = list(batches)
        assert [[it.id for it, _, _ in b] for b in got] == [[it.id for it in job] for job in jobs]
        assert got[4][1][1:] == (None, "unreadable: bad") and got[0][2][1] == "TEXT 0 2"


def _upper_or_reject(text: str) -> str:
    from edge_glass.core.errors import MediaError

    if text == "bad":
        raise MediaError("unreadable: bad")
    return text.upper()


def assert_features_match(got: Path, reference: Path, min_cosine: float) -> None:
    """Same ids, token counts and shard layout as ``reference``; every pooled feature and every item's
    tokens within ``min_cosine`` of the reference's (the CPU run's)."""
    for modality in ("image", "audio", "text"):
        ref, new = FeatureStore(reference / modality), FeatureStore(got / modality)
        assert new.index.equals(ref.index), modality
        _, ref_pooled = ref.pooled()
        _, new_pooled = new.pooled()
        cos = torch.nn.functional.cosine_similarity(new_pooled.float(), ref_pooled.float(), dim=-1)
        assert cos.min() >= min_cosine, (modality, float(cos.min()))
        for i in ref.index.id:
            tok = torch.nn.functional.cosine_similarity(new.tokens(i).float(), ref.tokens(i).float(), dim=-1)
            assert tok.mean() >= min_cosine, (modality, i, float(tok.mean()))


def test_feature_comparison_tells_other_features_apart(features, tmp_path):
    """The CUDA test's comparison passes on the CPU run itself and fails on features of other weights."""
    root, out, _ = features
    assert_features_match(out, out, 0.9999)
    other = tmp_path / "random"
    raw = _raw(root)
    raw["preprocess"].update(modalities=["image"])
    raw["preprocess"]["vision"]["weights"] = "random"
    run_preprocess(parse_params(raw), root / "data" / "download" / "manifest.parquet", other)
    for m in ("audio", "text"):
        shutil.copytree(out / m, other / m)
    with pytest.raises(AssertionError, match="image"):
        assert_features_match(other, out, 0.95)


@requires_cuda
def test_encoders_on_cuda_match_the_cpu_features(small_download, features, tmp_path):
    """Every encoder on CUDA, media decoded in worker processes: the same items and token counts as the
    CPU run, features within TF32 error of it at fp32, within bf16 error at the default precision."""
    root, raw, _ = small_download
    _, reference, cpu_stats = features
    manifest = root / "data" / "download" / "manifest.parquet"
    for precision, min_cosine in (("fp32", 0.999), ("auto", 0.98)):
        params = parse_params({**raw, "preprocess": {**raw.get("preprocess", {}), "device": "cuda", "num_workers": 2,
                                                      "precision": precision}})
        out = tmp_path / precision
        stats = run_preprocess(params, manifest, out)
        assert {m: s["encoded"] for m, s in stats.items()} == {m: s["encoded"] for m, s in cpu_stats.items()}
        encoders = json.loads((out / "encoders.json").read_text())
        assert {encoders[m]["device"] for m in stats} == {"cuda"}
        assert {encoders[m]["autocast"] for m in stats} == {"float32" if precision == "fp32" else "bfloat16"}
        assert_features_match(out, reference, min_cosine)
