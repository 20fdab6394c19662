"""Use a trained model from Python: ``edge_glass.load(path)`` embeds and captions new files.

``path`` is a DVC workspace after ``dvc repro`` (``data/align``, ``data/decode/model``, ``data/lm``,
``params.yaml``) or a model folder written by ``python -m edge_glass.export`` (``config.json`` with
``format: edge_glass.model/1``, ``align/``, ``decoder/``, ``lm/``). Both load into one
:class:`EdgeGlassModel`.

One code path with the pipeline: a new file goes through download's checks and normalisation
(``data.media.read_media_file`` with ``download.max_file_mb``, ``normalised_image`` /
``normalised_audio`` with the ``download.image`` / ``download.audio`` settings the model was trained
under), a text through download's caption cleaning (``data.manifest.clean_caption``), then the frozen
encoder's ``loader()`` and ``forward`` exactly as the preprocess stage runs them (rebuilt from the
``preprocess`` sections recorded in ``model.json`` and checked against the recorded weight hashes), the
features are rounded to the stored feature dtype as the shards hold them (``features.store.as_stored``),
and the align model's resamplers and heads run as ``metrics.retrieval.embed_split`` runs them on cached
features. An embedding of a file from the API therefore equals the pipeline's for the same file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edge_glass.config.align import AlignParams
from edge_glass.config.download import AudioCheckParams, ImageParams
from edge_glass.config.preprocess import SECTIONS, PreprocessParams
from edge_glass.core.device import autocast, resolve_device, resolve_precision, torch_threads
from edge_glass.core.errors import MediaError, ModelError
from edge_glass.core.io import sha256_file, sha256_text
from edge_glass.data.manifest import clean_caption
from edge_glass.data.media import normalised_audio, normalised_image, read_media_file
from edge_glass.encoders.loading import length_sorted_batches, load_batch, loaded_batches, loader_blas_single_threaded
from edge_glass.features.dataset import Batch, pad_tokens
from edge_glass.features.store import as_stored
from edge_glass.models.aligner import AlignModel, input_settings

log = logging.getLogger(__name__)

FORMAT = "edge_glass.model/1"  # config.json of an exported model folder
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
BATCH_SIZES = {"image": 32, "audio": 16, "text": 128, "fused": 16}
# A batch this small (one query) runs on one torch thread: its matrices are tiny, so the fork-join of
# every op on several threads costs more than it saves, and on a loaded machine each op waits for the
# slowest thread (one text query: ~25 ms on one thread, 150-900 ms on two, on the 2-core CI box).
SMALL_BATCH = 8


def edge_glass_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge_glass")
    except PackageNotFoundError:
        return "unknown"


# where things are ---------------------------------------------------------------------------------------

def is_exported(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(f"{path}: missing ({what})")
    return path


def _workspace_lm(path: Path, decode: dict | None) -> Path | None:
    """The base LM's folder in a workspace: the prepare_lm output for a packaged LM, a local folder named
    by ``decode.lm.model``; None for a hub id (or without a decoder)."""
    if decode is None:
        return None
    if decode["base_lm"].get("packaged"):
        return path / "data" / "lm"
    name = Path(decode["lm"]["model"])
    for folder in (name, path / name):
        if folder.is_dir():
            return folder
    return None


def model_files(path: str | Path) -> dict[str, Path | None]:
    """What an export copies, destination (relative to the exported folder) -> source on this machine:
    ``align/model.safetensors`` and ``align/model.json`` (files), ``decoder`` (the saved decoder's folder,
    None without one) and ``lm`` (the base LM's folder, None when the LM is a hub id or there is no
    decoder). ``path``: a workspace or an exported folder (whose own files are listed)."""
    path = Path(path)
    if is_exported(path):
        config = read_exported_config(path)
        return {"align/model.safetensors": path / "align" / "model.safetensors", "align/model.json": path / "align" / "model.json",
                "decoder": path / "decoder" if config.get("decode") else None,
                "lm": path / config["lm"]["folder"] if config.get("lm") and config["lm"].get("folder") else None}
    align = path / "data" / "align"
    _require(align / "model.json", "the align stage's model; run dvc repro, or give an exported model folder")
    _require(align / "model.safetensors", "the align stage's weights")
    decoder = path / "data" / "decode" / "model"
    decode = _read_json(decoder / "decoder.json") if (decoder / "decoder.json").exists() else None
    return {"align/model.safetensors": align / "model.safetensors", "align/model.json": align / "model.json",
            "decoder": decoder if decode is not None else None, "lm": _workspace_lm(path, decode)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None


def complete_align(meta: dict, workspace: Path) -> dict:
    """``model.json`` with the encoders and input settings filled in from the workspace (``params.yaml``,
    ``data/features/encoders.json``) when it predates them; a current one is returned unchanged."""
    if "encoders" in meta:
        return meta
    from edge_glass.config import load_params

    params_path = _require(workspace / "params.yaml", "the workspace params; model.json predates the encoder record")
    encoders_path = _require(workspace / "data" / "features" / "encoders.json",
                             "the features' encoder record; model.json predates it")
    return {**meta, **input_settings(load_params(params_path), _read_json(encoders_path))}


def model_config(path: str | Path) -> dict:
    """``config.json`` of the exported model, without its ``files``: the format, the edge_glass version,
    ``align`` (model.json, encoders included), ``decode`` (decoder.json or None) and ``lm`` (``name``,
    ``sha256`` of its weights, ``folder``: ``"lm"`` when the LM folder travels with the model, None for a
    hub id; None without a decoder)."""
    path = Path(path)
    if is_exported(path):
        return {k: v for k, v in read_exported_config(path).items() if k != "files"}
    files = model_files(path)
    decode = _read_json(files["decoder"] / "decoder.json") if files["decoder"] is not None else None
    lm = None
    if decode is not None:
        lm = {"name": decode["base_lm"]["name"], "sha256": decode["base_lm"].get("sha256"),
              "folder": "lm" if files["lm"] is not None else None}
    return {"format": FORMAT, "edge_glass_version": edge_glass_version(),
            "align": complete_align(_read_json(files["align/model.json"]), path), "decode": decode, "lm": lm}


def read_exported_config(path: str | Path) -> dict:
    """An exported folder's ``config.json``, checked: its format, and every file it lists present; ModelError
    naming what is different or missing."""
    path = Path(path)
    config = _read_json(path / "config.json")
    if config.get("format") != FORMAT:
        raise ModelError(f"{path / 'config.json'}: format {config.get('format')!r} (edge_glass "
                         f"{config.get('edge_glass_version', '?')}), this edge_glass ({edge_glass_version()}) reads {FORMAT!r}")
    for key in ("align", "decode", "lm"):
        if key not in config:
            raise ModelError(f"{path / 'config.json'}: no {key!r} section")
    missing = sorted(rel for rel in config.get("files", {}) if not (path / rel).is_file())
    if missing:
        raise ModelError(f"{path}: files listed in config.json are missing: {', '.join(missing[:5])}"
                         f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    _require(path / "align" / "model.safetensors", "the align weights")
    return config


# the model ----------------------------------------------------------------------------------------------

def load(path: str | Path, device: str = "cpu", precision: str = "fp32") -> "EdgeGlassModel":
    """The trained model at ``path`` (a workspace after ``dvc repro`` or an exported folder) on ``device``
    (auto, cpu, cuda, cuda:N); ``precision`` is the encoders' autocast (fp32, bf16, fp16, auto: bf16 on
    CUDA). ModelError names a missing file or a format this version does not read."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a folder (give a DVC workspace after dvc repro, or an exported model folder)")
    return EdgeGlassModel(model_config(path), model_files(path), device, precision, path)


class EdgeGlassModel:
    """Aligned embeddings (image, audio, text, fused) and captions of new inputs.

    ``embed_*`` return float32 numpy ``(n, dim)``, L2-normalised after truncation to ``dim`` (an MRL dim
    of the model, default the largest: ``dims``). Encoders and the decoder load on first use."""

    def __init__(self, config: dict, files: dict, device: str = "cpu", precision: str = "fp32", path: Path | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS} (got {precision!r})")
        self.config, self.files, self.path = config, files, path
        self.device = resolve_device(device, "device")
        self.precision = resolve_precision(precision, self.device)
        meta = config["align"]
        self.align = AlignModel(AlignParams.model_validate(meta["align"]), meta["token_dims"], meta["text_dim"])
        weights = files["align/model.safetensors"]
        self.align.load_state_dict(load_file(str(weights)))
        self.align.eval().requires_grad_(False).to(self.device)
        self.dims = list(self.align.cfg.mrl.dims)  # descending (the params check it)
        self.modalities = (*self.align.media, "text")
        self.has_fusion = self.align.has_fusion
        self.encoder_records = meta["encoders"]
        self.preprocess = PreprocessParams.model_validate({"modalities": list(self.encoder_records), **meta["preprocess"]})
        self.image_params = ImageParams.model_validate(meta["download"]["image"])
        self.audio_params = AudioCheckParams.model_validate(meta["download"]["audio"])
        self.max_file_bytes = int(meta["download"]["max_file_mb"]) * 2**20
        self.num_workers = self.preprocess.num_workers  # media decoding ahead of the encoders, as the stage does
        # what a gallery index records: align weights + config (encoder names, weight hashes, settings)
        self.fingerprint = sha256_text(json.dumps({"align_weights": sha256_file(weights), "align": meta}, sort_keys=True))
        self._encoders: dict[str, Any] = {}
        self._decoder = None

    # encoders -------------------------------------------------------------------------------------------
    def encoder(self, modality: str):
        """The frozen encoder of ``modality``, built from the recorded params section on first use and
        checked against what the model was trained on (ModelError naming the difference)."""
        if modality not in self._encoders:
            if modality not in self.encoder_records:
                raise ValueError(f"this model has no {modality} encoder (it has {', '.join(self.encoder_records)})")
            from edge_glass.encoders.registry import place_encoder

            encoder = place_encoder(modality, self.preprocess, self.device, self.precision)
            check_encoder(modality, encoder.info, self.encoder_records[modality])
            self._encoders[modality] = encoder
        return self._encoders[modality]

    # inputs ---------------------------------------------------------------------------------------------
    def load_media(self, modality: str, source: Any, root: str | Path | None = None, sample_rate: int | None = None) -> Any:
        """One input as the encoder's loader returns it, through download's checks and normalisation.

        ``source``: a path, bytes, a PIL image (image), a float array with ``sample_rate`` or a
        ``(array, sample_rate)`` pair (audio), a string (text). ``root``: a path must resolve under it
        (links and ``..`` out of it are refused). A file that cannot be used raises MediaError naming it."""
        return self._loader(modality, root, sample_rate)(source)

    def _loader(self, modality: str, root: str | Path | None = None, sample_rate: int | None = None):
        """``source -> encoder input`` for ``modality``: a :class:`MediaLoad` (it pickles, so DataLoader
        worker processes can run it), or the text cleaning."""
        if modality == "text":
            return self._load_text
        if modality not in ("image", "audio"):
            raise ValueError(f"modality: expected image, audio or text (got {modality!r})")
        return MediaLoad(modality, self.encoder(modality).loader(), self.image_params, self.audio_params,
                         self.max_file_bytes, Path(root).resolve() if root is not None else None, sample_rate)

    def _load_text(self, text: Any) -> str:
        if not isinstance(text, str):
            raise MediaError(f"text: expected a string (got {type(text).__name__})")
        cleaned = clean_caption(text)
        if not cleaned:
            raise MediaError(f"empty text: {text!r}")
        encoder = self.encoder("text")
        if encoder.max_tokens is not None:
            n = encoder.token_count(cleaned)
            if n > encoder.max_tokens:
                log.warning("text of %d tokens truncated to the text encoder's %d (preprocess.text.max_length): %.60r...",
                            n, encoder.max_tokens, cleaned)
        return cleaned

    # embeddings -----------------------------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.dims[0]
        if dim not in self.dims:
            raise ValueError(f"dim={dim} is not an MRL dim of this model (valid: {', '.join(map(str, self.dims))})")
        return dim

    @torch.no_grad()
    def embed_loaded(self, modality: str, inputs: list, dim: int | None = None) -> np.ndarray:
        """Embeddings of loaded inputs (:meth:`load_media`; for ``fused``, (image, audio) pairs): float32
        ``(n, dim)``, L2-normalised after truncation to ``dim``."""
        d = self.check_dim(dim)
        if not len(inputs):
            return np.zeros((0, d), dtype=np.float32)
        with torch_threads(1 if len(inputs) <= SMALL_BATCH and self.device.type == "cpu" else torch.get_num_threads()):
            return self._embed_loaded(modality, inputs, d)

    def _embed_loaded(self, modality: str, inputs: list, d: int) -> np.ndarray:
        if modality == "text":
            z = self.align.heads["text"](self._features("text", inputs)[1].to(self.device))
        elif modality in ("image", "audio", "fused"):
            if modality == "fused" and not self.has_fusion:
                raise ValueError("this model has no fused embedding (it was not trained on image and audio)")
            media = ("image", "audio") if modality == "fused" else (modality,)
            columns = list(zip(*inputs)) if modality == "fused" else [inputs]
            tokens = {m: self._features(m, list(col))[0] for m, col in zip(media, columns)}
            z = self.align(self._batch(tokens, len(inputs)))[modality][0]
        else:
            raise ValueError(f"modality: expected image, audio, text or fused (got {modality!r})")
        return F.normalize(z.float()[:, :d], dim=-1).cpu().numpy()

    def _features(self, modality: str, inputs: list) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Token and pooled features as the feature shards hold them (the stored dtype, read as float32)."""
        tokens, pooled = self.encoder(modality).forward(inputs)
        dtype = self.encoder_records[modality]["dtype"]
        return [as_stored(t, dtype) for t in tokens], as_stored(pooled, dtype)

    def _batch(self, tokens: dict[str, list[torch.Tensor]], n: int) -> Batch:
        """A Batch as ``FeatureSplit.batch`` gives one (media tokens padded, presence flags), on the device."""
        padded, masks, present = {}, {}, {}
        for m in self.align.media:
            padded[m], masks[m], present[m] = pad_tokens(tokens.get(m, [None] * n), self.config["align"]["token_dims"][m])
        text = torch.zeros(n, self.config["align"]["text_dim"])
        return Batch(padded, masks, present, text).to(self.device)

    def _embed(self, modality: str, sources: Iterable, dim, batch_size: int | None, **load) -> np.ndarray:
        """Load (ahead of the encoder, with the preprocess stage's read-ahead: ``encoders.loading``) and
        embed ``sources``; rows in input order. Audio is batched by length as the stage batches it (file
        size for a file: the clip's length before decoding), so padding stays small; the first input that
        cannot be used raises MediaError naming it."""
        d = self.check_dim(dim)
        sources = list(sources)
        out = np.zeros((len(sources), d), dtype=np.float32)
        if not sources:
            return out
        bs = batch_size or BATCH_SIZES[modality]
        keys = [_length_key(s) for s in sources] if modality == "audio" else [0] * len(sources)
        batches = length_sorted_batches(keys, bs)
        jobs = [[sources[i] for i in batch] for batch in batches]
        load_one = self._loader(modality, **load)
        if modality == "text":  # cleaning needs no read-ahead, and the tokenizer is not for two threads at once
            reads = contextlib.nullcontext(load_batch(load_one, job) for job in jobs)
        else:
            reads = loaded_batches(self.encoder(modality), jobs, self.num_workers, load_one)
        with loader_blas_single_threaded(), reads as loaded:
            for batch, items in zip(batches, loaded):
                errors = [err for _, _, err in items if err]
                if errors:
                    raise MediaError(errors[0])
                out[batch] = self.embed_loaded(modality, [x for _, x, _ in items], d)
        return out

    def embed_images(self, images: Iterable, dim: int | None = None, batch_size: int | None = None) -> np.ndarray:
        """Image embeddings of paths, bytes or PIL images."""
        return self._embed("image", images, dim, batch_size)

    def embed_audio(self, audio: Iterable, sample_rate: int | None = None, dim: int | None = None,
                    batch_size: int | None = None) -> np.ndarray:
        """Audio embeddings of paths, bytes or float arrays (arrays at ``sample_rate``)."""
        return self._embed("audio", audio, dim, batch_size, sample_rate=sample_rate)

    def embed_texts(self, texts: Iterable[str], dim: int | None = None, batch_size: int | None = None) -> np.ndarray:
        """Text embeddings (cleaned as download cleans captions; longer than the encoder's limit: truncated, warned)."""
        if isinstance(texts, str):
            texts = [texts]
        return self._embed("text", texts, dim, batch_size)

    def embed_fused(self, images: Iterable, audio: Iterable, sample_rate: int | None = None, dim: int | None = None,
                    batch_size: int | None = None) -> np.ndarray:
        """Fused embeddings of (image, audio) pairs: ``images[i]`` with ``audio[i]``."""
        pairs = _pairs(images, audio)
        d = self.check_dim(dim)
        bs = batch_size or BATCH_SIZES["fused"]
        parts = [self.embed_loaded("fused", [(self.load_media("image", i), self.load_media("audio", a, sample_rate=sample_rate))
                                             for i, a in pairs[k:k + bs]], d)
                 for k in range(0, len(pairs), bs)]
        return np.concatenate(parts) if parts else np.zeros((0, d), dtype=np.float32)

    # captions -------------------------------------------------------------------------------------------
    def decoder(self):
        """The trained caption decoder with its ``decoder.json``, loaded on first use."""
        if self._decoder is None:
            if self.files.get("decoder") is None:
                where = "decoder/decoder.json" if self.path is None or is_exported(self.path) else "data/decode/model/decoder.json"
                raise ModelError(f"{self.path or 'this model'}: no saved caption decoder ({where} missing); the decode "
                                 "stage of this edge_glass keeps it (dvc repro decode), export copies it")
            from edge_glass.decoders.saved import load_decoder

            lm_dir = self.files.get("lm") or Path(self.config["decode"]["lm"]["model"])
            self._decoder = load_decoder(self.files["decoder"], lm_dir, self.device)
        return self._decoder

    @torch.no_grad()
    def caption(self, images: Iterable | None = None, audio: Iterable | None = None, sample_rate: int | None = None,
                num_beams: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None) -> list[str]:
        """One caption per input from the trained decoder: conditioned on the fused latents when both
        ``images`` and ``audio`` are given (pairs), else on the one medium, as the decode stage does.
        ``num_beams`` > 1 is beam search, 1 greedy; default: the saved ``decode.generate`` settings."""
        from edge_glass.decoders.conditioning import batch_conditioning
        from edge_glass.decoders.generate import generate
        from edge_glass.decoders.saved import generate_params

        if images is None and audio is None:
            raise ValueError("caption: give images, audio or both")
        decoder, meta = self.decoder()
        if images is not None and audio is not None:
            items = [{"image": i, "audio": a} for i, a in _pairs(images, audio)]
        else:
            m = "image" if images is not None else "audio"
            items = [{m: s} for s in (images if images is not None else audio)]
        strategy = None if num_beams is None else ("beam" if num_beams > 1 else "greedy")
        gen = generate_params(meta, num_beams=num_beams, max_new_tokens=max_new_tokens, strategy=strategy)
        bs = batch_size or BATCH_SIZES["fused"]
        out = []
        for k in range(0, len(items), bs):
            part = items[k:k + bs]
            tokens = {}
            for m in ("image", "audio"):
                if m in part[0]:
                    loaded = [self.load_media(m, it[m], sample_rate=sample_rate if m == "audio" else None) for it in part]
                    tokens[m] = self._features(m, loaded)[0]
            cond = batch_conditioning(self.align, self._batch(tokens, len(part)), meta["prefix_tokens"])
            with autocast(self.device, resolve_precision(meta["precision"], self.device)):
                out.extend(generate(decoder, cond, gen, seed=meta["seed"]))
        return out


class MediaLoad:
    """``source -> encoder input`` for an image or audio: download's file checks and normalisation, then the
    encoder's ``loader()``; MediaError names the source. Holds settings only, so it pickles (DataLoader
    worker processes, ``preprocess.num_workers`` > 0)."""

    def __init__(self, modality: str, loader, image_params: ImageParams, audio_params: AudioCheckParams,
                 max_file_bytes: int, root: Path | None = None, sample_rate: int | None = None):
        self.modality, self.loader = modality, loader
        self.image_params, self.audio_params, self.max_file_bytes = image_params, audio_params, max_file_bytes
        self.root, self.sample_rate = root, sample_rate

    def __call__(self, source: Any) -> Any:
        name = _name(source)
        try:
            if self.modality == "image":
                data, _ = normalised_image(self._image_bytes(source), self.image_params)
            else:
                sample_rate = self.sample_rate
                if isinstance(source, tuple) and len(source) == 2:
                    source, sample_rate = source
                data, _, _ = normalised_audio(source if isinstance(source, np.ndarray) else self._bytes(source),
                                              self.audio_params, sample_rate)
            return self.loader(data)
        except MediaError as exc:
            reason = str(exc)
            raise MediaError(reason if name in reason else f"{name}: {reason}") from None

    def _bytes(self, source: Any) -> bytes:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source)
        if isinstance(source, (str, Path)):
            return read_media_file(Path(source), self.root, self.max_file_bytes)
        raise MediaError(f"cannot read a {type(source).__name__} (give a path or bytes)")

    def _image_bytes(self, source: Any) -> bytes:
        from PIL import Image

        if isinstance(source, Image.Image):  # lossless, so the pixels reach the normalisation unchanged
            buf = io.BytesIO()
            source.save(buf, "PNG")
            return buf.getvalue()
        return self._bytes(source)


def _length_key(source: Any) -> float:
    """An audio input's length before decoding, to batch similar lengths: a file's size, the bytes' or the
    array's length (0 for what cannot be sized: it fails later with its own error)."""
    if isinstance(source, tuple) and len(source) == 2:
        source = source[0]
    if isinstance(source, np.ndarray):
        return float(source.shape[-1])
    if isinstance(source, (bytes, bytearray, memoryview)):
        return float(len(source))
    if isinstance(source, (str, Path)):
        try:
            return float(Path(source).stat().st_size)
        except OSError:
            return 0.0
    return 0.0


def _pairs(images: Iterable, audio: Iterable) -> list[tuple]:
    images, audio = list(images), list(audio)
    if len(images) != len(audio):
        raise ValueError(f"pairs: {len(images)} images but {len(audio)} audio inputs")
    return list(zip(images, audio))


def _name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, tuple):
        return "<audio array>"
    return f"<{type(source).__name__}>"


def check_encoder(modality: str, info, record: dict) -> None:
    """ModelError when the rebuilt encoder is not the one the model was trained on: another name, token
    size, weights (``state_dict`` hash) or preprocessing setting. Library versions in the settings and the
    architecture hash (module reprs) may differ across installs: a warning, the weights decide."""
    found = {"name": info.name, "token_dim": info.token_dim, "pooled_dim": info.pooled_dim,
             "state_dict": info.weights.get("state_dict")}
    want = {"name": record["name"], "token_dim": record["token_dim"], "pooled_dim": record["pooled_dim"],
            "state_dict": record["weights"].get("state_dict")}
    diff = [f"{k} {found[k]!r} (trained with {want[k]!r})" for k in found if want[k] is not None and found[k] != want[k]]
    versions = {"efficientnet_lite_pytorch", "open_clip", "sentence_transformers", "transformers"}
    settings = json.loads(json.dumps(info.settings))  # tuples as lists, as the record has them
    for k in sorted(set(settings) | set(record.get("settings", {}))):
        a, b = settings.get(k), record.get("settings", {}).get(k)
        if a != b:
            if k in versions:
                log.warning("%s encoder: %s %s here, %s when the model was trained", modality, k, a, b)
            else:
                diff.append(f"setting {k}={a!r} (trained with {b!r})")
    if info.weights.get("architecture") != record["weights"].get("architecture"):
        log.warning("%s encoder: module architecture hash differs from training (library version?); weights match", modality)
    if diff:
        raise ModelError(f"{modality} encoder ({SECTIONS[modality]}) differs from the one the model was trained on: "
                         + "; ".join(diff))
