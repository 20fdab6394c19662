"""Datasets already on disk: COCO captions JSON, Karpathy splits JSON, tables (CSV/TSV/JSONL/Parquet),
and WebDataset tar shards (img2dataset, LAION-CLAP). Each ``download.local`` entry is one source.

Media paths come from the user's file, so every one is checked: it must resolve (symlinks followed)
under ``media_root``, exist, be non-empty and below ``download.max_file_mb``; anything else is a
reject with its reason. An annotation file that cannot be read at all is a systemic fault
(:class:`DataError`, naming the file) and stops the stage.

No entry of the user's file is skipped silently: an entry that cannot become an item (a COCO
annotation whose ``image_id`` has no image, a non-object entry, a table row that contradicts an
earlier row of its id, a tar member that is not a plain file or a second image of one key) is a
reject with its reason, under an id naming where it is (``coco/annotations[17]``, ``t/42#row7``).
"""

from __future__ import annotations

import ast
import glob
import json
import re
import string
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from edge_glass.core.errors import DataError, MediaError
from edge_glass.data.mediashards import read_member
from edge_glass.data.sources.base import (
    Candidate,
    Source,
    caption_reject_reason,
    file_stamp,
    read_local_file,
    text_captions,
)
from edge_glass.data.sources.registry import register_format

# what the split words of the common data sets mean (Karpathy's restval is train; Clotho's development
# is its training set, validation its val, evaluation its test)
SPLIT_WORDS = {
    "train": "train", "training": "train", "restval": "train", "development": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "evaluation": "test", "eval": "test",
}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg")


def normalise_split(value: Any) -> str | None:
    return SPLIT_WORDS.get(str(value).strip().casefold()) if value is not None else None


def split_from_filename(path: Path) -> str:
    """The split named in a file name (clotho_captions_evaluation.csv -> test), or DataError."""
    found = {SPLIT_WORDS[w] for w in re.split(r"[^a-z]+", path.stem.casefold()) if w in SPLIT_WORDS}
    if len(found) != 1:
        raise DataError(f"{path}: split=from_file needs a split_key column or a file name naming one split "
                        f"({', '.join(sorted(SPLIT_WORDS))}); found {sorted(found) or 'none'}")
    return found.pop()


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"annotation file unreadable: {path}: {exc}") from None


class LocalSource(Source):
    """Shared by the local formats: entry settings, media_root, split rules, reading and checking media."""

    group_doc = "the item (tables: group_key)"

    def __init__(self, entry, params):
        super().__init__(entry.name, params)
        self.entry = entry
        self.license, self.attribution = entry.license, entry.attribution
        self.path = Path(entry.path)
        default_root = self.path.parent if not glob.has_magic(entry.path) and "{" not in entry.path else Path(".")
        self.root = Path(entry.media_root) if entry.media_root else default_root
        self.max_bytes = params.max_file_mb * 2**20

    def settings(self):
        return {"entry": self.entry.model_dump(), "annotation": file_stamp(self.path)}

    @property
    def label(self) -> str:
        return f"download.local entry {self.name!r}"

    def empty_hint(self, rejects) -> str:
        """The two common first mistakes: a file of another format (its required fields absent, so every
        entry is rejected), and a media_root one folder off (every media file missing)."""
        guessed = None if glob.has_magic(self.entry.path) else sniff_format(self.path)
        if guessed not in (None, self.entry.format):
            return f"{self.path.name} looks like format: {guessed}, not format: {self.entry.format}"
        missing = [Path(r.reason.removeprefix("missing file: ")) for r in rejects if r.reason.startswith("missing file: ")]
        if not missing or len(missing) < len(rejects) / 2:
            return ""
        root = self.root
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())[:500] if root.is_dir() else []
        for path in missing[:20]:
            if not path.is_relative_to(root):
                continue
            rel = path.relative_to(root)
            below = next((d for d in subdirs if (d / rel).is_file()), None)
            if below is not None:
                return f"did media_root point one folder too high? {rel} is under {below} (media_root: {root})"
            if (root.parent / rel).is_file():
                return f"did media_root point one folder too low? {rel} is under {root.parent} (media_root: {root})"
        return f"media files missing: check media_root (the file's media paths are relative to it: {root})"

    @property
    def limit(self) -> int | None:
        limits = [x for x in (self.entry.limit, self.params.limit_per_source) if x is not None]
        return min(limits) if limits else None

    def media_root(self) -> Path:
        root = self.root.resolve()
        if not root.is_dir():
            raise DataError(f"download.local entry {self.name!r}: media_root {self.root} is not a folder")
        return root

    def split_for(self, value: Any = None) -> str | None:
        """The item's given split ('' for hash splits), or None when the file's value is not a split."""
        mode = self.entry.split_mode
        if mode == "hash":
            return ""
        if mode != "from_file":
            return mode
        return normalise_split(value)

    def read_media(self, rel: Any) -> bytes:
        rel = str(rel).strip()
        path = Path(rel)
        return read_local_file(path if path.is_absolute() else self.root / path, self._root_real, self.max_bytes)

    def make(self, cand: Candidate, captions: Any, *, image: Any = None, audio: Any = None, split_value: Any = None,
             group: str = ""):
        """Sample from one item's raw fields (captions, media paths, split value), or a Reject."""
        good, bad = text_captions(captions)
        if not good:
            return self.reject(cand, caption_reject_reason(bad))
        split = self.split_for(split_value)
        if split is None:
            return self.reject(cand, f"unknown split value {split_value!r} (known: {', '.join(sorted(SPLIT_WORDS))})")
        sample = self.sample(cand, good, split=split, group=group)
        try:
            if _present(image):
                sample.image, sample.image_ext = self.image_bytes(self.read_media(image))
            if _present(audio):
                sample.audio, sample.audio_ext, sample.audio_duration_s = self.audio_bytes(self.read_media(audio))
        except MediaError as exc:
            return self.reject(cand, str(exc))
        if sample.image is None and sample.audio is None:
            return self.reject(cand, "no media path (image and audio both empty)")
        return sample

    def candidates(self):
        self._root_real = self.media_root()
        yield from self.items()

    def items(self):
        raise NotImplementedError


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value).strip() != ""


def _cell(value: Any, split: bool = False) -> str:
    """A table cell as compared between rows of one id: absent is '', a split by its meaning."""
    if not _present(value):
        return ""
    text = str(value).strip()
    return (normalise_split(text) or text) if split else text


def _hashable(value: Any) -> Any:
    """An id usable as a dict key (a JSON list or object becomes its text)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _brief(value: Any) -> str:
    return f"{type(value).__name__}: {str(value)[:40]!r}"


def _member_kind(m: tarfile.TarInfo) -> str:
    return ("symlink" if m.issym() else "hard link" if m.islnk() else "device" if m.isdev()
            else "fifo" if m.isfifo() else f"type {m.type!r}")


def looks_like(data: Any) -> str | None:
    """The local format a parsed JSON annotation file looks like: coco, karpathy, or None."""
    if not isinstance(data, dict):
        return None
    first = lambda key: next((x for x in data.get(key) or [] if isinstance(x, dict)), None)  # noqa: E731
    ann, img = first("annotations"), first("images")
    if isinstance(data.get("annotations"), list) and ann is not None and {"image_id", "caption"} <= set(ann):
        return "coco"
    if img is not None and "sentences" in img:
        return "karpathy"
    return None


def looks_like_hint(data: Any, fmt: str) -> str:
    guessed = looks_like(data)
    return f"; it looks like format: {guessed}" if guessed not in (None, fmt) else ""


def sniff_format(path: Path) -> str | None:
    """The local format a file looks like from its name and (JSON) content, or None when unsure."""
    name = path.name.casefold()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if name.endswith(".json"):
        try:
            return looks_like(load_json(path))
        except DataError:
            return None
    if path.suffix.casefold() in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq"):
        return "table"
    return None


@register_format("coco")
class CocoCaptions(LocalSource):
    """COCO captions JSON: ``images[].id, file_name``; ``annotations[].image_id, caption`` (grouped per image)."""

    def items(self):
        data = load_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise DataError(f"{self.path}: not a COCO captions file (needs lists 'images' and 'annotations')"
                            f"{looks_like_hint(data, 'coco')}")
        image_ids = {_hashable(img.get("id")) for img in data["images"] if isinstance(img, dict)}
        captions = defaultdict(list)
        for i, ann in enumerate(data["annotations"]):
            # an annotation that names no image is a caption without media: a reject, not a silent loss
            if not isinstance(ann, dict):
                yield Candidate(f"{self.name}/annotations[{i}]", None, reject=f"annotation is not an object ({_brief(ann)})")
            elif _hashable(ann.get("image_id")) not in image_ids:
                yield Candidate(f"{self.name}/annotations[{i}]", None,
                                reject=f"annotation's image_id has no entry in 'images' (image_id {ann.get('image_id')!r}, "
                                       f"caption {str(ann.get('caption'))[:40]!r})")
            else:
                captions[_hashable(ann.get("image_id"))].append(ann.get("caption"))
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict):
                yield Candidate(f"{self.name}/images[{i}]", None, reject=f"images entry is not an object ({_brief(img)})")
                continue
            key = next((img[k] for k in ("id", "file_name") if img.get(k) is not None), f"images[{i}]")
            file_name = img.get("file_name")
            yield Candidate(f"{self.name}/{key}", (file_name, captions.get(_hashable(img.get("id")), [])),
                            file_stamp(self.root / str(file_name)))

    def process(self, cand):
        file_name, captions = cand.payload
        return self.make(cand, captions, image=file_name)


@register_format("karpathy")
class KarpathySplits(LocalSource):
    """Karpathy's dataset_coco.json / dataset_flickr30k.json: ``images[].filepath?, filename, split,
    sentences[].raw``; item id from ``cocoid`` or ``filename``; ``restval`` is train."""

    def items(self):
        data = load_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{self.path}: not a Karpathy split file (needs a list 'images')"
                            f"{looks_like_hint(data, 'karpathy')}")
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict):
                yield Candidate(f"{self.name}/images[{i}]", None, reject=f"images entry is not an object ({_brief(img)})")
                continue
            rel = str(Path(img.get("filepath") or "") / str(img.get("filename", "")))
            key = next((img[k] for k in ("cocoid", "filename") if img.get(k) is not None), f"images[{i}]")
            sentences = [s.get("raw") if isinstance(s, dict) else s for s in img.get("sentences") or []]
            yield Candidate(f"{self.name}/{key}", (rel, sentences, img.get("split")), file_stamp(self.root / rel))

    def process(self, cand):
        rel, sentences, split = cand.payload
        return self.make(cand, sentences, image=rel, split_value=split)


def read_table(path: Path) -> pd.DataFrame:
    """CSV (strings as written), TSV, JSONL or Parquet by extension; DataError naming the file."""
    suffix = path.suffix.casefold()
    try:
        if suffix in (".csv", ".tsv", ".tab"):
            return pd.read_csv(path, sep="\t" if suffix != ".csv" else ",", dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(path, lines=suffix != ".json", dtype=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"table not found: {path}") from None
    except Exception as exc:  # parser errors of every kind: the whole file is unusable
        raise DataError(f"table unreadable: {path}: {type(exc).__name__}: {exc}") from None
    raise DataError(f"{path}: unknown table extension {suffix!r} (csv, tsv, jsonl, json, parquet)")


def _caption_cell(value: Any) -> Any:
    """A CSV cell that holds a list ("['a', 'b']" or '["a", "b"]') becomes that list; others stay."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(parsed, list):
                return parsed
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from Parquet list columns
        return value.tolist()
    return value


@register_format("table")
class Table(LocalSource):
    """A table with one row per caption (open_clip CSV) or per item (Clotho's caption_1..5): rows with
    the same item id (``id_key``, else the media path) are one item with all their captions."""

    def _columns(self, df: pd.DataFrame) -> None:
        e = self.entry
        needed = [c for c in (e.image_key, e.audio_key, e.id_key, e.split_key, e.group_key) if c] + list(e.caption_keys)
        for template in (e.image_template, e.audio_template):
            if template:
                needed += [f for _, f, _, _ in string.Formatter().parse(template) if f]
        missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
        if missing:
            guessed = sniff_format(self.path)
            hint = f"; the file looks like format: {guessed}" if guessed not in (None, "table") else ""
            raise DataError(f"{self.path}: column(s) {missing} not found (columns: {list(df.columns)}){hint}")

    def _media(self, row: dict, medium: str) -> Any:
        key, template = getattr(self.entry, f"{medium}_key"), getattr(self.entry, f"{medium}_template")
        if key:
            return row[key]
        if template:
            return template.format(**{k: v for k, v in row.items() if isinstance(k, str)})
        return None

    def items(self):
        e = self.entry
        try:
            df = read_table(self.path)
        except DataError as exc:
            guessed = sniff_format(self.path)
            raise DataError(f"{exc}; the file looks like format: {guessed}" if guessed not in (None, "table") else str(exc)) from None
        self._columns(df)
        if e.split_mode == "from_file" and not e.split_key:
            self._file_split = split_from_filename(self.path)
        rows = df.to_dict("records")
        order: dict[str, dict] = {}
        conflicts: list[Candidate] = []
        for number, row in enumerate(rows, start=1):
            image, audio = self._media(row, "image"), self._media(row, "audio")
            key = row[e.id_key] if e.id_key else (image if _present(image) else audio)
            key = str(key).strip() if _present(key) else f"row-{len(order)}"
            fields = {"image": image, "audio": audio, "split": row[e.split_key] if e.split_key else None,
                      "group": str(row[e.group_key]) if e.group_key else ""}
            item = order.get(key)
            if item is None:
                item = order[key] = {**fields, "captions": [], "row": number}
            else:
                # a later row of the same id adds its captions only when it agrees on media, split and
                # group (one row per caption); one that disagrees would lose its media/split/group: a reject
                differ = [f"{f} {_cell(item[f])!r} vs {_cell(v)!r}" for f, v in fields.items()
                          if _cell(item[f], f == "split") != _cell(v, f == "split")]
                if differ:
                    conflicts.append(Candidate(f"{self.name}/{key}#row{number}", None, reject=(
                        f"row repeats an id with different media/split/group (row {number} vs row {item['row']} "
                        f"of id {key!r}: {'; '.join(differ)})")))
                    continue
            for c in e.caption_keys:
                value = _caption_cell(row[c])
                item["captions"].extend(value if isinstance(value, list) else [value])
        for key, item in order.items():
            stamps = [file_stamp(self.root / str(item[m])) for m in ("image", "audio") if _present(item[m])]
            yield Candidate(f"{self.name}/{key}", item, ";".join(stamps))
        yield from conflicts

    def process(self, cand):
        item = cand.payload
        split_value = item["split"] if self.entry.split_key else getattr(self, "_file_split", None)
        return self.make(cand, item["captions"], image=item["image"], audio=item["audio"], split_value=split_value,
                         group=item["group"])


def expand_braces(pattern: str) -> list[str]:
    """WebDataset-style ``{000..123}`` ranges (zero padding kept) and ``{a,b}`` alternatives."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        width = len(r.group(1))
        options = [str(i).zfill(width) for i in range(int(r.group(1)), int(r.group(2)) + 1)]
    else:
        options = body.split(",")
    return [p for o in options for p in expand_braces(head + o + tail)]


@register_format("webdataset")
class WebDataset(LocalSource):
    """Tar shards of ``KEY.ext`` members (img2dataset, LAION-CLAP): ``KEY.jpg|jpeg|png|webp`` and/or
    ``KEY.flac|wav|mp3|ogg``, the caption in ``KEY.txt`` or ``KEY.json`` (``caption`` or ``text``, a
    string or a list). Members of one key are adjacent. Plain tars are read by member offsets (headers
    only while listing); compressed tars (.tar.gz) are streamed, their members held one chunk at a time.
    img2dataset rows whose json ``status`` is not ``success`` are rejects."""

    def shard_paths(self) -> list[Path]:
        paths = sorted({p for pat in expand_braces(self.entry.path) for p in glob.glob(pat)})
        if not paths:
            raise DataError(f"download.local entry {self.name!r}: no tar shards match {self.entry.path}")
        return [Path(p) for p in paths]

    def settings(self):
        return {"entry": self.entry.model_dump()}

    def items(self):
        for tar in self.shard_paths():
            yield from self._shard_items(tar)

    def _shard_items(self, tar: Path):
        stamp = file_stamp(tar)
        plain = tar.suffix.casefold() == ".tar"
        current, members = None, {}
        try:
            with tarfile.open(tar, "r:" if plain else "r|*") as tf:
                for m in tf:
                    if m.isdir():
                        continue  # a folder header holds no data: structure, not an entry
                    where = f"{m.name} in {tar.name}"
                    if not m.isfile():
                        yield Candidate(f"{self.name}/{tar.name}:{m.name}", None, stamp,
                                        reject=f"tar member is not a plain file ({_member_kind(m)}: {where})")
                        continue
                    folder, _, base = m.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        yield Candidate(f"{self.name}/{tar.name}:{m.name}", None, stamp,
                                        reject=f"tar member has no extension (not KEY.ext: {where})")
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    if key != current:
                        if current is not None:
                            yield Candidate(f"{self.name}/{current}", members, stamp)
                        current, members = key, {}
                    ext = ext.casefold()
                    if ext in members:  # the same KEY.ext twice: which one is meant is unknowable
                        members[ext] = MediaError(f"tar member occurs twice ({where})")
                    elif m.size > self.max_bytes:
                        members[ext] = MediaError(f"member too large: {m.name} is {m.size / 2**20:.0f} MiB > "
                                                  f"download.max_file_mb={self.max_bytes // 2**20}")
                    elif plain:
                        members[ext] = (str(tar), m.offset_data, m.size)
                    else:
                        members[ext] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            # a truncated or corrupt shard: what was listed stays; the fault is one reject, not a dead stage
            yield Candidate(f"{self.name}/{tar.name}#unreadable", MediaError(f"tar shard unreadable after "
                                                                          f"{current or 'its start'}: {exc}"), stamp)
            return
        if current is not None:
            yield Candidate(f"{self.name}/{current}", members, stamp)

    @staticmethod
    def _bytes(value) -> bytes:
        if isinstance(value, MediaError):
            raise value
        if isinstance(value, tuple):
            return read_member(*value)
        return value

    def process(self, cand):
        if isinstance(cand.payload, MediaError):
            return self.reject(cand, str(cand.payload))
        members = cand.payload
        try:
            meta = {}
            if "json" in members:
                try:
                    meta = json.loads(self._bytes(members["json"]).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    return self.reject(cand, f"json member unreadable: {exc}")
                meta = meta if isinstance(meta, dict) else {}
            status = meta.get("status")
            if status is not None and status != "success":
                detail = f": {meta['error_message']}" if meta.get("error_message") else ""
                return self.reject(cand, f"img2dataset status {status!r}{detail}")
            if "txt" in members:
                try:
                    captions: Any = self._bytes(members["txt"]).decode("utf-8").strip()
                except UnicodeDecodeError:
                    return self.reject(cand, "caption is not text (txt member is not UTF-8)")
            else:
                captions = meta.get("caption", meta.get("text"))
            images = [e for e in IMAGE_EXTS if e in members]
            audios = [e for e in AUDIO_EXTS if e in members]
            for kind, found in (("image", images), ("audio", audios)):
                if len(found) > 1:  # one item holds one image and one clip: taking the first would drop the rest
                    return self.reject(cand, f"more than one {kind} member ({', '.join(found)})")
            image, audio = next(iter(images), None), next(iter(audios), None)
            if image is None and audio is None:
                return self.reject(cand, f"no image or audio member (found: {', '.join(sorted(members))})")
            good, bad = text_captions(captions)
            if not good:
                return self.reject(cand, caption_reject_reason(bad))
            sample = self.sample(cand, good, split=self.split_for())
            if image:
                sample.image, sample.image_ext = self.image_bytes(self._bytes(members[image]))
            if audio:
                sample.audio, sample.audio_ext, sample.audio_duration_s = self.audio_bytes(self._bytes(members[audio]))
        except MediaError as exc:
            return self.reject(cand, str(exc))
        except OSError as exc:
            return self.reject(cand, f"tar member unreadable: {exc}")
        return sample

    def media_root(self) -> Path:
        return Path(".").resolve()  # media live inside the tars
