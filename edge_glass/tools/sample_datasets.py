"""Small, honest datasets in every local format, built from packaged real media.

Images are OpenMoji emoji rendered with the packaged font (captions: their CLDR names and aliases),
speech clips are the Asterisk prompts (captions: their transcripts). The same files are laid out as
a researcher's copy of COCO, Karpathy's splits, an open_clip CSV, Clotho, AudioCaps and
img2dataset / LAION-CLAP WebDataset tars, so every ``download.local`` format can be tried offline:

    python -m edge_glass.tools.sample_datasets --out data/raw/samples --items 40

Tests and ``benchmarks/download.py`` use it; ``--hostile`` adds a corpus of broken and hostile media.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


def emoji_images(n: int, size: int = 160, start: int = 0) -> list[tuple[Image.Image, list[str]]]:
    """``n`` rendered emoji (no flags, keycaps, clocks, skin tones), from the ``start``-th, with captions."""
    import emoji

    from edge_glass.data.sources.openmoji import (
        EmojiRenderer,
        emoji_captions,
        emoji_group,
    )

    renderer = EmojiRenderer(size, int(size * 0.8))
    fq = emoji.STATUS["fully_qualified"]
    out = []
    for ch, data in sorted(emoji.EMOJI_DATA.items()):
        if data["status"] != fq or emoji_group(ch, data["en"]) is not None:
            continue
        try:
            img = renderer.render(ch)
        except ValueError:
            continue
        names = emoji_captions(data)
        if start > 0:
            start -= 1
            continue
        out.append((img, [names[0], f"an emoji of {names[0]}", f"{names[0]} icon", *names[1:]]))
        if len(out) == n:
            break
    return out


def speech_clips(n: int, start: int = 0) -> list[tuple[Path, str]]:
    """``n`` Asterisk prompts (real speech, 8 kHz WAV), from the ``start``-th, with their transcripts."""
    from edge_glass.data.sources.asterisk import read_transcripts

    out = []
    for key, text in sorted(read_transcripts(TRANSCRIPTS).items()):
        wav = ASTERISK / f"{key}.wav"
        if key.startswith("silence/") or text.startswith("[") or not wav.exists() or os.path.getsize(wav) < 8000:
            continue
        if start > 0:
            start -= 1
            continue
        out.append((wav, text))
        if len(out) == n:
            break
    return out


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_coco(root: Path, n: int, start: int = 0) -> Path:
    """``root/annotations/captions_val2017.json`` + ``root/val2017/*.jpg`` (several captions per image)."""
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (img, caps) in enumerate(emoji_images(n, start=start)):
        name = f"{1000 + i:012d}.jpg"
        (root / "val2017" / name).write_bytes(_jpeg(img))
        images.append({"id": 1000 + i, "file_name": name, "width": img.width, "height": img.height})
        annotations += [{"id": len(annotations) + 1, "image_id": 1000 + i, "caption": c} for c in caps[:3]]
    path = root / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def write_karpathy(root: Path, n: int, start: int = 0) -> Path:
    """``root/dataset_coco.json`` (filepath val2014/, splits train/restval/val/test) + images."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    splits = ["train", "restval", "train", "val", "test"]
    records = []
    for i, (img, caps) in enumerate(emoji_images(n, start=start)):
        name = f"COCO_val2014_{2000 + i:012d}.jpg"
        (root / "val2014" / name).write_bytes(_jpeg(img))
        records.append({"filepath": "val2014", "filename": name, "cocoid": 2000 + i, "imgid": i,
                        "split": splits[i % len(splits)],
                        "sentences": [{"raw": c, "tokens": c.split(), "sentid": i * 10 + k} for k, c in enumerate(caps[:3])]})
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": records, "dataset": "coco"}))
    return path


def write_table(root: Path, n: int, ext: str = "csv", start: int = 0) -> Path:
    """open_clip style: one row per (image, caption) pair, columns ``filepath`` and ``title``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, caps) in enumerate(emoji_images(n, start=start)):
        rel = f"images/{i:05d}.png"
        img.save(root / rel)
        rows += [{"filepath": rel, "title": c} for c in caps[:2]]
    df = pd.DataFrame(rows)
    path = root / f"pairs.{ext}"
    if ext == "csv":
        df.to_csv(path, index=False)
    elif ext == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif ext == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path, index=False)
    return path


def write_clotho(root: Path, n: int, start: int = 0) -> dict[str, Path]:
    """Clotho v2 layout: ``clotho_captions_{development,validation,evaluation}.csv`` (file_name,
    caption_1..5) and audio in ``development/``, ``validation/``, ``evaluation/``."""
    clips = speech_clips(n, start)
    parts = {"development": clips[: len(clips) * 6 // 10], "validation": clips[len(clips) * 6 // 10: len(clips) * 8 // 10],
             "evaluation": clips[len(clips) * 8 // 10:]}
    out = {}
    for part, items in parts.items():
        (root / part).mkdir(parents=True, exist_ok=True)
        rows = []
        for wav, text in items:
            name = f"{wav.stem}.wav"
            (root / part / name).write_bytes(wav.read_bytes())
            caps = [text, f"a woman says {text.rstrip('.').lower()}", f"the words {text.rstrip('.').lower()} spoken",
                    f"a recorded voice saying {text.rstrip('.').lower()}", f"speech: {text}"]
            rows.append({"file_name": name, **{f"caption_{k + 1}": c for k, c in enumerate(caps)}})
        out[part] = root / f"clotho_captions_{part}.csv"
        pd.DataFrame(rows).to_csv(out[part], index=False)
    return out


def write_audiocaps(root: Path, n: int, missing_every: int = 5, start: int = 0) -> dict[str, Path]:
    """AudioCaps layout: ``{train,val,test}.csv`` (audiocap_id, youtube_id, start_time, caption; one row
    per caption) and ``audio/{youtube_id}_{start_time}.wav``. Two clips of one video share a youtube_id;
    every ``missing_every``-th clip's audio is absent (public copies miss ~9%)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    clips = speech_clips(n, start)
    files = {s: [] for s in ("train", "val", "test")}
    for i, (wav, text) in enumerate(clips):
        video, offset_s = f"vid{i // 2:08d}", 30 * (i % 2)
        split = "train" if (i // 2) % 5 < 3 else ("val" if (i // 2) % 5 == 3 else "test")
        if i % missing_every != missing_every - 1:
            (root / "audio" / f"{video}_{offset_s}.wav").write_bytes(wav.read_bytes())
        for k, cap in enumerate([text, f"someone says {text.rstrip('.').lower()}"]):
            files[split].append({"audiocap_id": i * 10 + k, "youtube_id": video, "start_time": offset_s, "caption": cap})
    out = {}
    for split, rows in files.items():
        out[split] = root / f"{split}.csv"
        pd.DataFrame(rows, columns=["audiocap_id", "youtube_id", "start_time", "caption"]).to_csv(out[split], index=False)
    return out


COLOURS = {"red": (220, 60, 50), "blue": (50, 90, 220), "green": (60, 170, 80), "yellow": (240, 210, 60),
           "purple": (140, 70, 180), "orange": (240, 140, 40), "grey": (128, 128, 128), "black": (20, 20, 20)}


def write_large_table(root: Path, n: int, size: int = 256) -> Path:
    """``n`` distinct photo-like items for benchmarks: each emoji on a coloured background, as JPEG, with
    captions naming both ("grinning face on a red background"); one row per item, CSV."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    base = emoji_images(-(-n // len(COLOURS)), size=size)
    rows = []
    for i in range(n):
        img, caps = base[i // len(COLOURS)]
        colour, rgb = list(COLOURS.items())[i % len(COLOURS)]
        canvas = Image.new("RGB", img.size, rgb)
        canvas.paste(img, mask=Image.eval(img.convert("L"), lambda v: 0 if v > 250 else 255))
        rel = f"images/{i // 1000:03d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(_jpeg(canvas, 90))
        rows.append({"image": rel, "caption": f"{caps[0]} on a {colour} background"})
    path = root / "items.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(root: Path, n: int, per_shard: int = 8, start: int = 0) -> str:
    """img2dataset layout: ``NNNNN.tar`` (KEY.jpg, KEY.txt, KEY.json with status) + ``NNNNN.parquet`` +
    ``_stats.json``; one sample per shard has ``status: failed_to_download`` (no image)."""
    root.mkdir(parents=True, exist_ok=True)
    items = emoji_images(n, start=start)
    for s in range(0, len(items), per_shard):
        shard = f"{s // per_shard:05d}"
        rows = []
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for i, (img, caps) in enumerate(items[s: s + per_shard], start=s):
                key = f"{shard}{i % per_shard:04d}"
                failed = i % per_shard == per_shard - 1
                meta = {"key": key, "caption": caps[0], "url": f"https://example.invalid/{key}.jpg",
                        "status": "failed_to_download" if failed else "success",
                        "error_message": "HTTP 404" if failed else None}
                if not failed:
                    _add(tar, f"{key}.jpg", _jpeg(img))
                    _add(tar, f"{key}.txt", caps[0].encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                rows.append(meta)
        pd.DataFrame(rows).to_parquet(root / f"{shard}.parquet", index=False)
    (root / "_stats.json").write_text(json.dumps({"count": len(items)}))
    return str(root / f"{{00000..{(len(items) - 1) // per_shard:05d}}}.tar")


def write_clap_webdataset(root: Path, n: int, start: int = 0) -> Path:
    """LAION-CLAP layout: ``train/0.tar`` with KEY.flac and KEY.json ``{"text": [...]}``."""
    import soundfile as sf

    from edge_glass.data.media import load_audio

    (root / "train").mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "train" / "0.tar", "w") as tar:
        for i, (wav, text) in enumerate(speech_clips(n, start)):
            buf = io.BytesIO()
            sf.write(buf, load_audio(wav, 48000), 48000, format="FLAC")
            _add(tar, f"{i}.flac", buf.getvalue())
            _add(tar, f"{i}.json", json.dumps({"text": [text, f"a voice says {text.lower()}"], "tag": ["speech"]}).encode())
    return root / "train" / "*.tar"


def _wav_with_format_tag(tag: int, seconds: float = 1.0, sr: int = 16000) -> bytes:
    """A WAV whose fmt chunk names an audio codec libsndfile does not decode."""
    data = (np.sin(np.arange(int(sr * seconds)) / 5.0) * 8000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, sr, sr * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_hostile(root: Path) -> tuple[Path, dict[str, str]]:
    """A JSONL table of broken and hostile media: ``(table path, {item key: expected outcome})``.

    Outcome is ``kept`` or the start of the reject reason."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    (img, caps), = emoji_images(1)
    jpg = _jpeg(img)
    png = io.BytesIO()
    img.save(png, "PNG")
    files: dict[str, bytes | None] = {}
    # a real 20990 x 29700 PNG (1-bit: 78 MB of pixels, a few hundred kB on disk): refused from its header
    bomb = io.BytesIO()
    Image.new("1", (20990, 29700), 1).save(bomb, "PNG")
    files["bomb.png"] = bomb.getvalue()
    big = img.resize((6400, 6400))  # 41 Mpx JPEG: over the test's max_pixels, decoded at 1/8 scale instead
    files["big.jpg"] = _jpeg(big, 80)
    files["truncated.jpg"] = jpg[: len(jpg) // 2]
    files["empty.jpg"] = b""
    files["text.jpg"] = b"this is not an image, just text with a .jpg name\n"
    files["png_named.jpg"] = png.getvalue()
    cmyk = io.BytesIO()
    img.convert("CMYK").save(cmyk, "JPEG")
    files["cmyk.jpg"] = cmyk.getvalue()
    grey16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    p16 = io.BytesIO()
    Image.fromarray(grey16).save(p16, "PNG")  # mode I;16: naive conversion would clip it to white
    files["grey16.png"] = p16.getvalue()
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE)
    pa_buf = io.BytesIO()
    palette.save(pa_buf, "PNG", transparency=palette.getpixel((0, 0)))  # the background colour is transparent
    files["palette_alpha.png"] = pa_buf.getvalue()
    gif = io.BytesIO()
    frames = [img.convert("P"), img.rotate(90).convert("P"), img.rotate(180).convert("P")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.gif"] = gif.getvalue()
    files["codec.wav"] = _wav_with_format_tag(0x1234)
    files["speech.wav"] = speech_clips(1)[0][0].read_bytes()
    for name, data in files.items():
        (media / name).write_bytes(data)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.jpg").write_bytes(jpg)
    link = media / "link_out.jpg"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(outside / "secret.jpg")
    rows = [  # (key, image, audio, caption, expected)
        ("bomb", "media/bomb.png", None, "a huge scan", "image too large"),
        ("big", "media/big.jpg", None, "a big photo", "kept"),
        ("truncated", "media/truncated.jpg", None, "cut off", "image decode failed"),
        ("empty", "media/empty.jpg", None, "nothing", "empty file"),
        ("text", "media/text.jpg", None, "not an image", "image decode failed"),
        ("png_named", "media/png_named.jpg", None, "a png in disguise", "kept"),
        ("cmyk", "media/cmyk.jpg", None, "printer colours", "kept"),
        ("grey16", "media/grey16.png", None, "sixteen bit grey", "kept"),
        ("palette_alpha", "media/palette_alpha.png", None, "palette with alpha", "kept"),
        ("animated", "media/animated.gif", None, "an animation", "kept"),
        ("codec", None, "media/codec.wav", "odd codec", "audio decode failed"),
        ("missing", "media/no_such_file.jpg", None, "gone", "missing file"),
        ("escape", "../" + outside.name + "/secret.jpg", None, "dot dot", "path escapes media_root"),
        ("symlink", "media/link_out.jpg", None, "linked out", "path escapes media_root"),
        ("absolute", str((media / "png_named.jpg").resolve()), None, "absolute inside", "kept"),
        ("not_text", "media/cmyk.jpg", None, 12345, "caption is not text"),
        ("dict_caption", "media/grey16.png", None, {"en": "a dict"}, "caption is not text"),
        ("speech", None, "media/speech.wav", "a voice", "kept"),
    ]
    table = root / "hostile.jsonl"
    with open(table, "w") as f:
        for key, image, audio, caption, _ in rows:
            f.write(json.dumps({"key": key, "image": image, "audio": audio, "caption": caption}) + "\n")
    return table, {key: expected for key, *_, expected in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/raw/samples", help="folder to write (default: data/raw/samples)")
    parser.add_argument("--items", type=int, default=40, help="items per format (default: 40)")
    parser.add_argument("--hostile", action="store_true", help="also write the hostile-media corpus")
    args = parser.parse_args(argv)
    out, n = Path(args.out), args.items
    written = {  # each format gets its own items, so that formats can be combined in one run
        "coco": write_coco(out / "coco", n),
        "karpathy": write_karpathy(out / "karpathy", n, start=n),
        "table": write_table(out / "openclip", n, start=2 * n),
        "webdataset": write_webdataset(out / "img2dataset", n, start=3 * n),
        "clotho": write_clotho(out / "clotho", n),
        "audiocaps": write_audiocaps(out / "audiocaps", n, start=n),
        "clap": write_clap_webdataset(out / "clap", n, start=2 * n),
    }
    if args.hostile:
        written["hostile"] = write_hostile(out / "hostile")[0]
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
