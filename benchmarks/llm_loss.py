"""Causal-LM distillation step with the chunked output-layer loss (loss_chunk_size) vs the full-logits loss.

    python benchmarks/llm_loss.py                 # the issue's grid: hidden {256, 1024} x V {32000, 128256}
                                                  #   x B x L {2 x 1024, 1 x 4096}, plus the memory-vs-length sweep
    python benchmarks/llm_loss.py --small         # CPU-sized grid (hidden 256, B x L {2 x 256, 1 x 1024})
    python benchmarks/llm_loss.py --chunk 512     # tokens per chunk (default 256)

One step = teacher forward (no grad) + student forward + soft loss (forward KL at T=2) + hard next-token
loss + backward, no optimizer: exactly the part that `loss_chunk_size` changes. Student and teacher are the
same Llama-style 2-layer bodies (untied embeddings and output layer, like Llama 3) so that the output
layer dominates. Prints, per configuration, the peak memory and the median step time of both paths and
their ratios (chunked / full). Peak memory: on GPU torch.cuda.max_memory_allocated over the step (models,
gradients and activations; bf16 autocast), on CPU the peak resident set size of a fresh process per
configuration and path (float32). Writes docs/results/llm_loss_<device>.json / .md and, with the sweep, the plot
docs/results/llm_loss_memory_<device>.png (peak memory vs sequence length for both paths).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import transformers as tf

from hf_distill.chunked import OutputHead, causal_lm_rows, chunked_head_loss, last_hidden_states
from hf_distill.losses import divergence_loss, teacher_target

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance, provenance_line

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results")
T, SOFT_WEIGHT, HARD_WEIGHT = 2.0, 0.5, 0.5


def _configs(hiddens, vocabs, shapes):
    return [{"hidden": h, "vocab": v, "batch": b, "seq": s} for h in hiddens for v in vocabs for b, s in shapes]


GRID = _configs((256, 1024), (32000, 128256), ((2, 1024), (1, 4096)))
SMALL_GRID = _configs((256,), (32000, 128256), ((2, 256), (1, 1024)))
SWEEP = _configs((256,), (128256,), [(1, s) for s in (512, 1024, 2048, 4096, 8192)])
SMALL_SWEEP = _configs((256,), (128256,), [(1, s) for s in (256, 512, 1024)])


def build(cfg: dict, device: str):
    h = cfg["hidden"]
    config = tf.LlamaConfig(
        vocab_size=cfg["vocab"],
        hidden_size=h,
        intermediate_size=4 * h,
        num_hidden_layers=2,
        num_attention_heads=max(1, h // 64),
        num_key_value_heads=max(1, h // 128),
        max_position_embeddings=cfg["seq"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    student = tf.LlamaForCausalLM(config).to(device).train()
    teacher = tf.LlamaForCausalLM(config).to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), generator=g)
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    return student, teacher, inputs, ids.to(device)


def make_step(path: str, student, teacher, inputs, labels, chunk: int, device: str):
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def full():
        with autocast:
            with torch.no_grad():
                t_logits = teacher(**inputs).logits  # (B, L, V)
            out = student(**inputs, labels=labels)  # (B, L, V) logits and the model's cross-entropy
            soft = divergence_loss(out.logits, teacher_target(t_logits, T), T, inputs["attention_mask"])
            loss = SOFT_WEIGHT * soft + HARD_WEIGHT * out.loss
        loss.backward()
        return loss.detach()

    def chunked():
        with autocast:
            with torch.no_grad():
                h_t = last_hidden_states(teacher, inputs)  # (B, L, H)
            h_s = last_hidden_states(student, inputs)
            keep, soft_mask, next_labels = causal_lm_rows(inputs["attention_mask"], labels, labels.shape)
            n_soft, n_hard = soft_mask.sum().item(), (next_labels != -100).sum().item()
            out = chunked_head_loss(
                h_s[keep],
                OutputHead.from_model(student),
                [h_t[keep]],
                [OutputHead.from_model(teacher)],
                labels=next_labels,
                soft_mask=soft_mask,
                temperature=T,
                soft_scale=SOFT_WEIGHT / n_soft,
                hard_scale=HARD_WEIGHT / n_hard,
                chunk_size=chunk,
            )
        out.loss.backward()
        return out.loss.detach()

    return full if path == "full" else chunked


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(cfg: dict, path: str, chunk: int, device: str, repeats: int) -> dict:
    """One configuration and path in this process: median step seconds, peak memory (MB), the loss."""
    student, teacher, inputs, labels = build(cfg, device)
    step = make_step(path, student, teacher, inputs, labels, chunk, device)
    # what the process holds before any step: the models and the inputs (and on CPU the Python / torch runtime)
    base = (
        torch.cuda.memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    student.zero_grad(set_to_none=True)
    loss = step()  # warm-up
    student.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
        student.zero_grad(set_to_none=True)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    result = dict(
        cfg,
        path=path,
        chunk=chunk,
        seconds=statistics.median(times),
        peak_mb=peak,
        base_mb=base / 2**20,
        loss=loss.item(),
    )
    del student, teacher, inputs, step
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def run_pair(cfg: dict, chunk: int, device: str, repeats: int) -> dict:
    if device == "cuda":  # max_memory_allocated resets per measurement: one process is enough
        results = {p: measure(cfg, p, chunk, device, repeats) for p in ("full", "chunked")}
    else:  # peak RSS never goes down: a fresh process per configuration and path
        results = {}
        for p in ("full", "chunked"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                json.dumps(cfg),
                "--path",
                p,
                "--chunk",
                str(chunk),
                "--repeats",
                str(repeats),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[p] = json.loads(out.strip().splitlines()[-1])
    f, c = results["full"], results["chunked"]
    return dict(
        cfg,
        chunk=chunk,
        base_mb=f["base_mb"],
        full_mb=f["peak_mb"],
        chunked_mb=c["peak_mb"],
        memory_ratio=c["peak_mb"] / f["peak_mb"],
        full_s=f["seconds"],
        chunked_s=c["seconds"],
        time_ratio=c["seconds"] / f["seconds"],
        loss_rel_diff=abs(c["loss"] - f["loss"]) / abs(f["loss"]),
    )


def table(rows: list[dict], device: str) -> str:
    header = (
        "| hidden | V | B x L | chunk | peak full (MB) | peak chunked (MB) | memory ratio | before step (MB) "
        "| step full (s) | step chunked (s) | time ratio | loss rel. diff |"
    )
    lines = [f"device: {device}", "", header, "|---" * 12 + "|"]
    for r in rows:
        lines.append(
            f"| {r['hidden']} | {r['vocab']} | {r['batch']} x {r['seq']} | {r['chunk']} | {r['full_mb']:.0f} | "
            f"{r['chunked_mb']:.0f} | {r['memory_ratio']:.3f} | {r['base_mb']:.0f} | {r['full_s']:.3f} | "
            f"{r['chunked_s']:.3f} | {r['time_ratio']:.2f} | {r['loss_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = [r["seq"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(seq, [r["full_mb"] / 1024 for r in rows], "o-", label="full logits")
    ax.plot(seq, [r["chunked_mb"] / 1024 for r in rows], "s-", label=f"loss_chunk_size={rows[0]['chunk']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (batch 1)")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(f"distillation step, V={rows[0]['vocab']}, hidden {rows[0]['hidden']}, 2 layers ({device})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU-sized grid and sweep")
    parser.add_argument("--chunk", type=int, default=256, help="tokens per chunk (loss_chunk_size)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per path (default GPU 5, CPU 2)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the memory-vs-length sweep and its plot")
    parser.add_argument("--out", default=DOCS, help="folder for the JSON, the table and the plot")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, JSON on stdout
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = args.repeats or (5 if device == "cuda" else 2)
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args.path, args.chunk, device, repeats)))
        return
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores, float32)"
    grid, sweep = (SMALL_GRID, SMALL_SWEEP) if args.small else (GRID, SWEEP)
    rows = []
    for cfg in grid:
        rows.append(run_pair(cfg, args.chunk, device, repeats))
        print(table(rows[-1:], name).splitlines()[-1], flush=True)
    report = {"device": name, "grid": rows}
    text = "## Grid\n\n" + table(rows, name)
    if not args.no_sweep:
        done = {(r["hidden"], r["vocab"], r["batch"], r["seq"]): r for r in rows}
        sweep_rows = []
        for cfg in sweep:
            key = (cfg["hidden"], cfg["vocab"], cfg["batch"], cfg["seq"])
            sweep_rows.append(done.get(key) or run_pair(cfg, args.chunk, device, repeats))
            print(table(sweep_rows[-1:], name).splitlines()[-1], flush=True)
        report["sweep"] = sweep_rows
        text += "\n\n## Peak memory vs sequence length\n\n" + table(sweep_rows, name)
    tag = "gpu" if device == "cuda" else "cpu"
    os.makedirs(args.out, exist_ok=True)
    report = {"provenance": provenance(argv), **report}
    with open(os.path.join(args.out, f"llm_loss_{tag}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"llm_loss_{tag}.md"), "w") as f:
        title = f"# Chunked output-layer loss vs full logits ({tag})"
        f.write(f"{title}\n\n{provenance_line(report['provenance'])}\n\n{text}\n")
    if not args.no_sweep:
        plot(report["sweep"], os.path.join(args.out, f"llm_loss_memory_{tag}.png"), name)
    print("\n" + text)


if __name__ == "__main__":
    main()
