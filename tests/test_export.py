"""python -m edge_glass.export: a self-contained model folder from a workspace after `dvc repro`.

The workspace is a tiny real one laid out like a DVC workspace (params.yaml, data/download, data/features,
data/align, data/lm, data/decode with the kept decoder, metrics/): the small real download and features,
the tiny align model, the packaged LM converted once, a decoder trained for two steps by the decode stage's
own function, and the repository's committed metrics files (the card reads their format, not their values'
provenance).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from helpers.setup import REPO, TINY_ALIGN

from edge_glass.config import parse_params
from edge_glass.core.errors import EXIT_DATA, OutputError
from edge_glass.export import export_model

pytestmark = pytest.mark.slow

TINY_DECODE = {"kind": "lora_lm", "prefix_tokens": 2, "max_caption_tokens": 12,
               "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2},
               "generate": {"max_new_tokens": 4, "batch_size": 8}}


@pytest.fixture(scope="module")
def workspace(small_download, tiny_align, prepared_lm, tmp_path_factory):
    from edge_glass.decode import run_decode

    root, raw, stats = small_download
    manifest, features, align_dir = tiny_align
    ws = tmp_path_factory.mktemp("workspace")
    params = parse_params({**raw, "seed": 0, "align": TINY_ALIGN, "decode": TINY_DECODE})
    (ws / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    shutil.copytree(root / "data" / "download", ws / "data" / "download")
    shutil.copytree(features, ws / "data" / "features")
    shutil.copytree(align_dir, ws / "data" / "align", ignore=shutil.ignore_patterns("checkpoints"))
    (ws / "data" / "lm").symlink_to(prepared_lm, target_is_directory=True)  # 0.5 GB: linked, as DVC may link it
    run_decode(params, ws / "data/features", ws / "data/download/manifest.parquet", ws / "data/align", ws / "data/lm",
               ws / "data/decode")
    (ws / "metrics").mkdir()
    (ws / "metrics" / "download.json").write_text(json.dumps(stats))  # what the download stage writes
    for name in ("retrieval.json", "captions.json"):
        shutil.copy(REPO / "metrics" / name, ws / "metrics" / name)
    return ws


@pytest.fixture(scope="module")
def exported(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny-model"
    lines = []
    config = export_model(workspace, out, progress=lines.append)
    return out, config, lines


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _run(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_glass.export", *map(str, args)], capture_output=True, text=True,
                          env=_env(**env), timeout=600)


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == EXIT_DATA, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_folder_layout_and_file_hashes(exported, workspace):
    out, config, lines = exported
    assert config["format"] == "edge_glass.model/1"
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(config["files"]) == on_disk - {"config.json"}  # every file written is listed, and nothing else
    for name, digest in config["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert {"align/model.safetensors", "align/model.json", "decoder/decoder.json", "decoder/projector.safetensors",
            "decoder/adapter/adapter_model.safetensors", "lm/config.json", "lm/model.safetensors", "README.md"} <= on_disk
    assert (out / "align/model.safetensors").read_bytes() == (workspace / "data/align/model.safetensors").read_bytes()
    assert json.loads((out / "config.json").read_text()) == config
    assert config["align"] == json.loads((workspace / "data/align/model.json").read_text())
    assert config["lm"]["folder"] == "lm" and config["lm"]["sha256"] == config["files"]["lm/model.safetensors"]
    assert config["decode"]["kind"] == "lora_lm"
    # self-contained: no path of the workspace or of this machine's temp folders in what a loader reads
    for name in ("config.json", "README.md", "align/model.json", "decoder/decoder.json"):
        assert str(workspace) not in (out / name).read_text() and "/tmp/" not in (out / name).read_text(), name
    assert not out.with_name(out.name + ".tmp").exists()
    assert any("align/model.safetensors" in line for line in lines) and "wrote" in lines[-1]


def test_export_loads_after_a_move_with_the_workspace_embeddings(exported, workspace, tmp_path):
    import edge_glass
    from PIL import Image

    out, _, _ = exported
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(out, moved, copy_function=os.link)  # elsewhere; the module's folder stays for the other tests
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    audio = (0.1 * np.sin(np.linspace(0, 2000, 16000))).astype(np.float32)
    texts = ["a red apple", "a smiling face with sunglasses"]
    a, b = edge_glass.load(workspace), edge_glass.load(moved)
    for embed in (lambda m, **k: m.embed_texts(texts, **k), lambda m, **k: m.embed_images([image], **k),
                  lambda m, **k: m.embed_audio([audio], sample_rate=16000, **k),
                  lambda m, **k: m.embed_fused([image], [audio], sample_rate=16000, **k)):
        for kw in ({}, {"dim": 12}):
            ea, eb = embed(a, **kw), embed(b, **kw)
            assert ea.dtype == np.float32 and ea.shape == eb.shape and ea.shape[1] == kw.get("dim", 24)
            np.testing.assert_allclose(ea, eb, atol=1e-6)
    assert a.caption(images=[image], max_new_tokens=4) == b.caption(images=[image], max_new_tokens=4)


def test_model_card_parses_and_names_licences_and_intervals(exported, workspace):
    from huggingface_hub import ModelCard

    out, config, _ = exported
    text = (out / "README.md").read_text()
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "edge_glass" and data["pipeline_tag"] == "feature-extraction"
    assert set(data["datasets"]) == {"openmoji", "asterisk"}
    assert {"recall", "cider"} <= set(data["metrics"]) and "edge_glass" in data["tags"]
    assert data["license"] == "other"  # CC BY-SA 4.0 and 3.0 data, Apache-2.0 and MIT models: no single licence
    retrieval = json.loads((workspace / "metrics/retrieval.json").read_text())
    captions = json.loads((workspace / "metrics/captions.json").read_text())
    i2t = retrieval["trained"]["image_to_text"]
    results = {(r.task_name, r.metric_type): r for r in card.data.eval_results}
    assert results[("image→text retrieval", "recall_at_1")].metric_value == i2t["R@1"]
    assert results[("captioning", "cider-d")].metric_value == captions["CIDEr-D"]
    # the body: intervals as the metrics files give them, every licence, the params, the limits
    assert f"{i2t['R@1']:.3f} [{i2t['R@1_ci95_lo']:.3f}, {i2t['R@1_ci95_hi']:.3f}]" in text
    assert f"{captions['CIDEr-D']:.3f} [{captions['CIDEr-D_ci95_lo']:.3f}, {captions['CIDEr-D_ci95_hi']:.3f}]" in text
    for licence in ("CC-BY-SA-4.0", "CC-BY-SA-3.0", "All emojis designed by OpenMoji", "Apache-2.0", "MIT (OpenAI"):
        assert licence in text, licence
    assert "SmolLM2-135M-Instruct: Apache-2.0" in text
    assert "| audio | whisper | whisper-tiny.en |" in text and "| text | sentence_transformers | all-MiniLM-L6-v2 |" in text
    assert "| image | efficientnet_lite0 |" in text
    assert "num_latents: 4" in text and "kind: lora_lm" in text and "Not for production" in text


def test_zeroshot_metrics_join_the_card_when_present(workspace, tmp_path):
    from edge_glass.api import model_config
    from edge_glass.export import model_card

    ws = tmp_path / "ws"
    ws.mkdir()
    for item in workspace.iterdir():
        (ws / item.name).symlink_to(item, target_is_directory=item.is_dir())
    (ws / "metrics").unlink()
    shutil.copytree(workspace / "metrics", ws / "metrics")
    zs = {"image": {"accuracy": 0.41, "accuracy_ci95_lo": 0.33, "accuracy_ci95_hi": 0.5, "classes": 10}}
    (ws / "metrics/zeroshot.json").write_text(json.dumps(zs))
    text = model_card(ws, model_config(ws), "m")
    assert "| image/accuracy | 0.410 [0.330, 0.500] |" in text and "accuracy" in yaml.safe_load(text.split("---")[1])["metrics"]


def test_non_empty_out_is_refused_and_force_replaces_it(workspace, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _one_line_error(_run("--workspace", workspace, "--out", out))
    assert "not empty" in line and "--force" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    done = _run("--workspace", workspace, "--out", out, "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert "[export] wrote" in done.stdout and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no model.tmp / model.old left behind


def test_out_that_holds_the_workspace_is_refused(workspace):
    with pytest.raises(OutputError, match="would replace the workspace"):
        export_model(workspace, workspace.parent, force=True)
    assert (workspace / "data/align/model.json").is_file()


def test_workspace_without_dvc_repro_outputs_is_refused(workspace, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_line_error(_run("--workspace", empty, "--out", tmp_path / "m"))
    assert "data/align/model.safetensors" in line and "dvc repro" in line
    partial = tmp_path / "partial"  # everything but the captions metrics
    partial.mkdir()
    for item in workspace.iterdir():
        if item.name != "metrics":
            (partial / item.name).symlink_to(item, target_is_directory=item.is_dir())
    (partial / "metrics").mkdir()
    for name in ("download.json", "retrieval.json"):
        shutil.copy(workspace / "metrics" / name, partial / "metrics" / name)
    line = _one_line_error(_run("--workspace", partial, "--out", tmp_path / "m"))
    assert "metrics/captions.json" in line and "data/align" not in line and "dvc repro" in line
    assert not (tmp_path / "m").exists()


def test_a_failed_write_leaves_no_folder(workspace, tmp_path, monkeypatch):
    import edge_glass.export as export

    real, calls = export.copy_hashed, []

    def disk_full(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(export, "copy_hashed", disk_full)
    out = tmp_path / "model"
    with pytest.raises(OutputError, match="No space left on device"):
        export_model(workspace, out, progress=lambda line: None)
    assert not out.exists() and not out.with_name("model.tmp").exists()


def test_push_offline_exits_with_one_line_before_writing(workspace, tmp_path):
    line = _one_line_error(_run("--workspace", workspace, "--out", tmp_path / "m", "--push-to-hub", "someone/tiny",
                                HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE" in line and "someone/tiny" in line
    assert not (tmp_path / "m").exists()  # refused before the copy, not after


def test_push_without_token_exits_with_one_line(workspace, tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}
    line = _one_line_error(_run("--workspace", workspace, "--out", tmp_path / "m", "--push-to-hub", "someone/tiny", **env))
    assert "token" in line and not (tmp_path / "m").exists()


def test_push_to_an_unreachable_hub_exits_with_one_line_after_the_export(workspace, tmp_path):
    """The real create_repo + upload_folder calls, against an endpoint nothing listens on."""
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_not_a_real_token",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    line = _one_line_error(_run("--workspace", workspace, "--out", tmp_path / "m", "--push-to-hub", "someone/tiny",
                                "--private", **env))
    assert "someone/tiny" in line and "export in" in line
    assert (tmp_path / "m" / "config.json").is_file()  # the export itself is complete


def test_help_names_every_option():
    out = _run("--help")
    assert out.returncode == 0
    for option in ("--out", "--workspace", "--push-to-hub", "--private", "--force"):
        assert option in out.stdout


def test_a_malformed_repo_id_is_refused_first(tmp_path):
    line = _one_line_error(_run("--workspace", tmp_path, "--out", tmp_path / "m", "--push-to-hub", "not a repo id!",
                                HF_HUB_OFFLINE="0", HF_TOKEN="hf_x"))
    assert "not a repo id" in line


def test_a_folder_missing_a_file_names_it(exported, tmp_path):
    import edge_glass

    out, _, _ = exported
    broken = tmp_path / "model"
    shutil.copytree(out, broken, copy_function=os.link)
    (broken / "decoder" / "projector.safetensors").unlink()
    with pytest.raises(edge_glass.ModelError, match="decoder/projector.safetensors"):
        edge_glass.load(broken)
