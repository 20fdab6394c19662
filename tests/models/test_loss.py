"""The align losses through ``contrastive_loss`` with a real AlignModel: SigLIP's sigmoid loss against a
direct per-pair formula, its learnable scale and bias per loss pair and MRL dim, and the per-row losses
behind the per-source training curves."""

import math

import pytest
import torch
import torch.nn.functional as F

from edge_glass.config import parse_params
from edge_glass.models.aligner import AlignModel
from edge_glass.models.loss import contrastive_loss, mrl_info_nce, sigmoid_loss
from edge_glass.train.distributed import DistInfo

DIMS = [24, 12]


def _model(kind: str, **loss) -> AlignModel:
    raw = {"dim": 16, "projection_dim": 24, "mrl": {"dims": DIMS, "weights": [1.0, 0.5]},
           "loss": {"kind": kind, **loss}}
    torch.manual_seed(0)
    return AlignModel(parse_params({"align": raw}).align, {"image": 8, "audio": 8}, 12)


def _outputs(b=6, seed=0):
    """Embeddings as the model's forward returns them; item 2 has no audio (nor, so, a fused row)."""
    g = torch.Generator().manual_seed(seed)
    out = {m: (torch.randn(b, 24, generator=g).requires_grad_(), torch.ones(b, dtype=torch.bool))
           for m in ("image", "audio", "fused", "text")}
    for m in ("audio", "fused"):
        out[m][1][2] = False
    return out


def reference_sigmoid(a, b, t, bias) -> float:
    """SigLIP's loss written out pair by pair: -1/n sum_i sum_j log sigmoid(z_ij (t a_i.b_j + bias))."""
    a, b = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1 / (1 + math.exp(-z * (t * float(a[i] @ b[j]) + bias))))
    return -total / n


def test_sigmoid_loss_equals_the_pair_by_pair_formula():
    g = torch.Generator().manual_seed(1)
    a, b = F.normalize(torch.randn(7, 5, generator=g), dim=-1), F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    for t, bias in ((10.0, -10.0), (3.0, 0.5)):
        got = float(sigmoid_loss(a, b, torch.tensor(t), torch.tensor(bias)))
        assert got == pytest.approx(reference_sigmoid(a, b, t, bias), rel=1e-5)
    # matched rows score better than shuffled ones
    assert sigmoid_loss(a, a, torch.tensor(10.0), torch.tensor(-5.0)) < sigmoid_loss(a, a.roll(1, 0), torch.tensor(10.0), torch.tensor(-5.0))


def test_siglip_contrastive_loss_sums_pairs_and_dims_with_their_own_scale_and_bias():
    model = _model("siglip", siglip_init_scale=10, siglip_init_bias=-10)
    with torch.no_grad():  # give every (pair, dim) its own value, so a swapped index would show
        for k, pair in enumerate(sorted(model.siglip_log_scale)):
            model.siglip_log_scale[pair].copy_(torch.tensor([math.log(4.0 + k), math.log(7.0 + k)]))
            model.siglip_bias[pair].copy_(torch.tensor([-2.0 - k, 1.0 + k]))
    out = _outputs()
    cfg = model.cfg
    total, parts = contrastive_loss(model, out, cfg, DistInfo())
    expected_total = 0.0
    for pair, (ma, mb) in (("image_text", ("image", "text")), ("audio_text", ("audio", "text")),
                           ("fused_text", ("fused", "text"))):
        valid = out[ma][1] & out[mb][1]
        scales, biases = model.siglip_scale_bias(pair)
        want = sum(w * reference_sigmoid(out[ma][0][valid][:, :d].detach(), out[mb][0][valid][:, :d].detach(),
                                          float(scales[k].detach()), float(biases[k].detach()))
                   for k, (w, d) in enumerate(zip(cfg.mrl.weights, DIMS)))
        assert parts[pair] == pytest.approx(want, rel=1e-5), pair
        expected_total += want
    assert float(total) == pytest.approx(expected_total, rel=1e-5)


def test_siglip_initial_scale_and_bias_and_their_gradients():
    model = _model("siglip", siglip_init_scale=10, siglip_init_bias=-10, pairs=["image_text", "audio_text", "image_audio"])
    for pair in ("image_text", "audio_text", "image_audio"):
        assert torch.allclose(model.siglip_log_scale[pair], torch.full((2,), math.log(10)))
        assert torch.equal(model.siglip_bias[pair], torch.full((2,), -10.0))
    assert not hasattr(model, "logit_scale")  # InfoNCE's temperature is not a parameter of a SigLIP model
    out = _outputs()
    del out["audio"]  # the audio pairs have no rows: their scale and bias get no gradient
    total, _ = contrastive_loss(model, out, model.cfg, DistInfo())
    total.backward()
    for p in (model.siglip_log_scale["image_text"], model.siglip_bias["image_text"]):
        assert p.grad is not None and (p.grad != 0).all()  # each MRL dim its own, non-zero
    assert model.siglip_log_scale["audio_text"].grad is None and model.siglip_bias["image_audio"].grad is None
    assert set(map(id, model.loss_parameters())) == {id(p) for n, p in model.named_parameters() if n.startswith("siglip_")}
    frozen = _model("siglip", learnable_temperature=False)
    assert not any(p.requires_grad for p in frozen.siglip_log_scale.values())
    assert all(p.requires_grad for p in frozen.siglip_bias.values())


def test_siglip_scale_is_clamped_at_100_like_the_infonce_temperature():
    model = _model("siglip")
    with torch.no_grad():
        model.siglip_log_scale["image_text"].fill_(10.0)
    assert torch.allclose(model.siglip_scale_bias("image_text")[0], torch.full((2,), 100.0))
    model.clamp_scales_()
    assert torch.allclose(model.siglip_log_scale["image_text"], torch.full((2,), math.log(100)))


def test_infonce_model_is_unchanged_by_the_loss_kind():
    """The default kind keeps its single temperature: no SigLIP parameters, the same loss as before."""
    model = _model("infonce")
    assert [n for n, _ in model.named_parameters() if "scale" in n or "siglip" in n] == ["logit_scale"]
    out = _outputs()
    total, parts = contrastive_loss(model, out, model.cfg, DistInfo())
    valid = out["image"][1] & out["text"][1]
    want, _ = mrl_info_nce(out["image"][0][valid], out["text"][0][valid], model.scale(), DIMS, [1.0, 0.5])
    assert torch.equal(torch.tensor(parts["image_text"]), torch.tensor(float(want)))


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_row_losses_average_to_each_pairs_loss(kind):
    """Per-row losses (per-source curves): each pair's mean over its valid rows is the pair's loss, and a
    row's value is the sum over the pairs it is in; the training loss itself is the same with or without."""
    model = _model(kind)
    out = _outputs()
    total, parts, rows = contrastive_loss(model, out, model.cfg, DistInfo(), per_item=True)
    assert torch.equal(total, contrastive_loss(model, out, model.cfg, DistInfo())[0])
    for pair in parts:
        single = model.cfg.model_copy(update={"loss": model.cfg.loss.model_copy(update={"pairs": [pair]})})
        _, one, pair_rows = contrastive_loss(model, out, single, DistInfo(), per_item=True)
        valid = pair_rows != 0
        assert int(valid.sum()) == (5 if pair != "image_text" else 6)
        assert float(pair_rows[valid].mean()) == pytest.approx(one[pair], rel=1e-5)
    assert float(rows.sum()) == pytest.approx(sum(parts[p] * (5 if p != "image_text" else 6) for p in parts), rel=1e-5)
