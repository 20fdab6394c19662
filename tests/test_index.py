"""python -m edge_glass.index / search: rejects with reasons, counts that reconcile, shard resume, the model check.

Most tests use a stand-in model with the project's real media checks (tests/helpers/gallery.py), so the
index format's logic is tested in seconds; the real model's end-to-end tests are at the bottom.
"""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from helpers.gallery import FakeModel, gallery_folder, png

from edge_glass.core.errors import DataError
from edge_glass.gallery.search import Gallery, exact_topk
from edge_glass.index import run_index
from edge_glass.search import format_results, run_search


def rejects(index_dir):
    with open(index_dir / "rejects.csv") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def test_bad_files_are_rejects_with_reasons_and_counts_reconcile(tmp_path):
    root, bad = gallery_folder(tmp_path)
    info = run_index(FakeModel(), str(root), tmp_path / "idx", shard_size=3, batch_size=2, progress=False)
    c = info["counts"]
    assert c["found"] == c["indexed"] + c["rejected"] == 4 + 1 + len(bad)
    assert c["indexed_by_modality"] == {"audio": 1, "image": 4}
    assert c["ignored"] == 1  # readme.txt
    got = rejects(tmp_path / "idx")
    assert set(got) == set(bad)
    for path, reason in bad.items():
        assert reason in got[path], (path, got[path])
    rows = pd.read_parquet(tmp_path / "idx" / "rows.parquet")
    assert sorted(rows["path"]) == ["photos/2024/img1.PNG", "photos/2024/img3.PNG", "photos/img0.PNG",
                                    "photos/img2.PNG", "sounds/tone.wav"]
    assert not any("secret" in p for p in rows["path"])  # nothing outside the root was read
    on_disk = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert on_disk["model_fingerprint"] == "fake-model-1" and on_disk["dim"] == 16 and on_disk["dims"] == [16, 8]


def test_embeddings_are_the_models_for_each_file(tmp_path):
    root, _ = gallery_folder(tmp_path)
    model = FakeModel()
    run_index(model, str(root), tmp_path / "idx", shard_size=2, batch_size=3, progress=False)
    g = Gallery(tmp_path / "idx")
    for i, path in enumerate(g.rows["path"]):
        kind = g.rows["modality"][i]
        want = model.embed_loaded(kind, [model.load_media(kind, (root / path).read_bytes())])[0]
        np.testing.assert_allclose(g.embeddings[i], want, atol=1e-6)


def test_resume_after_deleting_one_shard_re_embeds_only_it(tmp_path):
    root, _ = gallery_folder(tmp_path, images=7)
    first = FakeModel()
    run_index(first, str(root), tmp_path / "idx", shard_size=3, progress=False)
    before = Gallery(tmp_path / "idx")
    shards = sorted((tmp_path / "idx" / "shards").iterdir())
    assert len(shards) >= 3
    meta_rows = before.rows[before.rows["shard"] == 1]
    shards[1].unlink()
    again = FakeModel()
    info = run_index(again, str(root), tmp_path / "idx", shard_size=3, progress=False)
    assert info["counts"]["resumed_shards"] == len(shards) - 1
    assert len(again.embedded) == len(meta_rows)  # only shard 1's media went through the model again
    after = Gallery(tmp_path / "idx")
    pd.testing.assert_frame_equal(before.rows, after.rows)
    np.testing.assert_array_equal(before.embeddings, after.embeddings)


def test_changed_file_or_model_re_embeds(tmp_path):
    root, _ = gallery_folder(tmp_path)
    run_index(FakeModel(), str(root), tmp_path / "idx", shard_size=100, progress=False)
    (root / "photos" / "img0.PNG").write_bytes(png(1000))
    m = FakeModel()
    assert run_index(m, str(root), tmp_path / "idx", shard_size=100, progress=False)["counts"]["resumed_shards"] == 0
    other = FakeModel("fake-model-2")
    run_index(other, str(root), tmp_path / "idx", shard_size=100, progress=False)
    assert len(other.embedded) == 5


def test_a_killed_build_is_unfinished_then_resumes(tmp_path):
    root, _ = gallery_folder(tmp_path, images=6)

    class Dies(FakeModel):
        def embed_loaded(self, modality, inputs, dim=None):
            if len(self.embedded) >= 4:
                raise KeyboardInterrupt
            return super().embed_loaded(modality, inputs, dim)

    with pytest.raises(KeyboardInterrupt):
        run_index(Dies(), str(root), tmp_path / "idx", shard_size=2, batch_size=2, progress=False)
    with pytest.raises(DataError, match="unfinished build"):
        Gallery(tmp_path / "idx")
    m = FakeModel()
    info = run_index(m, str(root), tmp_path / "idx", shard_size=2, batch_size=2, progress=False)
    assert info["counts"]["resumed_shards"] >= 1 and len(m.embedded) == info["counts"]["indexed"] - 4


def test_search_json_lines_and_ranking(tmp_path):
    root, _ = gallery_folder(tmp_path)
    model = FakeModel()
    run_index(model, str(root), tmp_path / "idx", progress=False)
    results = run_search(model, tmp_path / "idx", k=3, image=str(root / "photos" / "img2.PNG"))
    lines = format_results(results, as_json=True).splitlines()
    objs = [json.loads(line) for line in lines]
    assert [list(o) for o in objs] == [["rank", "path", "score"]] * 3
    assert [o["rank"] for o in objs] == [1, 2, 3]
    assert objs[0]["path"] == "photos/img2.PNG" and objs[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert objs[0]["score"] >= objs[1]["score"] >= objs[2]["score"]
    # --dim 8: the MRL prefix, renormalised; the same file still ranks first
    assert run_search(model, tmp_path / "idx", k=1, dim=8, image=str(root / "photos" / "img2.PNG"))[0]["score"] \
        == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match="--dim 12"):
        run_search(model, tmp_path / "idx", dim=12, text="x")


def test_search_refuses_another_models_index(tmp_path):
    root, _ = gallery_folder(tmp_path)
    run_index(FakeModel("model-a"), str(root), tmp_path / "idx", progress=False)
    with pytest.raises(DataError, match="indexed by another model"):
        run_search(FakeModel("model-b"), tmp_path / "idx", text="a cat")


def test_ann_index_is_built_and_searched(tmp_path):
    pytest.importorskip("faiss")
    root, _ = gallery_folder(tmp_path, images=6)
    model = FakeModel()
    info = run_index(model, str(root), tmp_path / "idx", ann=True, progress=False)
    assert info["ann"]["kind"] == "faiss-hnsw"
    g = Gallery(tmp_path / "idx")
    s_exact, i_exact = g.search(g.embeddings[:3], 4)
    s_ann, i_ann = g.search(g.embeddings[:3], 4, ann=True)
    np.testing.assert_array_equal(i_ann, i_exact)  # a graph over 7 items is exhaustive
    with pytest.raises(DataError, match="dim 16 only"):
        g.search(g.embeddings[:1, :8], 4, dim=8, ann=True)
    run_index(model, str(root), tmp_path / "plain", progress=False)
    with pytest.raises(DataError, match="no approximate index"):
        Gallery(tmp_path / "plain").search(g.embeddings[:1], 2, ann=True)


def test_split_source_lists_the_workspace_media(small_download, tmp_path):
    root, _, _ = small_download
    model = FakeModel()
    info = run_index(model, "split:train", tmp_path / "idx", workspace=root, progress=False)
    manifest = pd.read_parquet(root / "data" / "download" / "manifest.parquet")
    train = manifest[manifest["split"] == "train"]
    n_media = int(train["image_shard"].notna().sum() + train["audio_shard"].notna().sum())
    assert info["counts"]["found"] == n_media == info["counts"]["indexed"] + info["counts"]["rejected"]
    g = Gallery(tmp_path / "idx")
    assert set(g.rows["item_id"]) <= set(train["item_id"])
    assert all("#" in p and p.startswith("media/") for p in g.rows["path"])
    with pytest.raises(DataError, match="has splits"):
        run_index(model, "split:nope", tmp_path / "idx2", workspace=root, progress=False)


def test_local_entry_source_uses_the_formats_own_checks(tmp_path):
    import yaml

    from edge_glass.tools import sample_datasets as sd

    ws = tmp_path / "ws"
    ws.mkdir()
    coco = sd.write_coco(ws / "raw" / "coco", 6)
    media_root = ws / "raw" / "coco" / "val2017"
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png(5))
    data = json.loads(coco.read_text())
    data["images"].append({"id": 999, "file_name": "../../../../elsewhere.png"})
    data["annotations"].append({"id": 999, "image_id": 999, "caption": "a thing outside"})
    coco.write_text(json.dumps(data))
    (ws / "params.yaml").write_text(yaml.safe_dump({"download": {"sources": [], "local": [
        {"name": "mine", "format": "coco", "path": str(coco.relative_to(ws)), "media_root": str(media_root.relative_to(ws))}]}}))
    info = run_index(FakeModel(), "mine", tmp_path / "idx", workspace=ws, progress=False)
    c = info["counts"]
    assert c["found"] == c["indexed"] + c["rejected"] and c["indexed"] >= 5
    assert any("escapes media_root" in r for r in rejects(tmp_path / "idx").values())
    g = Gallery(tmp_path / "idx")
    assert all((media_root / p).is_file() for p in g.rows["path"])
    with pytest.raises(DataError, match="neither a folder nor a download.local entry"):
        run_index(FakeModel(), "other", tmp_path / "idx3", workspace=ws, progress=False)


def test_chunked_search_on_an_index_equals_brute_force(tmp_path):
    root, _ = gallery_folder(tmp_path, images=9)
    run_index(FakeModel(), str(root), tmp_path / "idx", shard_size=4, progress=False)
    g = Gallery(tmp_path / "idx")
    q = g.embeddings[[0, 3]]
    s, i = exact_topk(q, g.embeddings, 5, chunk=3)
    brute = q @ g.embeddings.T
    np.testing.assert_array_equal(i, np.argsort(-brute, axis=1)[:, :5])


# the real model, end to end through the commands ------------------------------------------------------

def run_cli(module, *args, env_extra=None):
    import os
    import subprocess
    import sys

    from helpers.setup import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def other_model(workspace, out):
    """A copy of the workspace whose align weights differ slightly: another model, another fingerprint."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(workspace, out, symlinks=True)
    weights = out / "data" / "align" / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3
    save_file(state, str(weights))
    return out


@pytest.mark.slow
def test_index_and_search_commands_with_the_real_model(tiny_workspace, tmp_path):
    import edge_glass

    root, bad = gallery_folder(tmp_path)
    out = run_cli("edge_glass.index", root, "--out", tmp_path / "idx", "--model", tiny_workspace, "--shard-size", 3,
                  "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "9 found = 5 indexed + 4 rejected" in out.stderr and "1 other files ignored" in out.stderr, out.stderr
    got = rejects(tmp_path / "idx")
    assert set(got) == set(bad), got
    for path, reason in bad.items():
        assert reason in got[path], (path, got[path])
    model = edge_glass.load(tiny_workspace)
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert info["model_fingerprint"] == model.fingerprint and info["dim"] == max(model.dims)
    # the index holds the API's embedding of each file
    g = Gallery(tmp_path / "idx")
    for i, path in enumerate(g.rows["path"]):
        embed = model.embed_images if g.rows["modality"][i] == "image" else model.embed_audio
        assert 1 - float(embed([root / path])[0] @ g.embeddings[i]) <= 1e-5, path
    # search: the same image ranks first, JSON lines exactly rank/path/score
    out = run_cli("edge_glass.search", tmp_path / "idx", "--image", root / "photos" / "img2.PNG", "-k", 3, "--json",
                  "--model", tiny_workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    objs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [list(o) for o in objs] == [["rank", "path", "score"]] * 3 and [o["rank"] for o in objs] == [1, 2, 3]
    assert objs[0]["path"] == "photos/img2.PNG" and objs[0]["score"] == pytest.approx(1.0, abs=1e-4)
    out = run_cli("edge_glass.search", tmp_path / "idx", "--text", "a smiling face", "--dim", min(model.dims),
                  "--model", tiny_workspace)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 5, out.stderr[-3000:]
    # another model's search is refused in one line
    other = other_model(tiny_workspace, tmp_path / "other")
    out = run_cli("edge_glass.search", tmp_path / "idx", "--text", "a face", "--model", other)
    assert out.returncode == 3 and "indexed by another model" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # a query file that cannot be used: one line naming it
    out = run_cli("edge_glass.search", tmp_path / "idx", "--image", root / "photos" / "notes.png", "--model", tiny_workspace)
    assert out.returncode == 3 and "notes.png" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_search_command_refuses_bad_k_and_a_missing_ann_before_loading_a_model(tmp_path):
    """The index answers these: one line naming the fault, and no model is loaded (--model names none)."""
    root, _ = gallery_folder(tmp_path)
    run_index(FakeModel(), str(root), tmp_path / "idx", progress=False)
    for args, want in ((["-k", 0], "-k must be >= 1"), (["--ann"], "has no approximate index")):
        out = run_cli("edge_glass.search", tmp_path / "idx", "--text", "a cat", "--model", tmp_path / "no-model", *args)
        assert out.returncode != 0 and want in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "no-model" not in out.stderr
