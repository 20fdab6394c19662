"""Every drop counted (issue 18): each raw entry a source reads is kept or listed in rejects.csv with a
reason, per source ``in`` counts what was read (not kept + rejected), and the stage refuses to finish
when the counts do not reconcile; long audio is refused from its header, never decoded."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from edge_glass import download
from edge_glass.config import parse_params
from edge_glass.data.manifest import read_manifest
from edge_glass.download import build_manifest
from edge_glass.tools import sample_datasets as sd


def run(tmp_path, entries, **download_params):
    params = parse_params({"download": {"sources": [], "local": entries, **download_params}})
    out = tmp_path / "out"
    stats = build_manifest(params, out)
    rejects = pd.read_csv(out / "rejects.csv")
    return stats, read_manifest(out / "manifest.parquet"), rejects


def reasons(rejects) -> dict[str, str]:
    return rejects.set_index("item_id")["reason"].to_dict()


def check_reconciles(stats, manifest, rejects, name, raw_entries):
    s = stats["sources"][name]
    assert s["in"] == raw_entries, s  # counted as read, not derived from the outcome
    assert s["in"] == s["kept"] + s["rejected"]
    assert s["kept"] == (manifest.source == name).sum() and s["rejected"] == (rejects.source == name).sum()


def test_coco_orphan_and_non_object_entries_are_rejects(tmp_path):
    path = sd.write_coco(tmp_path / "coco", 4)
    data = json.loads(path.read_text())
    data["annotations"] += [{"id": 90, "image_id": 555, "caption": "a caption of no image"},
                            "not an annotation", {"id": 91, "image_id": [1, 2], "caption": "list id"}]
    data["images"].append(["not", "an", "image"])
    path.write_text(json.dumps(data))
    entry = {"name": "c", "format": "coco", "path": str(path), "media_root": str(tmp_path / "coco" / "val2017")}
    stats, manifest, rejects = run(tmp_path, [entry])
    n_ann = len(data["annotations"])
    why = reasons(rejects)
    assert why[f"c/annotations[{n_ann - 3}]"].startswith("annotation's image_id has no entry in 'images' (image_id 555")
    assert why[f"c/annotations[{n_ann - 2}]"].startswith("annotation is not an object (str:")
    assert why[f"c/annotations[{n_ann - 1}]"].startswith("annotation's image_id has no entry in 'images' (image_id [1, 2]")
    assert why["c/images[4]"].startswith("images entry is not an object (list:")
    # raw entries read: 5 image entries and the 3 annotations that could not join an image
    check_reconciles(stats, manifest, rejects, "c", 5 + 3)
    assert len(manifest) == 4 and stats["sources"]["c"]["rejected_by_reason"] == {
        "annotation is not an object": 1, "annotation's image_id has no entry in 'images'": 2,
        "images entry is not an object": 1}


def test_karpathy_non_object_image_entry_is_a_reject(tmp_path):
    path = sd.write_karpathy(tmp_path / "k", 3)
    data = json.loads(path.read_text())
    data["images"].insert(1, 42)
    path.write_text(json.dumps(data))
    stats, manifest, rejects = run(tmp_path, [{"name": "k", "format": "karpathy", "path": str(path)}])
    assert reasons(rejects)["k/images[1]"] == "images entry is not an object (int: '42')"
    check_reconciles(stats, manifest, rejects, "k", 4)


def test_table_rows_of_one_id_merge_only_when_they_agree(tmp_path):
    """Rows of one id add captions when media/split/group agree (one row per caption); a row that
    disagrees would lose its media or split: it is a reject naming both rows."""
    path = sd.write_table(tmp_path / "t", 3)  # two rows (captions) per image, keyed by filepath
    df = pd.read_csv(path, dtype=str)
    df["split"] = "train"
    df["key"] = df["filepath"]
    extra = pd.DataFrame([
        {"filepath": "images/00001.png", "title": "same image, a third caption", "split": "training", "key": "images/00000.png"},
        {"filepath": "images/00000.png", "title": "moved to test", "split": "test", "key": "images/00000.png"},
    ])
    df = pd.concat([df, extra], ignore_index=True)
    df.to_csv(path, index=False)
    entry = {"name": "t", "format": "table", "path": str(path), "image_key": "filepath", "caption_keys": ["title"],
             "id_key": "key", "split_key": "split"}
    stats, manifest, rejects = run(tmp_path, [entry])
    why = reasons(rejects)
    assert why["t/images/00000.png#row7"] == ("row repeats an id with different media/split/group (row 7 vs row 1 of id "
                                              "'images/00000.png': image 'images/00000.png' vs 'images/00001.png')")
    assert why["t/images/00000.png#row8"].endswith("split 'train' vs 'test')")
    kept = manifest.set_index("item_id")
    assert len(kept.loc["t/images/00000.png", "captions"]) == 2  # the conflicting rows added no caption
    assert kept.loc["t/images/00000.png", "split"] == "train"
    # raw entries: 3 items (6 agreeing rows) + 2 conflicting rows
    check_reconciles(stats, manifest, rejects, "t", 3 + 2)


def _tar_add(tar, name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_webdataset_odd_members_are_rejects(tmp_path):
    imgs = sd.emoji_images(3)
    png = io.BytesIO()
    imgs[2][0].save(png, "PNG")
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        _tar_add(tar, "sub", kind=tarfile.DIRTYPE)  # a folder header: structure, not an entry
        _tar_add(tar, "sub/a.jpg", sd._jpeg(imgs[0][0]))
        _tar_add(tar, "sub/a.txt", imgs[0][1][0].encode())
        _tar_add(tar, "sub/b.jpg", kind=tarfile.SYMTYPE, link="a.jpg")
        _tar_add(tar, "sub/b.txt", b"a linked image")
        _tar_add(tar, "README", b"no extension")
        _tar_add(tar, "c.jpg", sd._jpeg(imgs[1][0]))
        _tar_add(tar, "c.png", png.getvalue())  # a second image of key c
        _tar_add(tar, "c.txt", b"two images")
        _tar_add(tar, "d.jpg", sd._jpeg(imgs[2][0]))
        _tar_add(tar, "d.jpg", sd._jpeg(imgs[1][0]))  # the same member name twice
        _tar_add(tar, "d.txt", b"which image")
    stats, manifest, rejects = run(tmp_path, [{"name": "w", "format": "webdataset", "path": str(path)}])
    why = reasons(rejects)
    assert why["w/shard.tar:sub/b.jpg"] == "tar member is not a plain file (symlink: sub/b.jpg in shard.tar)"
    assert why["w/shard.tar:README"] == "tar member has no extension (not KEY.ext: README in shard.tar)"
    assert why["w/c"] == "more than one image member (jpg, png)"
    assert why["w/d"] == "tar member occurs twice (d.jpg in shard.tar)"
    assert why["w/sub/b"].startswith("no image or audio member")  # its image was the link
    assert list(manifest.item_id) == ["w/sub/a"]
    # raw entries: keys sub/a, sub/b, c, d and the two members that belong to no key
    check_reconciles(stats, manifest, rejects, "w", 4 + 2)


def test_in_counts_what_was_read_so_a_lost_item_stops_the_stage(tmp_path, monkeypatch):
    """``in`` is counted as candidates are read; an item that vanishes later (here: finalise dropping
    one without a reject) no longer passes as reconciled."""
    path = sd.write_table(tmp_path / "t", 3)
    entry = {"name": "t", "format": "table", "path": str(path), "image_key": "filepath", "caption_keys": ["title"]}
    finalise = download.finalise

    def lossy(ledger, params):
        out = finalise(ledger, params)
        ledger.samples.pop()
        return out

    monkeypatch.setattr(download, "finalise", lossy)
    with pytest.raises(AssertionError, match=r"do not reconcile .*t: 3 in, 2 kept \+ rejected"):
        run(tmp_path, [entry])


def test_limit_counts_only_what_it_read(tmp_path):
    path = sd.write_table(tmp_path / "t", 6)
    df = pd.read_csv(path, dtype=str)
    df.loc[df.filepath == "images/00001.png", "filepath"] = "images/missing.png"
    df.to_csv(path, index=False)
    entry = {"name": "t", "format": "table", "path": str(path), "image_key": "filepath", "caption_keys": ["title"],
             "limit": 3}
    stats, manifest, rejects = run(tmp_path, [entry], shard_size=10)
    # read until 3 kept: 00000, missing (rejected), 00002, 00003; the rest of the chunk is not counted
    assert stats["sources"]["t"] == {**stats["sources"]["t"], "in": 4, "kept": 3, "rejected": 1}
    assert stats["in"] == 4


def _wav(path, seconds, sr=8000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.repeat(wav[:, None], channels, axis=1), sr, subtype="PCM_16")


def test_long_audio_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    _wav(clips / "ok.wav", 2.0)
    _wav(clips / "long.wav", 31.0)  # over download.audio.max_duration_s=30
    _wav(clips / "wide.wav", 2.0, sr=48000, channels=6)  # 2.2 MiB as float32, over max_decoded_mb=2
    pd.DataFrame({"audio": ["ok.wav", "long.wav", "wide.wav"], "caption": ["a tone", "a long tone", "six channels"]}
                 ).to_csv(clips / "t.csv", index=False)
    decoded = []
    read = sf.SoundFile.read

    def spy(self, *args, **kwargs):
        decoded.append((self.name if isinstance(self.name, str) else "bytes", self.frames))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    entry = {"name": "a", "format": "table", "path": str(clips / "t.csv"), "audio_key": "audio", "caption_keys": ["caption"]}
    stats, manifest, rejects = run(tmp_path, [entry], audio={"max_decoded_mb": 2})
    why = reasons(rejects)
    assert why["a/long.wav"] == ("audio too long (31.00s > download.audio.max_duration_s=30.0s, from the file header; "
                                 "not decoded)")
    assert why["a/wide.wav"].startswith("audio too large to decode (2 MiB as float32: 96000 frames x 6 channels > "
                                        "download.audio.max_decoded_mb=2")
    assert list(manifest.item_id) == ["a/ok.wav"]
    # only the accepted clip was decoded (and its stored FLAC read back for the content hash)
    assert 31 * 8000 not in [frames for _, frames in decoded] and 96000 not in [frames for _, frames in decoded]
    assert 16000 in [frames for _, frames in decoded]
    check_reconciles(stats, manifest, rejects, "a", 3)


def test_decode_stops_at_the_limit_when_the_header_does_not_know_the_length(monkeypatch):
    from edge_glass.data import media

    buf = io.BytesIO()
    sf.write(buf, np.full(8000 * 4, 0.1, np.float32), 8000, format="WAV", subtype="PCM_16")
    monkeypatch.setattr(media, "_UNKNOWN_FRAMES", 0)  # every length counts as unknown: only the capped read guards
    asked, read = [], sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: asked.append(frames) or read(self, frames, **kw))
    with pytest.raises(media.MediaError, match=r"audio too long \(more frames than its header said, over "
                                               r"download.audio.max_duration_s=3.0; decode stopped\)"):
        media.load_audio(buf.getvalue(), 16000, max_duration_s=3.0)
    assert asked == [8000 * 3 + 1]  # the decode itself stopped one frame past the limit
    assert len(media.load_audio(buf.getvalue(), 16000, max_duration_s=4.0)) == 16000 * 4
