import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from helpers.run_if import requires_cuda
from helpers.setup import REPO
from safetensors.torch import load_file

from edge_glass.config import parse_params
from edge_glass.config.decode import GenerateParams, LMParams, TRMParams
from edge_glass.decode import (
    build_decoder,
    caption_batch,
    parameter_counts,
    train_decoder,
)
from edge_glass.decoders.base import CaptionDecoder
from edge_glass.decoders.conditioning import aligned_conditioning
from edge_glass.decoders.generate import generate
from edge_glass.decoders.lm import load_lm
from edge_glass.decoders.lora_lm import LoraLMDecoder
from edge_glass.decoders.trm import TRMDecoder
from edge_glass.models.aligner import load_model


def _params(kind="lora_lm", **train):
    return parse_params({"seed": 0, "decode": {"kind": kind, "prefix_tokens": 2, "max_caption_tokens": 12,
                                                "train": {"steps": 8, "batch_size": 4, "warmup_steps": 1, "log_every": 1,
                                                          "checkpoint_every": 2, **train},
                                                "generate": {"max_new_tokens": 5, "batch_size": 8}}})


def test_conditioning_uses_fused_latents_for_triples(conditioned, tiny_align):
    """An item with image and audio is conditioned on the fused latents, so its conditioning depends on
    its audio; an audio-only item's does not depend on the fusion at all. The gated fusion starts as
    the identity on the image latents, so the test opens its gates to make the audio count."""
    data, cond = conditioned
    manifest, features, align_dir = tiny_align
    assert cond.latents.shape == (len(data), 2, 16) and cond.embedding.shape == (len(data), 24)
    model = load_model(align_dir).eval()
    with torch.no_grad():
        model.fusion.attn_gate.fill_(1.0)
        model.fusion.ff_gate.fill_(1.0)
    opened = aligned_conditioning(model, data, prefix_tokens=2)
    batch = data.batch(list(range(len(data))))
    both = [j for j in range(len(data)) if batch.present["image"][j] and batch.present["audio"][j]]
    audio_only = [j for j in range(len(data)) if batch.present["audio"][j] and not batch.present["image"][j]]
    assert both and audio_only, "the small fixture has image+audio items and audio-only items"
    moved = (opened.latents[both] - cond.latents[both]).abs().amax(dim=(1, 2))
    assert (moved > 1e-3).all()  # the fused branch: the opened gates change every triple's conditioning
    assert torch.allclose(opened.latents[audio_only], cond.latents[audio_only])  # no fusion without an image
    assert torch.allclose(opened.embedding[audio_only], cond.embedding[audio_only])


def test_lora_decoder_trains_only_adapters_and_projector(conditioned, prepared_lm, tmp_path):
    data, cond = conditioned
    params = _params(lr=3e-3)
    decoder = build_decoder(params, cond, prepared_lm)
    counts = parameter_counts(decoder)
    trainable = [n for n, p in decoder.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert 0 < counts["trainable"] < counts["total"] / 50 and counts["total"] > 130e6
    summary = train_decoder(params, decoder, data, cond, tmp_path, "fp", tmp_path / "live")
    losses = [float(x.split()[1]) for x in (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert summary["final"]["step"] == 8
    # the shared loop's throughput curves, kept out of the metrics summary (equal metrics on a rerun)
    plots = tmp_path / "live" / "plots" / "metrics" / "train"
    for name in ("samples_per_s", "step_seconds", "peak_rss_mb"):
        rows = (plots / f"{name}.tsv").read_text().splitlines()
        assert rows[0] == f"step\t{name}" and len(rows) == 9 and all(float(r.split()[1]) > 0 for r in rows[1:]), name
    summary_keys = json.loads((tmp_path / "live" / "metrics.json").read_text())["train"]
    assert summary_keys.keys() == {"loss", "lr", "grad_norm"}


def test_generation_is_deterministic_under_a_seed(conditioned, prepared_lm):
    data, cond = conditioned
    decoder = build_decoder(_params(), cond, prepared_lm)
    cond = cond.select(list(range(4)))
    nucleus = GenerateParams(strategy="nucleus", top_p=0.95, temperature=1.5, max_new_tokens=5)
    a, b = generate(decoder, cond, nucleus, seed=3), generate(decoder, cond, nucleus, seed=3)
    assert a == b and len(a) == 4 and all(isinstance(t, str) for t in a)
    assert a != generate(decoder, cond, nucleus, seed=4)  # the seed, not a fixed draw, decides the sample
    greedy = generate(decoder, cond, GenerateParams(max_new_tokens=5))
    one_beam = generate(decoder, cond, GenerateParams(strategy="beam", num_beams=1, max_new_tokens=5))
    assert one_beam == greedy  # beam search of width 1 is greedy decoding
    beams = generate(decoder, cond, GenerateParams(strategy="beam", num_beams=3, max_new_tokens=5))
    assert len(beams) == 4


class MarkovDecoder(CaptionDecoder):
    """A hand-made next-token table where greedy is short-sighted: the best first token (A, p=0.6)
    leads to a flat distribution, the second (B, p=0.4) to EOS with p=1."""

    class Tokenizer:
        eos_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join("_AB"[i] if i < 3 else "x" for i in ids)

    tokenizer = Tokenizer()
    vocab = 8

    def next_logits(self, cond, ids):
        rows = []
        for row in ids.tolist():
            p = torch.full((self.vocab,), 1e-9)
            if not row:
                p[1], p[2] = 0.6, 0.4
            elif row[-1] == 2:
                p[0] = 1.0
            else:
                p[3:] = 0.2  # after A: five equally likely tokens, EOS unlikely
                p[0] = 0.0
            rows.append(p.log())
        return torch.stack(rows)


def test_beam_search_finds_what_greedy_misses():
    from edge_glass.decoders.conditioning import Conditioning

    cond = Conditioning(torch.zeros(2, 1, 4), torch.zeros(2, 4))
    decoder = MarkovDecoder()
    assert generate(decoder, cond, GenerateParams(max_new_tokens=2)) == ["Ax", "Ax"]
    assert generate(decoder, cond, GenerateParams(strategy="beam", num_beams=2, max_new_tokens=2)) == ["B", "B"]
    sampled = generate(decoder, cond, GenerateParams(strategy="nucleus", top_p=0.5, max_new_tokens=1), seed=1)
    assert sampled == ["A", "A"]  # top_p=0.5 keeps only the 0.6 token


class PoolDecoder(CaptionDecoder):
    """Hand-made log-probs where raw-sum pruning loses the best length-normalised caption.

    "a" (p=.7) then EOS or "x" (p=.5 each): "a EOS" has raw -1.05 over 2 tokens (-0.53 normalised);
    "b" (p=.3) then "c c EOS" (p=1 each): raw -1.20 over 4 tokens (-0.30). At step 2 both "a EOS" and
    "a x" (-1.05) outrank "b c" (-1.20); "a x" then collapses. With two beams, a search where the
    finished "a EOS" keeps a live slot drops "b c"; a separate finished pool keeps it."""

    class Tokenizer:
        eos_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return "".join("_abcx"[i] for i in ids)

    tokenizer = Tokenizer()
    table = {(): {1: 0.7, 2: 0.3}, (1,): {0: 0.5, 4: 0.5}, (2,): {3: 1.0}, (2, 3): {3: 1.0}, (2, 3, 3): {0: 1.0},
             (1, 4): dict.fromkeys(range(5), 0.2)}
    calls = 0

    def next_logits(self, cond, ids):
        self.calls += 1
        rows = []
        for row in ids.tolist():
            p = torch.full((5,), 1e-6)
            for tok, prob in self.table.get(tuple(t for t in row if t != 0), {0: 1.0}).items():
                p[tok] = prob
            rows.append(p.log())
        return torch.stack(rows)


def test_beam_search_keeps_finished_hypotheses_in_their_own_pool():
    from edge_glass.decoders.conditioning import Conditioning

    cond = Conditioning(torch.zeros(3, 1, 4), torch.zeros(3, 4))
    beam = GenerateParams(strategy="beam", num_beams=2, max_new_tokens=6)
    assert generate(PoolDecoder(), cond, beam) == ["bcc"] * 3
    raw = beam.model_copy(update={"length_penalty": 0.0})  # no length normalisation: the likelier short one
    assert generate(PoolDecoder(), cond, raw) == ["a"] * 3
    decoder = PoolDecoder()
    generate(decoder, cond, beam.model_copy(update={"max_new_tokens": 30}))
    assert decoder.calls <= 5  # stops once no live beam can beat "bcc", not at max_new_tokens


def test_kv_cached_generation_equals_the_uncached_reference(conditioned, prepared_lm):
    from edge_glass.decoders.base import UncachedStepper
    from edge_glass.decoders.generate import generate_ids

    data, cond = conditioned
    decoder = build_decoder(_params(), cond, prepared_lm).eval()
    for p in decoder.projector.parameters():  # a trained-looking prefix, not the zero-LoRA start
        p.data.add_(torch.randn_like(p) * 0.05)
    cond = cond.select(list(range(6)))
    cached, ref = decoder.stepper(cond), UncachedStepper(decoder, cond)
    assert type(cached).__name__ == "KVCacheStepper"
    worst_diff, smallest_margin = 0.0, float("inf")
    with torch.no_grad():
        a, b = cached.start(), ref.start()
        for _ in range(8):
            worst_diff = max(worst_diff, float((a - b).abs().max()))
            top2 = b.topk(2, dim=-1).values
            smallest_margin = min(smallest_margin, float((top2[:, 0] - top2[:, 1]).min()))
            nxt = b.argmax(-1)
            a, b = cached.step(nxt), ref.step(nxt)
    assert worst_diff < 1e-3, worst_diff  # float32 logits of magnitude ~10-30
    assert smallest_margin > 10 * worst_diff, (smallest_margin, worst_diff)  # identical tokens below mean something
    greedy = GenerateParams(max_new_tokens=8)
    assert generate_ids(decoder, cond, greedy) == generate_ids(decoder, cond, greedy, cached=False)
    beam = GenerateParams(strategy="beam", num_beams=3, max_new_tokens=6)
    assert generate_ids(decoder, cond, beam) == generate_ids(decoder, cond, beam, cached=False)


@pytest.mark.parametrize("bits,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantised_lm_trains_lora_on_cpu(conditioned, prepared_lm, bits, layer):
    data, cond = conditioned
    lm, tok = load_lm(LMParams(quantization=bits), prepared_lm)
    assert type(lm.model.layers[0].self_attn.q_proj).__name__ == layer
    decoder = LoraLMDecoder(lm, tok, LMParams(quantization=bits), cond.latents.shape[-1], cond.embedding.shape[-1])
    c, ids, mask = caption_batch(decoder, data, cond, 0, _params())
    loss = decoder.loss(c, ids, mask)
    loss.backward()
    lora_grads = [p.grad for n, p in decoder.named_parameters() if "lora_B" in n]
    assert torch.isfinite(loss) and lora_grads and all(g is not None for g in lora_grads)
    assert any(g.abs().sum() > 0 for g in lora_grads)


def test_trm_really_recurses(conditioned, prepared_lm):
    data, cond = conditioned
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(prepared_lm))
    shallow = TRMDecoder(tok, TRMParams(cycles=1, latent_steps=1), 16, 24).eval()
    deep = TRMDecoder(tok, TRMParams(cycles=3, latent_steps=2), 16, 24).eval()
    deep.load_state_dict(shallow.state_dict())  # same weights: depth is the only difference
    ids, mask = shallow.encode_captions(["grinning face"], 8)
    c = cond.select([0])
    with torch.no_grad():
        a, b = shallow.logits(c, ids, mask), deep.logits(c, ids, mask)
    assert shallow.net.calls == 1 * (1 + 1) and deep.net.calls == 3 * (2 + 1)
    assert not torch.allclose(a, b, atol=1e-4)
    lm, _ = load_lm(LMParams(), prepared_lm)
    trm_params = sum(p.numel() for p in TRMDecoder(tok, TRMParams(), 128, 256).parameters())
    assert trm_params * 8 < sum(p.numel() for p in lm.parameters())


def test_trm_gradient_flows_only_through_last_cycle(conditioned, prepared_lm):
    data, cond = conditioned
    from transformers import AutoTokenizer

    decoder = TRMDecoder(AutoTokenizer.from_pretrained(str(prepared_lm)), TRMParams(cycles=3, latent_steps=2, dropout=0.0), 16, 24)
    ids, mask = decoder.encode_captions(["red heart", "sun"], 8)
    decoder.loss(cond.select([0, 1]), ids, mask).backward()
    assert decoder.net.blocks[0].qkv.weight.grad.abs().sum() > 0
    # every trainable parameter learns: nothing sits only in the no-grad cycles (z_init is a fixed buffer)
    silent = [n for n, p in decoder.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []
    # and only the last cycle's applications (2 latent + 1 answer of 3 x 3) run with gradient
    grad_enabled = []
    decoder.net.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    decoder.loss(cond.select([0, 1]), ids, mask)
    assert grad_enabled == [False] * 6 + [True] * 3


def _stage(workdir, params, tiny_align, prepared_lm, wait=True):
    manifest, features, align_dir = tiny_align
    (workdir / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    cmd = [sys.executable, str(REPO / "stages" / "decode.py"), "--features", str(features), "--manifest", str(manifest),
           "--align", str(align_dir), "--lm", str(prepared_lm), "--out", str(workdir / "decode"), "--live", str(workdir / "live")]
    if not wait:
        return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _checkpoint_step(path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["edge_glass"])["step"]
    except Exception:
        return 0


@pytest.mark.parametrize("kind", ["lora_lm", "trm"])
def test_kill_between_checkpoints_then_rerun_resumes_to_the_same_decoder(tiny_align, prepared_lm, tmp_path, kind):
    """Shipped decode params (LoRA / TRM dropout on) scaled down in size; killed two steps after a
    checkpoint, so the resumed run must redo steps with the same dropout draws."""
    params = _params(kind, steps=12, checkpoint_every=4)
    assert (params.decode.lm.lora.dropout if kind == "lora_lm" else params.decode.trm.dropout) > 0
    (tmp_path / "straight").mkdir()
    _stage(tmp_path / "straight", params, tiny_align, prepared_lm)
    (tmp_path / "killed").mkdir()
    proc = _stage(tmp_path / "killed", params, tiny_align, prepared_lm, wait=False)
    ckpt = tmp_path / "killed" / "decode" / "checkpoints" / "last.safetensors"
    losses = tmp_path / "killed" / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if losses.exists() and len(losses.read_text().splitlines()) >= 7:  # header + steps 0..5: past step 4's checkpoint
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = len(losses.read_text().splitlines()) - 1
    assert _checkpoint_step(ckpt) == 4 and 4 < killed_after < 12, "killed between the step-4 and step-8 checkpoints"
    _stage(tmp_path / "killed", params, tiny_align, prepared_lm)
    summary = json.loads((tmp_path / "killed" / "decode" / "decode_summary.json").read_text())
    assert summary["resumed_from"] == 4
    a = load_file(str(tmp_path / "straight" / "decode" / "checkpoints" / "last.safetensors"))
    b = load_file(str(ckpt))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import pandas as pd

    captions = pd.read_parquet(tmp_path / "straight" / "decode" / "captions.parquet")
    assert captions.equals(pd.read_parquet(tmp_path / "killed" / "decode" / "captions.parquet"))
    assert set(captions.split) == {params.decode.split} == {params.evaluate.split}  # the split evaluate scores


@pytest.mark.parametrize("key", ["decode.precision", "align.train.precision"])
def test_fp16_training_is_refused_naming_the_key(key):
    """No GradScaler: fp16 gradients would underflow silently, so the params refuse fp16 where training runs."""
    from edge_glass.core.errors import ParamsError

    section, *rest = key.split(".")
    raw = {section: {rest[0]: {rest[1]: "fp16"}} if len(rest) == 2 else {rest[0]: "fp16"}}
    with pytest.raises(ParamsError, match=rf"{key}: fp16 needs loss scaling.*use bf16 or fp32"):
        parse_params(raw)
    parse_params({section: {rest[0]: {rest[1]: "bf16"}} if len(rest) == 2 else {rest[0]: "bf16"}})
    assert parse_params({"preprocess": {"precision": "fp16"}}).preprocess.precision == "fp16"  # inference only


def test_decode_split_must_be_the_split_evaluate_scores():
    from edge_glass.core.errors import ParamsError

    with pytest.raises(ParamsError, match=r"decode.split=val but evaluate.split=test"):
        parse_params({"decode": {"split": "val"}})
    same = parse_params({"decode": {"split": "val"}, "evaluate": {"split": "val"}})
    assert same.decode.split == same.evaluate.split == "val"


def test_trm_closed_vocabulary_round_trips_training_captions(conditioned, prepared_lm):
    data, cond = conditioned
    captions = [c for caps in data.caption_texts for c in caps]
    decoder = build_decoder(_params("trm"), cond, prepared_lm, captions)
    n = len(decoder.vocab_ids)
    assert n < 2000 and decoder.token_embedding.num_embeddings == n  # a few hundred caption tokens, not 49k
    ids, mask = decoder.encode_captions(captions[:3], 12)
    assert int(ids.max()) < n and decoder.eos_id < n
    rows = [r[m][:-1].tolist() for r, m in zip(ids, mask)]  # drop the EOS
    assert decoder.decode(rows) == [c.strip() for c in captions[:3]]
    logits = decoder.logits(cond.select([0, 1, 2]), ids, mask)
    assert logits.shape[-1] == n


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_every_stage_names_its_device_key_when_cuda_is_missing(tiny_align, small_download, prepared_lm, tmp_path):
    from edge_glass.core.errors import ParamsError
    from edge_glass.decode import run_decode
    from edge_glass.evaluate import run_evaluate
    from edge_glass.preprocess import run_preprocess

    manifest, features, align_dir = tiny_align
    with pytest.raises(ParamsError, match=r"decode.device=cuda: CUDA is not available"):
        run_decode(parse_params({"decode": {"device": "cuda"}}), features, manifest, align_dir, prepared_lm, tmp_path)
    with pytest.raises(ParamsError, match=r"evaluate.device=cuda:1: CUDA is not available"):
        run_evaluate(parse_params({"evaluate": {"device": "cuda:1"}}), features, manifest, load_model(align_dir))
    root, raw, _ = small_download
    with pytest.raises(ParamsError, match=r"preprocess.device=cuda: CUDA is not available"):
        run_preprocess(parse_params({**raw, "preprocess": {"device": "cuda"}}),
                       root / "data" / "download" / "manifest.parquet", tmp_path / "features")


@requires_cuda
def test_decoder_trains_and_generates_on_cuda(conditioned, prepared_lm, tmp_path):
    from edge_glass.decoders.generate import generate_ids

    data, cond = conditioned
    cond = cond.to("cuda")
    params = _params()
    decoder = build_decoder(params, cond, prepared_lm, device="cuda")
    summary = train_decoder(params, decoder, data, cond, tmp_path, "fp", None)
    assert np.isfinite(summary["final"]["loss"])
    part = cond.select(list(range(4)))
    greedy = GenerateParams(max_new_tokens=6)
    assert generate_ids(decoder, part, greedy) == generate_ids(decoder, part, greedy, cached=False)


@requires_cuda
def test_evaluate_on_cuda_matches_the_cpu(tiny_align):
    from edge_glass.evaluate import run_evaluate

    manifest, features, align_dir = tiny_align
    cpu, _, _ = run_evaluate(parse_params({"evaluate": {"device": "cpu"}}), features, manifest, load_model(align_dir))
    gpu, _, _ = run_evaluate(parse_params({"evaluate": {"device": "cuda"}}), features, manifest, load_model(align_dir))
    for task, r in cpu["trained"].items():
        assert abs(gpu["trained"][task]["R@1"] - r["R@1"]) <= 0.05, task
