"""compare: paired differences resample test items, runs on different test sets are refused (exit 4),
unmatched queries are listed, and the PR workflow posts the refusal instead of failing."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.setup import REPO

from edge_glass.compare import NOT_COMPARABLE, main
from edge_glass.metrics.paired import compare, markdown


def sha(items) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def text_queries(items: list[str], ranks: np.ndarray, captions: int = 3, task: str = "text_to_image") -> pd.DataFrame:
    """``captions`` queries per item, all with the item's rank (near-identical captions)."""
    return pd.DataFrame({"model": "trained", "task": task,
                         "query": [f"{i}#{j}" for i in items for j in range(captions)],
                         "item_id": [i for i in items for _ in range(captions)], "source": "s",
                         "rank": np.repeat(ranks, captions)})


def write_run(root: Path, queries: pd.DataFrame, hashed: bool = True) -> Path:
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    queries.to_parquet(root / "metrics" / "retrieval_queries.parquet")
    meta = {"split": "test", "items": int(queries.item_id.nunique()), "trained": {}, "baseline": {}}
    if hashed:
        meta["test_items_sha256"] = sha(queries.item_id.unique())
    (root / "metrics" / "retrieval.json").write_text(json.dumps(meta))
    return root


def test_paired_comparison_marks_a_real_change_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    base_rank = rng.integers(0, 20, n)
    better = np.where(rng.random(n) < 0.25, 0, base_rank)  # a quarter of the queries now hit first
    jitter = base_rank.copy()  # noise: as many first hits gained as lost
    hits, misses = np.flatnonzero(base_rank == 0), np.flatnonzero(base_rank > 0)
    jitter[rng.choice(misses, 6, replace=False)] = 0
    jitter[rng.choice(hits, 6, replace=False)] = 5
    for name, ranks in (("base", base_rank), ("better", better), ("jitter", jitter)):
        write_run(tmp_path / name, pd.DataFrame({"model": "trained", "task": "image_to_text", "query": [f"q{i}" for i in range(n)],
                                                 "item_id": [f"q{i}" for i in range(n)], "source": "s", "rank": ranks}))
    real = {r["metric"]: r for r in compare(tmp_path / "better", tmp_path / "base", None, resamples=500).rows}
    noise = {r["metric"]: r for r in compare(tmp_path / "jitter", tmp_path / "base", None, resamples=500).rows}
    assert real["trained image_to_text R@1"]["significant"] and real["trained image_to_text R@1"]["diff"] > 0.15
    assert not noise["trained image_to_text R@1"]["significant"]
    r = noise["trained image_to_text R@1"]
    assert r["lo"] <= r["diff"] <= r["hi"]


def test_paired_difference_resamples_items_so_duplicated_captions_change_nothing(tmp_path):
    """5 copies of every caption query on both sides: the same items, so the same paired interval. A query-level
    bootstrap would narrow it by sqrt(5) and mark noise as a change."""
    rng = np.random.default_rng(1)
    items = [f"item{i:03d}" for i in range(150)]
    base = rng.integers(0, 4, len(items))
    new = np.where(rng.random(len(items)) < 0.15, rng.integers(0, 4, len(items)), base)
    once = [write_run(tmp_path / f"once_{s}", text_queries(items, r)) for s, r in (("base", base), ("new", new))]
    five = [write_run(tmp_path / f"five_{s}", text_queries(items, r, captions=15)) for s, r in (("base", base), ("new", new))]
    a = {r["metric"]: r for r in compare(once[1], once[0], None, resamples=500).rows}
    b = {r["metric"]: r for r in compare(five[1], five[0], None, resamples=500).rows}
    for k in (1, 5):
        m = f"trained text_to_image R@{k}"
        assert (a[m]["lo"], a[m]["hi"], a[m]["diff"]) == pytest.approx((b[m]["lo"], b[m]["hi"], b[m]["diff"]), abs=1e-12)
        assert a[m]["items"] == b[m]["items"] == len(items) and b[m]["n"] == 15 * len(items)


def test_compare_exits_4_on_different_test_sets_naming_the_items(tmp_path, capsys):
    items = [f"item{i:03d}" for i in range(40)]
    ranks = np.arange(40) % 3
    base = write_run(tmp_path / "base", text_queries(items, ranks))
    new = write_run(tmp_path / "new", text_queries(items[2:] + ["other1"], np.r_[ranks[2:], 0]))
    out = tmp_path / "compare.md"
    assert main(["--base", str(base), "--new", str(new), "--out", str(out), "--resamples", "50"]) == NOT_COMPARABLE
    text = out.read_text()
    assert "Not comparable" in text and "test_items_sha256" in text
    assert "2 items only in base (item000, item001)" in text and "1 items only in new (other1)" in text
    assert "Not comparable" in capsys.readouterr().out
    # the same test items: compared, exit 0
    assert main(["--base", str(base), "--new", str(base), "--out", str(out), "--resamples", "50"]) == 0
    assert "| trained text_to_image R@1 |" in out.read_text()


def test_a_base_without_the_hash_is_checked_by_its_query_set(tmp_path):
    items = [f"item{i:03d}" for i in range(30)]
    ranks = np.arange(30) % 4
    new = write_run(tmp_path / "new", text_queries(items, ranks))
    same = write_run(tmp_path / "same", text_queries(items, ranks[::-1]), hashed=False)
    assert main(["--base", str(same), "--new", str(new), "--resamples", "50"]) == 0
    fewer = text_queries(items, ranks)
    fewer = fewer[fewer["query"] != "item007#2"]  # one caption query less: a different query set
    other = write_run(tmp_path / "other", fewer, hashed=False)
    out = tmp_path / "compare.md"
    assert main(["--base", str(other), "--new", str(new), "--out", str(out), "--resamples", "50"]) == NOT_COMPARABLE
    text = out.read_text()
    assert "no test_items_sha256" in text and "0 queries only in base" in text
    assert "1 only in new (text_to_image item007#2)" in text


def test_unmatched_queries_are_listed_not_dropped(tmp_path):
    """Same test items, but a caption query and a whole task only one run has: paired on the rest, the rest listed."""
    items = [f"item{i:03d}" for i in range(30)]
    ranks = np.arange(30) % 4
    base_q = pd.concat([text_queries(items, ranks), text_queries(items, ranks, 1, task="text_to_audio")])
    new_q = text_queries(items, ranks)
    new_q = new_q[new_q["query"] != "item003#1"]
    base, new = write_run(tmp_path / "base", base_q), write_run(tmp_path / "new", new_q)
    result = compare(new, base, None, resamples=50)
    rows = {r["metric"]: r for r in result.rows}
    assert rows["trained text_to_image R@1"]["n"] == 89 and "trained text_to_audio R@1" not in rows
    unmatched = {u["what"]: u for u in result.unmatched}
    assert unmatched["trained text_to_image queries"]["only_base"] == 1
    assert unmatched["trained text_to_image queries"]["base_ids"] == "item003#1"
    assert unmatched["trained text_to_audio queries"]["only_base"] == 30
    text = markdown(result, "t")
    assert "trained text_to_image queries: 1 only in base (item003#1), 0 only in new" in text
    assert "trained text_to_audio queries: 30 only in base" in text


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True, capture_output=True)


def test_base_from_a_git_ref_and_the_report_say_not_comparable(tmp_path, monkeypatch):
    from edge_glass.report.markdown import build_report

    items = [f"item{i:03d}" for i in range(20)]
    repo = write_run(tmp_path / "repo", text_queries(items, np.arange(20) % 3))
    git(repo, "init", "-q")
    git(repo, "add", "metrics")
    git(repo, "commit", "-q", "-m", "base")
    monkeypatch.chdir(repo)
    assert main(["--base-ref", "HEAD", "--resamples", "50"]) == 0
    assert main(["--base-ref", "no-such-branch", "--resamples", "50"]) == 2  # not an empty comparison
    write_run(repo, text_queries(items[:-1], np.arange(19) % 3))  # the workspace now scores one item less
    out = tmp_path / "compare.md"
    assert main(["--base-ref", "HEAD", "--out", str(out), "--resamples", "50"]) == NOT_COMPARABLE
    assert "1 items only in base (item019)" in out.read_text()
    report = build_report(repo, tmp_path / "report", experiments=False, base_ref="HEAD").read_text()
    assert "**Not comparable**" in report and "item019" in report


def workflow_step() -> str:
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "pr-metrics.yml").read_text())
    step = next(s for s in flow["jobs"]["pipeline"]["steps"] if "edge_glass.compare" in s.get("run", ""))
    return step["run"].replace("${{ github.base_ref }}", "main")


@pytest.mark.parametrize("code, step_fails", [(0, False), (4, False), (1, True)])
def test_pr_workflow_posts_the_refusal_instead_of_failing(tmp_path, code, step_fails):
    """The workflow's diff step under GitHub's `bash -eo pipefail`, with stand-ins for python, git and dvc: exit 4
    of compare puts its message into the comment; any other failure still fails the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        "#!/bin/bash\nif [[ \" $* \" == *' edge_glass.compare '* ]]; then\n"
        "  while [ $# -gt 0 ]; do if [ \"$1\" = --out ]; then echo 'COMPARE SAYS: not comparable' > \"$2\"; fi; shift; done\n"
        f"  exit {code}\nfi\nexit 0\n")
    for tool in ("git", "dvc"):
        (bin_dir / tool).write_text(f"#!/bin/bash\necho '{tool} output'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", workflow_step()], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert (proc.returncode != 0) == step_fails, proc.stderr
    if not step_fails:
        comment = (tmp_path / "pr-comment.md").read_text()
        assert "COMPARE SAYS: not comparable" in comment and "dvc output" in comment
