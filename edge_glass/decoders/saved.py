"""A trained caption decoder on disk (``data/decode/model/``), and rebuilding it without the training data.

The decode stage writes the decoder it trained; ``edge_glass.load(...).caption`` and an exported model
folder read it back. What is written is what cannot be recomputed from params alone:

- ``lora_lm``: ``adapter/`` (the LoRA adapter in peft's own format, ``save_pretrained``, safetensors) and
  ``projector.safetensors``; the base LM is a reference (name + weights hash), not a copy;
- ``trm``: ``decoder.safetensors`` (every trained weight, projector included) and ``vocab.json`` (the
  closed output vocabulary: tokenizer ids seen in the training captions, which are not at hand later);
- ``decoder.json``: the kind, the decode params that rebuild it (``prefix_tokens``, ``max_caption_tokens``,
  the ``lm`` and ``trm`` sections, ``generate``, ``precision``), the base LM reference
  (:func:`edge_glass.decoders.lm.lm_reference`), ``latent_dim`` and ``embedding_dim``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edge_glass.config.decode import GenerateParams, LMParams, TRMParams
from edge_glass.core.errors import ModelError
from edge_glass.core.io import write_json
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.lm import lm_reference

FORMAT = "edge_glass.decoder/1"
FILES = {"lora_lm": ["decoder.json", "projector.safetensors", "adapter/adapter_config.json",
                     "adapter/adapter_model.safetensors"],
         "trm": ["decoder.json", "decoder.safetensors", "vocab.json"]}


def save_decoder(out_dir: str | Path, decoder: CaptionDecoder, params, latent_dim: int, embedding_dim: int,
                 lm_dir: str | Path) -> dict:
    """Write the trained ``decoder`` (``params.decode.kind``) to ``out_dir``, replacing what was there;
    returns the ``decoder.json`` content. Files are written beside the folder and moved in at the end, so
    a stopped run never leaves a half-written model under the final name."""
    dc = params.decode
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if dc.kind == "lora_lm":
        # the adapter config names the base model: the params' name, not this machine's folder
        for config in decoder.lm.peft_config.values():
            config.base_model_name_or_path = dc.lm.model
        decoder.lm.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
        save_file(_cpu(decoder.projector.state_dict()), str(tmp / "projector.safetensors"))
    else:
        save_file(_cpu(decoder.state_dict()), str(tmp / "decoder.safetensors"))
        write_json({"vocab_ids": decoder.vocab_ids.tolist()}, tmp / "vocab.json")
    meta = {"format": FORMAT, "kind": dc.kind, "prefix_tokens": dc.prefix_tokens,
            "max_caption_tokens": dc.max_caption_tokens, "precision": dc.precision, "lm": dc.lm.model_dump(),
            "trm": dc.trm.model_dump(), "generate": dc.generate.model_dump(), "seed": params.decode_seed,
            "base_lm": lm_reference(dc.lm.model, lm_dir), "latent_dim": int(latent_dim),
            "embedding_dim": int(embedding_dim)}
    write_json(meta, tmp / "decoder.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return meta


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def read_decoder_meta(model_dir: str | Path) -> dict:
    """``decoder.json`` of a saved decoder, checked: the format version and every file of its kind present;
    ModelError naming what is missing or different."""
    model_dir = Path(model_dir)
    path = model_dir / "decoder.json"
    if not path.exists():
        raise ModelError(f"{model_dir}: no saved decoder (decoder.json missing); the decode stage writes it "
                         "(dvc repro decode)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: format {meta.get('format')!r}, this edge_glass reads {FORMAT!r}")
    missing = [f for f in FILES.get(meta.get("kind"), []) if not (model_dir / f).exists()]
    if meta.get("kind") not in FILES or missing:
        raise ModelError(f"{model_dir}: saved decoder of kind {meta.get('kind')!r} is missing {missing or 'its kind'}")
    return meta


def load_decoder(model_dir: str | Path, lm_dir: str | Path, device: torch.device | str = "cpu",
                 check_lm: bool = True) -> tuple[CaptionDecoder, dict]:
    """The saved decoder rebuilt on ``device`` in eval mode, and its ``decoder.json``; no training captions.

    ``lm_dir``: the base LM's folder (the prepare_lm output or an exported model's ``lm/``). With
    ``check_lm`` its weights (lora_lm) or tokenizer (trm) must hash as when the decoder was trained,
    else ModelError naming both hashes: a decoder on another LM would caption nonsense silently."""
    model_dir, device = Path(model_dir), torch.device(device)
    meta = read_decoder_meta(model_dir)
    lm_params = LMParams.model_validate(meta["lm"])
    if check_lm:
        check_base_lm(meta["base_lm"], lm_reference(lm_params.model, lm_dir), meta["kind"], lm_dir)
    if meta["kind"] == "trm":
        from transformers import AutoTokenizer

        from edge_glass.decoders.lm import resolve_lm
        from edge_glass.decoders.trm import TRMDecoder

        tokenizer = AutoTokenizer.from_pretrained(resolve_lm(lm_params.model, lm_dir))
        vocab = json.loads((model_dir / "vocab.json").read_text())["vocab_ids"]
        decoder = TRMDecoder(tokenizer, TRMParams.model_validate(meta["trm"]), meta["latent_dim"], meta["embedding_dim"],
                             vocab)
        decoder.load_state_dict(load_file(str(model_dir / "decoder.safetensors")))
        decoder = decoder.to(device)
    else:
        from edge_glass.decoders.lm import load_lm
        from edge_glass.decoders.lora_lm import LoraLMDecoder

        lm, tokenizer = load_lm(lm_params, lm_dir, device)
        decoder = LoraLMDecoder(lm, tokenizer, lm_params, meta["latent_dim"], meta["embedding_dim"],
                                adapter_dir=model_dir / "adapter")
        decoder.projector.load_state_dict(load_file(str(model_dir / "projector.safetensors")))
        if lm_params.quantization == "none":
            decoder = decoder.to(device)
        else:  # a bitsandbytes LM is placed at load time and refuses .to()
            decoder.projector.to(device)
    return decoder.eval(), meta


def check_base_lm(saved: dict, found: dict, kind: str, lm_dir) -> None:
    """ModelError when the LM at hand is not the one the decoder was trained on (hashes known on both sides)."""
    keys = ["tokenizer_sha256"] if kind == "trm" else ["sha256", "tokenizer_sha256"]
    for key in keys:
        if saved.get(key) and found.get(key) and saved[key] != found[key]:
            raise ModelError(f"base LM {saved['name']!r} in {lm_dir}: {key} {found[key][:12]}... differs from the "
                             f"decoder's {saved[key][:12]}... (trained on other LM weights)")


def generate_params(meta: dict, **override) -> GenerateParams:
    """The saved ``generate`` section with the caller's overrides (None: keep the saved value)."""
    return GenerateParams.model_validate({**meta["generate"], **{k: v for k, v in override.items() if v is not None}})
