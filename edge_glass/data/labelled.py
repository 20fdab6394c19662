"""Labelled sets for zero-shot classification (``evaluate.zeroshot``): listing their items with a class label,
the class names and prompt templates, and normalising their media exactly as the download stage does.

A set's media go through the download stage's checks (``Source.image_bytes`` / ``audio_bytes`` under
``download.image`` / ``download.audio``, ``read_local_file``'s path and size rules): a zero-shot image is
resized and re-encoded like a training image, so the frozen encoder sees the same kind of input, and a
broken file is a reject with its reason, never a crash. The ``emoji_groups`` set lists manifest items
instead (their media were normalised and encoded by download and preprocess already).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from edge_glass.config.download import DownloadParams
from edge_glass.config.evaluate import ZeroShotSet
from edge_glass.core.errors import DataError, MediaError
from edge_glass.data.manifest import Reject, Sample
from edge_glass.data.sources.base import Candidate, Source, read_local_file
from edge_glass.data.sources.local.base import present
from edge_glass.data.sources.local.table import read_table

# The 80 ImageNet prompts of the CLIP paper, as CLIP_benchmark lists them (en_zeroshot_classification_templates.json,
# "imagenet1k"), with {} for the class name
IMAGE_TEMPLATES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
]
# CLAP-style sound prompts (LAION-CLAP's ESC-50 evaluation uses "This is a sound of {}.")
AUDIO_TEMPLATES = ["the sound of {}.", "this is a sound of {}.", "a recording of {}.", "a sound recording of {}.",
                   "the sound of a {}.", "{} can be heard."]
# emoji are drawings, not photos: the CLIP photo prompts would describe the wrong thing
EMOJI_TEMPLATES = ["an emoji of {}.", "an emoji from the group {}.", "{} emoji.", "an icon of {}."]


def default_templates(entry: ZeroShotSet) -> list[str]:
    if entry.templates:
        return list(entry.templates)
    if entry.format == "emoji_groups":
        return list(EMOJI_TEMPLATES)
    return list(IMAGE_TEMPLATES if entry.modality == "image" else AUDIO_TEMPLATES)


@dataclass
class LabelledItem:
    """One item of a labelled set: ``item_id`` names it (a manifest item id for ``emoji_groups``, else
    ``<set>/<path>``); ``path`` is its media file relative to the set's media root (None for manifest items)."""

    item_id: str
    label: str
    path: str | None = None


def emoji_groups(path: str | Path) -> dict[str, str]:
    """Code-point key -> Unicode emoji group, from emoji-test.txt (``1F600 ; fully-qualified # ...`` lines
    under ``# group: Smileys & Emotion`` headers). Keys are upper-case hex joined by ``-`` without FE0F,
    as the openmoji source names its items (``openmoji/1F600``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path} not found: the emoji_groups zero-shot set needs Debian's unicode-data "
                        "(apt-get install unicode-data; setup.sh installs it) or a path to an emoji-test.txt") from None
    groups, group = {}, None
    for line in lines:
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#") and ";" in line and group:
            code = "-".join(c.upper() for c in line.split(";", 1)[0].split() if c.upper() != "FE0F")
            groups.setdefault(code, group)
    if not groups:
        raise DataError(f"{path}: no emoji under '# group:' headers (is it emoji-test.txt?)")
    return groups


def group_classname(group: str) -> str:
    """The prompt name of an emoji group: lower case, '&' spelt out ("Smileys & Emotion" -> "smileys and emotion")."""
    return group.replace("&", "and").casefold()


def list_emoji_groups(entry: ZeroShotSet, manifest: pd.DataFrame, split: str) -> tuple[list[LabelledItem], list[Reject]]:
    """The openmoji image items of ``split``, labelled by their emoji group; one missing from the file
    (an emoji newer than the installed Unicode data) is a reject with that reason."""
    groups = emoji_groups(entry.source)
    rows = manifest[(manifest.split == split) & (manifest.source == "openmoji") & manifest.image_shard.notna()]
    items, rejects = [], []
    for item_id in sorted(rows.item_id):
        group = groups.get(item_id.removeprefix("openmoji/"))
        if group is None:
            rejects.append(Reject(item_id, entry.name, f"code points not in {entry.source} (newer emoji than the Unicode data)"))
        else:
            items.append(LabelledItem(item_id, group))
    return items, rejects


def list_folder(entry: ZeroShotSet) -> tuple[list[LabelledItem], list[Reject]]:
    """ImageFolder: every file under ``path/<class>/`` (any depth; hidden files skipped) is an item of that class;
    a file that is not media becomes a reject when it is read."""
    root = Path(entry.path)
    if not root.is_dir():
        raise DataError(f"evaluate.zeroshot entry {entry.name!r}: path {root} is not a folder (format: folder)")
    items = []
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for f in sorted(p for p in class_dir.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)):
            rel = f.relative_to(root).as_posix()
            items.append(LabelledItem(f"{entry.name}/{rel}", class_dir.name, rel))
    if not items:
        raise DataError(f"evaluate.zeroshot entry {entry.name!r}: {root} has no files in class subfolders (format: folder)")
    return items, []


def list_table(entry: ZeroShotSet) -> tuple[list[LabelledItem], list[Reject]]:
    """A table row per item: ``path_key`` (media path relative to media_root) and ``label_key``; a row
    missing either is a reject, a repeated path keeps its first row (a second label would be ambiguous)."""
    path = Path(entry.path)
    df = read_table(path)
    missing = [c for c in (entry.path_key, entry.label_key) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found (columns: {list(df.columns)}); "
                        f"set evaluate.zeroshot entry {entry.name!r}'s path_key / label_key")
    items, rejects, seen = [], [], {}
    for number, (media, label) in enumerate(zip(df[entry.path_key], df[entry.label_key]), start=1):
        rel = str(media).strip() if present(media) else ""
        item_id = f"{entry.name}/{rel or f'row-{number}'}"
        if not rel or not present(label):
            rejects.append(Reject(item_id, entry.name, f"row {number}: empty {entry.path_key if not rel else entry.label_key}"))
        elif rel in seen:
            rejects.append(Reject(f"{item_id}#row{number}", entry.name, f"row {number} repeats the path of row {seen[rel]}"))
        else:
            seen[rel] = number
            items.append(LabelledItem(item_id, str(label).strip(), rel))
    return items, rejects


def list_items(entry: ZeroShotSet, manifest: pd.DataFrame | None = None, split: str = "test"
               ) -> tuple[list[LabelledItem], list[Reject]]:
    """Every item of a set (with ``limit_per_class`` applied: the first N of each class by id) and the entries
    rejected while listing."""
    if entry.format == "emoji_groups":
        items, rejects = list_emoji_groups(entry, manifest, split)
    elif entry.format == "folder":
        items, rejects = list_folder(entry)
    else:
        items, rejects = list_table(entry)
    if entry.limit_per_class:
        taken: dict[str, int] = {}
        kept = []
        for it in sorted(items, key=lambda it: (it.label, it.item_id)):
            if taken.get(it.label, 0) < entry.limit_per_class:
                taken[it.label] = taken.get(it.label, 0) + 1
                kept.append(it)
        items = sorted(kept, key=lambda it: it.item_id)
    return items, rejects


def read_classnames(entry: ZeroShotSet) -> dict[str, str]:
    """``classnames`` as a mapping: given inline, or a JSON / YAML file of a mapping, or a CSV/TSV with two
    columns (label, name)."""
    spec = entry.classnames
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"evaluate.zeroshot entry {entry.name!r}: classnames file {path} not found")
    if path.suffix.casefold() in (".csv", ".tsv", ".tab"):
        df = read_table(path)
        if df.shape[1] < 2:
            raise DataError(f"{path}: a classnames table needs two columns (label, name)")
        return {str(k): str(v) for k, v in zip(df.iloc[:, 0], df.iloc[:, 1])}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: classnames unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: classnames must be a mapping of label to name")
    return {str(k): str(v) for k, v in data.items()}


def classes_of(entry: ZeroShotSet, items: list[LabelledItem]) -> tuple[list[str], list[str]]:
    """(labels, class names) in sorted label order: the classes are the labels the set lists (before rejects:
    a class whose every item fails still competes, so rejects do not make the task easier)."""
    labels = sorted({it.label for it in items})
    names = read_classnames(entry)
    if entry.format == "emoji_groups":
        return labels, [names.get(label, group_classname(label)) for label in labels]
    return labels, [names.get(label, label.replace("_", " ")) for label in labels]


def prompts(templates: list[str], classnames: list[str]) -> list[list[str]]:
    """Every template filled with every class name: one list of prompts per class."""
    return [[t.replace("{}", name) for t in templates] for name in classnames]


class LabelledMedia(Source):
    """The download stage's media checks for a set's files: the same ``image_bytes`` / ``audio_bytes`` under
    the same ``download`` params, and the same path rules (inside the media root, size limit)."""

    def __init__(self, entry: ZeroShotSet, params: DownloadParams):
        super().__init__(entry.name, params)
        self.entry = entry
        root = Path(entry.path) if entry.format == "folder" else Path(entry.media_root or Path(entry.path).parent)
        self.root = root.resolve()
        if not self.root.is_dir():
            raise DataError(f"evaluate.zeroshot entry {entry.name!r}: media_root {root} is not a folder")

    @property
    def label(self) -> str:
        return f"evaluate.zeroshot entry {self.name!r}"

    def process(self, cand: Candidate) -> Sample | Reject:
        item: LabelledItem = cand.payload
        rel = Path(item.path)
        try:
            data = read_local_file(rel if rel.is_absolute() else self.root / rel, self.root, self.params.max_file_mb * 2**20)
            sample = self.sample(cand, [item.label])
            if self.entry.modality == "image":
                sample.image, sample.image_ext = self.image_bytes(data)
            else:
                sample.audio, sample.audio_ext, sample.audio_duration_s = self.audio_bytes(data)
        except MediaError as exc:
            return self.reject(cand, str(exc))
        except Exception as exc:  # a decoder's own error on hostile bytes is this file's fault, not the set's
            return self.reject(cand, f"unreadable media: {type(exc).__name__}: {exc}")
        digest = hashlib.sha256(sample.image if sample.image is not None else sample.audio).hexdigest()
        setattr(sample, f"{self.entry.modality}_sha256", digest)
        return sample


def entry_fingerprint(entry: ZeroShotSet, download: DownloadParams) -> str:
    """What a set's outputs depend on besides the encoders: the entry and the media settings."""
    return hashlib.sha256(json.dumps({"entry": entry.model_dump(), "image": download.image.model_dump(),
                                      "audio": download.audio.model_dump(), "max_file_mb": download.max_file_mb},
                                     sort_keys=True, default=str).encode()).hexdigest()
