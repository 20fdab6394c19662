import os
import shutil
from pathlib import Path

import pytest
import yaml

from edge_glass.config import parse_params
from edge_glass.download import build_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def small_download(tmp_path_factory):
    """A real download of 12 emoji (rendered + spoken) and 12 Asterisk prompts."""
    root = tmp_path_factory.mktemp("small")
    raw = small_params(root)
    stats = build_manifest(parse_params(raw), root / "data" / "download")
    return root, raw, stats


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
