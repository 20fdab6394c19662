"""Leak-free splits in every split mode: groups, shared captions and equal media content across given
splits (download.split_conflicts report|drop|error), hash splits that follow a given split, near duplicates."""

import json
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from helpers.setup import REPO
from PIL import Image

from edge_glass.config import parse_params
from edge_glass.core.errors import DataError
from edge_glass.data.manifest import read_manifest
from edge_glass.data.splits import near_duplicate_pairs
from edge_glass.download import build_manifest
from edge_glass.tools import sample_datasets as sd

# (id, split, group, image file, audio file) of the leaky table; every item has its own caption
LEAKY = [
    ("a-train", "train", "g1", "e0.png", ""), ("a-test", "test", "g1", "e1.png", ""),  # a group in train and test
    ("dup-train", "train", "", "e2.png", ""), ("dup-test", "test", "", "e2-copy.png", ""),  # byte-identical copy
    ("reenc-train", "train", "", "e3.jpg", ""), ("reenc-test", "test", "", "e3-decoded.png", ""),  # JPEG, its pixels as PNG
    ("b-train", "train", "g2", "e4.png", ""), ("b-val", "val", "g2", "e5.png", ""),  # a group in train and val
    ("c-train", "train", "g3", "e6.png", ""), ("c-val", "val", "g3", "e7.png", ""), ("c-test", "test", "g3", "e8.png", ""),
    ("clip-train", "train", "", "", "clip.wav"), ("clip-test", "test", "", "", "clip.flac"),  # same samples, WAV/FLAC
    ("x-train", "train", "", "e9.png", ""),  # its pixels are also another entry's val item (other/x)
    ("cap-train", "train", "", "e13.png", ""), ("cap-test", "test", "", "e14.png", ""),  # they share a caption
    ("ok-train", "train", "", "e10.png", ""), ("ok-val", "val", "", "e11.png", ""), ("ok-test", "test", "", "e12.png", ""),
]
# every item of a conflicting group with its given split; other/x is the second entry's copy of x-train's image
CONFLICTING = {("leaky/a-train", "train"), ("leaky/a-test", "test"), ("leaky/dup-train", "train"),
               ("leaky/dup-test", "test"), ("leaky/reenc-train", "train"), ("leaky/reenc-test", "test"),
               ("leaky/b-train", "train"), ("leaky/b-val", "val"), ("leaky/c-train", "train"), ("leaky/c-val", "val"),
               ("leaky/c-test", "test"), ("leaky/clip-train", "train"), ("leaky/clip-test", "test"),
               ("leaky/x-train", "train"), ("other/x", "val"), ("leaky/cap-train", "train"), ("leaky/cap-test", "test")}


def write_leaky(root):
    """A ``split: from_file`` table whose given splits leak (see LEAKY) and a second entry (split: val)."""
    media = root / "media"
    media.mkdir(parents=True)
    for k, (img, _) in enumerate(sd.emoji_images(15, start=40)):
        img.save(media / f"e{k}.png")
    shutil.copy(media / "e2.png", media / "e2-copy.png")
    Image.open(media / "e3.png").save(media / "e3.jpg", quality=90)  # stored as these JPEG bytes
    Image.open(media / "e3.jpg").convert("RGB").save(media / "e3-decoded.png")  # stored as a PNG of the same pixels
    wav, _ = sd.speech_clips(1)[0]
    shutil.copy(wav, media / "clip.wav")
    samples, rate = sf.read(wav, dtype="int16")
    sf.write(media / "clip.flac", samples, rate, subtype="PCM_16")
    shared = ["a caption two items share"]
    rows = [{"id": i, "split": s, "group": g, "image": im, "audio": au,
             "caption": json.dumps([f"the picture called {i}", *(shared if i.startswith("cap-") else [])])}
            for i, s, g, im, au in LEAKY]
    pd.DataFrame(rows).to_csv(root / "leaky.csv", index=False)
    (root / "other").mkdir()
    Image.open(media / "e9.png").save(root / "other" / "x.webp", "WEBP", lossless=True)  # PNG vs lossless WEBP
    pd.DataFrame([{"id": "x", "image": "x.webp", "caption": "another name for a picture"}]).to_csv(
        root / "other" / "other.csv", index=False)
    return [{"name": "leaky", "format": "table", "path": str(root / "leaky.csv"), "media_root": str(media),
             "id_key": "id", "image_key": "image", "audio_key": "audio", "caption_keys": ["caption"],
             "split_key": "split", "group_key": "group", "split": "from_file"},
            {"name": "other", "format": "table", "path": str(root / "other" / "other.csv"), "id_key": "id",
             "image_key": "image", "caption_keys": ["caption"], "split": "val"}]


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaky")
    return root, write_leaky(root / "raw")


def run(root, entries, out="out", **download):
    stats = build_manifest(parse_params({"download": {"sources": [], "local": entries, **download}}), root / out)
    return (stats, read_manifest(root / out / "manifest.parquet").set_index("item_id"),
            pd.read_csv(root / out / "split_conflicts.csv", keep_default_na=False),
            pd.read_csv(root / out / "rejects.csv"))


def test_report_lists_every_conflict_and_keeps_the_given_splits(leaky):
    root, entries = leaky
    stats, manifest, conflicts, rejects = run(root, entries)
    assert list(conflicts.columns) == ["group", "item_id", "source", "given_split", "final_split", "action"]
    assert set(zip(conflicts.item_id, conflicts.given_split)) == CONFLICTING and len(conflicts) == len(CONFLICTING)
    assert (conflicts.action == "report").all() and (conflicts.final_split == conflicts.given_split).all()
    for _, g in conflicts.groupby("group"):
        assert g.given_split.nunique() > 1  # a row is a conflict only when its group's given splits differ
    assert len(rejects) == 0 and len(manifest) == len(LEAKY) + 1
    for i, split, *_ in LEAKY:
        assert manifest.loc[f"leaky/{i}", "split"] == split  # report moves nothing
    # the hash is of the decoded content: a JPEG and a PNG of its pixels match (stored bytes differ), as do
    # PNG and lossless WEBP, and WAV and FLAC of the same samples
    assert manifest.loc["leaky/reenc-train", "image_member"].endswith(".jpg")
    assert manifest.loc["leaky/reenc-test", "image_member"].endswith(".png")
    assert manifest.loc["leaky/reenc-train", "image_sha256"] == manifest.loc["leaky/reenc-test", "image_sha256"]
    assert manifest.loc["leaky/x-train", "image_sha256"] == manifest.loc["other/x", "image_sha256"]
    assert manifest.loc["leaky/clip-train", "audio_sha256"] == manifest.loc["leaky/clip-test", "audio_sha256"]
    assert manifest.loc["leaky/reenc-train", "image_sha256"] != manifest.loc["leaky/dup-train", "image_sha256"]
    assert manifest.loc["leaky/a-train", "group"] == manifest.loc["leaky/a-test", "group"] == "leaky/g1"
    h = stats["split_hygiene"]
    counts = {pair: tuple(h[pair][k] for k in ("groups_spanning", "duplicate_media", "caption_overlap"))
              for pair in ("train_val", "train_test", "val_test")}
    assert counts == {"train_test": (6, 3, 1),  # groups g1 g3 dup reenc clip cap; media dup reenc clip; caption
                      "train_val": (3, 1, 0),  # g2 g3 x; x
                      "val_test": (1, 0, 0)}  # g3
    assert h["conflicts"] == {"groups": 8, "items": len(CONFLICTING), "dropped": 0}


def test_drop_keeps_the_latest_split_whole_and_leaves_no_leak(leaky):
    root, entries = leaky
    run(root, entries, out="shared")  # report first: the drop run below resumes every chunk, hashes included
    stats, manifest, conflicts, rejects = run(root, entries, out="shared", split_conflicts="drop")
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(LEAKY) + 1
    dropped = {"leaky/a-train", "leaky/dup-train", "leaky/reenc-train", "leaky/b-train", "leaky/c-train", "leaky/c-val",
               "leaky/clip-train", "leaky/x-train", "leaky/cap-train"}
    assert set(rejects.item_id) == dropped and rejects.reason.str.startswith("split conflict: given split").all()
    assert set(conflicts.item_id[conflicts.action == "drop"]) == dropped
    assert (conflicts.final_split[conflicts.action == "keep"] == conflicts.given_split[conflicts.action == "keep"]).all()
    # every item the data put in test is still there, in test; val keeps what no later split claims
    assert {f"leaky/{i}" for i, s, *_ in LEAKY if s == "test"} <= set(manifest.index[manifest.split == "test"])
    assert set(manifest.index[manifest.split == "val"]) == {"leaky/b-val", "leaky/ok-val", "other/x"}
    assert manifest.groupby("group").split.nunique().max() == 1
    for col in ("image_sha256", "audio_sha256"):
        assert manifest.dropna(subset=[col]).groupby(col).split.nunique().max() == 1
    for pair in ("train_val", "train_test", "val_test"):
        h = stats["split_hygiene"][pair]
        assert h["groups_spanning"] == h["duplicate_media"] == h["caption_overlap"] == 0, pair
    assert stats["split_hygiene"]["conflicts"]["dropped"] == len(dropped)


def test_error_stops_naming_the_groups(leaky, tmp_path):
    root, entries = leaky
    with pytest.raises(DataError, match=r"split_conflicts=error: 8 split group\(s\) .*'leaky/g1' \(train: leaky/a-train; "
                                        r"test: leaky/a-test\)"):
        run(tmp_path, entries, split_conflicts="error")
    conflicts = pd.read_csv(tmp_path / "out" / "split_conflicts.csv")
    assert len(conflicts) == len(CONFLICTING) and (conflicts.action == "error").all()
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    assert (tmp_path / "out" / "rejects.csv").exists()  # written before the stop, like the stage's metrics below
    # through the stage: exit code 3 and one line
    params = {"download": {"sources": [], "local": entries, "split_conflicts": "error"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download.py")], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 3 and "[download] error: download.split_conflicts=error: 8 split group(s)" in proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = json.loads((tmp_path / "metrics" / "download.json").read_text())
    assert metrics["split_hygiene"]["conflicts"]["groups"] == 8


def test_hash_split_items_follow_a_linked_given_split(tmp_path):
    """coco_local: COCO val2017 is the test set and train2017 is split by hash; a train2017 image that
    shares a caption with a val2017 image, or is the same picture, goes to test with it."""
    train = sd.write_coco(tmp_path / "train2017", 8, start=0)
    val = sd.write_coco(tmp_path / "val2017", 4, start=20)
    shared = "a picture that two annotators described alike"
    for path, image_id in ((train, 1002), (val, 1001)):
        data = json.loads(path.read_text())
        data["annotations"].append({"id": 999, "image_id": image_id, "caption": shared})
        path.write_text(json.dumps(data))
    data = json.loads(train.read_text())  # the val2017 picture 1003 filed again in train2017 as 1050
    shutil.copy(val.parent.parent / "val2017" / "000000001003.jpg", train.parent.parent / "val2017" / "copy.jpg")
    data["images"].append({"id": 1050, "file_name": "copy.jpg"})
    data["annotations"].append({"id": 998, "image_id": 1050, "caption": "the copy has a caption of its own"})
    train.write_text(json.dumps(data))
    entries = [{"name": "coco-train2017", "format": "coco", "path": str(train), "split": "hash",
                "media_root": str(tmp_path / "train2017" / "val2017")},
               {"name": "coco-val2017", "format": "coco", "path": str(val), "split": "test",
                "media_root": str(tmp_path / "val2017" / "val2017")}]
    stats = build_manifest(parse_params({"download": {"sources": [], "local": entries,
                                                      "split": {"train": 0.9, "val": 0.1, "test": 0.0}}}), tmp_path / "out")
    m = read_manifest(tmp_path / "out" / "manifest.parquet").set_index("item_id")
    assert m.loc["coco-train2017/1002", "split"] == "test" and m.loc["coco-train2017/1050", "split"] == "test"
    hashed = m[(m.source == "coco-train2017") & ~m.index.isin(["coco-train2017/1002", "coco-train2017/1050"])]
    assert len(hashed) == 7 and set(hashed.split) <= {"train", "val"}  # test fraction 0: only following gives test
    assert (m.split[m.source == "coco-val2017"] == "test").all()
    assert stats["split_hygiene"]["hash_items_following_given_split"] == 2
    assert stats["split_hygiene"]["train_test"]["caption_overlap"] == 0
    assert stats["split_hygiene"]["train_test"]["duplicate_media"] == 0
    assert len(pd.read_csv(tmp_path / "out" / "split_conflicts.csv")) == 0  # following is not a conflict


def brute_near_duplicates(manifest, max_hamming):
    """Every pair of images in two splits within max_hamming pHash bits and with different pixels."""
    order = {"train": 0, "val": 1, "test": 2}
    rows = manifest.dropna(subset=["image_phash"]).reset_index()
    out = set()
    for a in rows.itertuples():
        for b in rows.itertuples():
            bits = bin(int(a.image_phash, 16) ^ int(b.image_phash, 16)).count("1")
            if order[a.split] < order[b.split] and bits <= max_hamming and a.image_sha256 != b.image_sha256:
                out.add((a.split, a.item_id, b.split, b.item_id, bits))
    return out


def test_near_duplicate_images_are_counted_and_listed_not_moved(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for k, (img, _) in enumerate(sd.emoji_images(24, start=100)):
        img.save(media / f"{k}.png")
        rows.append({"id": f"i{k}", "image": f"{k}.png", "split": ("train", "val", "test")[k % 3]})
    edited = np.asarray(Image.open(media / "0.png")).copy()
    edited = np.clip(edited.astype(int) - 6, 0, 255).astype(np.uint8)  # a shade darker: another sha256, same picture
    Image.fromarray(edited).save(media / "0-edited.png")
    Image.open(media / "1.png").save(media / "1.jpg", quality=90)  # recompressed: other pixels, same picture
    striped = np.asarray(Image.open(media / "12.png")).copy()
    striped[40:120, 78:82] = 255 - striped[40:120, 78:82]  # a stripe inverted: 8 pHash bits away
    Image.fromarray(striped).save(media / "12-striped.png")
    rows += [{"id": "edited", "image": "0-edited.png", "split": "test"}, {"id": "jpeg", "image": "1.jpg", "split": "train"},
             {"id": "striped", "image": "12-striped.png", "split": "val"},
             {"id": "copy", "image": "2.png", "split": "val"}]  # i2 (test) again: duplicate media, not near
    for r in rows:
        r["caption"] = f"image number {r['id']}"
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    entry = {"name": "t", "format": "table", "path": str(tmp_path / "t.csv"), "id_key": "id", "image_key": "image",
             "caption_keys": ["caption"], "split_key": "split", "split": "from_file", "media_root": str(media)}
    for hamming in (4, 10):
        stats = build_manifest(parse_params({"download": {"sources": [], "local": [entry],
                                                          "near_duplicate_hamming": hamming}}), tmp_path / "out")
        manifest = read_manifest(tmp_path / "out" / "manifest.parquet").set_index("item_id")
        near = pd.read_csv(tmp_path / "out" / "near_duplicates.csv")
        assert list(near.columns) == ["split_a", "item_id_a", "split_b", "item_id_b", "hamming"]
        listed = set(near.itertuples(index=False, name=None))
        assert listed == brute_near_duplicates(manifest, hamming) and len(listed) == len(near)
        assert {("train", "t/i0", "test", "t/edited"), ("train", "t/jpeg", "val", "t/i1")} <= {r[:4] for r in listed}
        assert (("train", "t/i12", "val", "t/striped", 8) in listed) == (hamming >= 8)
        h = stats["split_hygiene"]
        assert sum(h[p]["near_duplicate_images"] for p in ("train_val", "train_test", "val_test")) == len(near)
        assert h["train_test"]["near_duplicate_images"] == ((near.split_a == "train") & (near.split_b == "test")).sum()
        assert manifest.loc["t/edited", "split"] == "test" and manifest.loc["t/jpeg", "split"] == "train"  # not moved
        assert h["train_test"]["groups_spanning"] == h["train_test"]["duplicate_media"] == 0
        assert h["val_test"]["duplicate_media"] == 1 and ("val", "t/copy", "test", "t/i2") not in {r[:4] for r in listed}
    stats = build_manifest(parse_params({"download": {"sources": [], "local": [entry], "near_duplicate_hamming": None}}),
                           tmp_path / "out")
    assert stats["split_hygiene"]["train_test"]["near_duplicate_images"] is None
    assert len(pd.read_csv(tmp_path / "out" / "near_duplicates.csv")) == 0


def test_bucketed_near_duplicate_search_equals_all_pairs():
    rng = np.random.default_rng(0)
    n = 1500
    phash = rng.integers(0, 2**63, size=150).astype(np.uint64)[rng.integers(0, 150, n)]  # clusters of ~10 hashes
    for _ in range(4):  # each item: up to 4 random bits flipped
        flip = rng.random(n) < 0.6
        phash[flip] ^= np.uint64(1) << rng.integers(0, 64, flip.sum()).astype(np.uint64)
    split = rng.integers(0, 3, n).astype(np.int8)
    content = np.arange(n)
    content[1::50], phash[1::50] = content[0::50], phash[0::50]  # equal pixels: duplicates, never near duplicates
    bits = np.bitwise_count(phash[:, None] ^ phash[None, :])
    for max_hamming in (0, 3, 6):
        ok = (bits <= max_hamming) & (split[:, None] < split[None, :]) & (content[:, None] != content[None, :])
        expected = {(i, j, int(bits[i, j])) for i, j in zip(*np.nonzero(ok))}
        got, counts = near_duplicate_pairs(phash, split, content, max_hamming)
        assert len(got) == len(set(got)) and set(got) == expected and len(expected) > 0, max_hamming
        assert counts == Counter((int(split[i]), int(split[j])) for i, j, _ in expected)
        # a cap on the listed pairs keeps the counts whole
        capped, capped_counts = near_duplicate_pairs(phash, split, content, max_hamming, limit=3)
        assert len(capped) == min(3, len(expected)) and set(capped) <= expected and capped_counts == counts


@pytest.mark.parametrize("test_first", [False, True])
def test_a_copy_with_the_same_caption_never_takes_an_item_out_of_the_test_set(tmp_path, test_first):
    """Byte-identical images under two ids, one given train and one test, with the same first caption: the
    duplicate-caption rule keeps the test item whichever row comes first; report lists the pair as a
    conflict, drop rejects the train copy. A hash-split item with a test item's first caption follows it
    into test and is the one rejected there."""
    media = tmp_path / "media"
    media.mkdir()
    for k, (img, _) in enumerate(sd.emoji_images(3, start=60)):
        img.save(media / f"e{k}.png")
    shutil.copy(media / "e0.png", media / "e0-copy.png")
    rows = [{"id": "copy-train", "split": "train", "image": "e0.png", "caption": "the same words"},
            {"id": "copy-test", "split": "test", "image": "e0-copy.png", "caption": "the same words"},
            {"id": "held", "split": "test", "image": "e2.png", "caption": "a caption a test item has"}]
    pd.DataFrame(rows[::-1] if test_first else rows).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame([{"id": "free", "image": "e1.png", "caption": "a caption a test item has"}]).to_csv(
        tmp_path / "h.csv", index=False)
    common = {"format": "table", "media_root": str(media), "id_key": "id", "image_key": "image",
              "caption_keys": ["caption"]}
    entries = [{"name": "h", "path": str(tmp_path / "h.csv"), "split": "hash", **common},
               {"name": "t", "path": str(tmp_path / "t.csv"), "split_key": "split", "split": "from_file", **common}]
    if test_first:
        entries = entries[::-1]
    for mode in ("report", "drop"):
        stats, manifest, conflicts, rejects = run(tmp_path, entries, out=f"out-{mode}", split_conflicts=mode,
                                                  allow_empty_sources=True)  # h keeps nothing here
        rejects = rejects.set_index("item_id")
        assert manifest.loc["t/copy-test", "split"] == "test" and manifest.loc["t/held", "split"] == "test"
        assert "h/free" not in manifest.index and rejects.loc["h/free", "reason"].startswith("duplicate caption")
        assert set(conflicts.item_id) == {"t/copy-train", "t/copy-test"}
        if mode == "report":
            assert manifest.loc["t/copy-train", "split"] == "train"  # reported, kept as given
        else:
            assert "t/copy-train" not in manifest.index
            assert rejects.loc["t/copy-train", "reason"].startswith("split conflict")
        assert stats["in"] == stats["kept"] + stats["rejected"]
