"""Causal-LM caption decoder: frozen (optionally 8/4-bit) LM with LoRA adapters and a trained projector."""

from __future__ import annotations

import torch

from edge_glass.config import LMParams
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import Conditioning, Projector


class LoraLMDecoder(CaptionDecoder):
    def __init__(self, lm, tokenizer, params: LMParams, latent_dim: int, embedding_dim: int):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        lora = params.lora
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
