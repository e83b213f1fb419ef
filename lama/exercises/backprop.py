"""Check for a backward pass written by hand (chapter 14): RMSNorm's gradients, in NumPy.

The learner's ``fn(dy, x, w, eps)`` receives NumPy float64 arrays, as in
``lama.numpy_transformer``, and returns ``(dx, dw)``; the reference is PyTorch's autograd through
``torch.nn.functional.rms_norm`` in float64, so the tolerance is tight (1e-9). The hints name the
usual slips: forgetting that r depends on x (no correction term), summing instead of averaging
in the correction, LayerNorm's extra mean term, ``dw`` not summed over the positions, and ``dw``
missing the normalised input.
Leaves out: the forward pass (chapter 6's ``check_rmsnorm`` covers it) and second derivatives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lama.exercises._harness import Wrong, check, close, compare, shape_text

__all__ = ["check_rmsnorm_backward"]


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _autograd(dy, x, w, eps):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    (F.rms_norm(xt, (x.shape[-1],), wt, eps=eps) * torch.tensor(dy)).sum().backward()
    return xt.grad, wt.grad


def _as_tensor(a, name, learner, case):
    if isinstance(a, torch.Tensor):
        return a.detach().double()
    try:
        return torch.from_numpy(np.asarray(a, dtype=np.float64))
    except (TypeError, ValueError):
        raise Wrong(f"{name} should be an array, got {type(a).__name__}.\n  case: {case}") from None


@check("RMSNorm backward")
def check_rmsnorm_backward(learner, rng) -> int:
    """``fn(dy, x, w, eps) -> (dx, dw)`` for ``y = x / r * w``, ``r = √(mean(x²) + eps)`` over the last
    dimension C: ``dx`` has the shape of x, ``dw`` the shape of w, ``(C,)``."""
    n = 0
    for trial in range(16):
        lead = [_int(rng, 1, 4) for _ in range(_int(rng, 1, 2))]
        C = _int(rng, 2, 10)
        x = (torch.randn(*lead, C, generator=rng, dtype=torch.float64) * [0.3, 1.0, 3.0][trial % 3]).numpy()
        w = (torch.randn(C, generator=rng, dtype=torch.float64) + 1).numpy()
        dy = torch.randn(*lead, C, generator=rng, dtype=torch.float64).numpy()
        eps = [1e-6, 0.1, 0.5][trial % 3]
        case = f"dy and x {shape_text(x.shape)}, w {shape_text(w.shape, 'C')}, eps={eps}"
        got = learner(dy.copy(), x.copy(), w.copy(), eps, case=case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise Wrong(f"{learner.name} should return a pair (dx, dw), got {type(got).__name__}.\n  case: {case}")
        dx, dw = (_as_tensor(a, nm, learner, case) for a, nm in zip(got, ("dx", "dw")))
        want_dx, want_dw = _autograd(dy, x, w, eps)
        xt, wt, g = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy) * torch.from_numpy(w)
        r = torch.sqrt((xt * xt).mean(-1, keepdim=True) + eps)
        xhat = xt / r
        tol = dict(atol=1e-9, rtol=1e-7)
        compare(dx, want_dx, name=learner.name, case=case, what="dx", mistakes=[
            ("dx misses the path through r: r depends on every x_k, so dx = (g − x̂ · mean(g ⊙ x̂)) / r with "
             "g = dy ⊙ w, not just g / r.", lambda d: close(d, g / r, **tol)),
            ("the correction term averages over C: mean(g ⊙ x̂, axis=-1), not the sum (r² is a mean of x²).",
             lambda d: close(d, (g - xhat * (g * xhat).sum(-1, keepdim=True)) / r, **tol)),
            ("that is LayerNorm's gradient: RMSNorm subtracts no mean in the forward pass, so there is no "
             "− mean(g) term in the backward.",
             lambda d: close(d, (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / r, **tol)),
            ("dy must be multiplied by w first (g = dy ⊙ w): y = x̂ ⊙ w, so the gradient reaching x̂ is dy ⊙ w.",
             lambda d: close(d, (torch.from_numpy(dy) - xhat * (torch.from_numpy(dy) * xhat).mean(-1, keepdim=True)) / r,
                             **tol)),
        ], **tol)
        flat = lambda a: a.reshape(-1, C)  # noqa: E731  (positions, C)
        compare(dw, want_dw, name=learner.name, names="C", case=case, what="dw", mistakes=[
            ("dw must be summed over every position (all leading dimensions): w is shared by all of them, so "
             "dw = Σ dy ⊙ x̂ has shape (C,).", lambda d: d.shape == x.shape or d.numel() != C),
            ("dw = Σ dy ⊙ x̂ uses the normalised input x̂ = x / r, not x.",
             lambda d: close(d, flat(torch.from_numpy(dy) * xt).sum(0), **tol)),
            ("dw = Σ dy ⊙ x̂: the upstream gradient times what w multiplied in the forward pass.",
             lambda d: close(d, flat(torch.from_numpy(dy)).sum(0), **tol)),
        ], **tol)
        n += 1
    return n
