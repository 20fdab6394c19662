import math

import pytest
import torch
import torch.nn.functional as F

from edge_glass.models.loss import mrl_info_nce, symmetric_info_nce


def test_mrl_loss_matches_the_closed_form_on_one_hot_embeddings():
    """a = b = the n x n identity: at prefix dim d, rows i < d are one-hot (logit s on the diagonal, 0
    elsewhere: loss log(1 + (n-1) e^-s)) and rows i >= d are zero vectors (all logits 0: loss log n).
    Hand-derived, so a wrong prefix, normalisation or weighting in the code cannot also be in the check."""
    n, s = 16, 5.0
    eye = torch.eye(n)
    dims, weights = [16, 8, 4], [1.0, 0.5, 2.0]
    total, per_dim = mrl_info_nce(eye, eye, torch.tensor(s), dims, weights)
    expected = {d: (d * math.log(1 + (n - 1) * math.exp(-s)) + (n - d) * math.log(n)) / n for d in dims}
    for d in dims:
        assert float(per_dim[d]) == pytest.approx(expected[d], rel=1e-5), d
    assert float(total) == pytest.approx(sum(w * expected[d] for w, d in zip(weights, dims)), rel=1e-5)
    assert float(mrl_info_nce(eye, eye, torch.tensor(s), dims)[0]) == pytest.approx(sum(expected.values()), rel=1e-5)


def test_info_nce_is_symmetric_and_rewards_alignment():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(32, 16), dim=-1)
    b = F.normalize(torch.randn(32, 16), dim=-1)
    scale = torch.tensor(20.0)
    assert torch.allclose(symmetric_info_nce(a, b, scale), symmetric_info_nce(b, a, scale))
    assert symmetric_info_nce(a, a, scale) < 0.1 < math.log(32) / 2 < symmetric_info_nce(a, b, scale)


def test_learnable_temperature_gets_gradient():
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    a, b = F.normalize(torch.randn(8, 4), dim=-1), F.normalize(torch.randn(8, 4), dim=-1)
    symmetric_info_nce(a, b, scale.exp()).backward()
    assert scale.grad is not None and scale.grad != 0
