import pandas as pd
import pytest

from edge_glass.caption_metrics import caption_metrics, coco_scores, sample_table, simple_tokenize

REFS = [["grinning face with big eyes", "grinning"], ["red heart on a white card", "heart"],
        ["sun behind a large cloud", "sun"], ["dog face with its tongue out", "dog"]]


def test_simple_tokenize():
    assert simple_tokenize("Up-Left  Arrow!") == "up left arrow"


def test_perfect_captions_beat_wrong_ones():
    good = coco_scores([r[0] for r in REFS], REFS)
    bad = coco_scores(["dog face", "sun", "red heart", "grinning face"], REFS)
    empty = coco_scores(["", "", "", ""], REFS)
    assert good["BLEU-4"] > 0.99 and bad["BLEU-4"] < 0.1 and good["CIDEr-D"] > bad["CIDEr-D"] and empty["CIDEr-D"] == pytest.approx(0)
    assert good["BLEU-1"] == pytest.approx(1.0)


def test_caption_metrics_with_the_frozen_text_encoder():
    frame = pd.DataFrame({"item_id": list("abcd"), "generated": ["grinning face with big eyes", "heart", "", "cat face with its tongue out"],
                          "references": REFS})
    m = caption_metrics(frame, "all-MiniLM-L6-v2")
    assert m["items"] == 4 and m["empty_captions"] == 1 and m["exact_match"] == pytest.approx(0.5)
    assert 0.5 < m["embedding_similarity"] < 1.0  # two exact, one empty, one related (cat vs dog)
    table = sample_table(frame, 2)
    assert table.count("\n") == 4 and "| generated |" in table
