"""Headline first: metrics/headline.json is the first metrics file of dvc.yaml, so `dvc exp show` and `dvc metrics
diff` open with the numbers a reader compares; counters (download, preprocess) are plain outputs, not metric
columns. DVC lists metrics files in declaration order (stages in file order, then the top-level ``metrics:``),
and a file's keys in the file's order; the scratch-repo test checks that against the installed DVC."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from helpers.setup import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
COUNTERS = ["metrics/download.json", "metrics/preprocess.json"]


def path_of(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def declared_metrics(dvc_yaml: dict) -> list[str]:
    """Metrics files in the order DVC lists them: each stage's ``metrics`` in stage order, then the top-level list."""
    out = [path_of(m) for stage in dvc_yaml["stages"].values() for m in stage.get("metrics", [])]
    return out + [path_of(m) for m in dvc_yaml.get("metrics", [])]


def test_headline_is_the_first_metric_and_counters_are_plain_outputs():
    metrics = declared_metrics(DVC_YAML)
    assert metrics[0] == "metrics/headline.json", metrics
    assert not set(COUNTERS) & set(metrics)
    outs = {path_of(o): o for s in DVC_YAML["stages"].values() for o in s.get("outs", [])}
    for counter in COUNTERS:  # still produced and kept in git (cache: false), only not a metric
        assert counter in outs and outs[counter][counter] == {"cache": False}
    # every metrics file is written by a stage (the top-level list only orders them)
    assert set(metrics) <= set(outs) | {path_of(m) for s in DVC_YAML["stages"].values() for m in s.get("metrics", [])}


def test_the_check_sees_a_counter_declared_first():
    broken = yaml.safe_load((REPO / "dvc.yaml").read_text())
    broken["stages"]["download"]["metrics"] = [{"metrics/download.json": {"cache": False}}]
    assert declared_metrics(broken)[0] == "metrics/download.json"


@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs dvc and git")
def test_dvc_exp_show_and_metrics_diff_open_with_the_headline_columns(tmp_path):
    """A scratch repo with this dvc.yaml and a value in every metrics and counter file: the first metric
    columns of `dvc exp show --md` are the headline's keys. `dvc metrics diff` orders its rows by a Python set
    of paths (dvc/utils/diff.py: hash order, differs between runs) and sorts keys, so no dvc.yaml orders it;
    `dvc metrics diff --targets metrics/headline.json` (what the docs show) gives exactly the headline's rows."""
    def run(cmd: str) -> str:
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr[-2000:]}"
        return proc.stdout

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    headline = {"image_to_text_R@1": 0.1, "image_to_text_R@1_lo": 0.05, "image_to_text_R@1_hi": 0.2,
                "zeroshot_emoji_groups_top1": 0.3, "captions_CIDEr-D": 0.12}
    files = {path: {"in": 5, "kept": 4, "rejected": 1} for path in COUNTERS}
    files.update({path: {f"detail_{k}": k} for k, path in enumerate(declared_metrics(DVC_YAML)[1:])})
    files["metrics/headline.json"] = headline

    def write(scale: float) -> None:
        for path, content in files.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(json.dumps({k: v * scale for k, v in content.items()}))

    write(1)
    run("git init -q && dvc init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm base")
    header = run("dvc exp show --md --no-pager").splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:2] == ["Experiment", "Created"]
    assert columns[2:2 + len(headline)] == list(headline), columns[:10]
    assert not {"in", "kept", "rejected"} & set(columns)  # counters are not metric columns
    write(2)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in run("dvc metrics diff --md --targets metrics/headline.json").strip().splitlines()[2:]]
    assert sorted(r[1] for r in rows) == sorted(headline) and {r[0] for r in rows} == {"metrics/headline.json"}
    assert "metrics/download.json" not in run("dvc metrics diff --md")
