"""Constants and builders the tests share (lightning-hydra-template's tests/helpers): import from
here, not from conftest, which only holds the fixtures."""

import json
import os
import shutil
import subprocess
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


def run(cmd: str, cwd: Path) -> str:
    """A shell command that must succeed; its stdout + stderr."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, shell=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def tiny_pipeline_params(params: dict) -> dict:
    """The shipped params.yaml scaled down so a whole `dvc repro` takes ~2 min on 2 cores (in place)."""
    params["download"]["limit_per_source"] = 6
    params["preprocess"]["shard_size"] = 4
    tiny = json.loads(json.dumps(TINY_ALIGN))
    # 6 items per source leave no val split: select the last step (best_val without val is a params error)
    params["align"]["train"].update(tiny.pop("train"), batch_size=4, steps=4, select="last")
    params["align"]["perceiver"].update(tiny.pop("perceiver"))
    params["align"].update(tiny)
    params["align"]["projection_dim"] = 8  # the PCA text head needs >= projection_dim captions (12 in train here)
    params["align"]["mrl"]["dims"] = [8, 4]
    params["evaluate"]["split"] = "train"  # 12 items leave too few in test for a meaningful gallery
    params["decode"].update(kind="trm", split="train", prefix_tokens=2)
    params["decode"]["trm"].update(dim=32, heads=2)
    params["decode"]["train"].update(steps=3, batch_size=4, checkpoint_every=2, log_every=1)
    params["decode"]["generate"].update(max_new_tokens=4)
    return params


def copy_workspace(src: Path, dst: Path) -> Path:
    """A private copy of a DVC workspace to change. The DVC cache is hard-linked, not copied: DVC never
    writes a cache file in place (they are read-only; new content is a new file), so the copy cannot
    change the original's; everything else (the prepared LM's 0.5 GB included) is copied."""
    cache = src / ".dvc" / "cache"
    shutil.copytree(src, dst, symlinks=True, ignore=lambda d, names: ["cache"] if Path(d) == cache.parent else [])
    if cache.exists():
        shutil.copytree(cache, dst / ".dvc" / "cache", symlinks=True, copy_function=link_or_copy)
    return dst


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)
