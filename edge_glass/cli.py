"""Shared start-up for the stage entry points: argument parsing, params, the hub switch, clean error exits.

Stages run with ``HF_HUB_OFFLINE=1`` (no network probes, no surprise downloads) unless their params
name something that only the hub has: a hub data set in ``download.sources``, a hub encoder or LM.
A value set in the environment always wins. Known failures (``core.errors``) exit with one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from edge_glass.config import Params, load_params
from edge_glass.core.errors import ParamsError, exit_code
from edge_glass.core.hub import PACKAGED_AUDIO, PACKAGED_LMS, PACKAGED_TEXT

log = logging.getLogger(__name__)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(name: str, parser: argparse.ArgumentParser, body: Callable[[Params, argparse.Namespace], None]) -> None:
    """Parse args, validate params, run ``body``; known failures exit non-zero with one clear line."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        params = load_params(args.params)
        configure_hub(params, name)  # offline unless this stage's params name a hub data set or model
        body(params, args)
    except Exception as exc:
        code = exit_code(exc)  # core.errors.EXIT_CODES: known faults give one line; anything else is a bug
        if code is None:
            raise
        print(f"[{name}] invalid params:\n{exc}" if isinstance(exc, ParamsError) else f"[{name}] error: {exc}",
              file=sys.stderr)
        sys.exit(code)


def run_command(name: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None]) -> None:
    """Like :func:`run_stage` for the commands that use a trained model (index, search, serve): no params
    file of their own, offline hub, and a known failure is one line on stderr with its exit code."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        body(args)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"[{name}] error: {exc}", file=sys.stderr)
        sys.exit(code)


def _remote(name: str, packaged: set[str]) -> bool:
    return name not in packaged and not Path(name).exists()


def hub_uses(params: Params, stage: str | None = None) -> list[str]:
    """The params keys (with values) that need the hub in ``stage`` (None: in any stage)."""
    uses = []
    want = lambda *stages: stage is None or stage in stages  # noqa: E731
    if want("download"):
        from edge_glass.data.sources.online import HUB_SOURCES

        uses += [f"download.sources={s}" for s in params.download.sources if s in HUB_SOURCES]
    p = params.preprocess
    if want("preprocess", "zeroshot_features"):  # zeroshot_features runs the preprocess encoders
        if "image" in p.modalities and p.vision.backend == "open_clip" and p.vision.open_clip_pretrained:
            uses.append(f"preprocess.vision.open_clip_pretrained={p.vision.open_clip_pretrained}")
        if "image" in p.modalities and p.vision.backend == "hf" and _remote(p.vision.model, set()):
            uses.append(f"preprocess.vision.model={p.vision.model}")  # a hub id (a local folder needs no hub)
        if "audio" in p.modalities and _remote(p.audio.model, PACKAGED_AUDIO):
            uses.append(f"preprocess.audio.model={p.audio.model}")
    if want("preprocess", "zeroshot_features", "evaluate") and _remote(p.text.model, PACKAGED_TEXT):
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
