"""The HTML report: structure on a tiny run, and the page as headless Chromium renders it."""

import os
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from edge_glass.config import parse_params
from edge_glass.core.io import write_json


class Page(HTMLParser):
    """Media sources, and per query block its true rank and each result's rank / true flag."""

    def __init__(self):
        super().__init__()
        self.sources, self.queries = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "audio") and a.get("src"):
            self.sources.append(a["src"])
        cls = a.get("class", "").split()
        if tag == "div" and "query" in cls:
            self.queries.append({"task": a["data-task"], "true_rank": int(a["data-true-rank"]), "results": []})
        if tag == "div" and "result" in cls:
            self.queries[-1]["results"].append((int(a["data-rank"]), a["data-true"] == "1"))


@pytest.fixture(scope="module")
def tiny_report(tiny_align, small_download, tmp_path_factory):
    from edge_glass.evaluate import run_evaluate
    from edge_glass.models.aligner import load_model
    from edge_glass.report.html import build_html

    manifest, features, align_dir = tiny_align
    repo = tmp_path_factory.mktemp("repo")
    params = parse_params({"report": {"samples": 3, "top_k": 4}, "evaluate": {"bootstrap_resamples": 200}})
    metrics, by_dim, queries = run_evaluate(params, features, manifest, load_model(align_dir))
    (repo / "metrics").mkdir()
    write_json(metrics, repo / "metrics" / "retrieval.json")
    by_dim.to_csv(repo / "metrics" / "recall_by_dim.csv", index=False)
    queries.to_parquet(repo / "metrics" / "retrieval_queries.parquet")
    page = build_html(repo, repo / "reports", params, features_dir=features, manifest_path=manifest,
                      model_dir=align_dir, captions_path=repo / "none.parquet")
    return page, params


def test_every_query_shows_k_results_with_the_true_item_marked(tiny_report):
    page, params = tiny_report
    parsed = Page()
    parsed.feed(page.read_text())
    assert parsed.sources and all((page.parent / s).is_file() for s in parsed.sources)
    assert any(s.endswith(".jpg") for s in parsed.sources) and any(s.endswith(".ogg") for s in parsed.sources)
    tasks = {q["task"] for q in parsed.queries}
    assert {"image_to_text", "text_to_image", "audio_to_text", "text_to_audio", "fused_to_text"} <= tasks
    for q in parsed.queries:
        assert [r for r, _ in q["results"]] == list(range(len(q["results"])))
        assert len(q["results"]) == params.report.top_k or q["task"] in ("text_to_image", "fused_to_text")
        marked = [r for r, true in q["results"] if true]
        if q["true_rank"] < len(q["results"]):
            assert marked and marked[0] == q["true_rank"], q  # the first true result sits at its rank
        else:
            assert not marked, q
    # the worst failures come after the random sample, sorted by how far down the true item is
    worst = [q["true_rank"] for q in parsed.queries if q["task"] == "audio_to_text"][params.report.samples:]
    assert worst == sorted(worst, reverse=True)


def test_assets_are_bounded(tiny_report):
    import soundfile as sf
    from PIL import Image

    page, params = tiny_report
    for img in (page.parent / "assets" / "img").iterdir():
        assert max(Image.open(img).size) <= params.report.thumbnail_px
    for clip in (page.parent / "assets" / "audio").iterdir():
        info = sf.info(str(clip))
        assert info.duration <= params.report.audio_seconds + 0.05 and info.format == "OGG"


@pytest.mark.slow
def test_report_loads_in_headless_chromium_without_console_errors(tiny_report, tmp_path):
    """.ci/run installs Debian's chromium, and there (CI set) a missing browser is a failure, not a skip."""
    from edge_glass.report.html import find_chromium, render_in_chromium

    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it: bash setup.sh --report)")
        pytest.skip("chromium not installed: apt-get install chromium (or bash setup.sh --report)")
    page, _ = tiny_report
    log = render_in_chromium(page, tmp_path / "shot.png", size="1280,1600")
    assert not re.findall(r":CONSOLE[^\n]*", log), re.findall(r":CONSOLE[^\n]*", log)
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert pixels.std() > 10  # not a blank page
    # the console check is real: a report with a missing thumbnail logs an error
    broken = tmp_path / "broken"
    shutil.copytree(page.parent, broken)
    next((broken / "assets" / "img").iterdir()).unlink()
    assert "report: " in render_in_chromium(broken / "index.html", tmp_path / "broken.png", size="1280,1600")
