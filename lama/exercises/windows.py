"""Check for cutting a token stream into training windows (chapter 8).

``fn(ids, T, stride) -> (x, y)``: every window of ``T + 1`` tokens that starts at a multiple of
``stride`` and fits in ``ids``, split into inputs ``x`` (the first T tokens) and targets ``y`` (the
same shifted by one), both ``(N, T)``: exactly the windows ``lama.train.lm_batches(..., stride)``
draws from (tests/test_exercises.py ties the two together). Hints: targets not shifted, x and y
swapped, the last window missing, the stride ignored, the whole window returned as x.
Leaves out: shuffling and batching (``lm_batches`` does both).
"""

from __future__ import annotations

import torch

from lama.exercises._harness import Wrong, check, close, compare

__all__ = ["check_lm_windows", "lm_windows"]


def lm_windows(ids: torch.Tensor, T: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows ``ids[s : s + T + 1]`` with ``s = 0, stride, 2·stride, ...`` that fit: ``(N, T)`` inputs
    and ``(N, T)`` targets."""
    chunk = ids.unfold(0, T + 1, stride)  # (N, T + 1)
    return chunk[:, :-1], chunk[:, 1:]


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


@check("training windows")
def check_lm_windows(learner, rng) -> int:
    """``fn(ids, T, stride) -> (x, y)``: for ids ``(n,)``, the windows of T + 1 tokens starting at every
    multiple of ``stride`` that fit (``s + T + 1 <= n``), as inputs ``x`` ``(N, T)`` and targets ``y``
    ``(N, T)``, ``y`` being ``x`` shifted by one token."""
    n_cases = 0
    for trial in range(16):
        T = _int(rng, 2, 9)
        stride = [1, T, T][trial % 3] if trial < 6 else _int(rng, 2, 2 * T)
        n_windows = _int(rng, 2, 12)
        n = (n_windows - 1) * stride + T + 1 + (0 if trial % 2 else _int(rng, 1, stride) - 1)  # some end exactly
        ids = torch.randint(0, 1000, (n,), generator=rng)  # distinct-looking ids: a shift shows
        case = f"ids of length n={n}, T={T}, stride={stride}"
        got = learner(ids, T, stride, case=case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise Wrong(f"{learner.name} should return a pair (x, y), got {type(got).__name__}.\n  case: {case}")
        gx, gy = got
        want_x, want_y = lm_windows(ids, T, stride)
        N = want_x.shape[0]
        mistakes_x = [
            ("x should hold only the first T tokens of each window (y the last T): split the T + 1 tokens, "
             "x = window[:, :-1].", lambda g: close(g, torch.cat([want_x, want_y[:, -1:]], 1))),
            ("the last window is missing: a window may start at every s with s + T + 1 <= n, so the starts are "
             "range(0, n - T, stride).", lambda g: g.shape[0] == N - 1 and close(g, want_x[:-1])),
            ("windows start every `stride` tokens (0, stride, 2·stride, ...), not every token.",
             lambda g: stride != 1 and close(g, lm_windows(ids, T, 1)[0])),
            ("windows start every `stride` tokens, not every T tokens.",
             lambda g: stride != T and close(g, lm_windows(ids, T, T)[0])),
            ("x and y are swapped: x is a window's first T tokens, y the next token at each position.",
             lambda g: close(g, want_y)),
        ]
        compare(gx, want_x, name=learner.name, names="N T", case=case, what="x", mistakes=mistakes_x)
        compare(gy, want_y, name=learner.name, names="N T", case=case, what="y", mistakes=[
            ("the targets are not shifted: y[:, t] is the token *after* x[:, t], so y = window[:, 1:] "
             "(otherwise the model learns to copy its input).", lambda g: close(g, want_x)),
            ("y should be x shifted by one token: window[:, 1:].", lambda g: g.shape == want_y.shape),
        ])
        n_cases += 1
    return n_cases
