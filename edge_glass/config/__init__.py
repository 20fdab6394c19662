"""Typed schema for params.yaml; every stage validates its params at start-up.

Errors name the offending key, e.g. ``align.perceiver.num_latents: must be >= 1 (got 0)``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError, model_validator

from edge_glass.config.align import AlignParams
from edge_glass.config.base import Strict
from edge_glass.config.decode import DecodeParams
from edge_glass.config.download import DownloadParams
from edge_glass.config.evaluate import EvaluateParams
from edge_glass.config.preprocess import PreprocessParams
from edge_glass.config.report import ReportParams
from edge_glass.core.errors import ParamsError


class Params(Strict):
    seed: int = 0
    download: DownloadParams = DownloadParams()
    preprocess: PreprocessParams = PreprocessParams()
    align: AlignParams = AlignParams()
    decode: DecodeParams = DecodeParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _decode_captions_the_scored_split(self):
        if self.decode.split != self.evaluate.split:
            raise ValueError(f"decode.split={self.decode.split} but evaluate.split={self.evaluate.split}: evaluate "
                             "scores the captions decode writes, so both must name the same split")
        return self

    @property
    def align_seed(self) -> int:
        """Seed of align's randomness: ``align.train.seed``, else ``seed``."""
        return self.seed if self.align.train.seed is None else self.align.train.seed

    @property
    def decode_seed(self) -> int:
        """Seed of decode's randomness (init, batches, dropout, sampling): ``decode.train.seed``, else ``seed``."""
        return self.seed if self.decode.train.seed is None else self.decode.train.seed


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        if isinstance(e.get("input"), dict):
            got = ""
        lines.append(f"{source}: {key or '<root>'}: {msg}{got}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return parse_params(raw, source=str(path))
