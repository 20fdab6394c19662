"""The encoder registry: ``(modality, backend)`` -> frozen encoder class, like ``FUSIONS`` for fusion.

The backend is the ``backend`` key of the modality's params section (``preprocess.vision``,
``preprocess.audio``, ``preprocess.text``); a new encoder is one class (``encoders/base.py``) and one
decorator line, plus its name in that section's ``backend`` choices. The class takes its params
section, which also holds its batch size.
"""

from __future__ import annotations

from typing import Callable

from edge_glass.config.preprocess import SECTIONS
from edge_glass.core.registry import registrar

ENCODERS: dict[tuple[str, str], Callable] = {}


_register = registrar(ENCODERS, "encoder")


def register_encoder(modality: str, backend: str):
    return _register((modality, backend))


def encoder_params(modality: str, preprocess):
    """The params section of ``modality``'s encoder (``preprocess.vision`` for images...)."""
    return getattr(preprocess, SECTIONS[modality])


def build_encoder(modality: str, params):
    """The frozen encoder of ``modality`` on ``preprocess.device`` with ``preprocess.precision`` autocast."""
    from edge_glass.core.device import resolve_precision, stage_device

    device = stage_device(params.preprocess.device, "preprocess.device")
    return place_encoder(modality, params.preprocess, device, resolve_precision(params.preprocess.precision, device))


def place_encoder(modality: str, preprocess, device, precision):
    """The frozen encoder of ``modality`` built from ``preprocess`` (its params section) on ``device`` with
    ``precision`` autocast: the one constructor behind the preprocess stage and ``edge_glass.load``."""
    import edge_glass.encoders.audio  # noqa: F401  (fill the registry)
    import edge_glass.encoders.hf  # noqa: F401
    import edge_glass.encoders.text  # noqa: F401
    import edge_glass.encoders.vision  # noqa: F401

    section = encoder_params(modality, preprocess)
    key = f"preprocess.{SECTIONS[modality]}.backend"
    if (modality, section.backend) not in ENCODERS:
        choices = sorted(b for m, b in ENCODERS if m == modality)
        raise ValueError(f"{key}: unknown encoder {section.backend!r} (choose from {choices})")
    return ENCODERS[(modality, section.backend)](section).place(device, precision)
