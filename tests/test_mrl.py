import math

import torch
import torch.nn.functional as F

from edge_glass.loss import mrl_info_nce, symmetric_info_nce
from edge_glass.models.mrl import MRLHead, mrl_embeddings


def test_mrl_loss_is_the_weighted_sum_of_per_dim_losses():
    torch.manual_seed(0)
    a, b = torch.randn(16, 64), torch.randn(16, 64)
    scale = torch.tensor(10.0)
    dims, weights = [64, 32, 16, 8], [1.0, 0.5, 0.25, 2.0]
    total, per_dim = mrl_info_nce(a, b, scale, dims, weights)
    manual = sum(w * symmetric_info_nce(F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1), scale)
                 for w, d in zip(weights, dims))
    assert torch.allclose(total, manual)
    assert set(per_dim) == set(dims)
    assert torch.allclose(mrl_info_nce(a, b, scale, dims)[0], sum(per_dim.values()))


def test_info_nce_is_symmetric_and_rewards_alignment():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(32, 16), dim=-1)
    b = F.normalize(torch.randn(32, 16), dim=-1)
    scale = torch.tensor(20.0)
    assert torch.allclose(symmetric_info_nce(a, b, scale), symmetric_info_nce(b, a, scale))
    assert symmetric_info_nce(a, a, scale) < 0.1 < math.log(32) / 2 < symmetric_info_nce(a, b, scale)


def test_head_prefixes_are_nested_normalised_embeddings():
    head = MRLHead(10, 32)
    z = head(torch.randn(4, 10))
    emb = mrl_embeddings(z, [32, 8])
    assert emb[32].shape == (4, 32) and emb[8].shape == (4, 8)
    assert torch.allclose(emb[8], F.normalize(z[:, :8], dim=-1))
    assert torch.allclose(emb[32].norm(dim=-1), torch.ones(4))


def test_learnable_temperature_gets_gradient():
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    a, b = F.normalize(torch.randn(8, 4), dim=-1), F.normalize(torch.randn(8, 4), dim=-1)
    symmetric_info_nce(a, b, scale.exp()).backward()
    assert scale.grad is not None and scale.grad != 0
