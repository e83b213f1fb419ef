"""Checks for the block and the models built from it: LayerNorm and RMSNorm (chapter 6) and
the masked mean pooling of sentence embeddings (chapter 9).

References: ``lama.layers.LayerNorm`` and ``RMSNorm`` (their weights set to the case's) and
``lama.bert.mean_pool``. The hints name the usual slips: the unbiased variance, eps outside
the square root, normalising over the wrong axis, a forgotten weight or bias, RMSNorm
subtracting the mean, padding averaged in. Leaves out: the block's wiring (chapter 6 tests
``Block`` against a hand-written forward in tests/test_layers.py).
"""

from __future__ import annotations

import torch

from lama.bert import mean_pool
from lama.exercises._harness import check, close, compare, shape_text
from lama.layers import LayerNorm, RMSNorm

__all__ = ["check_layernorm", "check_rmsnorm", "check_mean_pool"]


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _cases(rng, n):
    """(x, weight, bias, eps): a few widths C and leading shapes, values of various scales,
    and eps large enough in some cases that putting it in the wrong place shows."""
    out = []
    for trial in range(n):
        lead = [_int(rng, 1, 3) for _ in range(_int(rng, 1, 2))]
        C = _int(rng, 3, 12)
        x = torch.randn(*lead, C, generator=rng) * [0.05, 1.0, 4.0][trial % 3] + torch.randn(1, generator=rng)
        w, b = torch.randn(C, generator=rng) + 1, torch.randn(C, generator=rng) * 0.5
        eps = [1e-5, 1e-2, 0.5][trial % 3]
        out.append((x, w, b, eps))
    return out


def _norm_args(learner, x, *params, eps):
    if learner.accepts(len(params) + 2):
        return learner(x, *params, eps, case=f"x {shape_text(x.shape)}, eps={eps}")
    return learner(x, *params, case=f"x {shape_text(x.shape)}")


@check("LayerNorm")
def check_layernorm(learner, rng) -> int:
    """``fn(x, weight, bias, eps=1e-5)``: ``(x − mean) / √(var + eps) · weight + bias`` over the last
    dimension C, with the biased variance (divide by C)."""
    n = 0
    for x, w, b, eps in _cases(rng, 24):
        if not learner.accepts(4):
            eps = 1e-5
        ln = LayerNorm(x.shape[-1], eps=eps)
        with torch.no_grad():
            ln.weight.copy_(w)
            ln.bias.copy_(b)
            want = ln(x)
        mean = x.mean(-1, keepdim=True)
        xc = x - mean
        var = x.var(-1, keepdim=True, unbiased=False)
        case = f"x {shape_text(x.shape)}, eps={eps}"
        compare(_norm_args(learner, x, w, b, eps=eps), want, name=learner.name, case=case, mistakes=[
            ("the variance: LayerNorm uses the biased variance (divide by C, unbiased=False); torch.var divides "
             "by C − 1 unless told otherwise.",
             lambda g: close(g, xc / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b)),
            ("eps belongs inside the square root: (x − mean) / √(var + eps), not (x − mean) / (√var + eps).",
             lambda g: close(g, xc / (var.sqrt() + eps) * w + b)),
            ("normalised over the wrong axis: each position's vector of C numbers gets its own mean and "
             "variance, so reduce over the last dimension (dim=-1, keepdim=True).",
             lambda g: x.dim() > 1 and close(g, (x - x.mean(0, keepdim=True)) /
                                               torch.sqrt(x.var(0, keepdim=True, unbiased=False) + eps) * w + b)),
            ("the weight and bias are missing: multiply by weight, then add bias.",
             lambda g: close(g, xc * torch.rsqrt(var + eps))),
            ("the bias is missing: add it after multiplying by the weight.",
             lambda g: close(g, xc * torch.rsqrt(var + eps) * w)),
            ("the mean is not subtracted (that is RMSNorm with an extra step): centre x first.",
             lambda g: close(g, x * torch.rsqrt(var + eps) * w + b)),
        ])
        n += 1
    return n


@check("RMSNorm")
def check_rmsnorm(learner, rng) -> int:
    """``fn(x, weight, eps=1e-6)``: ``x / √(mean(x²) + eps) · weight`` over the last dimension C."""
    n = 0
    for x, w, _, eps in _cases(rng, 24):
        if not learner.accepts(3):
            eps = 1e-6
        norm = RMSNorm(x.shape[-1], eps=eps)
        with torch.no_grad():
            norm.weight.copy_(w)
            want = norm(x)
        ms = (x * x).mean(-1, keepdim=True)
        case = f"x {shape_text(x.shape)}, eps={eps}"
        compare(_norm_args(learner, x, w, eps=eps), want, name=learner.name, case=case, mistakes=[
            ("RMSNorm does not subtract the mean: it divides x by its root mean square √(mean(x²) + eps).",
             lambda g: close(g, (x - x.mean(-1, keepdim=True)) *
                             torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w)),
            ("eps belongs inside the square root: x / √(mean(x²) + eps).",
             lambda g: close(g, x / (ms.sqrt() + eps) * w)),
            ("the root mean square is the square root of the mean of x², over the last dimension: "
             "x.pow(2).mean(-1, keepdim=True).",
             lambda g: close(g, x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps) * w)),
            ("the weight is missing: multiply the normalised x by weight.",
             lambda g: close(g, x * torch.rsqrt(ms + eps))),
        ])
        n += 1
    return n


@check("masked mean pooling")
def check_mean_pool(learner, rng) -> int:
    """``fn(x, attention_mask)``: ``(B, T, C), (B, T) -> (B, C)``, the mean of each sequence's real tokens
    (mask 1) ignoring its padding (mask 0)."""
    n = 0
    for _ in range(16):
        B, T, C = _int(rng, 1, 4), _int(rng, 2, 8), _int(rng, 2, 6)
        x = torch.randn(B, T, C, generator=rng)
        lengths = torch.randint(1, T + 1, (B,), generator=rng)
        lengths[0] = max(1, T - 2)  # at least one sequence with padding
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T): 1 = real token
        case = f"x {shape_text(x.shape, 'B T C')}, attention_mask {shape_text(mask.shape, 'B T')} with lengths {lengths.tolist()}"
        compare(learner(x, mask, case=case), mean_pool(x, mask), name=learner.name, names="B C", case=case, mistakes=[
            ("padding was averaged in: multiply x by the mask before summing over T.",
             lambda g: close(g, x.mean(1))),
            ("divide by the number of real tokens in each sequence (mask.sum over T), not by T.",
             lambda g: close(g, (x * mask[..., None]).sum(1) / T)),
            ("averaged over the wrong axis: the mean runs over the positions T (dim 1), giving one C-vector per "
             "sequence.", lambda g: g.shape == (B, T)),
        ])
        n += 1
    return n
