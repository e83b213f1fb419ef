"""Training benchmark: lama's Shakespeare recipe vs the classic small reference, side by side.

Two measurements, both made in this one run on this machine:

1. Quality at equal wall time. The reference recipe (a plain GPT written below: 4 layers,
   4 heads, width 128, block 64, batch 12, 2000 steps of AdamW at lr 1e-3 with warm-up and
   cosine decay, dropout 0 — the classic CPU setting of nanoGPT's character-level
   Shakespeare) is trained and timed; then lama's ``shakespeare-char`` recipe (lama.cli.RECIPES)
   is given the same wall time: its step time is measured on a few steps and ``max_iters`` is
   set so the run fits in the reference's time (the cosine schedule then ends on time).
   Both validation losses are means over the same number of random validation windows of
   each model's own block size, drawn with a fixed seed. Target: lama ≤ 1.70.
2. Throughput: training tokens per second (forward + backward + AdamW step) of lama's
   ``GPT`` and of the plain reference model with the same configuration and batch,
   measured in alternating rounds (each going first in every other round) so both see the
   same machine load; the medians are compared. Target ratio ≥ 1.0.

Usage: ``python benchmarks/bench_train.py [--quick] [--threads N] [key=value ...]`` where the
overrides apply to lama's recipe (as on ``lama train``). ``--quick`` runs 200 reference steps
(a smoke test, not a measurement). Record ``uptime`` with the numbers: the machine may be shared.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from lama.cli import RECIPES, build_configs, load_char_data
from lama.gpt import GPT, GPTConfig
from lama.train import TrainConfig, Trainer, estimate_loss, lm_batches


# --- a plain reference GPT (independent of lama's modules) ----------------------------------

class RefBlock(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    def __init__(self, V, block, L, H, C):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(block, C)
        self.h = nn.ModuleList([RefBlock(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.wte.weight
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if n.endswith("proj.weight") else 0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.h:
            x = b(x)
        logits = self.head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


REF = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
           warmup_iters=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0)


def train_reference(splits, V, iters, seed=0):
    """The reference recipe with a plain loop; returns (model, seconds)."""
    torch.manual_seed(seed)
    r = REF
    model = RefGPT(V, r["block_size"], r["n_layer"], r["n_head"], r["n_embd"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=r["lr"], betas=(0.9, r["beta2"]))
    get = lm_batches(splits, r["block_size"])
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for it in range(iters):
        if it < r["warmup_iters"]:
            lr = r["lr"] * (it + 1) / (r["warmup_iters"] + 1)
        else:
            prog = (it - r["warmup_iters"]) / max(1, iters - r["warmup_iters"])
            lr = r["min_lr"] + 0.5 * (1 + math.cos(math.pi * prog)) * (r["lr"] - r["min_lr"])
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get("train", r["batch_size"], gen)
        _, loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, time.perf_counter() - t0


def throughput(splits, V, rounds=8, steps=15):
    """Training tokens/s of lama's GPT and the reference at the reference config, alternating rounds."""
    r = REF
    torch.manual_seed(0)
    models = {
        "lama": GPT(GPTConfig(block_size=r["block_size"], vocab_size=V, n_layer=r["n_layer"], n_head=r["n_head"],
                              n_embd=r["n_embd"])),
        "reference": RefGPT(V, r["block_size"], r["n_layer"], r["n_head"], r["n_embd"]),
    }
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    get = lm_batches(splits, r["block_size"])
    gen = torch.Generator().manual_seed(0)
    rates = {k: [] for k in models}
    for rnd in range(rounds + 1):
        order = list(models) if rnd % 2 else list(models)[::-1]  # alternate who goes first
        for k in order:
            m = models[k]
            t0 = time.perf_counter()
            for _ in range(steps):
                x, y = get("train", r["batch_size"], gen)
                _, loss = m(x, y)
                loss.backward()
                opts[k].step()
                opts[k].zero_grad(set_to_none=True)
            if rnd:  # round 0 warms up
                rates[k].append(steps * r["batch_size"] * r["block_size"] / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 reference steps: a smoke test")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--eval-batches", type=int, default=50)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of lama's recipe")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data, mcfg, tcfg = build_configs("shakespeare-char", ["device=cpu", "progress=false", *args.overrides])
    tok, splits = load_char_data(data)
    V = tok.vocab_size
    mcfg.vocab_size = V

    def val_loss(model, block):
        return estimate_loss(model, lm_batches(splits, block), "val", args.eval_batches, 32, seed=1234)

    rates = throughput(splits, V, rounds=2 if args.quick else 8)
    print(f"throughput at the reference config (B=12, T=64): lama {rates['lama']:,.0f} tok/s, "
          f"reference {rates['reference']:,.0f} tok/s, ratio {rates['lama'] / rates['reference']:.2f}")

    iters = 200 if args.quick else REF["max_iters"]
    ref_model, ref_s = train_reference(splits, V, iters)
    ref_val = val_loss(ref_model, REF["block_size"])
    print(f"reference recipe: {iters} steps in {ref_s:.1f} s, val loss {ref_val:.3f}")

    # Calibrate: time a few steps of lama's recipe, then fit max_iters into the reference's time.
    probe = Trainer(GPT(mcfg), TrainConfig(**{**tcfg.__dict__, "max_iters": 10, "eval_interval": 0, "eval_iters": 1}),
                    lm_batches(splits, mcfg.block_size))
    t0 = time.perf_counter()
    for _ in range(10):
        probe.train_step()
    step_s = (time.perf_counter() - t0) / 10
    budget_iters = max(1, int(ref_s / step_s))
    tcfg.max_iters = budget_iters
    tcfg.eval_interval = 0
    torch.manual_seed(tcfg.seed)
    model = GPT(mcfg)
    t0 = time.perf_counter()
    Trainer(model, tcfg, lm_batches(splits, mcfg.block_size)).train()
    lama_s = time.perf_counter() - t0
    lama_val = val_loss(model, mcfg.block_size)
    print(f"lama recipe (block {mcfg.block_size}, batch {tcfg.batch_size}, lr {tcfg.lr:g}): {budget_iters} steps "
          f"({RECIPES['shakespeare-char']['train']['max_iters']} by default) in {lama_s:.1f} s, val loss {lama_val:.3f} "
          f"(target <= 1.70: {'met' if lama_val <= 1.70 else 'NOT met'})")
    print(f"quality: lama {lama_val:.3f} vs reference {ref_val:.3f} at {lama_s / ref_s:.2f}x the reference's time; "
          f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
