"""edge_glass.load: new files embed as the pipeline embeds the same files, and caption with the saved decoder.

The agreement tests feed the API the *original* inputs (an emoji rendered again by the OpenMoji source,
an Asterisk prompt's own .wav file, a caption's text) and compare with the pipeline's embeddings of the
same items (cached features -> align, ``metrics.retrieval.embed_split``). The features of the tiny
fixture are stored in float16 (``preprocess.dtype`` default); the API rounds its features to the recorded
storage dtype, as the shards hold them, so the comparison is fp32 throughout after that.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.setup import ASTERISK
from PIL import Image

import edge_glass
from edge_glass.api import FORMAT, model_config, model_files
from edge_glass.config import parse_params
from edge_glass.core.errors import MediaError, ModelError
from edge_glass.features.dataset import FeatureSplit
from edge_glass.metrics.retrieval import embed_split
from edge_glass.models.aligner import load_model

SPLIT = "train"  # the tiny fixture's largest split: every item of it is compared


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    """A workspace after dvc repro, in miniature (tests/conftest.py's session fixture: data/align, the
    few-step TRM the decode stage saved in data/decode/model, data/lm), built once for every test file."""
    return tiny_workspace


@pytest.fixture(scope="module")
def model(workspace):
    return edge_glass.load(workspace)


@pytest.fixture(scope="module")
def originals(small_download, tiny_align, tmp_path_factory):
    """Per item of SPLIT, the original inputs download read: the emoji as the OpenMoji source renders it
    (written to a PNG file) with its spoken caption, an Asterisk prompt's .wav file."""
    from edge_glass.data.sources.registry import build_sources

    root, raw, _ = small_download
    manifest, features, _ = tiny_align
    data = FeatureSplit(features, manifest, SPLIT)
    wanted = set(data.item_ids)
    out = tmp_path_factory.mktemp("originals")
    files: dict[str, dict] = {}
    for source in build_sources(parse_params(raw)):
        for cand in source.candidates():
            if cand.item_id not in wanted:
                continue
            if source.name == "asterisk":
                files[cand.item_id] = {"audio": ASTERISK / f"{cand.payload[0]}.wav"}
                continue
            sample = source.process(cand)
            stem = cand.item_id.replace("/", "_")
            (out / f"{stem}.png").write_bytes(sample.image)  # rendered, before any normalisation
            files[cand.item_id] = {"image": out / f"{stem}.png"}
            if sample.audio is not None:
                (out / f"{stem}.{sample.audio_ext}").write_bytes(sample.audio)
                files[cand.item_id]["audio"] = out / f"{stem}.{sample.audio_ext}"
    assert set(files) == wanted, sorted(wanted - set(files))
    return data, files


def _cos_gap(a: np.ndarray, b: torch.Tensor) -> np.ndarray:
    b = F.normalize(b.float(), dim=-1).numpy()
    return 1 - (a * b).sum(axis=1)


@pytest.mark.slow
def test_api_embeddings_of_the_original_files_equal_the_pipelines(model, originals, tiny_align):
    data, files = originals
    pipeline = embed_split(load_model(tiny_align[2]), data)
    checked = {}
    for m in ("image", "audio", "fused"):
        z, owners = pipeline[m]
        if m == "fused":
            api = model.embed_fused([files[o]["image"] for o in owners], [files[o]["audio"] for o in owners])
        else:
            api = getattr(model, "embed_images" if m == "image" else "embed_audio")([files[o][m] for o in owners])
        gap = _cos_gap(api, z)
        assert api.dtype == np.float32 and api.shape == (len(owners), model.dims[0])
        assert gap.max() <= 1e-4, (m, dict(zip(owners, gap.round(6))))
        checked[m] = len(owners)
    z, owners = pipeline["text"]
    texts = [c for caps in data.caption_texts for c in caps]  # embed_split's caption order
    gap = _cos_gap(model.embed_texts(texts), z)
    assert gap.max() <= 1e-4, gap.max()
    checked["text"] = len(texts)
    assert checked["image"] and checked["audio"] and checked["fused"] and checked["text"] >= len(data), checked


def test_read_ahead_batches_keep_input_order_whatever_the_lengths_and_loader_workers(model, originals):
    """Audio is batched by length (file size) and decoded ahead (a loader thread, or DataLoader processes
    with num_workers > 0): the rows still come back in input order, equal to one-by-one embeddings, and a
    one-item call (run on one torch thread) leaves the caller's thread count alone."""
    data, files = originals
    clips = sorted({files[i]["audio"] for i in data.item_ids if "audio" in files[i]}, key=lambda p: p.stat().st_size)[:6]
    assert len({c.stat().st_size for c in clips}) > 1
    clips = clips[::-1] + clips[:2]  # longest first, then repeats: sorting must not leak into the output
    threads = torch.get_num_threads()
    batched = model.embed_audio(clips, batch_size=3)
    one_by_one = np.concatenate([model.embed_audio([c]) for c in clips])
    assert torch.get_num_threads() == threads
    assert (1 - (batched * one_by_one).sum(axis=1)).max() <= 1e-5
    model.num_workers = 2
    try:
        workers = model.embed_audio(clips, batch_size=3)
    finally:
        model.num_workers = model.preprocess.num_workers
    np.testing.assert_array_equal(workers, batched)


def test_text_is_cleaned_as_download_cleans_captions_and_long_text_is_truncated_with_a_warning(model, caplog):
    raw = model.embed_texts(["  grinning\u00a0face_with   big eyes "])
    clean = model.embed_texts(["grinning face with big eyes"])
    assert np.allclose(raw, clean, atol=1e-6)
    with caplog.at_level(logging.WARNING, logger="edge_glass.api"):
        model.embed_texts(["word " * 200])
    assert "truncated to the text encoder's 64" in caplog.text
    with pytest.raises(MediaError, match="empty text"):
        model.embed_texts(["   "])


def test_dims_truncate_then_normalise_and_a_wrong_dim_names_the_valid_ones(model):
    assert model.dims == [24, 12] and model.modalities == ("image", "audio", "text")
    full = model.embed_texts(["a cat", "thumbs up"])
    short = model.embed_texts(["a cat", "thumbs up"], dim=12, batch_size=1)
    assert short.shape == (2, 12) and short.dtype == np.float32
    assert np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-6)
    assert not np.allclose(short, full[:, :12])  # truncated first, then normalised again
    assert np.allclose(short, full[:, :12] / np.linalg.norm(full[:, :12], axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match=r"dim=100 is not an MRL dim of this model \(valid: 24, 12\)"):
        model.embed_texts(["a cat"], dim=100)


def test_bad_files_give_an_error_naming_the_file(model, tmp_path):
    png = tmp_path / "ok.png"
    Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 50).convert("RGB").save(png)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[:100])
    cases = {
        tmp_path / "missing.png": "missing file",
        truncated: "image decode failed",
        tmp_path / "empty.png": "empty file",
        ASTERISK / "agent-pass.wav": "not a recognised image format",  # a wav handed over as an image
    }
    (tmp_path / "empty.png").write_bytes(b"")
    for path, reason in cases.items():
        with pytest.raises(MediaError, match=reason) as err:
            model.embed_images([png, path])
        assert str(path) in str(err.value)
    with pytest.raises(MediaError, match=rf"{png}: audio decode failed"):
        model.embed_audio([png])
    model.max_file_bytes = 1000  # download.max_file_mb, in bytes
    try:
        with pytest.raises(MediaError, match=rf"file too large: .*{ASTERISK / 'agent-pass.wav'}"):
            model.embed_audio([ASTERISK / "agent-pass.wav"])
    finally:
        model.max_file_bytes = model.config["align"]["download"]["max_file_mb"] * 2**20
    with pytest.raises(MediaError, match="path escapes media_root"):
        model.load_media("image", tmp_path / ".." / png.parent.name / "ok.png", root=tmp_path / "sub")
    assert model.embed_images([png, Image.open(png)]).shape == (2, 24)  # a path and a PIL image


def test_caption_uses_the_saved_decoder_and_matches_the_decode_stage(model, workspace, originals, tiny_align):
    """The API's captions of the original files equal what the decode stage's decoder generates from the
    cached features of the same items (greedy), for images, audio and fused pairs."""
    from edge_glass.decoders.conditioning import aligned_conditioning
    from edge_glass.decoders.generate import generate
    from edge_glass.decoders.saved import generate_params, load_decoder

    data, files = originals
    decoder, meta = load_decoder(workspace / "data" / "decode" / "model", workspace / "data" / "lm")
    cond = aligned_conditioning(load_model(tiny_align[2]), data, meta["prefix_tokens"])
    expected = dict(zip(data.item_ids, generate(decoder, cond, generate_params(meta), seed=meta["seed"])))
    both = [i for i in data.item_ids if {"image", "audio"} <= set(files[i])][:3]
    audio_only = [i for i in data.item_ids if set(files[i]) == {"audio"}][:3]
    got = model.caption(images=[files[i]["image"] for i in both], audio=[files[i]["audio"] for i in both])
    assert got == [expected[i] for i in both] and all(isinstance(c, str) for c in got)
    assert model.caption(audio=[files[i]["audio"] for i in audio_only]) == [expected[i] for i in audio_only]
    image_only = model.caption(images=[files[both[0]]["image"]], num_beams=2, max_new_tokens=3)
    assert len(image_only) == 1 and isinstance(image_only[0], str)


def test_model_config_and_files_describe_an_export(workspace, model):
    config, files = model_config(workspace), model_files(workspace)
    assert config["format"] == FORMAT and config["decode"]["kind"] == "trm"
    assert set(config["align"]["encoders"]) == {"image", "audio", "text"}
    for m, record in config["align"]["encoders"].items():
        assert record["weights"]["state_dict"] and record["dtype"] == "float16", m
    assert config["align"]["download"]["max_file_mb"] == 512 and config["align"]["preprocess"]["vision"]["image_size"] == 224
    assert config["lm"] == {"name": "SmolLM2-135M-Instruct", "sha256": config["decode"]["base_lm"]["sha256"], "folder": "lm"}
    assert files["decoder"] == workspace / "data" / "decode" / "model" and files["lm"] == workspace / "data" / "lm"
    assert sorted(files) == ["align/model.json", "align/model.safetensors", "decoder", "lm"]


def _export(workspace, out):
    """What python -m edge_glass.export writes (the contract of config.json), built here by copying."""
    files = model_files(workspace)
    out.mkdir()
    listed = {}
    for rel, src in files.items():
        if src is None:
            continue
        if rel == "lm":  # 540 MB: linked here, copied by the export
            (out / rel).symlink_to(src.resolve(), target_is_directory=True)
        elif src.is_dir():
            shutil.copytree(src, out / rel)
        else:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, out / rel)
    for p in sorted(out.rglob("*")):
        if p.is_file() and "lm" not in p.relative_to(out).parts[:1]:
            listed[str(p.relative_to(out))] = "not checked here"
    (out / "config.json").write_text(json.dumps({**model_config(workspace), "files": listed}))
    return out


def test_an_exported_folder_loads_to_the_same_model_and_a_broken_one_names_what_is_wrong(workspace, model, tmp_path):
    out = _export(workspace, tmp_path / "export")
    exported = edge_glass.load(out)
    assert exported.fingerprint == model.fingerprint
    texts = ["grinning face", "please hold"]
    assert np.array_equal(exported.embed_texts(texts), model.embed_texts(texts))
    (out / "decoder" / "vocab.json").unlink()
    with pytest.raises(ModelError, match=r"missing: decoder/vocab.json"):
        edge_glass.load(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format": "edge_glass.model/0", "files": {}}))
    with pytest.raises(ModelError, match=r"format 'edge_glass.model/0'.*reads 'edge_glass.model/1'"):
        edge_glass.load(out)
    with pytest.raises(ModelError, match=r"model.json: missing"):
        edge_glass.load(tmp_path)


def test_a_workspace_without_a_saved_decoder_embeds_but_caption_names_the_missing_file(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "data" / "align", ws / "data" / "align")
    m = edge_glass.load(ws)
    assert m.embed_texts(["a cat"]).shape == (1, 24)
    with pytest.raises(ModelError, match=r"data/decode/model/decoder.json missing"):
        m.caption(images=[ASTERISK / "agent-pass.wav"])


def test_old_model_json_is_completed_from_the_workspace(workspace, tiny_align, tmp_path):
    """A model.json written before it named its encoders loads from a workspace (params.yaml and
    data/features/encoders.json), and load_model reads both versions."""
    import yaml

    ws = tmp_path / "ws"
    shutil.copytree(workspace / "data" / "align", ws / "data" / "align")
    meta = json.loads((ws / "data" / "align" / "model.json").read_text())
    old = {k: meta[k] for k in ("align", "seed", "train_seed", "token_dims", "text_dim")}
    (ws / "data" / "align" / "model.json").write_text(json.dumps(old))
    assert load_model(ws / "data" / "align").cfg == load_model(workspace / "data" / "align").cfg
    with pytest.raises(ModelError, match="params.yaml: missing"):
        edge_glass.load(ws)
    (ws / "params.yaml").write_text(yaml.safe_dump({"seed": 0}))
    (ws / "data" / "features").mkdir(parents=True)
    shutil.copy(tiny_align[1] / "encoders.json", ws / "data" / "features" / "encoders.json")
    assert model_config(ws)["align"] == meta
