"""``format: table``: CSV / TSV / JSONL / Parquet with a media path column and caption columns (Clotho, AudioCaps, open_clip CSVs)."""

from __future__ import annotations

import ast
import json
import string
from pathlib import Path
from typing import Any

import pandas as pd

from edge_glass.core.errors import DataError
from edge_glass.data.sources.base import Candidate, file_stamp
from edge_glass.data.sources.local.base import (
    LocalSource,
    cell,
    present,
    sniff_format,
    split_from_filename,
)
from edge_glass.data.sources.registry import register_format


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
            key = row[e.id_key] if e.id_key else (image if present(image) else audio)
            key = str(key).strip() if present(key) else f"row-{len(order)}"
            fields = {"image": image, "audio": audio, "split": row[e.split_key] if e.split_key else None,
                      "group": str(row[e.group_key]) if e.group_key else ""}
            item = order.get(key)
            if item is None:
                item = order[key] = {**fields, "captions": [], "row": number}
            else:
                # a later row of the same id adds its captions only when it agrees on media, split and
                # group (one row per caption); one that disagrees would lose its media/split/group: a reject
                differ = [f"{f} {cell(item[f])!r} vs {cell(v)!r}" for f, v in fields.items()
                          if cell(item[f], f == "split") != cell(v, f == "split")]
                if differ:
                    conflicts.append(Candidate(f"{self.name}/{key}#row{number}", None, reject=(
                        f"row repeats an id with different media/split/group (row {number} vs row {item['row']} "
                        f"of id {key!r}: {'; '.join(differ)})")))
                    continue
            for c in e.caption_keys:
                value = _caption_cell(row[c])
                item["captions"].extend(value if isinstance(value, list) else [value])
        for key, item in order.items():
            stamps = [file_stamp(self.root / str(item[m])) for m in ("image", "audio") if present(item[m])]
            yield Candidate(f"{self.name}/{key}", item, ";".join(stamps))
        yield from conflicts

    def process(self, cand):
        item = cand.payload
        split_value = item["split"] if self.entry.split_key else getattr(self, "_file_split", None)
        return self.make(cand, item["captions"], image=item["image"], audio=item["audio"], split_value=split_value,
                         group=item["group"])
