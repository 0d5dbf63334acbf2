"""The GPT-2 module against Hugging Face's GPT2LMHeadModel, PyTorch built-ins and analytic values."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig, PretrainedNotAvailableError, load_hf_checkpoint
from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: see conftest.py


def _hf(folder):
    return GPT2LMHeadModel.from_pretrained(folder).eval()


@pytest.mark.parity
@pytest.mark.parametrize("attn_impl", ["manual", "sdpa"])
def test_logits_match_hf_through_save_pretrained_dir(hf_gpt2_parity_dir, attn_impl):
    """Against HF in float64 (the large-init fixture: an exact GELU instead of tanh GELU fails here)."""
    ours = GPT.from_pretrained(hf_gpt2_parity_dir, attn_impl=attn_impl).eval()
    hf = _hf(hf_gpt2_parity_dir)
    idx = torch.randint(0, 50257, (3, 64))
    with torch.no_grad():
        logits, _ = ours(idx)
        ref32 = hf(idx).logits
        ref64 = to_double(hf)(idx).logits
    assert logits.shape == ref32.shape == (3, 64, 50257)
    assert_close_to_fp64(logits, ref64, ref32, what=f"logits ({attn_impl})")


@pytest.mark.slow
def test_logits_match_hf_at_full_124m_shape():
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # random weights, the published 124M shapes
    ours = GPT(GPTConfig.preset("gpt2", init="default")).eval()
    ours.load_hf_state_dict(hf.state_dict())
    assert ours.num_params() == 124_439_808
    idx = torch.randint(0, 50257, (1, 24))
    with torch.no_grad():
        assert_close_to_fp64(ours(idx)[0], to_double(hf)(idx).logits, hf(idx).logits, what="124M logits")


@pytest.mark.parity
def test_loss_matches_cross_entropy_and_ignore_index(hf_gpt2_parity_dir):
    ours = GPT.from_pretrained(hf_gpt2_parity_dir).eval()
    hf = _hf(hf_gpt2_parity_dir)
    idx = torch.randint(0, 50257, (2, 16))
    targets = torch.randint(0, 50257, (2, 16))
    targets[0, :5] = -100
    with torch.no_grad():
        _, loss = ours(idx, targets)
        # HF shifts labels internally: feed [idx, target] pairs through F.cross_entropy on its logits instead.
        refs = [
            F.cross_entropy(m(idx).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            for m in (hf, to_double(hf))
        ]
    assert_close_to_fp64(loss, refs[1], refs[0], what="loss")


@pytest.mark.parity
def test_manual_attention_equals_sdpa_forward_and_backward():
    """SDPA (fp32) against the manual softmax(q k^T / sqrt(hs) + M) v in float64, logits and every gradient."""
    manual = GPT(GPTConfig.preset("tiny", attn_impl="manual"))
    sdpa = GPT(GPTConfig.preset("tiny", attn_impl="sdpa"))
    sdpa.load_state_dict(manual.state_dict())
    manual64 = to_double(manual)
    idx = torch.randint(0, 50257, (2, 32))
    tgt = torch.randint(0, 50257, (2, 32))
    runs = [m(idx, tgt) for m in (manual, sdpa, manual64)]
    assert_close_to_fp64(runs[1][0], runs[2][0], runs[0][0], what="logits")
    for _, loss in runs:
        loss.backward()
    for (name, p32), q, p64 in zip(manual.named_parameters(), sdpa.parameters(), manual64.parameters()):
        assert_close_to_fp64(q.grad, p64.grad, p32.grad, what=f"grad {name}")


def test_attention_is_causal():
    """Changing only the future leaves the past's logits unchanged (masked weights are exactly 0)."""
    model = GPT(GPTConfig.preset("tiny", attn_impl="manual")).eval()
    idx = torch.randint(0, 50257, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % 50257  # change only the future of position 11
    with torch.no_grad():
        past, past_changed = model(idx)[0][:, :12], model(changed)[0][:, :12]
    assert_close_scaled(past_changed, past, ulps=4, what="logits of the past")  # a leak moves them by ~1e-2
    assert not torch.equal(model(idx)[0][:, 12:], model(changed)[0][:, 12:])


@pytest.mark.parity
def test_padded_vocab_leaves_real_logits_and_loss_unchanged(hf_gpt2_parity_dir):
    plain = GPT.from_pretrained(hf_gpt2_parity_dir)
    padded = GPT.from_pretrained(hf_gpt2_parity_dir, pad_vocab_to=64)
    assert padded.config.padded_vocab_size == 50304
    assert padded.lm_head.weight.shape == (50304, 64)
    idx = torch.randint(0, 50257, (2, 16))
    tgt = torch.randint(0, 50257, (2, 16))
    logits_p, loss_p = padded(idx, tgt)
    logits, loss = plain(idx, tgt)
    logits64, loss64 = to_double(plain)(idx, tgt)
    assert logits_p.shape == (2, 16, 50257)  # callers never see the padding columns
    assert_close_to_fp64(logits_p, logits64, logits, what="padded logits")
    assert_close_to_fp64(loss_p, loss64, loss, what="padded loss")
    loss_p.backward()
    assert torch.count_nonzero(padded.lm_head.weight.grad[50257:]) == 0  # padding rows never get gradient


@pytest.mark.parity
def test_weight_tying_one_storage_and_summed_gradient():
    tied = GPT(GPTConfig.preset("tiny"))
    untied = GPT(GPTConfig.preset("tiny", tie_weights=False))
    assert tied.transformer.wte.weight is tied.lm_head.weight
    assert tied.transformer.wte.weight.data_ptr() == tied.lm_head.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == 50257 * 64
    untied.load_state_dict(tied.state_dict())
    untied64 = to_double(untied)
    idx = torch.randint(0, 50257, (2, 16))
    tgt = torch.randint(0, 50257, (2, 16))
    for m in (tied, untied, untied64):
        m(idx, tgt)[1].backward()

    def summed(m):  # embedding use + head use
        return m.transformer.wte.weight.grad + m.lm_head.weight.grad

    assert_close_to_fp64(tied.lm_head.weight.grad, summed(untied64), summed(untied), what="tied gradient")


def test_gpt2_init_statistics():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096)
    model = GPT(cfg)
    proj = torch.cat([w.flatten() for n, w in model.named_parameters() if n.endswith("c_proj.weight")])
    named = model.named_parameters()
    others = torch.cat([w.flatten() for n, w in named if n.endswith(("c_attn.weight", "c_fc.weight"))])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.03)
    assert others.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        if ".ln_" in name and name.endswith(".weight"):
            assert torch.all(p == 1), name


def test_default_init_is_pytorch_default():
    model = GPT(GPTConfig.preset("tiny", init="default"))
    fan_in = model.config.n_embd
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.abs().max().item() <= 1 / math.sqrt(fan_in) + 1e-6  # kaiming_uniform(a=sqrt(5)) bound
    assert model.transformer.wpe.weight.std().item() == pytest.approx(1.0, rel=0.1)  # nn.Embedding: N(0, 1)


def test_loss_at_init_is_close_to_ln_vocab():
    model = GPT(GPTConfig.preset("tiny"))
    idx = torch.randint(0, 50257, (4, 64))
    tgt = torch.randint(0, 50257, (4, 64))
    _, loss = model(idx, tgt)
    assert abs(loss.item() - math.log(50257)) < 0.3


def test_overfit_one_batch_in_bounded_steps():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=512))
    idx = torch.randint(0, 512, (2, 32))
    tgt = torch.randint(0, 512, (2, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad(set_to_none=True)
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1


def test_clear_errors():
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="sequence length 65 exceeds block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        model(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        GPTConfig(attn_impl="flash")
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("gpt5")


def test_presets():
    assert GPTConfig.preset("gpt2") == GPTConfig()
    small = GPTConfig.preset("cpu-small", attn_impl="manual")
    assert (small.n_layer, small.n_embd, small.n_head, small.block_size, small.attn_impl) == (6, 384, 6, 256, "manual")
    assert GPTConfig.preset("gpt2-xl").n_embd == 1600


def test_load_errors_name_the_key(hf_gpt2_small_dir):
    _, state = load_hf_checkpoint(hf_gpt2_small_dir)
    key = next(k for k in state if k.endswith("h.1.mlp.c_fc.weight"))
    bad = dict(state)
    bad[key] = torch.zeros(3, 3)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64))
    with pytest.raises(ValueError, match=r"shape mismatch for transformer\.h\.1\.mlp\.c_fc\.weight"):
        model.load_hf_state_dict(bad)
    missing = {k: v for k, v in state.items() if not k.endswith("ln_f.weight")}
    with pytest.raises(ValueError, match=r"missing.*ln_f\.weight"):
        model.load_hf_state_dict(missing)
    # old checkpoints carry causal-mask buffers: ignored
    buffers = {"h.0.attn.bias": torch.ones(1, 1, 64, 64), "h.0.attn.masked_bias": torch.tensor(-1e4)}
    with_buffers = dict(state, **buffers)
    model.load_hf_state_dict(with_buffers)


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotAvailableError, match="save_pretrained"):
        GPT.from_pretrained("gpt2-this-name-does-not-exist")


def test_unregistered_attention_names_the_module_that_provides_it(monkeypatch):
    """Chapter 2 never imports chapter 4: "triton" exists only once chapter 4 registered it."""
    from pytorch_gpt2_from_scratch import model as gpt2_model

    monkeypatch.setattr(gpt2_model, "_REGISTERED_ATTENTION", {})
    with pytest.raises(ValueError, match=r"import triton_flash_attention_scratch\.triton_flash"):
        GPTConfig.preset("tiny", attn_impl="triton")
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        GPTConfig.preset("tiny", attn_impl="no-such-kernel")


def test_a_registered_attention_is_what_the_model_calls(monkeypatch):
    from pytorch_gpt2_from_scratch import model as gpt2_model

    monkeypatch.setattr(gpt2_model, "_REGISTERED_ATTENTION", {})
    calls = []

    def reference_attention(q, k, v):  # an independent causal attention, computed in float64
        calls.append(tuple(q.shape))
        T = q.size(-2)
        att = (q.double() @ k.double().transpose(-2, -1)) / q.size(-1) ** 0.5
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        return (att @ v.double()).to(q.dtype)

    gpt2_model.register_attention("reference", reference_attention)
    assert "reference" in gpt2_model.attention_impls()
    sdpa = GPT(GPTConfig.preset("tiny", block_size=16))
    ours = GPT(GPTConfig.preset("tiny", block_size=16, attn_impl="reference"))
    ours.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        a, b = ours(idx)[0], sdpa(idx)[0]
    assert len(calls) == ours.config.n_layer and calls[0] == (2, ours.config.n_head, 16, 64 // ours.config.n_head)
    from tests.numerics import assert_close_scaled

    assert_close_scaled(a, b)
    with pytest.raises(ValueError, match="new non-empty string"):
        gpt2_model.register_attention("sdpa", reference_attention)
    with pytest.raises(TypeError, match="callable"):
        gpt2_model.register_attention("x", 3)
