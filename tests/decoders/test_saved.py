"""A saved decoder (decoders/saved.py) rebuilds without the training captions: same logits, same captions."""

from __future__ import annotations

import json

import pytest
import torch

from edge_glass.config import parse_params
from edge_glass.core.errors import ModelError
from edge_glass.decode import build_decoder
from edge_glass.decoders.generate import generate
from edge_glass.decoders.saved import generate_params, load_decoder, save_decoder


def _params(kind):
    return parse_params({"seed": 0, "decode": {"kind": kind, "prefix_tokens": 2, "max_caption_tokens": 12,
                                                "generate": {"max_new_tokens": 5, "batch_size": 8}}})


@pytest.mark.parametrize("kind", ["trm", "lora_lm"])
def test_saved_decoder_loads_with_identical_logits_and_captions(kind, conditioned, prepared_lm, tmp_path):
    data, cond = conditioned
    params = _params(kind)
    captions = [c for caps in data.caption_texts for c in caps]
    decoder = build_decoder(params, cond, prepared_lm, captions)
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking weights: a fresh LoRA adapter (B = 0) would load as a no-op unnoticed
        for p in decoder.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    decoder.eval()
    meta = save_decoder(tmp_path / "model", decoder, params, cond.latents.shape[-1], cond.embedding.shape[-1], prepared_lm)
    names = {str(p.relative_to(tmp_path / "model")) for p in (tmp_path / "model").rglob("*") if p.is_file()}
    if kind == "lora_lm":
        assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "projector.safetensors"} <= names
        assert json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] \
            == "SmolLM2-135M-Instruct"
    else:
        assert {"decoder.safetensors", "vocab.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)  # safetensors only
    assert meta["base_lm"]["name"] == "SmolLM2-135M-Instruct" and len(meta["base_lm"]["sha256"]) == 64
    assert (meta["latent_dim"], meta["embedding_dim"]) == (16, 24)

    loaded, saved_meta = load_decoder(tmp_path / "model", prepared_lm)  # no captions given
    assert saved_meta == meta
    part = cond.select(list(range(6)))
    ids, mask = decoder.encode_captions(captions[:6], 12)
    with torch.no_grad():
        assert torch.equal(loaded.logits(part, ids, mask), decoder.logits(part, ids, mask))
    gen = generate_params(meta)
    assert generate(loaded, part, gen, seed=0) == generate(decoder, part, gen, seed=0)
    assert generate_params(meta, num_beams=2, strategy="beam").num_beams == 2


def test_a_decoder_folder_missing_a_file_or_on_other_lm_weights_is_refused(conditioned, prepared_lm, tmp_path):
    data, cond = conditioned
    params = _params("trm")
    decoder = build_decoder(params, cond, prepared_lm, [c for caps in data.caption_texts for c in caps])
    save_decoder(tmp_path / "model", decoder, params, cond.latents.shape[-1], cond.embedding.shape[-1], prepared_lm)
    meta = json.loads((tmp_path / "model" / "decoder.json").read_text())
    (tmp_path / "model" / "decoder.json").write_text(json.dumps({**meta, "base_lm": {**meta["base_lm"],
                                                                                     "tokenizer_sha256": "0" * 64}}))
    with pytest.raises(ModelError, match=r"tokenizer_sha256 .* differs from the decoder's 000000000000"):
        load_decoder(tmp_path / "model", prepared_lm)
    (tmp_path / "model" / "vocab.json").unlink()
    with pytest.raises(ModelError, match=r"missing \['vocab.json'\]"):
        load_decoder(tmp_path / "model", prepared_lm)
    with pytest.raises(ModelError, match="decoder.json missing"):
        load_decoder(tmp_path, prepared_lm)
