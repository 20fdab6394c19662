import pandas as pd
import pytest

from edge_glass.metrics.captions import (
    caption_metrics,
    coco_scores,
    sample_table,
    simple_tokenize,
)

REFS = [["grinning face with big eyes", "grinning"], ["red heart on a white card", "heart"],
        ["sun behind a large cloud", "sun"], ["dog face with its tongue out", "dog"]]


def test_simple_tokenize():
    assert simple_tokenize("Up-Left  Arrow!") == "up left arrow"


def test_perfect_captions_beat_wrong_ones():
    good, _ = coco_scores([r[0] for r in REFS], REFS)
    bad, _ = coco_scores(["dog face", "sun", "red heart", "grinning face"], REFS)
    empty, _ = coco_scores(["", "", "", ""], REFS)
    assert good["BLEU-4"] > 0.99 and bad["BLEU-4"] < 0.1 and good["CIDEr-D"] > bad["CIDEr-D"] and empty["CIDEr-D"] == pytest.approx(0)
    assert good["BLEU-1"] == pytest.approx(1.0)


def test_caption_metrics_with_the_frozen_text_encoder():
    frame = pd.DataFrame({"item_id": list("abcd"), "generated": ["grinning face with big eyes", "heart", "", "cat face with its tongue out"],
                          "references": REFS})
    m, items = caption_metrics(frame, "all-MiniLM-L6-v2", resamples=200)
    assert len(items) == 4 and items["exact_match"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert m["exact_match_ci95_lo"] <= 0.5 <= m["exact_match_ci95_hi"] and m["exact_match_ci95_hi"] - m["exact_match_ci95_lo"] > 0.4
    assert m["items"] == 4 and m["empty_captions"] == 1 and m["exact_match"] == pytest.approx(0.5)
    assert 0.5 < m["embedding_similarity"] < 1.0  # two exact, one empty, one related (cat vs dog)
    table = sample_table(frame, 2)
    assert table.count("\n") == 4 and "| generated |" in table


def test_corpus_bleu_from_per_item_stats_equals_pycocoevalcap():
    """The per-item statistics that the bootstrap resamples sum to pycocoevalcap's corpus BLEU."""
    from pycocoevalcap.bleu.bleu import Bleu

    from edge_glass.metrics.captions import bleu_stats, corpus_bleu

    generated = ["grinning face", "a red heart on a card", "sun behind a cloud", "dog"]
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [simple_tokenize(g)] for i, g in enumerate(generated)}
    reference, _ = Bleu(4).compute_score(gts, res, verbose=0)
    sums = bleu_stats(generated, REFS).sum(0)
    assert [float(corpus_bleu(sums, n)[0]) for n in (1, 2, 3, 4)] == pytest.approx(reference, rel=1e-9)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_items():
    import numpy as np

    from edge_glass.metrics.bootstrap import mean_ci, paired_difference

    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.3, rng.random(5000) < 0.3
    lo_s, hi_s = mean_ci(small.astype(float), seed=1)
    lo_l, hi_l = mean_ci(large.astype(float), seed=1)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~1/sqrt(100) as wide
    assert abs((hi_l - lo_l) - 2 * 1.96 * np.sqrt(0.3 * 0.7 / 5000)) < 0.004  # the normal approximation
    assert mean_ci(small.astype(float), seed=1) == (lo_s, hi_s)  # seeded
    base = rng.random(400) < 0.4
    better = base | (rng.random(400) < 0.15)  # the same queries, some misses turned into hits
    mean = lambda sums: sums[:, 0] / 400  # noqa: E731
    assert paired_difference(better, base, mean)["significant"]
    noise = base.copy()
    flip = rng.choice(400, 6, replace=False)
    noise[flip] = ~noise[flip]
    assert not paired_difference(noise, base, mean)["significant"]
