"""What every download source is: a cheap, ordered list of candidates and a per-candidate ``process``.

The download stage asks a source for its ``candidates()`` (annotation rows, tar members, emoji
code points: cheap to list, in a fixed order), cuts them into chunks of ``download.shard_size``,
and calls ``process`` on each candidate of a chunk that is not already finished (in worker
threads). ``process`` returns a :class:`Sample` carrying normalised media bytes, or a
:class:`Reject` with a reason; it must never raise for one bad item: only systemic faults (an
unreadable annotation file, a missing package) raise, as :class:`DataError` naming the file.

Every raw entry a source reads becomes (part of) a candidate: an entry that cannot be an item (an
annotation naming no image, a table row contradicting an earlier row of its id, a tar member that is
not a plain file) is a candidate born rejected (``Candidate.reject``), so it is counted in the
source's ``in`` and listed in rejects.csv instead of vanishing; the stage then checks
``in = kept + rejected`` per source.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_glass.config.download import DownloadParams
from edge_glass.data.manifest import Reject, Sample, reason_kind
from edge_glass.data.media import normalised_audio, normalised_image

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One would-be item. ``stamp`` changes when its input changes (file size and mtime), so a
    resumed download redoes a chunk whose inputs were edited in place. ``reject``: the reason when the
    entry is already known to be unusable while listing (it is never processed, only recorded)."""

    item_id: str
    payload: Any
    stamp: str = ""
    reject: str = ""


class Source:
    """Base of every source; subclasses set ``license``/``attribution`` and implement the two methods."""

    license = ""
    attribution = ""
    # how items are grouped for hash splits: items of one group always land in one split
    group_doc = "the item itself"
    # what an item's audio is, reported with the per-source metrics: a caption read aloud makes
    # audio->text partly a speech-recognition test of the caption itself
    audio_kind = "sound described by the captions"

    def __init__(self, name: str, params: DownloadParams):
        self.name = name
        self.params = params

    def candidates(self) -> Iterator[Candidate]:
        raise NotImplementedError

    def process(self, cand: Candidate) -> Sample | Reject:
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything besides the candidates that changes this source's output (part of the resume key)."""
        return {}

    @property
    def label(self) -> str:
        """How messages name this source: the params key that configures it."""
        return f"download source {self.name!r}"

    def empty_hint(self, rejects: list[Reject]) -> str:
        """A guess at the cause when this source keeps nothing ('' when there is none to make)."""
        return ""

    def fingerprint(self) -> str:
        d = self.params
        return json.dumps({"source": self.name, "class": type(self).__name__, "settings": self.settings(),
                           "image": d.image.model_dump(), "audio": d.audio.model_dump(),
                           "max_file_mb": d.max_file_mb}, sort_keys=True, default=str)

    # helpers shared by the sources -------------------------------------------------------------
    def sample(self, cand: Candidate, captions: list, **fields) -> Sample:
        return Sample(item_id=cand.item_id, source=self.name, captions=captions,
                      license=fields.pop("license", self.license), attribution=fields.pop("attribution", self.attribution),
                      **fields)

    def reject(self, cand: Candidate, reason: str) -> Reject:
        return Reject(cand.item_id, self.name, reason)

    def image_bytes(self, data: bytes) -> tuple[bytes, str]:
        """Normalised image and its extension under ``download.image``, or MediaError (``media.normalised_image``)."""
        return normalised_image(data, self.params.image)

    def audio_bytes(self, data: bytes | np.ndarray, sample_rate: int | None = None) -> tuple[bytes, str, float]:
        """Normalised audio, its extension and duration under ``download.audio``, or MediaError
        (``media.normalised_audio``). ``data``: encoded file bytes, or a float array at ``sample_rate``."""
        return normalised_audio(data, self.params.audio, sample_rate)


def empty_source_line(source: Source, read: int, kept: int, rejects: list[Reject], top: int = 3) -> str:
    """One line on a source that kept nothing: how many entries it read, its top reject reasons with
    counts and one example each, and a hint where the pattern is recognisable, e.g.
    ``download.local entry 'coco': 0 of 2,389 kept; 2,389 "missing file" (e.g. coco/1: missing file:
    /data/coco/000001.png); did media_root point one folder too high? ...``."""
    by_kind: dict[str, list[Reject]] = {}
    for r in rejects:
        by_kind.setdefault(reason_kind(r.reason), []).append(r)
    ranked = sorted(by_kind.items(), key=lambda kv: -len(kv[1]))  # stable: first-seen order among equals
    parts = [f'{len(rs):,} "{kind}" (e.g. {rs[0].item_id}: {rs[0].reason})' for kind, rs in ranked[:top]]
    if len(ranked) > top:
        parts.append(f"{sum(len(rs) for _, rs in ranked[top:]):,} for {len(ranked) - top} other reason(s)")
    line = f"{source.label}: {kept:,} of {read:,} kept; " + (", ".join(parts) if parts else "it has no entries")
    hint = source.empty_hint(rejects)
    return line + (f"; {hint}" if hint else "")


def empty_sources_message(sources: list[Source], read: dict[str, int], samples: list[Sample], rejects: list[Reject],
                          allow_empty: bool, rejects_path: Path) -> str:
    """The error for sources that kept nothing ('' when there is none to raise).

    Nothing kept at all is always an error. One source empty beside others that keep items is an error
    too (a silent empty source is how a mixture goes wrong unnoticed) unless ``allow_empty``, which
    logs the same lines as warnings."""
    kept = {s.source for s in samples}
    by_source: dict[str, list[Reject]] = {}
    for r in rejects:
        by_source.setdefault(r.source, []).append(r)
    lines = [empty_source_line(src, read.get(src.name, 0), 0, by_source.get(src.name, []))
             for src in sources if src.name not in kept]
    if not lines:
        return ""
    if kept and allow_empty:
        for line in lines:
            log.warning("%s (download.allow_empty_sources: going on without it)", line)
        return ""
    tail = f"every reject with its reason: {rejects_path}"
    if kept:
        tail += "; download.allow_empty_sources=true goes on without an empty source"
    return "\n".join(lines[:-1] + [f"{lines[-1]} ({tail})"])


def file_stamp(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def text_captions(values: Any) -> tuple[list[str], list[str]]:
    """Split caption values into text captions and descriptions of those that are not text.

    A value may be a string, a list of them, or None/empty. Numbers, dicts, booleans are not text.
    """
    if values is None:
        return [], []
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or isinstance(values, dict):
        values = [values]
    good, bad = [], []
    for v in values:
        if isinstance(v, str):
            good.append(v)
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        else:
            bad.append(f"{type(v).__name__}: {str(v)[:40]!r}")
    return good, bad


def caption_reject_reason(bad: list[str]) -> str:
    return f"caption is not text ({bad[0]})" if bad else "empty caption"
