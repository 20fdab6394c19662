"""Shared start-up for the stage entry points: argument parsing, params, clean error exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from edge_glass.config import Params, ParamsError, load_params
from edge_glass.hub import configure_hub
from edge_glass.io import OutputError
from edge_glass.sources.base import DataError


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
    except ParamsError as exc:
        print(f"[{name}] invalid params:\n{exc}", file=sys.stderr)
        sys.exit(2)
    except (OutputError, FileNotFoundError, ImportError, DataError) as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        sys.exit(3)
