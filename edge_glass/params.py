"""Compose conf/ with Hydra into params.yaml (what DVC's hydra.enabled does on `dvc exp run`).

    python -m edge_glass.params --write                     refresh params.yaml from conf/
    python -m edge_glass.params --check                     exit 1 if params.yaml is stale
    python -m edge_glass.params preprocess.dtype=float32    print a composition with overrides
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from edge_glass.config import parse_params


def compose(overrides: list[str] | None = None, conf_dir: str | Path = "conf", config_name: str = "config") -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. align.perceiver.num_latents=32")
    parser.add_argument("--write", action="store_true", help="write params.yaml")
    parser.add_argument("--check", action="store_true", help="fail if params.yaml differs from conf/")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    composed = compose(args.overrides)
    parse_params(composed, source="conf/")
    if args.check:
        current = yaml.safe_load(Path(args.params).read_text())
        if current != composed:
            print(f"{args.params} is stale: run python -m edge_glass.params --write", file=sys.stderr)
            return 1
        return 0
    text = yaml.safe_dump(composed, sort_keys=False)
    if args.write:
        Path(args.params).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
