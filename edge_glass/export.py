"""Export the trained model as one self-contained folder that loads with no DVC repo; optionally push it to the hub.

    python -m edge_glass.export --out DIR [--workspace .] [--force]
    python -m edge_glass.export --out DIR --push-to-hub USER/NAME [--private]

DIR gets the align weights (``align/``), the trained decoder (``decoder/``), the base LM (``lm/``, copied
when it is not a hub id; a hub LM is named with its weights hash), ``config.json`` (every param the model
needs, and the sha256 of every file so a loader names a missing or changed file) and ``README.md``, a
Hugging Face model card: data and their licences, encoder and LM licences, metrics with their bootstrap
intervals, params, intended use and limits. ``edge_glass.load(DIR)`` loads it anywhere (no absolute paths).

The folder is written to ``DIR.tmp`` and renamed at the end, so a killed or failed export never leaves
a half-written DIR; a non-empty DIR is refused unless ``--force``. Known faults (a workspace without
``dvc repro`` outputs, an unwritable DIR, no hub) exit non-zero with one line (core.errors).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path, PurePosixPath

import yaml

from edge_glass import api
from edge_glass.config import load_params
from edge_glass.core.errors import OutputError, ParamsError, exit_code
from edge_glass.core.hub import model_licence

# the dvc repro outputs an export reads besides the model files: the card's data, metrics and params
CARD_INPUTS = ("params.yaml", "data/download/manifest.parquet", "metrics/download.json", "metrics/retrieval.json",
               "metrics/captions.json")
MODEL_INPUTS = ("data/align/model.safetensors", "data/align/model.json")
DEFAULT_SOURCES = {"openmoji", "asterisk"}  # the packaged offline data (download.sources default)
DIRECTIONS = ("image_to_text", "text_to_image", "audio_to_text", "text_to_audio", "fused_to_text", "text_to_fused")
ARROW = {"image_to_text": "image→text", "text_to_image": "text→image", "audio_to_text": "audio→text",
         "text_to_audio": "text→audio", "fused_to_text": "fused(image+audio)→text", "text_to_fused": "text→fused"}


# -- what the model is made of (the workspace side: edge_glass.api decides what a model is) ---------------------


def check_workspace(workspace: Path) -> None:
    """A workspace after ``dvc repro``: every output the export reads is there (named when not)."""
    missing = [rel for rel in (*MODEL_INPUTS, *CARD_INPUTS) if not (workspace / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{workspace}: missing {', '.join(missing)}: run `dvc repro` first "
                                "(the export reads the trained model, its metrics and params.yaml)")


def workspace_params(workspace: Path) -> dict:
    """The workspace's params.yaml, validated (a bad key stops with exit 2 naming it), every default filled."""
    return load_params(workspace / "params.yaml").model_dump(mode="json")


def _tree(folder: Path, prefix: str) -> dict[str, Path]:
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p for p in sorted(folder.rglob("*")) if p.is_file()}


def export_files(workspace: Path) -> dict[str, Path]:
    """Exported relative path -> file on this machine, every file: what ``api.model_files`` names, its
    folders (the decoder, the LM when it travels with the model) expanded."""
    files = {}
    for name, src in api.model_files(workspace).items():
        if name == "decoder" and src is None:
            raise FileNotFoundError(f"{workspace}: missing data/decode/model/decoder.json (the decode stage's kept "
                                    "model): run `dvc repro` first")
        if src is not None:
            files.update(_tree(src, name) if src.is_dir() else {name: src})
    return files


# -- writing the folder -----------------------------------------------------------------------------------------


def _safe_relpath(name: str) -> PurePosixPath:
    """A model file's name inside DIR: relative and inside it (the folder must load after a move)."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"model file name {name!r} is not a relative path inside the export folder")
    return rel


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of the bytes written (one read of the source)."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(1 << 22):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _refuse_target(out: Path, workspace: Path, sources: list[Path], force: bool) -> None:
    if out == workspace or out in workspace.parents:
        raise OutputError(f"--out {out}: would replace the workspace {workspace}")
    for src in sources:
        if out in src.resolve().parents:
            raise OutputError(f"--out {out}: holds the model file {src} it would copy")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: not empty; pass --force to replace it")


def _install(tmp: Path, out: Path) -> None:
    """Put the finished folder in place: a replaced DIR is moved aside first and removed after."""
    old = None
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    elif out.exists() or out.is_symlink():
        out.unlink()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(workspace: str | Path, out: str | Path, force: bool = False, title: str | None = None,
                 progress=lambda line: print(line, flush=True)) -> dict:
    """Write the model of ``workspace`` into ``out`` (see the module doc); return the written config.json."""
    workspace, out = Path(workspace).resolve(), Path(out).resolve()
    check_workspace(workspace)
    files = {_safe_relpath(name).as_posix(): Path(src) for name, src in export_files(workspace).items()}
    config = api.model_config(workspace)
    _refuse_target(out, workspace, list(files.values()), force)
    tmp = out.with_name(out.name + ".tmp")  # ours: a stale one is a killed export's
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        total, done, hashes = sum(p.stat().st_size for p in files.values()), 0, {}
        for i, (name, src) in enumerate(sorted(files.items()), 1):
            size = src.stat().st_size
            hashes[name] = copy_hashed(src, tmp / name)
            done += size
            progress(f"[export] {i}/{len(files)} {name} ({_size(size)}; {_size(done)} of {_size(total)})")
        hashes["README.md"] = _write_text(tmp / "README.md", model_card(workspace, config, title or out.name))
        progress("[export] README.md (model card)")
        config = {**config, "files": dict(sorted(hashes.items()))}
        _write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        _install(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OutputError) or exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise
        raise OutputError(f"cannot write {exc.filename or out}: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"[export] wrote {out} ({len(hashes) + 1} files, {_size(total)})")
    return config


# -- the model card ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def data_sources(workspace: Path) -> list[dict]:
    """Per source: items in the manifest, the download's in/rejected counts, and each licence/attribution with
    its item count (the manifest keeps every item's terms; a local data set's are its entry's)."""
    import pyarrow.parquet as pq

    from edge_glass.data.sources.online import HUB_SOURCES

    table = pq.read_table(workspace / CARD_INPUTS[1], columns=["source", "license", "attribution"]).to_pandas()
    download = _read_json(workspace / CARD_INPUTS[2])
    rows = []
    for source, group in table.groupby("source", sort=True):
        terms = group.fillna("").groupby(["license", "attribution"]).size().sort_values(ascending=False)
        counts = download.get("sources", {}).get(source, {})
        rows.append({"source": source, "items": len(group), "in": counts.get("in"), "rejected": counts.get("rejected"),
                     "dataset": HUB_SOURCES[source].repo if source in HUB_SOURCES else source,
                     "terms": [{"license": lic or "not given", "attribution": att, "items": int(n)}
                               for (lic, att), n in terms.items()]})
    return rows


def _interval(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    lo, hi = metrics.get(f"{key}_ci95_lo"), metrics.get(f"{key}_ci95_hi")
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{value:.3f}"


def _flat_metrics(obj: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> ``a/b/metric: value`` for every number (interval bounds stay beside their metric)."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flat_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _interval_rows(metrics: dict) -> list[tuple[str, str]]:
    flat = _flat_metrics(metrics)
    return [(key, _interval(flat, key)) for key in flat
            if not key.endswith(("_ci95_lo", "_ci95_hi")) and f"{key}_ci95_lo" in flat]


def _card_licence(data: list[dict], licences: list[str]) -> dict:
    """The front matter's licence: the one licence every part shares, else ``other`` (each part's is in the card)."""
    ids = {t["license"].lower() for d in data for t in d["terms"]} | {lic.split(" ", 1)[0].lower() for lic in licences}
    if len(ids) == 1 and " " not in next(iter(ids)):
        return {"license": next(iter(ids))}
    return {"license": "other", "license_name": "mixed-see-licences-section"}


def _encoder_rows(align: dict) -> list[dict]:
    """One row per frozen encoder the align model was trained on: its record (``encoders``, as preprocess wrote
    it) and the ``preprocess`` section that rebuilds it (backend, model), both kept in align/model.json."""
    rows = []
    for modality, enc in sorted((align.get("encoders") or {}).items()):
        section = (align.get("preprocess") or {}).get({"image": "vision"}.get(modality, modality)) or {}
        name = str(enc.get("name", "?"))
        backend = str(section.get("backend") or name.split(":", 1)[0])
        model = str(section.get("model") or (f"{section.get('open_clip_model')}/{section.get('open_clip_pretrained')}"
                                             if backend == "open_clip" else name))
        licence = model_licence(name) or model_licence(model)
        weights = enc.get("weights") or {}
        rows.append({"modality": modality, "backend": backend, "model": model, "known": licence is not None,
                     "weights": str(weights.get("state_dict", "not recorded"))[:16],
                     "licence": licence or "not a packaged model: see its own model card"})
    return rows


def _architecture(a: dict) -> list[str]:
    p = a.get("perceiver", {})
    resampler = (f"Perceiver resampler ({p.get('num_latents')} latents, depth {p.get('depth')}, {p.get('heads')} heads, "
                 f"{p.get('pool')} pool)")
    return [
        f"- token features of each frozen encoder → {resampler} → width {a.get('dim')}, "
        f"projected to {a.get('projection_dim')} dims" + ("; a closed-form ridge linear path beside it (LP-FT)"
                                                          if a.get("linear_path") else ""),
        f"- {a.get('fusion')} fusion of image and audio into one fused embedding; text head: {a.get('text_head')}"
        + (" (frozen)" if a.get("freeze_text_head") else ""),
        f"- Matryoshka (MRL) heads: any prefix of {a.get('mrl', {}).get('dims')} dims works (truncate, then L2-normalise)",
        f"- symmetric InfoNCE over {', '.join(a.get('loss', {}).get('pairs', []))}",
    ]


def _model_index(title: str, split_name: str, retrieval: dict, captions: dict) -> list[dict]:
    dataset = {"name": split_name, "type": "edge_glass-test", "split": retrieval.get("split", "test")}
    results = []  # each result gets its own copy of ``dataset``: shared dicts would dump as YAML anchors
    trained = retrieval.get("trained", {})
    for direction in DIRECTIONS:
        if direction not in trained:
            continue
        m = trained[direction]
        metrics = [{"type": f"recall_at_{k}", "value": round(float(m[f"R@{k}"]), 4),
                    "name": f"R@{k} (95% CI {_interval(m, f'R@{k}').split(' ', 1)[1]})"
                    if f"R@{k}_ci95_lo" in m else f"R@{k}"} for k in (1, 5, 10) if f"R@{k}" in m]
        results.append({"task": {"type": "feature-extraction", "name": f"{ARROW[direction]} retrieval"},
                         "dataset": dict(dataset), "metrics": metrics})
    caption_metrics = [{"type": key.lower(), "value": round(float(captions[key]), 4),
                        "name": f"{key} (95% CI {_interval(captions, key).split(' ', 1)[1]})"}
                       for key in ("CIDEr-D", "BLEU-4", "embedding_similarity") if f"{key}_ci95_lo" in captions]
    if caption_metrics:
        results.append({"task": {"type": "image-to-text", "name": "captioning"}, "dataset": dict(dataset),
                        "metrics": caption_metrics})
    return [{"name": title, "results": results}]


def model_card(workspace: Path, config: dict, title: str) -> str:
    """The model card (Hugging Face format: YAML front matter, then markdown) from the workspace's outputs."""
    params = workspace_params(workspace)
    retrieval, captions = _read_json(workspace / CARD_INPUTS[3]), _read_json(workspace / CARD_INPUTS[4])
    zeroshot = _read_json(workspace / "metrics/zeroshot.json") if (workspace / "metrics/zeroshot.json").is_file() else None
    data = data_sources(workspace)
    align_record = config["align"]
    a = align_record.get("align", {})
    encoders = _encoder_rows(align_record)
    lm, decode = config["lm"], params["decode"]  # decode: the training recipe; config["decode"]: the kept decoder
    kept = config["decode"]
    lm_licence = model_licence(lm["name"])
    modalities = {e["modality"] for e in encoders} or set(params.get("preprocess", {}).get("modalities", []))
    split_name = f"edge_glass {retrieval.get('split', 'test')} split ({', '.join(d['source'] for d in data)})"
    licences = [e["licence"] for e in encoders if e["known"]] + ([lm_licence] if lm_licence else [])
    front = {
        **_card_licence(data, licences),
        "library_name": "edge_glass",
        "pipeline_tag": "feature-extraction",
        "tags": ["edge_glass", "multimodal", "contrastive", "matryoshka", "feature-extraction"]
        + (["image-text-retrieval", "image-captioning"] if "image" in modalities else [])
        + (["audio-text-retrieval", "audio-captioning"] if "audio" in modalities else []),
        "datasets": [d["dataset"] for d in data],
        "metrics": ["recall", "cider", "bleu"] + (["accuracy"] if zeroshot else []),
        "model-index": _model_index(title, split_name, retrieval, captions),
    }
    top = max((int(d) for d in retrieval.get("by_dim", {})), default=max(a.get("mrl", {}).get("dims") or [0]))
    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {title}", "",
           f"A multimodal alignment model trained by edge_glass {config['edge_glass_version']}: "
           "frozen encoders turn images, audio and text into features; small trained modules map them into one "
           "shared embedding space (retrieval across modalities) and a trained decoder captions images and audio. "
           "Exported with `python -m edge_glass.export`; load it with no DVC repository:", "",
           "```python", "import edge_glass", "", 'model = edge_glass.load("path/to/this/folder")        # no DVC repository needed',
           'texts = model.embed_texts(["a red apple"], dim=64)     # float32 (n, 64), L2-normalised',
           'images = model.embed_images(["photo.png"])            # largest MRL dim by default',
           'print(model.caption(images=["photo.png"]))', "```", "",
           "## Model description", "", "### Frozen encoders", "",
           "| modality | backend | model | weights (sha256, first 16) | licence |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {e['modality']} | {e['backend']} | {e['model']} | `{e['weights']}` | {e['licence']} |" for e in encoders]
    if not encoders:
        out.append("| – | – | not recorded in align/model.json | – | – |")
    out += ["", "### Alignment (`align/`)", "", *_architecture(a), "",
            "### Caption decoder (`decoder/`)", "",
            f"- kind: `{kept['kind']}`" + (f": a LoRA adapter (r={kept['lm']['lora']['r']}, on "
                                          f"{', '.join(kept['lm']['lora']['target_modules'])}; peft's format in "
                                          "`decoder/adapter/`) and a projector from the aligned latents to "
                                          f"{kept['prefix_tokens']} prefix tokens of the base LM"
                                          if kept["kind"] == "lora_lm" else
                                          ": a tiny recursive decoder over the base LM tokenizer's caption vocabulary "
                                          "(`decoder/vocab.json`)"),
            f"- generation: {kept['generate']['strategy']}, at most {kept['generate']['max_new_tokens']} new tokens "
            "(`caption(..., num_beams=...)` overrides)",
            f"- base LM: `{lm['name']}`, licence {lm_licence or 'see its own model card'}; "
            + (f"copied into `lm/` (weights sha256 `{(lm.get('sha256') or '')[:16]}`)" if lm.get("folder")
               else f"a hub reference (weights sha256 `{(lm.get('sha256') or 'not recorded')[:16]}`), downloaded on load"),
            "", "## Training data", "",
            "| source | items | licence | attribution |", "| --- | --- | --- | --- |"]
    for d in data:
        for t in d["terms"]:
            out.append(f"| {d['source']} | {t['items']} | {t['license']} | {t['attribution'] or '–'} |")
    splits = _read_json(workspace / CARD_INPUTS[2]).get("splits", {})
    out += ["", "The download kept " + ", ".join(f"{d['source']} {d['items']} of {d['in']}" for d in data if d["in"])
            + " items (each reject with its reason in `data/download/rejects.csv`). Splits (items): "
            + ", ".join(f"{k} {v}" for k, v in splits.items()) + "; split by group (an item's variants never "
            "straddle two splits) and checked for caption and media overlap.", "",
            "## Licences", "",
            "- **data**: per source above; each item's licence and attribution are kept in the manifest. Derived "
            "data (spoken captions, features) inherits share-alike terms.",
            "- **encoders**: " + ("; ".join(f"{e['model']}: {e['licence']}" for e in encoders)
                                  or "not recorded in align/model.json") + ".",
            f"- **base LM**: {lm['name']}: {lm_licence or 'see its own model card'}.",
            "- **edge_glass code**: Apache-2.0.",
            "- The front matter's `license` is one licence only when every part above shares it; otherwise it "
            "says `other` and this section is the licence statement.", "",
            "## Evaluation", "",
            f"Test split: {retrieval.get('items', '?')} items. Each value with its bootstrap 95% interval over the "
            f"test items ({retrieval.get('bootstrap', {}).get('resamples', '?')} resamples; every caption of a "
            f"drawn item counts). Trained model at {top} dims vs a ridge baseline on the full frozen features.", "",
            "| task | trained R@1 | trained R@5 | trained R@10 | baseline R@1 | baseline R@5 |",
            "| --- | --- | --- | --- | --- | --- |"]
    base = retrieval.get("baseline", {})
    for direction in DIRECTIONS:
        if direction in retrieval.get("trained", {}):
            t, b = retrieval["trained"][direction], base.get(direction, {})
            out.append(f"| {ARROW[direction]} | {_interval(t, 'R@1')} | {_interval(t, 'R@5')} | {_interval(t, 'R@10')} "
                       f"| {_interval(b, 'R@1')} | {_interval(b, 'R@5')} |")
    by_dim = retrieval.get("by_dim", {})
    if by_dim:
        dims = sorted(by_dim, key=int, reverse=True)
        out += ["", "R@1 at each MRL dim (point estimates):", "", "| task | " + " | ".join(dims) + " |",
                "| --- |" + " --- |" * len(dims)]
        for direction in DIRECTIONS:
            if any(direction in by_dim[d] for d in dims):
                out.append(f"| {ARROW[direction]} | " + " | ".join(
                    f"{by_dim[d][direction]['R@1']:.3f}" if direction in by_dim[d] else "–" for d in dims) + " |")
    out += ["", f"Captions ({decode.get('generate', {}).get('strategy', 'greedy')} decoding, {captions.get('items')} "
            f"{captions.get('split', 'test')} items):", "", "| metric | value [95% interval] |", "| --- | --- |"]
    out += [f"| {key} | {value} |" for key, value in _interval_rows(captions)]
    if zeroshot:
        out += ["", "Zero-shot classification (`metrics/zeroshot.json`):", "", "| metric | value [95% interval] |",
                "| --- | --- |"]
        out += [f"| {key} | {value} |" for key, value in _interval_rows(zeroshot)] or ["| – | no intervals recorded |"]
    out += ["", "## Training parameters", "", f"seed {params.get('seed')}; `align` (also in `config.json`):", "",
            "```yaml", yaml.safe_dump({"align": a}, sort_keys=False).rstrip(), "```", "", "`decode`:", "",
            "```yaml", yaml.safe_dump({"decode": decode}, sort_keys=False).rstrip(), "```", "",
            "## Intended use and limits", "",
            "- A research and teaching model: for trying cross-modal retrieval, Matryoshka truncation and "
            "captioning end to end, and as a baseline to compare changes against with intervals. **Not for "
            "production** and not for decisions about people.",
            "- Trained on the tiny offline default data: OpenMoji emoji (rendered glyphs, captions from their "
            "names, spoken by espeak-ng) and Asterisk spoken prompts. It knows emoji-like pictures and short "
            "spoken sentences, not photographs or everyday sounds; every audio clip is a caption spoken aloud, so "
            "audio→text scores are partly speech recognition, not audio understanding."
            if {d["source"] for d in data} <= DEFAULT_SOURCES else
            f"- Trained on {', '.join(d['source'] for d in data)} ({sum(t['items'] for d in data for t in d['terms'])} "
            "items): it knows what these data show and little else; the metrics above are on their test split only.",
            "- Captions from the small decoder are fluent but often name the wrong objects; compare caption "
            "metrics only with their intervals and seed spread.",
            "- Inputs go through the same checks and normalisation as the pipeline's download and preprocess "
            "stages; an unusable file is refused with a reason.", "",
            "## Files", "",
            "`config.json` lists every file with its sha256 (`files`); a loader names any file that is missing or "
            "differs. `align/`: aligner weights (safetensors) and record; `decoder/`: the trained decoder; "
            + ("`lm/`: the base LM folder." if lm.get("folder") else "the base LM is a hub reference (not copied)."), ""]
    return "\n".join(out)


# -- the hub ----------------------------------------------------------------------------------------------------


def hub_ready(repo_id: str) -> None:
    """Refuse a push before any work when the repo id is malformed, the hub is switched off or no token is set."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise OutputError(f"--push-to-hub {repo_id}: not a repo id (USER/NAME): {exc}") from None
    if constants.HF_HUB_OFFLINE:
        raise OutputError(f"--push-to-hub {repo_id}: the hub is off here (HF_HUB_OFFLINE is set); "
                          "export without --push-to-hub, or unset HF_HUB_OFFLINE where the hub is reachable")
    if not get_token():
        raise OutputError(f"--push-to-hub {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the model repo (if new) and upload the folder in one commit; the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=f"edge_glass {api.edge_glass_version()} export")
    except Exception as exc:  # the hub client raises many types (network, HTTP, validation): all one line here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OutputError(f"--push-to-hub {repo_id}: {type(exc).__name__}: {reason} "
                          f"(the export in {folder} is complete)") from None
    return getattr(info, "commit_url", None) or str(info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_glass.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (refused if not empty, unless --force)")
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="the DVC workspace after `dvc repro` (default: the current folder)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hugging Face model repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--title", help="the model card's title (default: the --out folder's name)")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private needs --push-to-hub")
    try:
        if args.push_to_hub:
            hub_ready(args.push_to_hub)
        export_model(args.workspace, args.out, force=args.force, title=args.title)
        if args.push_to_hub:
            print(f"[export] pushed to {push_to_hub(args.out.resolve(), args.push_to_hub, args.private)}", flush=True)
    except Exception as exc:
        code = exit_code(exc)  # core.errors.EXIT_CODES: known faults give one line; anything else is a bug
        if code is None:
            raise
        print(f"[export] invalid params:\n{exc}" if isinstance(exc, ParamsError) else
              f"[export] error: {' '.join(str(exc).split())}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
