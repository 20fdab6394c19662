"""Media in a few large tar shards instead of one file per item.

The download stage writes each source's normalised media into ``media/<source>/NNNNN.tar`` (plain,
uncompressed POSIX tar: ``tar -tf`` lists it, ``tar -xf`` unpacks it). The manifest records, per
item and medium, the shard, the member name and the byte offset and size of the member's data, so a
reader seeks straight to one item: O(1), no scan, no extraction, safe from any number of worker
processes. Writes go to a temp file that is renamed when the shard is complete.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from edge_glass.core.io import atomic_path

BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class MemberRef:
    """Where one item's media bytes are: ``shard`` is relative to the manifest's folder."""

    shard: str
    member: str
    offset: int
    size: int

    def read(self, base_dir: str | Path) -> bytes:
        return read_member(Path(base_dir) / self.shard, self.offset, self.size)


def read_member(path: str | Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"media shard {path} is truncated: member at {offset} needs {size} bytes, got {len(data)}")
    return data


def safe_member_name(item_id: str, ext: str) -> str:
    """A tar member name for an item: no absolute path, no '..', no empty components."""
    parts = [p for p in item_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts or ["item"]) + f".{ext}"


class ShardWriter:
    """Append members to one tar shard; ``add`` returns each member's data offset and size."""

    def __init__(self, path: Path, relative_to: Path):
        self.path = path
        self.shard = str(path.relative_to(relative_to))
        self._ctx = atomic_path(path)
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self.bytes = 0

    def add(self, member: str, data: bytes) -> MemberRef:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        # after addfile the tar's offset is past the data and its padding to a whole block
        offset = self._tar.offset - -(-len(data) // BLOCK) * BLOCK
        self.bytes += len(data)
        return MemberRef(self.shard, member, offset, len(data))

    def close(self) -> int:
        """Finish the shard (end-of-archive blocks, fsync, rename); returns its size in bytes."""
        self._tar.close()
        self._ctx.__exit__(None, None, None)
        return self.path.stat().st_size

    def abort(self) -> None:
        """Drop the unfinished shard (its temp file); the final name is never touched."""
        self._tar.close()
        self._tmp.unlink(missing_ok=True)
