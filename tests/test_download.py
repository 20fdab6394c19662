import gzip
import shutil

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

import edge_glass.sources.online as online
from conftest import ASTERISK
from edge_glass.config import parse_params
from edge_glass.download import build_manifest
from edge_glass.manifest import assign_split, dedupe_captions, read_manifest


def test_small_real_download_reconciles(small_download):
    root, _, stats = small_download
    out = root / "data" / "download"
    manifest = read_manifest(out / "manifest.parquet")
    rejects = pd.read_csv(out / "rejects.csv")
    assert stats["in"] == stats["kept"] + stats["rejected"] == len(manifest) + len(rejects)
    assert stats["sources"]["openmoji"]["kept"] == 12 and stats["sources"]["asterisk"]["kept"] == 12
    assert rejects["reason"].str.len().min() > 0
    emoji = manifest[manifest.source == "openmoji"]
    assert emoji.image_path.notna().all() and emoji.audio_path.notna().all()  # image+audio+text triples
    for row in manifest.itertuples():
        assert len(row.captions) >= 1 and all(c.strip() for c in row.captions)
        if isinstance(row.audio_path, str):
            info = sf.info(out / row.audio_path)
            assert info.samplerate == 16000 and abs(info.duration - row.audio_duration_s) < 1e-3
        if isinstance(row.image_path, str):
            assert Image.open(out / row.image_path).size == (136, 136)
    assert set(manifest.split) <= {"train", "val", "test"}


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
    assert rejects["asterisk/goodbye-again"].startswith("duplicate caption of asterisk/goodbye")
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
    stats = build_manifest(parse_params({"download": {"sources": ["coco"]}}), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / "manifest.parquet")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv").set_index("item_id")["reason"].to_dict()
    assert list(manifest.item_id) == ["coco/a.jpg"]
    assert list(manifest.captions[0]) == ["A red box.", "Red rectangle on white."]
    assert rejects["coco/b.jpg"].startswith("image decode failed")
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
