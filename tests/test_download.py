import gzip
import io
import shutil
import tarfile

import numpy as np
import pandas as pd
import soundfile as sf
from helpers.setup import ASTERISK
from PIL import Image

import edge_glass.data.sources.online as online
from edge_glass.config import parse_params
from edge_glass.data.manifest import dedupe_captions, media_ref, read_manifest
from edge_glass.data.splits import assign_split
from edge_glass.download import build_manifest


def test_small_real_download_reconciles(small_download):
    root, _, stats = small_download
    out = root / "data" / "download"
    manifest = read_manifest(out / "manifest.parquet")
    rejects = pd.read_csv(out / "rejects.csv")
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(manifest) + len(rejects)
    assert stats["sources"]["openmoji"]["kept"] == 12 and stats["sources"]["asterisk"]["kept"] == 12
    assert rejects["reason"].str.len().min() > 0
    emoji = manifest[manifest.source == "openmoji"]
    assert emoji.image_shard.notna().all() and emoji.audio_shard.notna().all()  # image+audio+text triples
    for row in manifest.itertuples():
        assert len(row.captions) >= 1 and all(c.strip() for c in row.captions)
        if (ref := media_ref(row, "audio")) is not None:
            info = sf.info(io.BytesIO(ref.read(out)))
            assert info.samplerate == 16000 and info.format == "FLAC" and abs(info.duration - row.audio_duration_s) < 1e-3
        if (ref := media_ref(row, "image")) is not None:
            assert Image.open(io.BytesIO(ref.read(out))).size == (136, 136)
    assert set(manifest.split) <= {"train", "val", "test"}
    # media live in a few tar shards (no file per item); the members are the bytes the manifest points at
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 5 + 2 * 4, files  # manifest, rejects, split_conflicts, near_duplicates, + per chunk
    with tarfile.open(out / emoji.image_shard.iloc[0]) as tar:
        member = tar.getmember(emoji.image_member.iloc[0])
        assert member.offset_data == emoji.image_offset.iloc[0] and member.size == emoji.image_size.iloc[0]


def test_split_is_deterministic_and_follows_fractions():
    ids = [f"item/{i}" for i in range(5000)]
    a = [assign_split(i, 0, 0.8, 0.1) for i in ids]
    assert a == [assign_split(i, 0, 0.8, 0.1) for i in ids]
    assert a != [assign_split(i, 1, 0.8, 0.1) for i in ids]
    frac = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.02 and abs(frac["val"] - 0.1) < 0.015


def test_dedupe_captions_normalises_and_caps():
    caps = ["grinning_face", "Grinning  face.", "", "  ", "grinning", "smile", "joy"]
    assert dedupe_captions(caps, 3) == ["grinning face", "grinning", "smile"]


def _fake_asterisk(tmp_path):
    """Real prompts plus corrupt, silent, too-short, bracketed, empty and duplicate entries."""
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    good = ["added", "activated", "goodbye", "hello-world"]
    for key in good:
        shutil.copy(ASTERISK / f"{key}.wav", sounds / f"{key}.wav")
    shutil.copy(ASTERISK / "goodbye.wav", sounds / "goodbye-again.wav")
    (sounds / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage-not-a-wave-file")
    sf.write(sounds / "silent.wav", np.zeros(16000, dtype=np.float32), 8000)
    sf.write(sounds / "short.wav", 0.3 * np.sin(np.arange(400) / 3.0).astype(np.float32), 8000)
    shutil.copy(ASTERISK / "added.wav", sounds / "blank-text.wav")
    lines = [f"{k}: {t}" for k, t in [("added", "Added."), ("activated", "Activated."), ("goodbye", "Goodbye."),
                                       ("hello-world", "Hello world."), ("goodbye-again", "goodbye"),
                                       ("corrupt", "Corrupt file."), ("silent", "Silence here."),
                                       ("short", "Too short."), ("beep", "[a beep tone]"), ("blank-text", "   "),
                                       ("missing", "No such file.")]]
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as f:
        f.write("; comment\n\n" + "\n".join(lines) + "\n")
    return sounds, transcripts


def test_bad_audio_inputs_are_quarantined_with_reasons(tmp_path):
    sounds, transcripts = _fake_asterisk(tmp_path)
    params = parse_params({"download": {"sources": ["asterisk"], "asterisk": {"sounds_dir": str(sounds), "transcripts": str(transcripts)}}})
    stats = build_manifest(params, tmp_path / "out")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv").set_index("item_id")["reason"].to_dict()
    kept = set(read_manifest(tmp_path / "out" / "manifest.parquet").item_id)
    assert kept == {"asterisk/added", "asterisk/activated", "asterisk/goodbye", "asterisk/hello-world"}
    assert rejects["asterisk/corrupt"].startswith("audio decode failed")
    assert rejects["asterisk/silent"].startswith("silent audio")
    assert rejects["asterisk/short"].startswith("audio too short")
    assert rejects["asterisk/beep"].startswith("non-speech description")
    assert rejects["asterisk/blank-text"] == "empty caption"
    assert rejects["asterisk/missing"].startswith("audio file missing")
    assert rejects["asterisk/goodbye-again"] == "duplicate caption: 'goodbye' is the first caption of asterisk/goodbye"
    assert stats["in"] == 11 == stats["kept"] + stats["rejected"]


def test_online_rows_adapter_quarantines_bad_images(tmp_path, monkeypatch):
    good = Image.new("RGB", (64, 48), "white")
    good.paste((200, 30, 30), (10, 10, 40, 30))
    rows = [
        {"image": good, "caption": ["A red box.", "a red box", "Red rectangle on white."], "filename": "a.jpg"},
        {"image": {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}, "caption": ["broken"], "filename": "b.jpg"},
        {"image": Image.new("RGB", (32, 32), "black"), "caption": ["all black"], "filename": "c.jpg"},
        {"image": good, "caption": [], "filename": "d.jpg"},
    ]
    monkeypatch.setattr(online, "load_hub_rows", lambda name, params: rows)
    monkeypatch.setattr(online.HubSource, "fingerprint", lambda self: "test rows")
    stats = build_manifest(parse_params({"download": {"sources": ["coco"]}}), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / "manifest.parquet")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv").set_index("item_id")["reason"].to_dict()
    assert list(manifest.item_id) == ["coco/a.jpg"]
    assert list(manifest.captions[0]) == ["A red box.", "Red rectangle on white."]
    assert rejects["coco/b.jpg"].startswith("image decode failed")  # truncated PNG
    assert rejects["coco/c.jpg"].startswith("blank image")
    assert rejects["coco/d.jpg"] == "empty caption"
    assert stats["in"] == 4


def test_openmoji_excluded_groups_are_counted_as_rejects(tmp_path):
    params = parse_params({"download": {"sources": ["openmoji"], "limit_per_source": 5, "openmoji": {"speak_captions": False}}})
    stats = build_manifest(params, tmp_path / "out")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert stats["kept"] == 5
    assert rejects.reason.str.contains("excluded group 'keycaps'").any()
    assert stats["in"] == 5 + len(rejects)
    assert stats["sources"]["openmoji"]["rejected_by_reason"]["excluded group 'keycaps'"] == len(rejects)


def test_hub_audiocaps_is_one_item_per_clip_with_all_captions(tmp_path, monkeypatch):
    """The hub has a row per caption; one clip (youtube_id + start_time) is one item, one video one split group."""
    tone = lambda f: {"array": (0.3 * np.sin(np.arange(16000) * f / 16000 * 2 * np.pi)).astype(np.float32),  # noqa: E731
                      "sampling_rate": 16000}
    rows = [
        {"audiocap_id": 1, "youtube_id": "v1", "start_time": 30, "caption": "a dog barks", "audio": tone(440)},
        {"audiocap_id": 2, "youtube_id": "v1", "start_time": 30, "caption": "barking nearby", "audio": tone(440)},
        {"audiocap_id": 3, "youtube_id": "v1", "start_time": 90, "caption": "rain falls", "audio": tone(300)},
        {"audiocap_id": 4, "youtube_id": "v2", "start_time": 0, "caption": "a car passes", "audio": tone(200)},
        {"audiocap_id": 5, "youtube_id": "v1", "start_time": 30, "caption": "a dog is barking", "audio": tone(440)},
    ]
    monkeypatch.setattr(online, "load_hub_rows", lambda name, params: rows)
    stats = build_manifest(parse_params({"download": {"sources": ["audiocaps"]}}), tmp_path / "out")
    m = read_manifest(tmp_path / "out" / "manifest.parquet").set_index("item_id")
    assert sorted(m.index) == ["audiocaps/v1_30", "audiocaps/v1_90", "audiocaps/v2_0"]
    assert list(m.loc["audiocaps/v1_30", "captions"]) == ["a dog barks", "barking nearby", "a dog is barking"]
    assert m.loc["audiocaps/v1_30", "group"] == m.loc["audiocaps/v1_90", "group"] == "audiocaps/v1"
    assert m.loc["audiocaps/v1_30", "split"] == m.loc["audiocaps/v1_90", "split"]
    assert stats["in"] == 3 and stats["kept"] == 3
