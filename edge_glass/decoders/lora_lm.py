"""Causal-LM caption decoder: frozen (optionally 8/4-bit) LM with LoRA adapters and a trained projector."""

from __future__ import annotations

import torch

from edge_glass.config.decode import LMParams
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import Conditioning, Projector
from edge_glass.decoders.registry import register_decoder


@register_decoder("lora_lm")
def build(params, latent_dim: int, embedding_dim: int, lm_dir, captions, device: torch.device) -> "LoraLMDecoder":
    """The frozen LM (``decode.lm``) with fresh LoRA adapters and projector, seeded by ``params.decode_seed``."""
    from edge_glass.decoders.lm import load_lm

    lm, tokenizer = load_lm(params.decode.lm, lm_dir, device)
    torch.manual_seed(params.decode_seed)
    decoder = LoraLMDecoder(lm, tokenizer, params.decode.lm, latent_dim, embedding_dim)
    if params.decode.lm.quantization == "none":
        return decoder.to(device)
    decoder.projector.to(device)  # a bitsandbytes LM is placed at load time and refuses .to(); LoRA follows its layer
    return decoder


class LoraLMDecoder(CaptionDecoder):
    """``adapter_dir``: a trained adapter saved in peft's own format (``save_pretrained``) instead of fresh
    LoRA weights (``decoders/saved.py`` rebuilds a trained decoder with it)."""

    def __init__(self, lm, tokenizer, params: LMParams, latent_dim: int, embedding_dim: int, adapter_dir=None):
        super().__init__()
        from peft import LoraConfig, PeftModel, get_peft_model

        lora = params.lora
        if adapter_dir is not None:
            self.lm = PeftModel.from_pretrained(lm, str(adapter_dir))
        else:
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
            try:
                self.lm = get_peft_model(lm, config)
            except ValueError as exc:
                raise ValueError(f"decode.lm.lora.target_modules={lora.target_modules}: {exc}") from None
        self.tokenizer = tokenizer
        self.projector = Projector(latent_dim, embedding_dim, lm.config.hidden_size)

    def logits(self, cond: Conditioning, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prefix = self.projector(cond)
        embeds = self.lm.get_input_embeddings()(ids).to(prefix.dtype)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
        return self.lm(inputs_embeds=torch.cat([prefix, embeds], dim=1), attention_mask=attention.long()).logits

    def stepper(self, cond: Conditioning) -> "KVCacheStepper":
        return KVCacheStepper(self, cond)


class KVCacheStepper:
    """Prefill the prefix once (``use_cache``), then feed one token per step with ``past_key_values``;
    the vocabulary head runs for the last position only (``logits_to_keep=1``)."""

    def __init__(self, decoder: LoraLMDecoder, cond: Conditioning):
        self.decoder, self.cond = decoder, cond
        self.cache = None
        self.length = 0

    def _forward(self, embeds: torch.Tensor) -> torch.Tensor:
        self.length += embeds.shape[1]
        mask = torch.ones(embeds.shape[0], self.length, dtype=torch.long, device=embeds.device)
        out = self.decoder.lm(inputs_embeds=embeds, attention_mask=mask, past_key_values=self.cache,
                              use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def start(self) -> torch.Tensor:
        prefix = self.decoder.projector(self.cond)
        self.dtype = prefix.dtype
        return self._forward(prefix)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(self.decoder.lm.get_input_embeddings()(tokens[:, None]).to(self.dtype))

    def select(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
