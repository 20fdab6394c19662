import pytest
import torch

from edge_glass.models.fusion import FUSIONS, build_fusion


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_every_fusion_mixes_both_inputs_with_gradients(kind):
    torch.manual_seed(0)
    fuse = build_fusion(kind, dim=16, heads=2, dim_head=8)
    if kind == "gated":  # open the gates so that ``b`` reaches the output
        with torch.no_grad():
            fuse.attn_gate.fill_(0.5)
            fuse.ff_gate.fill_(0.5)
    a = torch.randn(3, 4, 16, requires_grad=True)
    b = torch.randn(3, 6, 16, requires_grad=True)
    out = fuse(a, b)
    assert out.shape == ((3, 10, 16) if kind == "concat" else (3, 4, 16))
    out.pow(2).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    for name, p in fuse.named_parameters():
        assert p.grad is not None, name


def test_gated_fusion_starts_as_identity_but_learns_its_gates():
    torch.manual_seed(0)
    fuse = build_fusion("gated", 16, 2, 8)
    a, b = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    out = fuse(a, b)
    assert torch.allclose(out, a)
    out.pow(2).sum().backward()
    assert fuse.attn_gate.grad.abs() > 0


def test_unknown_fusion_names_the_key():
    with pytest.raises(ValueError, match="align.fusion: unknown fusion 'sum'"):
        build_fusion("sum", 8, 1, 8)
