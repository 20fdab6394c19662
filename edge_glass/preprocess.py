"""The preprocess stage: run each frozen encoder once over the manifest and write feature shards."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from tqdm import tqdm

from edge_glass.config import Params
from edge_glass.core.errors import MediaError
from edge_glass.core.io import (
    atomic_path,
    package_fingerprint,
    read_metadata,
    sha256_file,
    write_json,
)
from edge_glass.data.manifest import media_ref, read_manifest
from edge_glass.encoders import loading
from edge_glass.encoders.loading import loader_blas_single_threaded
from edge_glass.encoders.base import FrozenEncoder
from edge_glass.encoders.registry import build_encoder
from edge_glass.features.store import (
    DTYPES,
    plan_shards,
    read_offsets,
    remove_stale,
    shard_fingerprint,
    shard_name,
    write_index,
    write_shard,
)

log = logging.getLogger(__name__)

@dataclass
class WorkItem:
    id: str  # feature id: item_id for image/audio, "item_id#k" for the k-th caption
    item_id: str
    source: Any  # path or caption text
    sort_key: float = 0.0
    content: str = ""  # what the encoder reads, by value (caption text / media content hash): in the fingerprint


def work_items(manifest: pd.DataFrame, modality: str, base_dir: Path) -> list[WorkItem]:
    """Inputs of one modality in manifest order; media are read from their shard by member offset."""
    items = []
    for row in manifest.itertuples(index=False):
        if modality in ("image", "audio"):
            ref = media_ref(row, modality)
            if ref is not None:
                sort_key = float(row.audio_duration_s) if modality == "audio" else 0.0
                items.append(WorkItem(row.item_id, row.item_id, (base_dir, ref), sort_key,
                                      media_content(row, modality, base_dir, ref)))
        else:
            items.extend(WorkItem(f"{row.item_id}#{k}", row.item_id, c, content=c) for k, c in enumerate(row.captions))
    return items


def media_content(row, modality: str, base_dir: Path, ref) -> str:
    """A medium's content hash: the manifest's ``{image,audio}_sha256`` (download writes it), else a hash of
    the member's bytes (older manifests). Same id with other content (download re-run with other image or
    audio settings) must not reuse a shard; an unreadable member gets a marker and becomes a reject later."""
    digest = getattr(row, f"{modality}_sha256", None)
    if isinstance(digest, str) and digest:
        return digest
    try:
        return "bytes:" + hashlib.sha256(ref.read(base_dir)).hexdigest()
    except OSError:
        return "unreadable"


def read_input(it: WorkItem) -> Any:
    """What the encoder's ``load`` takes: a caption's text, or a medium's bytes read from its shard."""
    if not isinstance(it.source, tuple):
        return it.source
    base_dir, ref = it.source  # (manifest folder, MemberRef)
    try:
        return ref.read(base_dir)
    except OSError as exc:
        raise MediaError(f"media shard unreadable: {exc}") from None


def load_work_item(load: Callable[[Any], Any], it: WorkItem) -> Any:
    """One work item as the encoder's ``forward`` takes it: its input read, then the encoder's ``loader()``."""
    return load(read_input(it))


def loaded_batches(encoder: FrozenEncoder, jobs: list[list[WorkItem]], num_workers: int):
    """The jobs' decoded batches in job order, decoded ahead of the encoder (``encoders.loading``, the
    read-ahead the API shares): ``(item, loaded, reject reason)`` per item."""
    return loading.loaded_batches(encoder, jobs, num_workers, partial(load_work_item, encoder.loader()))


def code_fingerprint() -> str:
    """Hash of the code that computes features: a changed encoder or loader invalidates finished shards."""
    return package_fingerprint("preprocess.py", "encoders", "features", "data", "core")


def encoder_fingerprint(encoder: FrozenEncoder, dtype_name: str) -> str:
    """Everything of a run that changes a shard's numbers, but its inputs (:func:`shard_fingerprint` adds
    those): the encoder (name, weight hashes of the loaded tensors, media preprocessing settings), the
    storage dtype, the *resolved* device type and autocast dtype (``precision: auto`` is bf16 on CUDA and
    fp32 on the CPU, so the params alone do not say), torch's version and the feature code."""
    return json.dumps({"encoder": asdict(encoder.info), "dtype": dtype_name, "device": encoder.device.type,
                       "autocast": str(encoder.precision).removeprefix("torch."), "torch": torch.__version__,
                       "code": code_fingerprint()}, sort_keys=True)


def make_batches(items: list[WorkItem], bs: int) -> list[list[WorkItem]]:
    """Batches of a shard, sorted by length (audio duration) so that padding stays small."""
    return [[items[i] for i in batch] for batch in loading.length_sorted_batches([it.sort_key for it in items], bs)]


def encode_shard(
    encoder: FrozenEncoder, items: list[WorkItem], loaded_batches: Iterator, n_batches: int, on_batch: Callable[[int], None]
) -> tuple[list[str], list[torch.Tensor], torch.Tensor, list[dict]]:
    """Encode one shard from its next ``n_batches`` loaded batches; keep shard order in the output."""
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rejects = []
    for _ in range(n_batches):
        loaded = next(loaded_batches)
        good = [(it, x) for it, x, err in loaded if not err]
        rejects += [{"id": it.id, "item_id": it.item_id, "reason": err} for it, _, err in loaded if err]
        if good:
            tokens, pooled = encoder.forward([x for _, x in good])
            for (it, _), t, p in zip(good, tokens, pooled):
                results[it.id] = (t, p)
        on_batch(len(loaded))
    ids = [it.id for it in items if it.id in results]
    dim = encoder.info.pooled_dim
    pooled = torch.stack([results[i][1] for i in ids]) if ids else torch.zeros(0, dim)
    return ids, [results[i][0] for i in ids], pooled, rejects


def preprocess_modality(
    modality: str, manifest: pd.DataFrame, base_dir: Path, out_dir: Path, params: Params, encoder: FrozenEncoder | None = None,
    rank: int = 0, world: int = 1,
) -> dict | None:
    """Encode one modality into ``out_dir/modality``; finished shards of an earlier run are kept.

    With ``world`` > 1 this rank only encodes the shards ``k % world == rank`` and returns None; a
    later single pass (rank 0) finds every shard finished and writes the index.
    """
    items = work_items(manifest, modality, base_dir)
    mod_dir = out_dir / modality
    mod_dir.mkdir(parents=True, exist_ok=True)
    if not items:
        remove_stale(mod_dir, 0)
        write_index(mod_dir, [])
        return {"items": 0, "encoded": 0, "rejected": 0}
    encoder = encoder or build_encoder(modality, params)
    dtype_name = params.preprocess.dtype
    base = encoder_fingerprint(encoder, dtype_name)
    plan = plan_shards([it.id for it in items], params.preprocess.shard_size)
    by_id = {it.id: it for it in items}
    # each planned id with its input's content: a caption edited or a medium replaced under the same id re-encodes
    fingerprints = [shard_fingerprint(base, [f"{i}\t{hashlib.sha256(by_id[i].content.encode()).hexdigest()}"
                                             for i in shard_ids]) for shard_ids in plan]
    finished = {}  # shard -> metadata, for shards an earlier run already wrote with this fingerprint
    todo = {}  # shard -> its batches, for the others
    for k, shard_ids in enumerate(plan):
        meta = read_metadata(mod_dir / shard_name(k))
        if meta is not None and meta.get("fingerprint") == fingerprints[k]:
            finished[k] = meta
        elif k % world == rank:
            todo[k] = make_batches([by_id[i] for i in shard_ids], encoder.batch_size)
    def encode_and_write(k: int, loaded_batches: Iterator, on_batch: Callable[[int], None]) -> dict:
        """Encode shard k from the prefetched batches, write it; returns its metadata (with ids)."""
        ids, tokens, pooled, shard_rejects = encode_shard(encoder, [by_id[i] for i in plan[k]], loaded_batches,
                                                          len(todo[k]), on_batch)
        metadata = {"fingerprint": fingerprints[k], "modality": modality, "encoder": encoder.info.name,
                    "rejects": shard_rejects}
        write_shard(mod_dir / shard_name(k), ids, tokens, pooled, DTYPES[dtype_name], metadata)
        return {**metadata, "ids": ids}

    jobs = [batch for batches in todo.values() for batch in batches]
    workers = params.preprocess.num_workers
    if world > 1:
        mine = sum(len(plan[k]) for k in todo)
        bar = tqdm(total=mine, desc=f"preprocess {modality} [rank {rank}/{world}]", unit="item", position=rank)
        with loaded_batches(encoder, jobs, workers) as batches:
            for k in todo:
                encode_and_write(k, batches, bar.update)
        bar.close()
        return None
    index_rows, rejects, resumed = [], [], 0
    encode_seconds, encoded_now = 0.0, 0
    bar = tqdm(total=len(items), desc=f"preprocess {modality}", unit="item")
    with loaded_batches(encoder, jobs, workers) as batches:
        for k, shard_ids in enumerate(plan):
            path = mod_dir / shard_name(k)
            if k in todo:
                t0 = time.perf_counter()
                meta = encode_and_write(k, batches, bar.update)
                encode_seconds += time.perf_counter() - t0
                encoded_now += len(shard_ids)
            else:
                meta = finished[k]
                resumed += 1
                bar.update(len(shard_ids))
            ids = meta["ids"]
            rejects += meta["rejects"]
            offsets = read_offsets(path)
            for row, i in enumerate(ids):
                n = int(offsets[row + 1] - offsets[row])
                index_rows.append({"id": i, "item_id": by_id[i].item_id, "shard": k, "row": row, "n_tokens": n})
    bar.close()
    remove_stale(mod_dir, len(plan))
    write_index(mod_dir, index_rows)
    if len(index_rows) + len(rejects) != len(items):
        raise AssertionError(f"{modality}: {len(items)} in but {len(index_rows)} encoded + {len(rejects)} rejected")
    n_tokens = sum(r["n_tokens"] for r in index_rows)
    return {
        "items": len(items),
        "encoded": len(index_rows),
        "rejected": len(rejects),
        "rejects": rejects,
        "shards": len(plan),
        "resumed_shards": resumed,
        "tokens": n_tokens,
        "mean_tokens": n_tokens / max(len(index_rows), 1),
        "encoder": asdict(encoder.info),
        "device": encoder.device.type,
        "autocast": str(encoder.precision).removeprefix("torch."),
        "seconds": round(encode_seconds, 3),
        "items_per_s": round(encoded_now / encode_seconds, 2) if encode_seconds > 0 else None,
    }


def run_preprocess(params: Params, manifest_path: str | Path, out_dir: str | Path, rank: int = 0, world: int = 1,
                   barrier: Callable[[], None] = lambda: None) -> dict | None:
    """Encode every modality in ``params.preprocess.modalities``; write encoders.json and rejects.csv.

    Under torchrun (``world`` > 1) every rank encodes its own share of the shards, then rank 0 checks
    them all (fingerprints), writes the indexes and returns the stats; other ranks return None.
    """
    if params.preprocess.num_threads:
        torch.set_num_threads(params.preprocess.num_threads)
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    manifest = read_manifest(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    if world > 1:
        for modality in params.preprocess.modalities:
            with loader_blas_single_threaded():
                preprocess_modality(modality, manifest, manifest_path.parent, out_dir, params, rank=rank, world=world)
        barrier()
        if rank != 0:
            return None
    stats = {}
    for modality in params.preprocess.modalities:
        with loader_blas_single_threaded():
            stats[modality] = preprocess_modality(modality, manifest, manifest_path.parent, out_dir, params)
    for stale in {"image", "audio", "text"} - set(params.preprocess.modalities):
        if (out_dir / stale).exists():
            remove_stale(out_dir / stale, 0)
            (out_dir / stale / "index.parquet").unlink(missing_ok=True)
            (out_dir / stale).rmdir()
    encoders = {
        m: {**s["encoder"], "dtype": params.preprocess.dtype, "shard_size": params.preprocess.shard_size,
            "device": s["device"], "autocast": s["autocast"],  # resolved: align's fingerprint hashes this file
            "encoded": s["encoded"], "tokens": s["tokens"]}
        for m, s in stats.items() if s["encoded"]
    }
    encoders["manifest_sha256"] = sha256_file(manifest_path)
    write_json(encoders, out_dir / "encoders.json")
    rejects = [{"modality": m, **r} for m, s in stats.items() for r in s.get("rejects", [])]
    with atomic_path(out_dir / "rejects.csv") as tmp:
        pd.DataFrame(rejects, columns=["modality", "id", "item_id", "reason"]).to_csv(tmp, index=False)
    return {m: {k: v for k, v in s.items() if k not in ("rejects", "encoder", "device", "autocast")}
            for m, s in stats.items()}


# zero-shot sets (evaluate.zeroshot): the zeroshot_features stage ---------------------------------------------

def normalise_set(entry, items: list, params: Params, set_dir: Path) -> tuple[pd.DataFrame, list]:
    """A folder/table set's media through the download stage's checks, into one media shard and a manifest
    of their own (``set_dir/manifest.parquet``): the shape ``preprocess_modality`` reads. Returns (manifest, rejects)."""
    from edge_glass.data.labelled import LabelledMedia
    from edge_glass.data.manifest import Sample, write_manifest
    from edge_glass.data.mediashards import ShardWriter, safe_member_name
    from edge_glass.data.sources.base import Candidate

    media = LabelledMedia(entry, params.download)
    with ThreadPoolExecutor(max_workers=params.download.num_workers) as pool:
        results = list(pool.map(lambda it: media.process(Candidate(it.item_id, it)), items))
    samples = [r for r in results if isinstance(r, Sample)]
    rejects = [r for r in results if not isinstance(r, Sample)]
    (set_dir / "media").mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(set_dir / "media" / "00000.tar", set_dir)
    try:
        for s in samples:
            data, ext = (s.image, s.image_ext) if entry.modality == "image" else (s.audio, s.audio_ext)
            ref = writer.add(safe_member_name(s.item_id, ext), data)
            setattr(s, f"{entry.modality}_ref", ref)
            s.image = s.audio = None
        writer.close()
    except BaseException:
        writer.abort()
        raise
    write_manifest(samples, set_dir / "manifest.parquet")
    return read_manifest(set_dir / "manifest.parquet"), rejects


def run_zeroshot_features(params: Params, manifest_path: str | Path, out_dir: str | Path) -> dict:
    """Everything evaluate needs to score each ``evaluate.zeroshot`` set, under ``out_dir/<name>/``.

    Per set: ``labels.parquet`` (every item listed: id, label), ``rejects.csv`` (item, reason: listing,
    media checks, encoder), ``prompts.parquet`` (one row per class: its prompts) and ``set.json`` (classes,
    class names, templates, where the media features are). Folder and table sets get their media normalised
    into ``media/`` and encoded by the preprocess encoders into ``features/<modality>``; every set's prompts
    are encoded into ``features/text``. Shards whose fingerprint (encoder, inputs' content) matches are kept,
    as in preprocess: a rerun re-encodes nothing that did not change. ``emoji_groups`` uses the preprocess
    stage's image features (the same encoder, already run)."""
    from edge_glass.core.errors import ParamsError
    from edge_glass.data.labelled import (
        classes_of,
        default_templates,
        entry_fingerprint,
        list_items,
        prompts,
    )
    from edge_glass.data.manifest import Reject, Sample, write_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {e.name for e in params.evaluate.zeroshot}
    for stale in sorted(d for d in out_dir.iterdir() if d.is_dir() and d.name not in names and (d / "set.json").exists()):
        shutil.rmtree(stale)  # a set no longer listed: its folder would only grow the DVC output
    encoders: dict[str, FrozenEncoder] = {}

    def encoder(modality: str) -> FrozenEncoder:
        if modality not in encoders:
            encoders[modality] = build_encoder(modality, params)
        return encoders[modality]

    manifest = None
    stats = {}
    for k, entry in enumerate(params.evaluate.zeroshot):
        key = f"evaluate.zeroshot[{k}] ({entry.name!r})"
        missing = {entry.modality, "text"} - set(params.preprocess.modalities)
        set_dir = out_dir / entry.name
        if missing and entry.format == "emoji_groups":
            # the default set on a run without images (audio-only data): nothing to classify, said so in the metrics
            shutil.rmtree(set_dir, ignore_errors=True)
            set_dir.mkdir(parents=True)
            write_json({"name": entry.name, "skipped": f"preprocess.modalities has no {' or '.join(sorted(missing))}",
                        "fingerprint": entry_fingerprint(entry, params.download)}, set_dir / "set.json")
            stats[entry.name] = {"items": 0, "classes": 0, "rejected": 0}
            continue
        if missing:
            raise ParamsError(f"{key}: modality {entry.modality} needs {entry.modality} and text in preprocess.modalities "
                              f"(they are {params.preprocess.modalities})")
        set_dir.mkdir(parents=True, exist_ok=True)
        if entry.format == "emoji_groups" and manifest is None:
            manifest = read_manifest(manifest_path)
        items, rejects = list_items(entry, manifest, params.evaluate.split)
        labels, classnames = classes_of(entry, items)
        templates = default_templates(entry)
        if entry.format != "emoji_groups":
            set_manifest, media_rejects = normalise_set(entry, items, params, set_dir)
            rejects += media_rejects
            with loader_blas_single_threaded():
                encoded = preprocess_modality(entry.modality, set_manifest, set_dir, set_dir / "features", params,
                                              encoder(entry.modality))
            rejects += [Reject(r["item_id"], entry.name, f"{entry.modality} encoder: {r['reason']}") for r in encoded["rejects"]]
        class_items = [Sample(f"class/{c}", entry.name, ps) for c, ps in enumerate(prompts(templates, classnames))]
        write_manifest(class_items, set_dir / "prompts.parquet")
        preprocess_modality("text", read_manifest(set_dir / "prompts.parquet"), set_dir, set_dir / "features", params,
                            encoder("text"))
        with atomic_path(set_dir / "labels.parquet") as tmp:
            pd.DataFrame({"item_id": [it.item_id for it in items], "label": [it.label for it in items]},
                         columns=["item_id", "label"]).to_parquet(tmp, index=False)
        with atomic_path(set_dir / "rejects.csv") as tmp:
            pd.DataFrame([{"item_id": r.item_id, "reason": r.reason} for r in rejects], columns=["item_id", "reason"]).to_csv(tmp, index=False)
        info = {"name": entry.name, "modality": entry.modality, "format": entry.format, "source": entry.source,
                "media_features": "preprocess" if entry.format == "emoji_groups" else "own",
                "classes": labels, "classnames": classnames, "templates": templates,
                "fingerprint": entry_fingerprint(entry, params.download)}
        if entry.format == "emoji_groups":
            info["source_sha256"] = sha256_file(entry.source)
        write_json(info, set_dir / "set.json")
        stats[entry.name] = {"items": len(items), "classes": len(labels), "rejected": len(rejects)}
    return stats
