import errno

import pytest
import torch

import edge_glass.features.store as store
from edge_glass.core.errors import OutputError
from edge_glass.core.io import atomic_path, read_metadata
from edge_glass.features.store import (
    FeatureStore,
    plan_shards,
    read_shard,
    write_index,
    write_shard,
)


def _tokens(lengths, dim=6):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, dim, generator=g) for n in lengths]


def test_shard_roundtrip_keeps_variable_lengths(tmp_path):
    ids = ["a", "b", "c"]
    toks = _tokens([3, 1, 5])
    pooled = torch.stack([t.mean(0) for t in toks])
    path = tmp_path / "shard-00000.safetensors"
    write_shard(path, ids, toks, pooled, torch.float32, {"fingerprint": "f"})
    shard = read_shard(path)
    assert shard.ids == ids and shard.offsets.tolist() == [0, 3, 4, 9]
    for row, t in enumerate(toks):
        assert torch.equal(shard.item_tokens(row), t)
    assert read_metadata(path)["fingerprint"] == "f"
    write_index(tmp_path, [{"id": i, "item_id": i, "shard": 0, "row": r, "n_tokens": len(t)} for r, (i, t) in enumerate(zip(ids, toks))])
    assert torch.equal(FeatureStore(tmp_path).tokens("c"), toks[2])


def test_same_inputs_give_identical_bytes(tmp_path):
    toks = _tokens([2, 4])
    for name in ("x", "y"):
        write_shard(tmp_path / name, ["p", "q"], toks, torch.ones(2, 6), torch.float16, {"fingerprint": "f", "modality": "text", "z": [1]})
    assert (tmp_path / "x").read_bytes() == (tmp_path / "y").read_bytes()


def test_plan_shards_is_stable_chunks():
    assert plan_shards(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_disk_full_while_writing_leaves_no_partial_shard(tmp_path, monkeypatch):
    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_file", full_disk)
    path = tmp_path / "shard-00000.safetensors"
    with pytest.raises(OutputError, match="cannot write .*shard-00000.safetensors: No space left on device"):
        write_shard(path, ["a"], _tokens([2]), torch.zeros(1, 6), torch.float16, {})
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_not_taken_as_finished(tmp_path):
    path = tmp_path / "shard-00000.safetensors"
    write_shard(path, ["a"], _tokens([2]), torch.zeros(1, 6), torch.float16, {"fingerprint": "f"})
    path.write_bytes(path.read_bytes()[:40])
    assert read_metadata(path) is None


def test_output_under_a_file_gives_clear_error(tmp_path):
    blocker = tmp_path / "features"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot create output directory"):
        with atomic_path(blocker / "image" / "index.parquet"):
            pass
