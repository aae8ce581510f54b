"""Causal-LM distillation step with the chunked output-layer loss (loss_chunk_size) vs the full-logits loss.

    python benchmarks/llm_loss.py                 # the issue's grid: hidden {256, 1024} x V {32000, 128256}
                                                  #   x B x L {2 x 1024, 1 x 4096}, plus the memory-vs-length sweep
    python benchmarks/llm_loss.py --small         # CPU-sized grid (hidden 256, B x L {2 x 256, 1 x 1024})
    python benchmarks/llm_loss.py --chunk 512     # tokens per chunk (default "auto": sized from a memory budget)
    python benchmarks/llm_loss.py --tiny          # smoke mode (used by the tests; writes nothing)

One step = teacher forward (no grad) + student forward + soft loss (forward KL at T=2) + hard next-token
loss + backward, no optimizer: exactly the part that `loss_chunk_size` changes. The chunked path is the
library's: both models run with logits_to_keep=1 and output_hidden_states, and
`DistillationObjective.lm_head_loss` computes both terms from the last hidden states. Student and teacher
are the same Llama-style 2-layer bodies (untied embeddings and output layer, like Llama 3) so that the
output layer dominates.

Time: both paths in one process per configuration, `--repeats` (>= 5) timed steps each after a warm-up,
interleaved (full, chunked / chunked, full, ...) so that machine noise hits both alike; medians, their ratio
(chunked / full) and the range of the per-repeat ratios. Peak memory: on GPU torch.cuda.max_memory_allocated
over a step (models, gradients and activations; bf16 autocast), on CPU the peak resident set size (VmHWM, reset
after the models are built) of a fresh process per configuration and path over one step (float32). Writes
docs/results/llm_loss_<device>.json / .md (with the commit and the command) and, with the sweep,
docs/results/llm_loss_memory_<device>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import transformers as tf

from hf_distill.chunked import OutputHead
from hf_distill.losses import divergence_loss, teacher_target
from hf_distill.objective import DistillationObjective

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance, provenance_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
T, SOFT_WEIGHT, HARD_WEIGHT = 2.0, 0.5, 0.5
OBJECTIVE = DistillationObjective({"soft_loss": SOFT_WEIGHT, "hard_loss": HARD_WEIGHT}, temperature=T)


def _configs(hiddens, vocabs, shapes):
    return [{"hidden": h, "vocab": v, "batch": b, "seq": s} for h in hiddens for v in vocabs for b, s in shapes]


GRID = _configs((256, 1024), (32000, 128256), ((2, 1024), (1, 4096)))
SMALL_GRID = _configs((256,), (32000, 128256), ((2, 256), (1, 1024)))
TINY_GRID = _configs((32,), (500,), ((2, 16),))  # one configuration: the smoke test checks the printing, not a trend
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


def make_step(path: str, student, teacher, inputs, labels, chunk, device: str):
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
        flags = {"logits_to_keep": 1, "output_hidden_states": True}  # no (B, L, V) logits
        with autocast:
            with torch.no_grad():
                h_t = teacher(**inputs, **flags).hidden_states[-1]  # (B, L, H)
            h_s = student(**inputs, **flags).hidden_states[-1]
            loss, _ = OBJECTIVE.lm_head_loss(
                {**inputs, "labels": labels},
                h_s,
                [h_t],
                OutputHead.from_model(student),
                [OutputHead.from_model(teacher)],
                chunk,
            )
        loss.backward()
        return loss.detach()

    return full if path == "full" else chunked


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step, device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def time_pair(cfg: dict, chunk, device: str, repeats: int) -> dict:
    """Both paths in this process, interleaved: per-path step seconds (after one warm-up each) and losses."""
    student, teacher, inputs, labels = build(cfg, device)
    steps = {p: make_step(p, student, teacher, inputs, labels, chunk, device) for p in ("full", "chunked")}
    losses = {}
    for path, step in steps.items():  # warm-up
        losses[path] = step().item()
        student.zero_grad(set_to_none=True)
    times = {p: [] for p in steps}
    for r in range(repeats):
        for path in ("full", "chunked") if r % 2 == 0 else ("chunked", "full"):
            times[path].append(_timed(steps[path], device))
            student.zero_grad(set_to_none=True)
    return {"times": times, "losses": losses}


def peak_memory(cfg: dict, path: str, chunk, device: str) -> dict:
    """MB held before the step (models, inputs, runtime) and at the peak of one step of `path` (this process)."""
    student, teacher, inputs, labels = build(cfg, device)
    step = make_step(path, student, teacher, inputs, labels, chunk, device)
    if device == "cuda":
        step()  # warm-up: the peak of a later step, with the gradients already allocated, as in training
        student.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        step()
        return {"base_mb": base, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    # The process's high-water mark would include the imports and the model building: reset it (Linux) first.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_mb("VmRSS")
    step()
    return {"base_mb": base, "peak_mb": _status_mb("VmHWM")}


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (kB) in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def run_config(cfg: dict, chunk, device: str, repeats: int, at_once: bool = False) -> dict:
    """One configuration's timing and peak memory (see the module docstring); `at_once`: the CPU memory children
    of the two paths run at the same time (each measures only its own resident set; tiny mode)."""
    timing = time_pair(cfg, chunk, device, repeats)
    if device == "cuda":  # max_memory_allocated resets per measurement: one process is enough
        memory = {p: peak_memory(cfg, p, chunk, device) for p in ("full", "chunked")}
    else:  # peak RSS never goes down: a fresh process per configuration and path

        def child(p: str) -> dict:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                json.dumps(cfg),
                "--path",
                p,
                "--chunk",
                str(chunk),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        with ThreadPoolExecutor(max_workers=2 if at_once else 1) as pool:
            memory = dict(zip(("full", "chunked"), pool.map(child, ("full", "chunked"))))
    t_full, t_chunked = timing["times"]["full"], timing["times"]["chunked"]
    pair_ratios = [c / f for c, f in zip(t_chunked, t_full)]
    loss_full, loss_chunked = timing["losses"]["full"], timing["losses"]["chunked"]
    return dict(
        cfg,
        chunk=chunk,
        chunks=_chunk_count(cfg, chunk, device),
        repeats=repeats,
        base_mb=memory["full"]["base_mb"],
        full_mb=memory["full"]["peak_mb"],
        chunked_mb=memory["chunked"]["peak_mb"],
        memory_ratio=memory["chunked"]["peak_mb"] / memory["full"]["peak_mb"],
        full_s=statistics.median(t_full),
        chunked_s=statistics.median(t_chunked),
        time_ratio=statistics.median(t_chunked) / statistics.median(t_full),
        pair_ratio_min=min(pair_ratios),
        pair_ratio_max=max(pair_ratios),
        times_full=t_full,
        times_chunked=t_chunked,
        loss_rel_diff=abs(loss_chunked - loss_full) / abs(loss_full),
    )


def _chunk_count(cfg: dict, chunk, device: str) -> int:
    """How many chunks the loss ran in (for "auto": on CPU fixed by the budget; on GPU as sized at this moment)."""
    from hf_distill.chunked import resolve_chunk_size

    rows = cfg["batch"] * cfg["seq"]
    size = resolve_chunk_size(chunk, rows, cfg["vocab"], 1, torch.device(device))
    return -(-rows // size)


def table(rows: list[dict], device: str) -> str:
    header = (
        "| hidden | V | B x L | chunk | chunks | peak full (MB) | peak chunked (MB) | memory ratio | before step (MB) "
        "| step full (s) | step chunked (s) | time ratio | per-repeat ratios | loss rel. diff |"
    )
    lines = [f"device: {device}", "", header, "|---" * 14 + "|"]
    for r in rows:
        lines.append(
            f"| {r['hidden']} | {r['vocab']} | {r['batch']} x {r['seq']} | {r['chunk']} | {r['chunks']} | "
            f"{r['full_mb']:.0f} | {r['chunked_mb']:.0f} | {r['memory_ratio']:.3f} | {r['base_mb']:.0f} | "
            f"{r['full_s']:.4f} | {r['chunked_s']:.4f} | {r['time_ratio']:.3f} | "
            f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f} | {r['loss_rel_diff']:.1e} |"
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


def _chunk_arg(text: str):
    return text if text == "auto" else int(text)


def run_grid(grid: list[dict], args, device: str, name: str) -> list[dict]:
    rows = []
    for cfg in grid:
        rows.append(run_config(cfg, args.chunk, device, args.repeats, at_once=args.tiny))
        print(table(rows[-1:], name).splitlines()[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU-sized grid and sweep")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny grid, no sweep, nothing written")
    parser.add_argument("--chunk", type=_chunk_arg, default="auto", help="tokens per chunk, or 'auto' (default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per path, interleaved (>= 5)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the memory-vs-length sweep and its plot")
    parser.add_argument("--out", default=RESULTS, help="folder for the JSON, the table and the plot")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration's peak memory, JSON on stdout
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one:
        print(json.dumps(peak_memory(json.loads(args.one), args.path, args.chunk, device)))
        return
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores, float32)"
    if args.tiny:
        rows = run_grid(TINY_GRID, args, device, name)
        print("\n" + table(rows, name))
        return
    grid, sweep = (SMALL_GRID, SMALL_SWEEP) if args.small else (GRID, SWEEP)
    rows = run_grid(grid, args, device, name)
    report = {"provenance": provenance(argv), "device": name, "grid": rows}
    text = "## Grid\n\n" + table(rows, name)
    if not args.no_sweep:
        done = {(r["hidden"], r["vocab"], r["batch"], r["seq"]): r for r in rows}
        todo = [c for c in sweep if (c["hidden"], c["vocab"], c["batch"], c["seq"]) not in done]
        new = {(r["hidden"], r["vocab"], r["batch"], r["seq"]): r for r in run_grid(todo, args, device, name)}
        report["sweep"] = [{**done, **new}[(c["hidden"], c["vocab"], c["batch"], c["seq"])] for c in sweep]
        text += "\n\n## Peak memory vs sequence length\n\n" + table(report["sweep"], name)
    tag = "gpu" if device == "cuda" else "cpu"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"llm_loss_{tag}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"llm_loss_{tag}.md"), "w") as f:
        f.write(
            f"# Chunked output-layer loss vs full logits ({tag})\n\n{provenance_line(report['provenance'])}\n\n"
            f"Time ratio = median chunked step / median full step over "
            f"{args.repeats} interleaved repeats; per-repeat ratios: the range of chunked / full within each "
            f"repeat (the noise).\n\n{text}\n"
        )
    if not args.no_sweep:
        plot(report["sweep"], os.path.join(args.out, f"llm_loss_memory_{tag}.png"), name)
    print("\n" + text)


if __name__ == "__main__":
    main()
