"""What a gallery holds: its media files, found in a folder tree, a ``download.local`` entry or a workspace split.

Every listed medium is an :class:`Entry` that names where its bytes are (a file under the gallery root, or
a member of a tar shard by byte offset) without reading them. An entry already known to be unusable while
listing (a symlink out of the root, a source's own reject) is listed with its reason, so the index can say
``found = indexed + rejected``. Files that are not media (by extension) are counted as ignored, never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_glass.core.errors import DataError, MediaError
from edge_glass.data.mediashards import read_member
from edge_glass.data.media import read_media_file
from edge_glass.data.sources.local.base import AUDIO_EXTS, IMAGE_EXTS

MODALITIES = ("image", "audio")
MAX_FILE_BYTES = 512 * 2**20  # download.max_file_mb's default: larger files are rejects, never read


@dataclass
class Entry:
    """One medium of a gallery. ``path`` is what search prints (relative to the gallery root); ``file`` is
    the file holding its bytes (relative to the root), the whole file when ``size`` is -1, else ``size``
    bytes at ``offset`` (a tar member). ``stamp`` changes when the input changes (its shard re-embeds)."""

    path: str
    modality: str
    item_id: str
    file: str = ""
    offset: int = 0
    size: int = -1
    stamp: str = ""
    reject: str = ""


@dataclass
class Listing:
    root: Path  # resolved; nothing outside it is read
    source: str  # what was listed, in words (index.json)
    entries: list[Entry] = field(default_factory=list)
    ignored: int = 0  # files that are not media of the chosen modality


def modality_of(name: str) -> str | None:
    ext = name.rpartition(".")[2].casefold()
    return "image" if ext in IMAGE_EXTS else "audio" if ext in AUDIO_EXTS else None


def wanted(modality: str, choice: str) -> bool:
    return choice == "auto" or modality == choice


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def list_folder(root: str | Path, modality: str = "auto") -> Listing:
    """Every image/audio file under ``root`` (by extension, case-insensitive), sorted by path.

    Symlinks are resolved: one that leads outside the root is a reject (never read); a symlinked folder
    is not descended into (a link out of the root is a reject, one inside is listed under its real path)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"gallery source is not a folder: {root}")
    real_root = root_path.resolve()
    listing = Listing(real_root, f"folder {real_root}")
    def unreadable(exc: OSError) -> None:  # a folder that cannot be listed: its files are unknown, say so
        rel = Path(exc.filename).relative_to(real_root).as_posix() if exc.filename else "?"
        listing.entries.append(Entry(rel, "", rel, reject=f"unreadable folder (not listed): {rel}: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(real_root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            link = here / d
            if link.is_symlink():
                dirnames.remove(d)
                rel = link.relative_to(real_root).as_posix()
                target = _resolve(link)
                if target is None or not target.is_relative_to(real_root):
                    listing.entries.append(Entry(rel, "", rel, reject=f"symlinked folder leads outside the gallery "
                                                                      f"root (not followed): {rel} -> {target}"))
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(real_root).as_posix()
            kind = modality_of(name)
            if kind is None or not wanted(kind, modality):
                listing.ignored += 1
                continue
            real = _resolve(path)
            if real is None or not real.is_relative_to(real_root):
                listing.entries.append(Entry(rel, kind, rel, reject=f"symlink leads outside the gallery root "
                                                                    f"(not followed): {rel} -> {real}"))
                continue
            try:
                stamp = _stamp(real)
            except OSError as exc:  # a dangling link, a file removed while listing
                listing.entries.append(Entry(rel, kind, rel, reject=f"missing file: {rel} ({exc.strerror})"))
                continue
            listing.entries.append(Entry(rel, kind, rel, real.relative_to(real_root).as_posix(), stamp=stamp))
    return listing


def _resolve(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # symlink loops
        return None


def list_split(workspace: str | Path, split: str, modality: str = "auto") -> Listing:
    """The media of one split of a workspace's download (``data/download``): members of its tar shards."""
    from edge_glass.data.manifest import media_ref, read_manifest

    root = (Path(workspace) / "data" / "download").resolve()
    manifest = read_manifest(root / "manifest.parquet")
    splits = sorted(set(manifest["split"]))
    if split not in splits:
        raise DataError(f"split:{split}: the workspace's manifest ({root / 'manifest.parquet'}) has splits "
                        f"{', '.join(splits)}")
    listing = Listing(root, f"split {split} of {root}")
    for row in manifest[manifest["split"] == split].itertuples(index=False):
        for kind in MODALITIES:
            ref = media_ref(row, kind)
            if ref is None:
                continue
            if not wanted(kind, modality):
                listing.ignored += 1
                continue
            stamp = getattr(row, f"{kind}_sha256", None) or f"{ref.offset}:{ref.size}"
            listing.entries.append(Entry(f"{ref.shard}#{ref.member}", kind, row.item_id, ref.shard, ref.offset,
                                         ref.size, str(stamp)))
    return listing


def list_local_entry(workspace: str | Path, name: str, modality: str = "auto") -> Listing:
    """The media of the ``download.local`` entry ``name`` of the workspace's params, listed by that format's
    own source class (the same annotation parsing, path checks and rejects as the download stage).

    The source's media normalisation is bypassed (the model's loader normalises when the index embeds),
    so this pass only reads each medium to learn where it is. Relative paths in the entry are relative to
    the workspace, as for the download stage."""
    import edge_glass.data.sources  # noqa: F401  (fills the format registry)
    from edge_glass.config import load_params
    from edge_glass.data.sources.registry import FORMATS

    workspace = Path(workspace).resolve()
    params = load_params(workspace / "params.yaml")
    entries = {e.name: e for e in params.download.local}
    if name not in entries:
        raise DataError(f"{name!r} is neither a folder nor a download.local entry of {workspace / 'params.yaml'} "
                        f"(entries: {', '.join(entries) or 'none'})")
    entry = entries[name]
    absolute = lambda p: p if p is None or Path(p).is_absolute() else str(workspace / p)  # noqa: E731
    entry = entry.model_copy(update={"path": absolute(entry.path), "media_root": absolute(entry.media_root)})
    src = FORMATS[entry.format](entry, params.download)
    webdataset = entry.format == "webdataset"
    if webdataset:
        shards = [p.resolve() for p in src.shard_paths()]
        if any(p.suffix.casefold() != ".tar" for p in shards):
            raise DataError(f"download.local entry {name!r}: a gallery reads media by offset from plain .tar "
                            f"shards; unpack the compressed ones ({', '.join(p.name for p in shards if p.suffix != '.tar')})")
        root = Path(os.path.commonpath([str(p.parent) for p in shards]))
    reads: list[tuple[bytes, tuple[str, int, int]]] = []  # what this candidate's process read, and where

    def read_media(rel):
        rel = str(rel).strip()
        path = Path(rel) if Path(rel).is_absolute() else src.root / rel
        data = read_media_file(path, src._root_real, src.max_bytes)  # the download's checks: root, size, existence
        reads.append((data, (path.resolve().relative_to(src._root_real).as_posix(), 0, -1)))
        return data

    def member_bytes(value):
        if isinstance(value, MediaError):
            raise value
        data = read_member(*value)
        reads.append((data, (Path(value[0]).resolve().relative_to(root).as_posix(), int(value[1]), int(value[2]))))
        return data

    src.read_media = read_media
    if webdataset:
        src._bytes = member_bytes
    src.image_bytes = lambda data: (data, "raw")  # as read: the model's loader normalises
    src.audio_bytes = lambda data, sample_rate=None: (data, "raw", 0.0)
    listing = None
    for cand in src.candidates():
        if listing is None:  # candidates() resolves the media root first
            listing = Listing(root if webdataset else src._root_real, f"download.local entry {name!r}")
        if cand.reject:
            listing.entries.append(Entry(cand.item_id, "", cand.item_id, reject=cand.reject))
            continue
        reads.clear()
        out = src.process(cand)
        if not hasattr(out, "captions"):  # a Reject
            listing.entries.append(Entry(cand.item_id, "", cand.item_id, reject=out.reason))
            continue
        for kind in MODALITIES:
            data = getattr(out, kind)
            if data is None:
                continue
            if not wanted(kind, modality):
                listing.ignored += 1
                continue
            file, offset, size = next(where for got, where in reads if got is data)
            path = file if size == -1 else f"{file}#{offset}"
            listing.entries.append(Entry(path, kind, cand.item_id, file, offset, size, cand.stamp or str(len(data))))
    return listing or Listing(root if webdataset else src.media_root(), f"download.local entry {name!r}")


def read_entry(root: Path, entry: Entry, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """An entry's bytes, checked again at read time (a link swapped since listing is still refused), or
    MediaError with the reason."""
    if entry.size == -1:
        return read_media_file(root / entry.file, root, max_bytes)
    path = (root / entry.file).resolve()
    if not path.is_relative_to(root):
        raise MediaError(f"path escapes the gallery root: {entry.file}")
    try:
        return read_member(path, entry.offset, entry.size)
    except OSError as exc:
        raise MediaError(f"media shard unreadable: {exc}") from None
