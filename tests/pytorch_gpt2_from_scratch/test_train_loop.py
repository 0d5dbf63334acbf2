"""train_gpt2.py's loop beyond resume: the plot, text data, HellaSwag in the loop, bf16 autocast, torch.compile,
fused AdamW on the CPU, the FLOP count, Ctrl-C / SIGTERM with real signals, and torchrun with 2 gloo ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_gpt2_from_scratch.model import GPT, GPTConfig
from pytorch_gpt2_from_scratch.train_gpt2 import history_figure, main
from pytorch_gpt2_from_scratch.training import configure_optimizers, load_checkpoint
from tests.numerics import assert_close_scaled, assert_close_to_fp64, to_double

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pytorch_gpt2_from_scratch" / "train_gpt2.py"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop_shards")
    rng = np.random.default_rng(0)
    np.save(d / "toy_val_000000.npy", rng.integers(0, 50257, 400).astype(np.uint16))
    np.save(d / "toy_train_000001.npy", rng.integers(0, 50257, 4000).astype(np.uint16))
    return d


TINY = dict(model="tiny", n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, seq_len=16)


def run(out, data, **kw):
    opts = dict(
        **TINY, data=str(data), total_batch_size=64, max_steps=3, warmup_steps=1, eval_every=3, val_steps=1,
        checkpoint_every=100, num_samples=0, hellaswag=False, progress=False, device="cpu", out=str(out),
    )  # fmt: skip
    return main("cpu", **{**opts, **kw})


def tiny_cli_args(data, out) -> list[str]:
    return [
        "--model", "tiny", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
        "--batch-size", "2", "--seq-len", "16", "--total-batch-size", "32", "--warmup-steps", "1",
        "--eval-every", "1000", "--val-steps", "1", "--checkpoint-every", "100000", "--log-every", "1",
        "--sample-every", "100000", "--no-hellaswag", "--device", "cpu", "--data", str(data), "--out", str(out),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------- plot
def _labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_plot_draws_only_what_was_measured_and_comparable():
    import matplotlib.pyplot as plt

    history = [{"step": 0, "val_loss": 10.9}, {"step": 0, "train_loss": 10.9}, {"step": 1, "train_loss": 9.0}]
    fig = history_figure(history, "shakespeare")  # no HellaSwag, not FineWeb
    assert len(fig.axes) == 1  # no empty HellaSwag panel
    assert not any("GPT-2 124M" in label for label in _labels(fig.axes[0]))  # no FineWeb reference line
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    plt.close(fig)
    fig = history_figure(history + [{"step": 1, "hellaswag": 0.26}], "fineweb", fineweb_reference=True)
    assert len(fig.axes) == 2
    assert "GPT-2 124M val (3.2924, FineWeb-Edu)" in _labels(fig.axes[0])
    assert "GPT-3 Small (125M) (0.337)" in _labels(fig.axes[1])
    assert not any("124M (0.337)" in label for label in _labels(fig.axes[1]))
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- data and evals
def test_text_file_data_splits_val_first(tmp_path, gpt2_enc):
    text = "To be, or not to be, that is the question. " * 60
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    n = len(gpt2_enc.encode_ordinary(text)) + 1  # the document is preceded by <|endoftext|>
    n_val = int(n * 0.1)
    res = run(tmp_path / "out", path, max_steps=2)
    assert res.steps_done == 2
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"({n - n_val:,} train / {n_val:,} val tokens)" in log


def test_hellaswag_runs_inside_the_loop(tmp_path, shard_dir, monkeypatch, gpt2_enc):
    from pytorch_gpt2_from_scratch import train_gpt2
    from pytorch_gpt2_from_scratch.hellaswag import evaluate, iter_examples

    ex = {"ctx": "The cat sat on the", "endings": ["mat.", "moon.", "sea.", "idea."], "label": 0}
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(dict(ex, label=i % 4)) + "\n" for i in range(6)))
    monkeypatch.setattr(train_gpt2, "hellaswag_path", lambda split="val": path)
    res = run(tmp_path / "out", shard_dir, max_steps=4, hellaswag=True, hellaswag_every=2, hellaswag_limit=None)
    scores = [h for h in res.history if "hellaswag" in h]
    assert [h["step"] for h in scores] == [0, 2, 4] and all(h["n"] == 6 for h in scores)
    final = evaluate(res.model, iter_examples(path))  # the finished model, scored outside the loop
    assert scores[-1]["hellaswag"] == final.acc_norm and scores[-1]["hellaswag_acc"] == final.acc


# --------------------------------------------------------------------------------------------- precision, compile
def test_bf16_autocast_path_trains_and_differs_from_fp32(tmp_path, shard_dir):
    fp32 = run(tmp_path / "a", shard_dir, dtype="fp32")
    bf16 = run(tmp_path / "b", shard_dir, dtype="bf16")
    assert "autocast torch.bfloat16" in (tmp_path / "b" / "log.txt").read_text()
    l32 = torch.tensor([h["train_loss"] for h in fp32.history if "train_loss" in h])
    l16 = torch.tensor([h["train_loss"] for h in bf16.history if "train_loss" in h])
    assert not torch.equal(l32, l16)  # the bf16 path really ran in bf16
    # bf16 has 8 mantissa bits (eps 2**-7): a few roundings per matmul stay within ~2 ulp of the loss.
    assert_close_scaled(l16, l32, ulps=2, dtype=torch.bfloat16, what="bf16 vs fp32 training losses")


@pytest.mark.slow  # inductor compiles C++ kernels for forward and backward: ~1-4 min on a busy 2-core CPU
def test_compiled_model_loss_and_gradients_equal_eager_and_it_trains():
    """torch.compile(model): loss and every gradient against the eager model in float64 (tolerance policy), and a
    few compiled AdamW steps lower the loss on a fixed batch."""
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    eager = GPT(cfg)
    eager64 = to_double(eager)
    compiled_base = GPT(cfg)
    compiled_base.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_base)
    x, y = torch.randint(0, 64, (2, 2, 16)).unbind(0)
    losses = [m(x, y)[1] for m in (compiled, eager, eager64)]
    for loss in losses:
        loss.backward()
    assert_close_to_fp64(losses[0], losses[2], losses[1], what="compiled loss")
    for (k, p), q, r in zip(compiled_base.named_parameters(), eager.parameters(), eager64.parameters()):
        assert_close_to_fp64(p.grad, r.grad, q.grad, what=f"compiled grad {k}")
    opt = torch.optim.AdamW(compiled_base.parameters(), lr=1e-2)
    trained = []
    for _ in range(5):
        opt.zero_grad()
        loss = compiled(x, y)[1]
        loss.backward()
        opt.step()
        trained.append(loss.item())
    assert trained[-1] < trained[0] - 0.1, trained


def test_fused_adamw_on_cpu_equals_reference_adamw_in_float64():
    """configure_optimizers(fused=True) on the CPU against torch's plain (for-loop) AdamW run in float64."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    models = {"fused": model, "ref32": GPT(model.config), "ref64": GPT(model.config).double()}
    for m in ("ref32", "ref64"):
        models[m].load_state_dict(model.state_dict())
    opts = {"fused": configure_optimizers(model, weight_decay=0.1, learning_rate=1e-2, device_type="cpu", fused=True)}
    assert opts["fused"].defaults["fused"] is True
    for name in ("ref32", "ref64"):
        m = models[name]
        decay = [p for p in m.parameters() if p.dim() >= 2]
        plain = [p for p in m.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}]
        opts[name] = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    x, y = torch.randint(0, 64, (2, 3, 16)).unbind(0)
    for _ in range(5):
        for name, m in models.items():
            opts[name].zero_grad()
            m(x, y)[1].backward()
            opts[name].step()
    for (k, p), p32, p64 in zip(model.named_parameters(), models["ref32"].parameters(), models["ref64"].parameters()):
        assert_close_to_fp64(p.detach(), p64.detach(), p32.detach(), what=k)


@pytest.mark.parametrize("T", [8, 16])
def test_flops_per_token_against_torch_flop_counter(T):
    """6 N + 12 L C T against the FLOPs torch counts in one forward + backward (manual attention, no causal
    discount): they differ only by 6 x (biases + LayerNorm parameters), which are not matmul work."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96, attn_impl="manual")
    model = GPT(cfg)
    B = 3
    idx = torch.randint(0, 96, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    counted = counter.get_total_flops() / (B * T)
    vector_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert model.flops_per_token(T) - 6 * vector_params == counted


# --------------------------------------------------------------------------------------------- real signals
def _start(args, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LLM_SCRATCH_DEBUG", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    log = Path(out) / "log.txt"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training steps are being logged
        if log.exists() and "step     1 | loss" in log.read_text():
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no training step logged within 120 s")


@pytest.mark.slow  # one interpreter start and a few hundred tiny steps
def test_sigterm_twice_checkpoints_at_the_step_boundary(shard_dir, tmp_path):
    """SIGTERM (what torchrun sends on Ctrl-C) stops at the end of the step and saves; a second SIGTERM does not
    abort. The checkpoint holds exactly the steps logged, and --resume continues from there."""
    out = tmp_path / "out"
    proc = _start(tiny_cli_args(shard_dir, out) + ["--max-steps", "100000"], out)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stop requested" in stdout
    ckpt = load_checkpoint(out / "ckpt.pt")
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    trained = [h["step"] for h in logged if "train_loss" in h]
    assert ckpt["step"] == trained[-1] + 1 == len(trained)  # saved at the boundary after the last full step
    assert f"step {ckpt['step']}: checkpoint saved" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once(shard_dir, tmp_path):
    """The first Ctrl-C asks for a stop at the step boundary; a second one, sent as soon as the first is
    acknowledged, aborts: exit status 130, one line "interrupted", no traceback."""
    out = tmp_path / "out"
    proc = _start(tiny_cli_args(shard_dir, out) + ["--max-steps", "100000"], out)
    proc.send_signal(signal.SIGINT)
    seen = []
    for line in proc.stdout:  # blocks until the handler has printed its message (signals are not queued)
        seen.append(line)
        if "stop requested" in line:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen, stdout, stderr)
    pieces = [seg.strip() for line in stderr.splitlines() for seg in line.split("\r")]  # tqdm redraws with \r
    assert "Traceback" not in stderr and any(p.endswith("interrupted") for p in pieces), stderr


# --------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow  # torchrun starts 3 interpreters
def test_torchrun_two_gloo_ranks_log_and_save_once(shard_dir, tmp_path):
    """2 ranks: one log line per event and one checkpoint (rank 0 only); each rank reads its own rows, so the
    first loss equals one process on the union of both ranks' rows (batch 2B)."""
    out = tmp_path / "ddp"
    args = tiny_cli_args(shard_dir, out) + ["--max-steps", "2", "--total-batch-size", "64", "--eval-every", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "2 process(es)" in log and log.count("step     0 | loss") == 1 and log.count("checkpoint saved") == 1
    assert done.stdout.count("step     0 | loss") == 1
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2
    ddp_loss = next(
        json.loads(x)["train_loss"] for x in (out / "log.jsonl").read_text().splitlines() if "train_loss" in x
    )
    single = run(tmp_path / "one", shard_dir, max_steps=2, batch_size=4, total_batch_size=64, eval_every=2)
    single_loss = next(h["train_loss"] for h in single.history if "train_loss" in h)
    assert abs(ddp_loss - single_loss) <= 64 * torch.finfo(torch.float32).eps * abs(single_loss)


def test_module_docstring_describes_the_cpu_preset_truly():
    """The docstring's sentence about the cpu preset names the sizes the preset really has."""
    import re

    from pytorch_gpt2_from_scratch import train_gpt2

    m = re.search(r"``cpu`` \(default\): a (\d+)-layer, (\d+)-head, (\d+)-wide GPT \(block (\d+)\)", train_gpt2.__doc__)
    assert m, "the docstring no longer describes the cpu preset"
    cfg = train_gpt2.make_config("cpu")
    assert tuple(map(int, m.groups())) == (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size)


@pytest.mark.slow  # torchrun starts 3 interpreters
def test_sigterm_to_one_rank_stops_both_ranks_at_the_same_step(shard_dir, tmp_path):
    """SIGTERM to rank 1 only: the stop request is all-reduced, both ranks leave the loop after the same step (the
    run ends cleanly instead of hanging in a collective), and rank 0's checkpoint holds exactly the steps done."""
    out = tmp_path / "ddp"
    args = tiny_cli_args(shard_dir, out) + ["--max-steps", "100000", "--total-batch-size", "64"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), *args]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = out / "log.txt"
    deadline = time.time() + 240
    while not (log.exists() and "step     1 | loss" in log.read_text()):
        assert agent.poll() is None and time.time() < deadline, "torchrun did not start training"
        time.sleep(0.1)
    rank1 = None
    for pid in subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"RANK=1" in environ:
            rank1 = int(pid)
    assert rank1 is not None, "rank 1's process not found"
    os.kill(rank1, signal.SIGTERM)
    stdout, stderr = agent.communicate(timeout=240)
    assert agent.returncode == 0, stderr[-3000:]
    trained = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines() if "train_loss" in x]
    assert load_checkpoint(out / "ckpt.pt")["step"] == len(trained) == trained[-1] + 1
    assert "stop requested" in stdout


def test_torchrun_speedrun_preset_shares_its_micro_batch_between_ranks(shard_dir, tmp_path):
    """--preset speedrun trains B 8 x T in one micro-batch; under 2 ranks that would be twice its total batch, so each
    rank takes B / 2 rows and the step keeps its tokens (instead of stopping on 'not divisible')."""
    out = tmp_path / "ddp_speedrun"
    args = ["--preset", "speedrun", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            "--batch-size", "4", "--seq-len", "16", "--total-batch-size", "64", "--time-budget", "1",
            "--eval-every", "1000", "--val-steps", "1", "--checkpoint-every", "100000", "--log-every", "1",
            "--sample-every", "100000", "--no-hellaswag", "--precision", "fp32", "--device", "cpu",
            "--data", str(shard_dir), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "total batch 64 tokens = B 2 x T 16 x 2 rank(s) x 1 micro-steps" in log
    assert "ModernGPT (recipe lean)" in log and "step     0 | loss" in log
