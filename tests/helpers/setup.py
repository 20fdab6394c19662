"""Constants and builders the tests share (lightning-hydra-template's tests/helpers): import from
here, not from conftest, which only holds the fixtures."""

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def small_params(tmp: Path, **download) -> dict:
    """Params dict for a small real subset; written to tmp/params.yaml."""
    raw = {
        "seed": 0,
        "download": {"limit_per_source": 12, **download},
        "preprocess": {"shard_size": 8, "vision": {"batch_size": 8}, "audio": {"batch_size": 8}},
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    return raw


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# The shipped align recipe (PCA text head, dropout, token dropout, linear path, mean pool) scaled
# down in size only: tests exercise the behaviour that runs by default
TINY_ALIGN = {
    "dim": 16, "projection_dim": 24,  # the PCA text head needs >= projection_dim training captions (30 here)
    "perceiver": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 8},
    "mrl": {"dims": [24, 12]},
    "train": {"steps": 6, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 2, "log_every": 1, "eval_every": 3},
}
