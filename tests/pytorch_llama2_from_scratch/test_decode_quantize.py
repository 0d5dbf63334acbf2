"""Weight-only int8 (quantize.py): kernels against a dequantised float64 reference, checkpoints, bad input."""

from __future__ import annotations

import pytest
import torch

from pytorch_llama2_from_scratch.fast_decode import FastDecoder, weight_bytes
from pytorch_llama2_from_scratch.generate import generate
from pytorch_llama2_from_scratch.model import ModelArgs, Transformer
from pytorch_llama2_from_scratch.quantize import (
    Int8Linear,
    QuantizationError,
    load_quantized,
    quantize_int8_,
    quantize_per_channel,
    save_quantized,
    with_weights,
)
from tests.numerics import assert_close_scaled, assert_close_to_fp64


def _tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs.preset("tiny", max_seq_len=64, max_batch_size=2)).eval()


def test_per_channel_quantisation_error_is_at_most_half_a_step():
    w = torch.randn(48, 80, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 48)[:, None]
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal(q.abs().amax(dim=1), torch.full((48,), 127, dtype=torch.int8))  # each row's max -> 127
    err = (s[:, None].double() * q.double() - w.double()).abs()
    assert bool((err <= s[:, None].double() / 2 * (1 + 1e-6)).all())


@pytest.mark.parity
@pytest.mark.parametrize("kernel", ["gemv", "int8pack", "dequant"])
def test_int8_matmul_equals_dequantised_reference(kernel):
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g))
    x = torch.randn(3, 5, 96, generator=g)  # 15 rows: the gemv kernel's chunks of 8 rows (8 + 7)
    act = torch.bfloat16 if kernel == "int8pack" else torch.float32
    mod = Int8Linear.from_linear(lin, act_dtype=act, kernel=kernel)
    y = mod(x)
    assert y.shape == (3, 5, 40) and y.dtype == x.dtype
    # independent reference: the same rounded inputs, multiplied in float64
    w64 = mod.scales.double()[:, None] * mod.weight.double()
    ref64 = x.to(act).double() @ w64.T
    if act == torch.float32:
        ref32 = x @ w64.float().T
        assert_close_to_fp64(y, ref64, ref32, what=kernel)
    else:  # bf16 activations and output: a few bf16 roundings of the result
        assert_close_scaled(y, ref64, ulps=4, dtype=torch.bfloat16, what=kernel)


def test_quantise_in_place_shrinks_bytes_and_keeps_greedy_close():
    model = _tiny()
    fp_bytes = weight_bytes(model)
    prompt = [5, 17, 33]
    with torch.inference_mode():
        fp_logits = model(torch.tensor([prompt]), use_cache=False)
    quantize_int8_(model)
    names = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    assert len(names) == 2 * 7 + 1  # wq wk wv wo w1 w2 w3 per layer + output
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    emb = 256 * 64 * 4
    assert weight_bytes(model) - emb < (fp_bytes - emb) / 3.5  # ~1 byte + scales per weight instead of 4
    with torch.inference_mode():
        q_logits = model(torch.tensor([prompt]), use_cache=False)
    # an int8 weight error of <= s/2 moves logits by a small fraction of their size
    assert float((q_logits - fp_logits).abs().max()) < 0.05 * float(fp_logits.abs().max())
    # the static-cache decoder sees the quantised modules: same tokens as the chapter's generate
    assert FastDecoder(model, max_seq_len=40).generate(prompt, 20) == generate(model, [prompt], 20)[0]


def test_quantise_save_load_round_trip(tmp_path):
    model = quantize_int8_(_tiny(1))
    path = tmp_path / "q.pt"
    save_quantized(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pt"]  # atomic: no temporary file left behind
    loaded = load_quantized(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        assert torch.equal(model(tokens, use_cache=False), loaded(tokens, use_cache=False))
        assert torch.equal(model(tokens), loaded(tokens))  # the cache buffers were re-initialised


def test_bad_input_gives_one_clear_line(tmp_path):
    model = quantize_int8_(_tiny())
    with pytest.raises(QuantizationError, match=r"already quantised to int8 \(layers.0.attention.wq"):
        quantize_int8_(model)
    with pytest.raises(QuantizationError, match="needs a quantised model"):
        save_quantized(_tiny(), tmp_path / "x.pt")
    with pytest.raises(QuantizationError, match="does not exist"):
        load_quantized(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(QuantizationError, match="cannot read quantised checkpoint"):
        load_quantized(tmp_path / "junk.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(QuantizationError, match="not a weight-only int8 checkpoint"):
        load_quantized(tmp_path / "other.pt")
    with pytest.raises(QuantizationError, match="kernel must be one of"):
        quantize_int8_(_tiny(), kernel="int3")
    with pytest.raises(QuantizationError, match="kernel 'gemv' multiplies float32 activations"):
        Int8Linear(8, 8, act_dtype=torch.bfloat16, kernel="gemv")


def test_int8_keeps_biases_and_tied_heads_and_round_trips(tmp_path):
    torch.manual_seed(0)
    args = ModelArgs.preset("tiny", qkv_bias=True, tie_embeddings=True, max_seq_len=32, max_batch_size=1)
    model = Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p))
    wq = model.layers[0].attention.wq
    x = torch.randn(2, 64)
    q = Int8Linear.from_linear(wq, act_dtype=torch.float32, kernel="dequant")
    ref64 = x.double() @ q.dequantized(torch.float64).T + wq.bias.double()
    assert_close_to_fp64(q(x), ref64, x @ q.dequantized().T + wq.bias, what="int8 with bias")
    quantize_int8_(model)
    assert model.layers[0].attention.wq.bias is not None
    path = tmp_path / "qwen-like.pt"
    save_quantized(model, path)
    loaded = load_quantized(path)
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.equal(model(tokens, use_cache=False), loaded(tokens, use_cache=False))
    assert FastDecoder(loaded, max_seq_len=24).generate([5, 6], 12) == generate(loaded, [[5, 6]], 12)[0]


def test_with_weights_converts_a_copy():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert with_weights(model, "fp32") is model  # already fp32: nothing to copy
    for fmt, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        other = with_weights(model, fmt)
        assert other is not model and other.layers[0].attention.wq.weight.dtype == dtype
        assert torch.equal(other.layers[0].attention.wq.weight, model.layers[0].attention.wq.weight.to(dtype))
    int8 = with_weights(model, "int8")
    assert isinstance(int8.layers[0].attention.wq, Int8Linear)
    assert not isinstance(model.layers[0].attention.wq, Int8Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    with pytest.raises(QuantizationError, match=r"weight format must be one of .*'fp32'.*, got 'int4'"):
        with_weights(model, "int4")


def test_accuracy_cost_against_torch_cross_entropy():
    """``decode_eval.accuracy_cost``: perplexity = exp(mean next-token cross-entropy) (torch's own, in float64 here);
    the reference may be given as a model or as its logits (computed once for several formats), same result."""
    import copy
    import math

    from pytorch_llama2_from_scratch.decode_eval import _logits, accuracy_cost
    from pytorch_llama2_from_scratch.quantize import with_weights

    torch.manual_seed(0)
    ref = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=50, max_seq_len=16, max_batch_size=1)).eval()
    windows = torch.randint(0, 50, (3, 9))  # (n, T + 1)
    other = with_weights(ref, "bf16")
    by_model, by_logits = accuracy_cost(ref, other, windows), accuracy_cost(_logits(ref, windows), other, windows)
    assert by_model == by_logits
    with torch.no_grad():
        ref64 = copy.deepcopy(ref).double()
        logits = torch.cat([ref64(w[None, :-1], use_cache=False) for w in windows])  # (n, T, V), float64
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert by_model["ppl_reference"] == pytest.approx(math.exp(nll), rel=1e-5)  # fp32 model vs its fp64 copy
    assert by_model["tokens"] == 3 * 8
    same = accuracy_cost(ref, ref, windows)
    assert same["top1_agreement"] == 1.0 and same["ppl_delta_pct"] == 0.0 and same["max_abs_logit_diff"] == 0.0
