"""Zero-shot classification: labelled folder and table sets through the download checks and the preprocess
encoders (zeroshot_features), scored by evaluate (trained and baseline, class-stratified intervals), the
emoji-groups default, rejects with reasons, the stratified bootstrap, and the schema's error keys."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.setup import ASTERISK, REPO, TINY_ALIGN
from PIL import Image

from edge_glass.config import parse_params
from edge_glass.config.evaluate import EMOJI_TEST
from edge_glass.core.errors import ParamsError
from edge_glass.data.labelled import IMAGE_TEMPLATES, emoji_groups, group_classname
from edge_glass.metrics.bootstrap import stratified_counts, stratified_mean_ci
from edge_glass.tools.sample_datasets import emoji_images

# .ci/run installs unicode-data (setup.sh); there (CI set) a missing file fails the tests instead of skipping them
needs_emoji_test = pytest.mark.skipif(not __import__("os").path.exists(EMOJI_TEST) and not __import__("os").environ.get("CI"),
                                      reason="Debian's unicode-data is not installed (setup.sh installs it)")


def write_emoji_folder(root, classes: int = 3, per_class: int = 3):
    """ImageFolder of packaged emoji PNGs: class k holds emoji k*per_class.. (k+1)*per_class-1, plus two bad files."""
    images = emoji_images(classes * per_class)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
        for j in range(per_class):
            images[k * per_class + j][0].save(root / f"class_{k}" / f"{j}.png")
    (root / "class_0" / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    images[0][0].save(buf, "PNG")
    (root / "class_1" / "truncated.png").write_bytes(buf.getvalue()[:200])
    (root / "class_2" / ".hidden.png").write_bytes(b"skipped: hidden files are not items")
    return root


def write_asterisk_table(root, per_class: int = 3):
    """An ESC-50-like CSV of Asterisk prompts with a category column; a missing file, a corrupt wav, an empty label."""
    (root / "audio").mkdir(parents=True)
    wavs = sorted(p for p in ASTERISK.glob("*.wav") if p.stat().st_size > 8000)[: 3 * per_class]
    rows = []
    for i, wav in enumerate(wavs):
        shutil.copy(wav, root / "audio" / wav.name)
        rows.append({"filename": f"audio/{wav.name}", "category": ["dog", "rain", "siren"][i % 3]})
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    rows += [{"filename": "audio/corrupt.wav", "category": "dog"}, {"filename": "audio/absent.wav", "category": "rain"},
             {"filename": f"audio/{wavs[0].name}x", "category": ""}]
    path = root / "esc.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def scored(tiny_align, small_download, tmp_path_factory):
    """The folder, table and default sets run through zeroshot_features and scored against the tiny model."""
    from edge_glass.evaluate import headline, run_evaluate, run_zeroshot
    from edge_glass.models.aligner import load_model
    from edge_glass.preprocess import run_zeroshot_features

    manifest, features, align_dir = tiny_align
    _, raw, _ = small_download
    tmp = tmp_path_factory.mktemp("zeroshot")
    folder = write_emoji_folder(tmp / "emoji_folder")
    table = write_asterisk_table(tmp / "esc")
    sets = [{"name": "folder_set", "modality": "image", "format": "folder", "path": str(folder)},
            {"name": "audio_set", "modality": "audio", "format": "table", "path": str(table), "path_key": "filename",
             "label_key": "category", "classnames": {"dog": "a dog barking"}},
            *([{"name": "emoji_groups", "format": "emoji_groups"}] if __import__("os").path.exists(EMOJI_TEST) else [])]
    params = parse_params({**raw, "align": TINY_ALIGN, "evaluate": {"zeroshot": sets, "bootstrap_resamples": 200}})
    out = tmp / "data" / "zeroshot"
    stats = run_zeroshot_features(params, manifest, out)
    model = load_model(align_dir)
    metrics, confusion = run_zeroshot(params, out, features, manifest, model)
    retrieval, _, _ = run_evaluate(params, features, manifest, model)
    return {"params": params, "out": out, "stats": stats, "metrics": metrics, "confusion": confusion,
            "headline": headline(retrieval, metrics, None, params.evaluate.recall_k), "features": features,
            "retrieval": retrieval,
            "manifest": manifest, "model": model}


@pytest.mark.slow
def test_folder_and_table_sets_give_top1_top5_with_intervals_for_trained_and_baseline(scored):
    for name, n_classes in (("folder_set", 3), ("audio_set", 3)):
        z = scored["metrics"][name]
        assert z["classes"] == n_classes and z["chance_top1"] == pytest.approx(1 / n_classes, abs=1e-4)
        for block in (z["trained"], z["baseline"], *z["by_dim"].values()):
            for key in ("top1", "top5", "mean_per_class_recall"):
                assert block[f"{key}_ci95_lo"] <= block[key] <= block[f"{key}_ci95_hi"], (name, key, block)
        assert z["trained"]["top5"] == 1.0  # 3 classes: the true class is always among the top 5
        assert set(z["by_dim"]) == {str(d) for d in TINY_ALIGN["mrl"]["dims"]}
        assert z["trained"] == z["by_dim"][str(max(TINY_ALIGN["mrl"]["dims"]))]
        assert z["baseline"]["ridge"] > 0


@pytest.mark.slow
def test_bad_media_are_rejected_with_reasons_and_counts_reconcile(scored):
    folder, audio = scored["metrics"]["folder_set"], scored["metrics"]["audio_set"]
    # 9 emoji + notes.txt + truncated.png (the hidden file is not an item)
    assert folder["items"] == 11 and folder["scored"] == 9 and folder["rejected"] == 2
    assert folder["items"] == folder["scored"] + sum(folder["rejected_by_reason"].values())
    rejects = pd.read_csv(scored["out"] / "folder_set" / "rejects.csv")
    assert set(rejects.item_id) == {"folder_set/class_0/notes.txt", "folder_set/class_1/truncated.png"}
    assert rejects.reason.str.len().gt(10).all()
    # 9 clips + a corrupt wav + a missing file + a row with an empty label
    assert audio["items"] == 12 and audio["scored"] == 9 and audio["rejected"] == 3
    reasons = pd.read_csv(scored["out"] / "audio_set" / "rejects.csv").set_index("item_id").reason
    assert reasons["audio_set/audio/absent.wav"].startswith("missing file")
    assert "empty category" in " ".join(reasons)
    assert any("corrupt.wav" in i for i in reasons.index)


@pytest.mark.slow
def test_prompts_use_classnames_and_templates_and_the_confusion_counts_every_scored_item(scored):
    info = json.loads((scored["out"] / "audio_set" / "set.json").read_text())
    assert info["classes"] == ["dog", "rain", "siren"] and info["classnames"][0] == "a dog barking"
    assert info["templates"][0] == "the sound of {}."
    prompts = pd.read_parquet(scored["out"] / "audio_set" / "prompts.parquet")
    assert list(prompts.captions[0])[0] == "the sound of a dog barking."
    folder_info = json.loads((scored["out"] / "folder_set" / "set.json").read_text())
    assert folder_info["templates"] == IMAGE_TEMPLATES and len(IMAGE_TEMPLATES) == 80
    confusion = scored["confusion"]
    for name in ("folder_set", "audio_set"):
        assert confusion[confusion.set == name]["count"].sum() == scored["metrics"][name]["scored"]


@pytest.mark.slow
def test_a_rerun_reencodes_nothing_and_a_changed_entry_is_refused_until_the_stage_reruns(scored, tmp_path):
    from edge_glass.evaluate import run_zeroshot
    from edge_glass.features.store import FeatureStore
    from edge_glass.preprocess import run_zeroshot_features

    from edge_glass.features.store import shard_name

    shard = scored["out"] / "folder_set" / "features" / "image" / shard_name(0)
    before = shard.stat().st_mtime_ns
    run_zeroshot_features(scored["params"], scored["manifest"], scored["out"])
    assert shard.stat().st_mtime_ns == before  # fingerprint matched: the shard was kept, not re-encoded
    assert len(FeatureStore(shard.parent)) == 9
    raw = scored["params"].model_dump()
    raw["evaluate"]["zeroshot"][0]["limit_per_class"] = 1
    changed = parse_params(raw)
    with pytest.raises(Exception, match="zeroshot_features"):
        run_zeroshot(changed, scored["out"], scored["features"], scored["manifest"], scored["model"])


@pytest.mark.slow
@needs_emoji_test
def test_the_default_set_labels_the_split_emoji_by_unicode_group(scored):
    z = scored["metrics"]["emoji_groups"]
    labels = pd.read_parquet(scored["out"] / "emoji_groups" / "labels.parquet")
    manifest = pd.read_parquet(scored["manifest"])
    test_moji = manifest[(manifest.split == "test") & (manifest.source == "openmoji")]
    groups = emoji_groups(EMOJI_TEST)
    assert set(labels.item_id) | set(pd.read_csv(scored["out"] / "emoji_groups" / "rejects.csv").item_id) == set(test_moji.item_id)
    for item_id, label in zip(labels.item_id, labels.label):
        assert groups[item_id.removeprefix("openmoji/")] == label
    assert z["items"] == len(test_moji)
    info = json.loads((scored["out"] / "emoji_groups" / "set.json").read_text())
    assert info["media_features"] == "preprocess"  # the image features of data/features, not encoded again
    assert not (scored["out"] / "emoji_groups" / "features" / "image").exists()
    if z["scored"]:
        assert "zeroshot_emoji_groups_top1" in scored["headline"]


@needs_emoji_test
def test_emoji_groups_parse_debians_file():
    groups = emoji_groups(EMOJI_TEST)
    assert groups["1F600"] == "Smileys & Emotion"  # grinning face
    assert groups["2764"] == "Smileys & Emotion"  # red heart: FE0F dropped, as openmoji ids are formed
    assert groups["1F436"] == "Animals & Nature"
    assert group_classname("Smileys & Emotion") == "smileys and emotion"


@pytest.mark.slow
def test_headline_is_flat_and_ordered_retrieval_then_zeroshot(scored):
    from edge_glass.evaluate import headline

    h = scored["headline"]
    assert all(isinstance(v, (int, float)) for v in h.values())
    keys = list(h)
    assert keys[0].endswith("_R@1") and keys.index("zeroshot_folder_set_top1") > max(i for i, k in enumerate(keys) if "R@" in k)
    assert h["zeroshot_folder_set_top1"] == scored["metrics"]["folder_set"]["trained"]["top1"]
    captions = {"CIDEr-D": 0.2, "CIDEr-D_ci95_lo": 0.1, "CIDEr-D_ci95_hi": 0.3, "BLEU-4": 0.0}
    with_captions = headline(scored["retrieval"], scored["metrics"], captions, [1, 5, 10])
    assert list(with_captions)[-3:] == ["captions_CIDEr-D", "captions_CIDEr-D_lo", "captions_CIDEr-D_hi"]

    def flat(d, prefix=""):
        return {k for key, v in d.items() for k in (flat(v, f"{prefix}{key}.") if isinstance(v, dict) else {prefix + key})}

    # no key shared with another metrics file: DVC would prefix both columns with their paths
    assert not set(with_captions) & (flat(scored["retrieval"]) | flat(scored["metrics"]) | set(captions))


def test_stratified_bootstrap_keeps_every_class_count():
    strata = np.array([0] * 5 + [1] * 2 + [2] * 9)
    for counts in stratified_counts(strata, 300, seed=3):
        for c, n in ((0, 5), (1, 2), (2, 9)):
            assert np.allclose(counts[:, strata == c].sum(1), n)
    # a class that is always right and one always wrong: top-1 varies only through the mixture inside classes
    hits = np.array([1.0] * 5 + [0.0] * 2 + [1, 0] * 4 + [1.0])
    (lo, hi), = stratified_mean_ci(strata, hits, resamples=500, seed=0)
    assert lo <= hits.mean() <= hi and hi - lo > 0
    constant = np.array([1.0] * 7 + [0.0] * 9)  # classes 0, 1 all right, class 2 all wrong: fixed under stratification
    (lo, hi), = stratified_mean_ci(strata, constant, resamples=200, seed=0)
    assert lo == hi == pytest.approx(7 / 16)


def test_schema_errors_name_the_entry_and_key():
    folder = {"name": "a", "format": "folder", "path": "x"}
    with pytest.raises(ParamsError, match=r"evaluate\.zeroshot\[1\]\.format"):
        parse_params({"evaluate": {"zeroshot": [folder, {"name": "b", "format": "imagenet", "path": "x"}]}})
    with pytest.raises(ParamsError, match=r"evaluate\.zeroshot\[0\]\.templates: every template needs exactly one \{\}"):
        parse_params({"evaluate": {"zeroshot": [{**folder, "templates": ["a photo"]}]}})
    with pytest.raises(ParamsError, match=r"evaluate\.zeroshot\[0\]\.label_column: unknown key"):
        parse_params({"evaluate": {"zeroshot": [{**folder, "label_column": "y"}]}})
    with pytest.raises(ParamsError, match=r"evaluate\.zeroshot\[0\]: format 'table' needs a path"):
        parse_params({"evaluate": {"zeroshot": [{"name": "t", "format": "table"}]}})
    with pytest.raises(ParamsError, match=r"evaluate\.zeroshot: .*unique"):
        parse_params({"evaluate": {"zeroshot": [folder, folder]}})
    assert [s.name for s in parse_params({}).evaluate.zeroshot] == ["emoji_groups"]


def test_the_default_set_is_skipped_with_its_reason_on_a_run_without_images(tmp_path):
    from edge_glass.metrics.zeroshot import load_set
    from edge_glass.preprocess import run_zeroshot_features

    params = parse_params({"preprocess": {"modalities": ["audio", "text"]}})
    stats = run_zeroshot_features(params, tmp_path / "unused_manifest.parquet", tmp_path / "zs")
    assert stats == {"emoji_groups": {"items": 0, "classes": 0, "rejected": 0}}
    entry = params.evaluate.zeroshot[0]
    assert load_set(entry, tmp_path / "zs" / "emoji_groups", tmp_path, params) == "preprocess.modalities has no image"
    user_set = parse_params({"preprocess": {"modalities": ["audio", "text"]},
                             "evaluate": {"zeroshot": [{"name": "f", "format": "folder", "path": str(tmp_path)}]}})
    with pytest.raises(ParamsError, match=r"evaluate.zeroshot\[0\] \('f'\): modality image needs image and text"):
        run_zeroshot_features(user_set, tmp_path / "unused_manifest.parquet", tmp_path / "zs")


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def colour_image(rgb, k: int) -> Image.Image:
    """A shape of one colour on white, its size and position varying with k (the colour is what is shared)."""
    img = Image.new("RGB", (96, 96), "white")
    shade = tuple(max(0, min(255, c + (k % 3 - 1) * 20)) for c in rgb)
    lo, hi = 8 + (k * 7) % 20, 60 + (k * 11) % 30
    img.paste(Image.new("RGB", (hi - lo, hi - lo), shade), (lo, lo))
    return img


@pytest.mark.slow
def test_trained_image_top1_beats_chance_on_a_separable_toy(tmp_path):
    """Coloured squares captioned by their colour train a small model; a folder of unseen squares, one class per
    colour, is classified zero-shot from the prompts alone, well above chance (1/4)."""
    from edge_glass.align import train
    from edge_glass.download import build_manifest
    from edge_glass.evaluate import run_zeroshot
    from edge_glass.models.aligner import load_model
    from edge_glass.preprocess import run_preprocess, run_zeroshot_features

    (tmp_path / "train" / "images").mkdir(parents=True)
    rows = []
    for name, rgb in COLOURS.items():
        for k in range(16):
            rel = f"images/{name}_{k}.png"
            colour_image(rgb, k).save(tmp_path / "train" / rel)
            rows += [{"image": rel, "caption": c, "split": "train" if k < 12 else ("val" if k < 15 else "test")}
                     for c in (f"a {name} square", f"a {name} picture", f"{name}")]
    pd.DataFrame(rows).to_csv(tmp_path / "train" / "squares.csv", index=False)
    for name, rgb in COLOURS.items():
        (tmp_path / "zs" / name).mkdir(parents=True)
        for k in range(16, 21):
            colour_image(rgb, k).save(tmp_path / "zs" / name / f"{k}.png")
    raw = {"seed": 0,
           "download": {"sources": [], "local": [{"name": "squares", "format": "table", "path": str(tmp_path / "train" / "squares.csv"),
                                                  "image_key": "image", "caption_keys": ["caption"], "split_key": "split"}],
                        "group_shared_captions": False, "reject_duplicate_captions": False},
           "preprocess": {"modalities": ["image", "text"], "shard_size": 64},
           "align": {**TINY_ALIGN, "train": {**TINY_ALIGN["train"], "steps": 60, "eval_every": 60, "checkpoint_every": 60}},
           "evaluate": {"bootstrap_resamples": 200,
                        "zeroshot": [{"name": "colours", "format": "folder", "path": str(tmp_path / "zs"),
                                      "templates": ["a {} square", "a {} picture"]}]}}
    params = parse_params(raw)
    build_manifest(params, tmp_path / "data" / "download")
    manifest = tmp_path / "data" / "download" / "manifest.parquet"
    run_preprocess(params, manifest, tmp_path / "features")
    train(params, tmp_path / "features", manifest, tmp_path / "align", None)
    run_zeroshot_features(params, manifest, tmp_path / "zeroshot")
    metrics, _ = run_zeroshot(params, tmp_path / "zeroshot", tmp_path / "features", manifest, load_model(tmp_path / "align"))
    z = metrics["colours"]
    assert z["scored"] == 20 and z["classes"] == 4
    assert z["trained"]["top1_ci95_lo"] > 0.25, z["trained"]  # the whole interval above chance


def test_the_evaluate_stage_writes_zeroshot_headline_and_confusion(tmp_path, scored, tiny_align):
    """The stage script end to end with one zero-shot set: zeroshot.json, the confusion CSV and headline.json."""
    manifest, features, align_dir = tiny_align
    entry = scored["params"].evaluate.zeroshot[0].model_dump()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {**scored["params"].model_dump(include={"seed", "download", "preprocess"}),
         "evaluate": {"zeroshot": [entry], "bootstrap_resamples": 200}}))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--features", str(features),
                           "--manifest", str(manifest), "--model", str(align_dir), "--captions", "",
                           "--zeroshot", str(scored["out"]), "--metrics", str(tmp_path / "r.json"),
                           "--plot", str(tmp_path / "p.csv"), "--queries", str(tmp_path / "q.parquet")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zero-shot folder_set" in proc.stdout
    zs = json.loads((tmp_path / "metrics" / "zeroshot.json").read_text())
    assert zs["folder_set"]["trained"] == scored["metrics"]["folder_set"]["trained"]
    head = json.loads((tmp_path / "metrics" / "headline.json").read_text())
    assert head["zeroshot_folder_set_top1"] == zs["folder_set"]["trained"]["top1"] and "captions_CIDEr-D" not in head
    assert pd.read_csv(tmp_path / "metrics" / "zeroshot_confusion.csv")["count"].sum() == 9
