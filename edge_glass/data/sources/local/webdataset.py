"""``format: webdataset``: tar shards (brace-expanded patterns) whose members share a key: image, audio and caption files."""

from __future__ import annotations

import glob
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from edge_glass.core.errors import DataError, MediaError
from edge_glass.data.mediashards import read_member
from edge_glass.data.sources.base import (
    Candidate,
    caption_reject_reason,
    file_stamp,
    text_captions,
)
from edge_glass.data.sources.local.base import AUDIO_EXTS, IMAGE_EXTS, LocalSource
from edge_glass.data.sources.registry import register_format


def _member_kind(m: tarfile.TarInfo) -> str:
    return ("symlink" if m.issym() else "hard link" if m.islnk() else "device" if m.isdev()
            else "fifo" if m.isfifo() else f"type {m.type!r}")


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
