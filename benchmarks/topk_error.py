"""Error of the top-k cached soft-target loss against the full-vocabulary loss, for k in {8, 32, 128}.

    python benchmarks/topk_error.py          # vocabulary 30522 (BERT), 512 positions
    python benchmarks/topk_error.py --tiny

The teacher distribution is synthetic but shaped like a language model's: Zipf-like logits
(z = -a * log(rank), a random permutation of the vocabulary per position; a = 1.1 is flat, a = 2 is
closer to a trained LM's peaked next-token distribution), flattened by the temperature. The student
is the teacher plus Gaussian noise (sigma 1). The
script prints the full loss, the top-k loss (KL over k kept tokens + one "rest" bin, see
hf_distill.losses.topk_soft_target_loss) and the relative error, and the cosine between the
two losses' gradients w.r.t. the student logits.
"""

from __future__ import annotations

import argparse

import torch
from common import machine

from hf_distill.losses import soft_target_loss, topk_soft_target_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    vocab, positions = (500, 16) if args.tiny else (30522, 512)
    g = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    print(f"device: {machine()}   vocabulary {vocab}, {positions} positions, Zipf-like teachers, student noise 1")
    print(
        f"{'a':>4} {'T':>3} {'k':>4} {'full loss':>10} {'top-k loss':>11} {'rel. error':>10} {'grad cos':>9}"
        f" {'teacher mass kept':>18}"
    )
    for a in (1.1, 2.0):
        teacher = torch.stack([(-a * ranks.log())[torch.randperm(vocab, generator=g)] for _ in range(positions)])
        student = (teacher + torch.randn(teacher.shape, generator=g)).requires_grad_(True)
        for T in (1.0, 2.0):
            full = soft_target_loss(student, teacher, T)
            (g_full,) = torch.autograd.grad(full, student)
            for k in (8, 32, 128):
                values, indices = teacher.topk(k, dim=-1)
                kept = torch.softmax(teacher / T, -1).gather(-1, indices).sum(-1)
                top = topk_soft_target_loss(student, indices, values, 1 - kept, T)
                (g_top,) = torch.autograd.grad(top, student)
                cos = torch.nn.functional.cosine_similarity(g_full.flatten(), g_top.flatten(), dim=0).item()
                rel = (top.item() - full.item()) / full.item()
                print(
                    f"{a:>4.1f} {T:>3.0f} {k:>4} {full.item():>10.4f} {top.item():>11.4f} {rel:>+10.1%} {cos:>9.3f}"
                    f" {kept.mean().item():>18.1%}"
                )


if __name__ == "__main__":
    main()
