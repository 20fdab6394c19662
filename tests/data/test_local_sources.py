"""download.local: every on-disk format from real packaged media, hostile media, split hygiene, resume."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.local_data import write_all
from helpers.setup import REPO
from PIL import Image

from edge_glass.config import parse_params
from edge_glass.core.errors import DataError, ParamsError
from edge_glass.data.manifest import media_ref, read_manifest
from edge_glass.download import build_manifest
from edge_glass.tools import sample_datasets as sd

N = 12


@pytest.fixture(scope="module")
def all_formats(tmp_path_factory):
    """One download over every format at once (no packaged sources): (out dir, stats, manifest, rejects)."""
    root = tmp_path_factory.mktemp("local")
    entries = write_all(root / "raw", N)
    params = parse_params({"download": {"sources": [], "local": entries, "shard_size": 5}})
    out = root / "data" / "download"
    stats = build_manifest(params, out)
    manifest = read_manifest(out / "manifest.parquet")
    rejects = pd.read_csv(out / "rejects.csv")
    return out, stats, manifest, rejects, entries


def by_source(manifest, name):
    return manifest[manifest.source == name].set_index("item_id")


def test_every_format_reconciles_and_groups_captions(all_formats):
    out, stats, manifest, rejects, _ = all_formats
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(manifest) + len(rejects)
    for name, s in stats["sources"].items():
        assert s["in"] == s["kept"] + s["rejected"], name
    coco = by_source(manifest, "coco")
    assert len(coco) == N and all(len(c) == 3 for c in coco.captions)  # three annotations per image, grouped
    assert coco.loc["coco/1000", "captions"][1].startswith("an emoji of ")
    openclip = by_source(manifest, "openclip")
    assert len(openclip) == N and all(len(c) == 2 for c in openclip.captions)  # two rows per image -> one item
    assert openclip.index[0] == "openclip/images/00000.png"
    clotho = manifest[manifest.source.str.startswith("clotho-")]
    assert len(clotho) == N and all(len(c) == 5 for c in clotho.captions)
    assert (clotho.image_shard.isna() & clotho.audio_shard.notna()).all()


def test_given_splits_are_honoured(all_formats):
    _, _, manifest, _, entries = all_formats
    karpathy = by_source(manifest, "karpathy")
    expected = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    records = json.loads(open(entries[1]["path"]).read())["images"]
    for r in records:
        assert karpathy.loc[f"karpathy/{r['cocoid']}", "split"] == expected[r["split"]]
    # Clotho: the file name decides (development -> train, validation -> val, evaluation -> test)
    for part, split in (("development", "train"), ("validation", "val"), ("evaluation", "test")):
        assert set(by_source(manifest, f"clotho-{part}").split) == {split}
    assert set(by_source(manifest, "clap").split) == {"train"}


def test_audiocaps_groups_clips_of_one_video_and_rejects_missing_audio(all_formats):
    _, stats, manifest, rejects, _ = all_formats
    ac = by_source(manifest, "audiocaps")
    assert all(len(c) == 2 for c in ac.captions)
    videos = ac.index.str.extract(r"audiocaps/(vid\d+)_")[0].values
    assert (ac.group.values == ["audiocaps/" + v for v in videos]).all()
    for _, g in ac.groupby("group"):
        assert g.split.nunique() == 1  # the clips of one video never straddle two splits
    missing = rejects[(rejects.source == "audiocaps")]
    assert len(missing) >= 1 and missing.reason.str.startswith("missing file").all()
    assert stats["sources"]["audiocaps"]["rejected_by_reason"] == {"missing file": len(missing)}


def test_webdataset_reads_tars_and_rejects_failed_downloads(all_formats):
    out, stats, manifest, rejects, _ = all_formats
    laion = by_source(manifest, "laion")
    failed = rejects[rejects.source == "laion"]
    assert len(laion) + len(failed) == N and len(failed) == 2  # one failed_to_download per tar of 6
    assert failed.reason.str.startswith("img2dataset status 'failed_to_download': HTTP 404").all()
    row = laion.iloc[0]
    img = Image.open(io.BytesIO(media_ref(row, "image").read(out)))
    assert img.mode == "RGB" and img.size == (160, 160)
    clap = by_source(manifest, "clap")
    assert len(clap) == N and all(len(c) == 2 for c in clap.captions)  # json "text" list
    info = __import__("soundfile").info(io.BytesIO(media_ref(clap.iloc[0], "audio").read(out)))
    assert info.samplerate == 16000 and info.channels == 1  # 48 kHz FLAC resampled


def test_media_are_in_few_shards_not_a_file_per_item(all_formats):
    out, stats, manifest, _, _ = all_formats
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == stats["files"] and all(p.suffix in (".tar", ".parquet", ".csv") for p in files)
    assert len(files) < len(manifest)
    refs = [media_ref(r, "image") for r in manifest.itertuples()] + [media_ref(r, "audio") for r in manifest.itertuples()]
    assert all(r.read(out) for r in refs if r is not None)


def test_hash_splits_have_no_test_caption_in_train(all_formats):
    _, stats, manifest, _, _ = all_formats
    hygiene = stats["split_hygiene"]
    assert (manifest.split == "test").sum() > 0
    for pair in ("train_val", "train_test", "val_test"):
        assert hygiene[pair] == {"groups_spanning": 0, "duplicate_media": 0, "caption_overlap": 0,
                                 "near_duplicate_images": 0}, pair


def test_hostile_media_become_rejects_or_are_converted(tmp_path):
    table, expected = sd.write_hostile(tmp_path / "hostile")
    entry = {"name": "hostile", "format": "table", "path": str(table), "image_key": "image", "audio_key": "audio",
             "caption_keys": ["caption"], "id_key": "key"}
    params = parse_params({"download": {"sources": [], "local": [entry], "image": {"max_pixels": 4_000_000}}})
    out = tmp_path / "out"
    stats = build_manifest(params, out)
    manifest = read_manifest(out / "manifest.parquet").set_index("item_id")
    rejects = pd.read_csv(out / "rejects.csv").set_index("item_id")["reason"].to_dict()
    assert stats["in"] == len(expected) == stats["kept"] + stats["rejected"]
    for key, outcome in expected.items():
        item = f"hostile/{key}"
        if outcome == "kept":
            assert item in manifest.index, (key, rejects.get(item))
        else:
            assert rejects.get(item, "").startswith(outcome), (key, rejects.get(item))

    def image(key):
        return Image.open(io.BytesIO(media_ref(manifest.loc[f"hostile/{key}"], "image").read(out)))

    big = image("big")  # a 41 Mpx JPEG over max_pixels: decoded at reduced scale, stored at a bounded size
    assert big.mode == "RGB" and min(big.size) == 448
    grey = np.asarray(image("grey16"))  # 16-bit PNG scaled to 8 bit, not clipped to white
    assert grey.min() < 100 and 0 < (grey < 250).mean() < 1
    assert image("cmyk").mode == "RGB" and image("animated").size == (160, 160)
    assert np.asarray(image("palette_alpha"))[0, 0].tolist() == [255, 255, 255]  # transparent -> white


def test_bad_annotation_files_stop_the_stage_naming_the_file(tmp_path):
    table = sd.write_table(tmp_path / "t", 3)
    bad_column = {"name": "t", "format": "table", "path": str(table), "image_key": "filepath", "caption_keys": ["caption"]}
    with pytest.raises(DataError, match=r"pairs.csv: column\(s\) \['caption'\] not found"):
        build_manifest(parse_params({"download": {"sources": [], "local": [bad_column]}}), tmp_path / "out")
    (tmp_path / "broken.json").write_text("{not json")
    coco = {"name": "c", "format": "coco", "path": str(tmp_path / "broken.json")}
    with pytest.raises(DataError, match="annotation file unreadable: .*broken.json"):
        build_manifest(parse_params({"download": {"sources": [], "local": [coco]}}), tmp_path / "out")
    # through the stage: exit code 3 and one clear line
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"sources": [], "local": [coco]}}))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 3 and "annotation file unreadable" in proc.stderr


def test_local_params_name_the_bad_key():
    entry = {"name": "x", "format": "table", "path": "a.csv", "caption_keys": ["c"]}
    with pytest.raises(ParamsError, match=r"download.local\[0\].table: .*needs image_key/image_template and/or audio_key"):
        parse_params({"download": {"local": [entry]}})
    with pytest.raises(ParamsError, match=r"download.local\[0\].coco: split=from_file: format 'coco' has no split field"):
        parse_params({"download": {"local": [{"name": "c", "format": "coco", "path": "a.json", "split": "from_file"}]}})
    with pytest.raises(ParamsError, match=r"local names must be unique .*\['asterisk'\]"):
        parse_params({"download": {"local": [{"name": "asterisk", "format": "coco", "path": "a.json"}]}})


def test_every_table_extension_reads_the_same_items(tmp_path):
    items = {}
    for ext in ("csv", "tsv", "jsonl", "parquet"):
        path = sd.write_table(tmp_path / ext, 4, ext)
        entry = {"name": f"t{ext}", "format": "table", "path": str(path), "image_key": "filepath", "caption_keys": ["title"]}
        build_manifest(parse_params({"download": {"sources": [], "local": [entry]}}), tmp_path / ext / "out")
        m = read_manifest(tmp_path / ext / "out" / "manifest.parquet")
        items[ext] = [(i.split("/", 1)[1], list(c)) for i, c in zip(m.item_id, m.captions)]
    assert items["csv"] == items["tsv"] == items["jsonl"] == items["parquet"] and len(items["csv"]) == 4


def test_emoji_variants_share_a_split_group():
    from edge_glass.data.sources.openmoji import emoji_group_key

    assert emoji_group_key(":man_technologist:") == emoji_group_key(":woman_technologist:") == "technologist"
    assert emoji_group_key(":person_gesturing_OK:") == emoji_group_key(":man_gesturing_OK:")
    assert emoji_group_key(":man:") == "man" and emoji_group_key(":grinning_face:") == "grinning face"


def test_items_sharing_a_caption_share_a_split():
    from edge_glass.data.manifest import Sample
    from edge_glass.data.splits import split_groups

    samples = [Sample("s/a", "s", ["a red ball"]), Sample("s/b", "s", ["A red ball.", "round toy"]),
               Sample("s/c", "s", ["round toy"]), Sample("s/d", "s", ["something else"])]
    groups = split_groups(samples, link_shared_captions=True)
    assert groups["s/a"] == groups["s/b"] == groups["s/c"] != groups["s/d"]
    assert len(set(split_groups(samples, link_shared_captions=False).values())) == 4
    # the group's name does not depend on the order items arrive in
    assert split_groups(samples[::-1], True) == groups


def test_hub_access_only_when_a_stage_needs_it(monkeypatch):
    from edge_glass.cli import configure_hub, hub_uses

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    default = parse_params({})
    assert hub_uses(default) == [] and configure_hub(default, "download") is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = parse_params({"download": {"sources": ["coco"]}, "decode": {"lm": {"model": "Qwen/Qwen2.5-0.5B-Instruct"}}})
    assert hub_uses(online, "download") == ["download.sources=coco"]
    assert hub_uses(online, "decode") == ["decode.lm.model=Qwen/Qwen2.5-0.5B-Instruct"]
    assert configure_hub(online, "download") is True and "HF_HUB_OFFLINE" not in os.environ
    assert configure_hub(online, "preprocess") is False and os.environ["HF_HUB_OFFLINE"] == "1"


def test_source_registry_matches_the_params_schema():
    import typing

    from edge_glass.config.download import LocalSourceParams, SourceName
    from edge_glass.data.sources import FORMATS, SOURCES

    assert set(typing.get_args(SourceName)) == set(SOURCES)
    union = typing.get_args(typing.get_args(LocalSourceParams)[0])
    assert {typing.get_args(m.model_fields["format"].annotation)[0] for m in union} == set(FORMATS)


@pytest.mark.slow
def test_killed_download_resumes_from_finished_shards(tmp_path):
    raw = tmp_path / "raw"
    table = sd.write_table(raw, 40, "csv")
    entry = {"name": "t", "format": "table", "path": str(table), "image_key": "filepath", "caption_keys": ["title"]}
    params = {"download": {"sources": ["asterisk"], "local": [entry], "shard_size": 4, "num_workers": 1}}
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages" / "download.py")]
    subprocess.run(cmd, cwd=reference, check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = work / "data" / "download" / "media" / "asterisk" / "00003.parquet"
    deadline = time.time() + 120
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (work / "data" / "download" / "manifest.parquet").exists(), "killed too late"
    resumed = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    resumed_chunks = dict(re.findall(r"\[download\] (\S+): (\d+) of \d+ chunks resumed", resumed.stderr))
    assert int(resumed_chunks["asterisk"]) >= 4
    for name in ("manifest.parquet", "rejects.csv"):
        assert (work / "data" / "download" / name).read_bytes() == (reference / "data" / "download" / name).read_bytes()
    shards = sorted(p.relative_to(work / "data") for p in (work / "data" / "download" / "media").rglob("*.tar"))
    assert shards == sorted(p.relative_to(reference / "data") for p in (reference / "data" / "download" / "media").rglob("*.tar"))
    for p in shards:
        assert (work / "data" / p).read_bytes() == (reference / "data" / p).read_bytes()
    # an input edited in place redoes only the chunk that holds it
    shutil.copy(raw / "images" / "00001.png", raw / "images" / "00000.png")
    again = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    stats = json.loads((work / "metrics" / "download.json").read_text())
    assert f"[download] t: {stats['sources']['t']['chunks'] - 1} of {stats['sources']['t']['chunks']} chunks resumed" in again.stderr


def run_download_stage(workdir, download):
    (workdir / "params.yaml").write_text(yaml.safe_dump({"download": {"sources": [], **download}}))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download.py")], cwd=workdir, capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[download] error:")]
    return proc, errors


def test_coco_file_given_as_karpathy_stops_with_one_line_and_rejects_on_disk(tmp_path):
    """Issue 23: every entry rejected -> exit 3, one line naming the entry, the count read, the top
    reason with an example and the format the file looks like; rejects.csv and the metrics written first."""
    coco = sd.write_coco(tmp_path / "raw" / "coco", 6)
    entry = {"name": "coco", "format": "karpathy", "path": str(coco), "media_root": str(tmp_path / "raw" / "coco" / "val2017")}
    proc, errors = run_download_stage(tmp_path, {"local": [entry]})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert re.match(r'\[download\] error: download\.local entry \'coco\': 0 of 6 kept; 6 "empty caption" '
                    r'\(e\.g\. coco/images\[0\]: empty caption\); captions_val2017\.json looks like format: coco, '
                    r'not format: karpathy \(every reject with its reason: .*rejects\.csv\)$', errors[0]), errors[0]
    out = tmp_path / "data" / "download"
    rejects = pd.read_csv(out / "rejects.csv")
    assert list(rejects.item_id) == [f"coco/images[{i}]" for i in range(6)]
    assert not (out / "manifest.parquet").exists()
    stats = json.loads((tmp_path / "metrics" / "download.json").read_text())
    assert stats["sources"]["coco"] == {**stats["sources"]["coco"], "in": 6, "kept": 0, "rejected": 6}


def test_media_root_one_folder_too_high_stops_unless_empty_sources_are_allowed(tmp_path):
    """Issue 23: one entry whose media are all missing beside one that keeps items: exit 3 naming the
    entry and hinting at media_root; download.allow_empty_sources=true makes it a warning."""
    raw = tmp_path / "raw"
    coco = sd.write_coco(raw / "coco", 5)
    karpathy = sd.write_karpathy(raw / "karpathy", 4, start=5)
    entries = [{"name": "coco", "format": "coco", "path": str(coco), "media_root": str(raw / "coco")},  # not .../val2017
               {"name": "karpathy", "format": "karpathy", "path": str(karpathy)}]
    proc, errors = run_download_stage(tmp_path, {"local": entries})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    missing = raw / "coco" / "000000001000.jpg"
    assert errors[0].startswith(f"[download] error: download.local entry 'coco': 0 of 5 kept; 5 \"missing file\" "
                                f"(e.g. coco/1000: missing file: {missing}); did media_root point one folder too "
                                f"high? 000000001000.jpg is under {raw / 'coco' / 'val2017'} (media_root: {raw / 'coco'})")
    assert errors[0].endswith("download.allow_empty_sources=true goes on without an empty source)")
    rejects = pd.read_csv(tmp_path / "data" / "download" / "rejects.csv")
    assert sorted(rejects[rejects.source == "coco"].item_id) == [f"coco/{1000 + i}" for i in range(5)]
    assert json.loads((tmp_path / "metrics" / "download.json").read_text())["sources"]["karpathy"]["kept"] > 0
    assert not (tmp_path / "data" / "download" / "manifest.parquet").exists()

    allowed, errors = run_download_stage(tmp_path, {"local": entries, "allow_empty_sources": True})
    assert allowed.returncode == 0 and not errors, allowed.stderr[-2000:]
    assert "download.local entry 'coco': 0 of 5 kept" in allowed.stderr  # still said, as a warning
    manifest = read_manifest(tmp_path / "data" / "download" / "manifest.parquet")
    assert set(manifest.source) == {"karpathy"}


def test_a_file_of_another_format_is_named_with_the_format_it_looks_like(tmp_path):
    karpathy = sd.write_karpathy(tmp_path / "k", 2)
    with pytest.raises(DataError, match=r"^download\.local entry 'k': .*dataset_coco\.json: not a COCO captions file .*; "
                                        r"it looks like format: karpathy$"):
        build_manifest(parse_params({"download": {"sources": [], "local": [
            {"name": "k", "format": "coco", "path": str(karpathy)}]}}), tmp_path / "out")
    coco = sd.write_coco(tmp_path / "c", 2)
    with pytest.raises(DataError, match=r"^download\.local entry 't': table unreadable: .*; the file looks like format: coco$"):
        build_manifest(parse_params({"download": {"sources": [], "local": [
            {"name": "t", "format": "table", "path": str(coco), "image_key": "file_name", "caption_keys": ["caption"]}]}}),
            tmp_path / "out")
