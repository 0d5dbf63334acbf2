"""The chapter's decode table: every method of lessons 20-23 on one model, interleaved in one run.

    python pytorch_llama2_from_scratch/decode_ladder.py                 # ~125M random LLaMA, one thread
    python pytorch_llama2_from_scratch/decode_ladder.py --no-compile --layers 4 --vocab 8000   # quick look

Methods (batch 1, greedy, same prompt, same weights): HF ``generate``; ours with the dynamic cache; the static
cache eager and compiled (fp32); bf16, fp16 and int8 weights (static cache; int8 with the chapter's CPU kernel
and with PyTorch's ``int8pack``, eager and compiled); speculative decoding with the int8 copy as draft. A random
target is a poor one for speculation (its argmax flips at any perturbation), so the last rows repeat lesson 23's
stand-in for a trained pair -- a copy whose layers 2.. are damped, drafted by its own first 2 layers -- against
that copy's own plain greedy decoding. Our fp32 rows multiply 1..16 rows with the panel kernel
(``cpu_kernels.PanelLinear``). Each round first measures the bandwidth of the one-row products of the fp32 model's
own matrices with both GEMVs -- PyTorch's and the panel kernel -- and takes the faster as the limit, then runs
every method once. The accuracy cost of each number format comes from the
trained tiny LLaMA (lesson 12). Writes ``out/llama2/decode_ladder.md``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: import the chapter modules

import torch

from pytorch_basis.common import (
    atomic_write_text,
    cpu_model_name,
    out_dir,
    positive_int,
    seed_everything,
    seed_int,
)
from pytorch_llama2_from_scratch import cpu_kernels
from pytorch_llama2_from_scratch.decode_eval import add_accuracy_arguments, format_accuracy
from pytorch_llama2_from_scratch.fast_decode import (
    FastDecoder,
    _hf_generate,
    bytes_per_token,
    decode_parser,
    measure,
    model_gemv_probe,
    random_llama_pair,
    random_prompt,
)
from pytorch_llama2_from_scratch.generate import generate
from pytorch_llama2_from_scratch.quantize import quantize_int8_
from pytorch_llama2_from_scratch.speculative import damp_deep_layers, speculative_generate, truncated_draft

DAMPED = "damped target"  # prefix of the rows measured on lesson 23's agreeing pair


@torch.inference_mode()
def ladder(
    hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, vocab=32000, prompt_len=16, new_tokens=64,
    repeats=3, ks=(2,), damped_ks=(4, 6), compile=True, clock="cpu", seed=0, checkpoint=None, windows=16,
    train_steps=150,
) -> dict:  # fmt: skip
    seed_everything(seed)
    total = prompt_len + new_tokens + max(ks + damped_ks)
    model, hf = random_llama_pair(hidden, layers, heads, kv_heads, intermediate, vocab, total, seed)
    prompt = random_prompt(vocab, prompt_len, seed)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fp16 = copy.deepcopy(model).to(torch.float16)
    int8 = quantize_int8_(copy.deepcopy(model))
    int8pack = quantize_int8_(copy.deepcopy(model), kernel="int8pack") if int8.output.kernel != "int8pack" else None
    cpu_kernels.use_panel_kernel_(model)  # 1..16-row products (steps, verification, prompt): panels, where they build
    dec = {name: FastDecoder(m, max_seq_len=total) for name, m in
           (("fp32", model), ("bf16", bf16), ("fp16", fp16), ("int8", int8))}  # fmt: skip
    ctx = prompt_len + new_tokens // 2
    b = {n: bytes_per_token(m, total) for n, m in (("fp32", model), ("bf16", bf16), ("fp16", fp16), ("int8", int8))}
    methods = {
        "HF generate (fp32)": (lambda: _hf_generate(hf, prompt, new_tokens, "cpu"), bytes_per_token(model, ctx)),
        "dynamic cache (fp32)": (lambda: generate(model, [prompt], new_tokens)[0], bytes_per_token(model, ctx)),
        "static cache (fp32)": (lambda: dec["fp32"].generate(prompt, new_tokens), b["fp32"]),
    }
    compiled = None
    if compile:
        compiled = FastDecoder(model, max_seq_len=total, compile=True)
        print("compiling the fp32 decode step ...", flush=True)
        compiled.generate(prompt, 2)
        print(f"compiled in {compiled.compile_seconds:.0f} s", flush=True)
        methods["static + compile (fp32)"] = (lambda: compiled.generate(prompt, new_tokens), b["fp32"])
    for name in ("bf16", "fp16", "int8"):
        methods[f"static cache ({name} weights)"] = (lambda d=dec[name]: d.generate(prompt, new_tokens), b[name])
    if int8pack is not None:
        pdec = FastDecoder(int8pack, max_seq_len=total)
        methods["static cache (int8 weights, PyTorch int8pack)"] = (
            lambda: pdec.generate(prompt, new_tokens),
            b["int8"],
        )
    if compile:
        compiled8 = FastDecoder(int8, max_seq_len=total, compile=True)
        print("compiling the int8 decode step ...", flush=True)
        compiled8.generate(prompt, 2)
        methods["static + compile (int8 weights)"] = (lambda: compiled8.generate(prompt, new_tokens), b["int8"])
    stats = {}
    for k in ks:

        def spec(k=k):
            out, stats[k] = speculative_generate(model, int8, prompt, new_tokens, k=k, target_decoder=dec["fp32"],
                                                 draft_decoder=dec["int8"])  # fmt: skip
            return out

        methods[f"speculative k={k} (fp32 target, int8 draft)"] = (spec, b["fp32"])
    exit_layer = min(2, layers - 1)
    if damped_ks and exit_layer >= 1:  # lesson 23's pair: layers 2.. of a copy barely change the residual stream
        damped = copy.deepcopy(model)
        damp_deep_layers(damped, exit_layer, 0.01)
        early = truncated_draft(damped, exit_layer)
        cpu_kernels.use_panel_kernel_(damped)  # repack: the damped weights
        tdamp, ddamp = FastDecoder(damped, max_seq_len=total), FastDecoder(early, max_seq_len=total)
        methods[f"{DAMPED}: plain greedy (fp32)"] = (lambda: tdamp.generate(prompt, new_tokens), b["fp32"])
        for k in damped_ks:

            def spec_damped(k=k):
                out, stats[("damped", k)] = speculative_generate(damped, early, prompt, new_tokens, k=k,
                                                                 target_decoder=tdamp, draft_decoder=ddamp)  # fmt: skip
                return out

            methods[f"{DAMPED}: speculative k={k} (layers:{exit_layer} draft)"] = (spec_damped, b["fp32"])
    print("warm-up ...", flush=True)
    for fn, _ in methods.values():
        fn()
    res = measure(methods, new_tokens, repeats, "cpu", model_gemv_probe(model), clock,
                  "HF generate (fp32)", progress=True)  # fmt: skip
    plain = res["outputs"].get(f"{DAMPED}: plain greedy (fp32)")
    for name, row in res["methods"].items():  # the damped target's rows: same tokens as its own plain greedy
        if name.startswith(DAMPED):
            row["same_tokens_damped"] = sum(a == b for a, b in zip(res["outputs"][name], plain)) / max(len(plain), 1)
    acc, tiny = format_accuracy(("bf16", "fp16", "int8"), checkpoint, train_steps, windows)
    res.update(
        params=model.num_params(), stats=stats, accuracy=acc, compile_seconds=compiled.compile_seconds if compiled else
        None, tiny=tiny,
    )  # fmt: skip
    return res


def markdown(res: dict, hidden, layers, heads, kv_heads, intermediate, vocab, prompt_len) -> str:
    rows = res["methods"]
    hf = rows["HF generate (fp32)"]["median_tok_s"]
    ours = rows["static cache (fp32)"]["median_tok_s"]
    bw = res["bandwidth_GBs"]
    acc = res["accuracy"]
    lines = [
        f"{cpu_model_name()}, {res['threads']} thread, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
        f"random LLaMA with {res['params'] / 1e6:.1f} M parameters (dim {hidden}, {layers} layers, {heads} query / "
        f"{kv_heads} kv heads, FFN {intermediate}, vocab {vocab}); batch 1, greedy, prompt {prompt_len}, "
        f"{res['new_tokens']} new tokens; {res['repeats']} interleaved rounds, {res['clock']} clock; median [min-max]. "
        f"Limit = bandwidth of the faster GEMV over the model's own fp32 matrices, measured in each round "
        f"({statistics.median(bw):.1f} [{min(bw):.1f}-{max(bw):.1f}] GB/s; "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in res["bandwidth_by_kernel_GBs"].items())
        + " GB/s) / bytes per token.",
        "",
        "| method | MB / token | tok/s | % of limit | vs HF | vs static fp32 | same tokens as HF | accept rate "
        "| tokens / target fwd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    damped_base = rows.get(f"{DAMPED}: plain greedy (fp32)", {}).get("median_tok_s")
    for name, r in rows.items():
        t = r["tok_s"]
        p = r["pct_of_limit"]
        k = int(name.split("=")[1].split()[0]) if "speculative" in name else None
        s = res["stats"].get(("damped", k) if name.startswith(DAMPED) else k) if k else None
        accept = f"{100 * s.acceptance_rate:.0f} %" if s else "-"
        per_fwd = f"{s.tokens_per_target_forward:.2f}" if s else "-"
        if name.startswith(DAMPED):  # another model: compared with its own plain greedy decoding only
            vs_hf, vs_ours, same = "-", f"{r['median_tok_s'] / damped_base:.2f}x (own plain)", "-"
            if k:
                same = f"{r['same_tokens_damped']:.0%} (own plain)"
        else:
            vs_hf, vs_ours, same = f"{r['median_tok_s'] / hf:.2f}x", f"{r['median_tok_s'] / ours:.2f}x", \
                f"{r['same_tokens']:.0%}"  # fmt: skip
        lines.append(
            f"| {name} | {r['bytes_per_token'] / 1e6:.0f} | {r['median_tok_s']:.1f} [{min(t):.1f}-{max(t):.1f}] "
            f"| {statistics.median(p):.0f} [{min(p):.0f}-{max(p):.0f}] | {vs_hf} | {vs_ours} | {same} "
            f"| {accept} | {per_fwd} |"
        )
    lines += [
        "",
        f"Accuracy of each weight format on the tiny LLaMA of lesson 12 ({res['tiny']['params'] / 1e6:.2f} M "
        f"parameters, {res['tiny']['steps']} training steps), {res['tiny']['tokens']} held-out tokens of tiny "
        "Shakespeare:",
        "",
        "| weights | top-1 agreement with fp32 | perplexity (fp32 -> this) | change |",
        "|---|---:|---:|---:|",
    ]
    for name, a in acc.items():
        lines.append(
            f"| {name} | {100 * a['top1_agreement']:.2f} % | {a['ppl_reference']:.3f} -> {a['ppl']:.3f} "
            f"| {a['ppl_delta_pct']:+.3f} % |"
        )
    if res.get("compile_seconds"):
        gain = 1 / ours - 1 / rows["static + compile (fp32)"]["median_tok_s"]
        be = f"{res['compile_seconds'] / gain:.0f} tokens" if gain > 0 else "never (no gain)"
        lines += ["", f"Compile time of the decode step: {res['compile_seconds']:.0f} s ({res['clock']} clock); "
                  f"break-even against the eager static cache after {be}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = decode_parser(__doc__, new_tokens=64, repeats=3)  # the benchmark model's shape, prompt, tokens, rounds
    p.add_argument("--ks", type=positive_int, nargs="+", default=[2], help="draft lengths with the int8 draft")
    p.add_argument("--damped-ks", type=positive_int, nargs="*", default=[4, 6],
                   help="draft lengths on the damped target with its layers:2 draft (none: skip)")  # fmt: skip
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help="cpu (default): this process's CPU time")
    add_accuracy_arguments(p)  # --windows, --train-steps, --checkpoint: the tiny LLaMA of the accuracy table
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="markdown file (default: out/llama2/decode_ladder.md)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    shape = dict(hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, intermediate=a.intermediate,
                 vocab=a.vocab, prompt_len=a.prompt_len)  # fmt: skip
    res = ladder(**shape, new_tokens=a.new_tokens, repeats=a.repeats, ks=tuple(a.ks), damped_ks=tuple(a.damped_ks),
                 compile=a.compile,
                 clock=a.clock, seed=a.seed, checkpoint=a.checkpoint, windows=a.windows,
                 train_steps=a.train_steps)  # fmt: skip
    table = markdown(res, **shape)
    path = Path(a.out) if a.out else out_dir("llama2") / "decode_ladder.md"
    atomic_write_text(table, path)
    print(f"\n{table}\nwritten to {path}")
    res["table"] = table
    return res


if __name__ == "__main__":
    from pytorch_basis.common import run_cli
    from pytorch_llama2_from_scratch.generate import CLI_ERRORS

    run_cli(main, CLI_ERRORS, join_lines=True)
