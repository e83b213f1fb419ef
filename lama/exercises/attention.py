"""Checks for the attention chapters: softmax and scaled dot-product attention (chapter 1),
the causal mask and one self-attention head (chapter 4), head split/merge and the KV-cache
update (chapter 5).

Each check runs the learner's function on random cases (fixed seed) against lama's own
function and names the usual mistakes: a missing or wrong scale, softmax over the wrong
axis, a mask that is inverted or off by one, heads split in the wrong order.
Leaves out: multi-head modules with weights (chapter 5's ``MultiHeadAttention`` is tested
against PyTorch in tests/test_attention_modules.py).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from lama.attention import attention_matmul, causal_mask, merge_heads, scaled_dot_product_attention, softmax, split_heads
from lama.exercises._harness import Wrong, check, close, compare, shape_text

__all__ = ["check_softmax", "check_attention", "check_causal_mask", "check_self_attention",
           "check_split_heads", "check_merge_heads", "check_kv_cache_update"]


def _int(rng: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _randn(rng: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=rng) * scale


_WRONG_AXIS = ("softmax over the wrong axis: each row of scores (the last dimension) must become "
               "weights that sum to 1, so normalise along dim=-1.")


@check("softmax")
def check_softmax(learner, rng) -> int:
    """``fn(x)`` (or ``fn(x, temperature)``): softmax along the last dimension, stable for
    large scores, and zeros (not NaN) for a row that is entirely -inf."""
    n = 0
    for _ in range(30):
        shape = [_int(rng, 1, 4) for _ in range(_int(rng, 0, 2))] + [_int(rng, 2, 9)]
        x = _randn(rng, *shape, scale=3.0)
        case = f"x of shape {shape_text(x.shape)}"
        want = softmax(x)
        compare(learner(x, case=case), want, name=learner.name, case=case, mistakes=[
            (_WRONG_AXIS, lambda g: x.dim() > 1 and close(g, softmax(x, dim=0))),
            (_WRONG_AXIS, lambda g: x.dim() > 1 and close(g, softmax(x, dim=-2))),
            ("the rows do not sum to 1: divide exp(x) by its sum along the last dimension.",
             lambda g: not close(g.sum(-1), torch.ones(x.shape[:-1]))),
        ])
        n += 1
    big = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    case = "x = [[1000, 1001, 999], [-1000, -1002, -1001]]"
    compare(learner(big, case=case), softmax(big), name=learner.name, case=case, mistakes=[
        ("overflow: exp(1000) is inf in float32 (and exp(-1000) is 0), which gives NaN. Subtract each row's "
         "maximum before exp: it cancels in the ratio and keeps every exponent <= 0.", lambda g: not g.isfinite().all()),
    ])
    inf = float("inf")
    masked = torch.tensor([[0.5, -inf, 1.5], [-inf, -inf, -inf]])
    case = "x = [[0.5, -inf, 1.5], [-inf, -inf, -inf]]"
    compare(learner(masked, case=case), softmax(masked), name=learner.name, case=case, mistakes=[
        ("a row that is entirely -inf (a query that may see no key) gives NaN: its maximum is -inf and "
         "-inf - (-inf) is NaN. Return zeros for such a row (e.g. replace a -inf maximum by 0 and do not "
         "divide by a zero sum).", lambda g: g[1].isnan().any()),
        ("an entry of -inf must get probability exactly 0.", lambda g: g[0, 1] != 0),
    ])
    n += 2
    if learner.accepts(2):
        for tau in (0.25, 1.0, 3.0):
            x = _randn(rng, 3, 7, scale=2.0)
            case = f"x of shape {shape_text(x.shape)}, temperature={tau}"
            compare(learner(x, tau, case=case), softmax(x, temperature=tau), name=learner.name, case=case, mistakes=[
                ("the temperature: divide the scores by it before exp (softmax(x / tau)); a low "
                 "temperature sharpens, a high one flattens.", lambda g: close(g, softmax(x * tau))),
                ("the temperature was ignored: use softmax(x / tau).", lambda g: close(g, softmax(x))),
            ])
            n += 1
    return n


def _attention_mistakes(q, k, v, mask, D: int):
    """Planted mistakes of scaled dot-product attention, each with its hint."""
    scores = q @ k.transpose(-2, -1)  # (..., i, j)
    if mask is not None:
        scores_inv = scores.masked_fill(mask, float("-inf"))
        scores_zero = scores.masked_fill(~mask, 0.0)

    def sdpa(s):
        return softmax(s) @ v

    out = [
        (f"missing scale: divide the scores q kᵀ by √D (D = {D}, the size of each query and key) before "
         "the softmax, so that their variance stays near 1 whatever D is.",
         lambda g: close(g, scaled_dot_product_attention(q, k, v, mask=mask, scale=1.0))),
        (f"the scale is 1/D; it should be 1/√D (D = {D}). Dividing by D shrinks the scores towards 0 "
         "and the weights towards uniform.",
         lambda g: close(g, scaled_dot_product_attention(q, k, v, mask=mask, scale=1.0 / D))),
        ("softmax over the wrong axis: each query i must spread weights summing to 1 over the keys j, "
         "i.e. along the last axis of the (..., i, j) scores.",
         lambda g: close(g, softmax(scores / math.sqrt(D) if mask is None else
                                    (scores / math.sqrt(D)).masked_fill(~mask, float("-inf")), dim=-2) @ v)),
    ]
    if mask is not None:
        out += [
            ("the mask is inverted: True means 'may attend', so fill the scores where the mask is False "
             "(scores.masked_fill(~mask, -inf)).", lambda g: close(g, sdpa(scores_inv / math.sqrt(D)))),
            ("the mask has no effect: set the scores where the mask is False to -inf before the softmax.",
             lambda g: close(g, scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(D)))),
            ("masked scores were set to 0, which still gets weight e⁰ = 1 in the softmax; use -inf so that "
             "masked keys get weight exactly 0.", lambda g: close(g, sdpa(scores_zero / math.sqrt(D)))),
            ("the mask was applied after the softmax: the remaining weights no longer sum to 1. Mask the "
             "scores with -inf before the softmax instead.",
             lambda g: close(g, (softmax(scores / math.sqrt(D)) * mask) @ v)),
            ("a query whose keys are all masked gives NaN; its output must be zeros (see the softmax "
             "exercise of chapter 1).", lambda g: g.isnan().any()),
        ]
    return out


@check("scaled dot-product attention")
def check_attention(learner, rng) -> int:
    """``fn(q, k, v, mask=None)``: softmax(q kᵀ / √D, masked) v for q ``(..., i, D)``,
    k ``(..., j, D)``, v ``(..., j, D_v)`` and a boolean mask (True = may attend)."""
    n = 0
    for trial in range(24):
        lead = [_int(rng, 1, 3) for _ in range(_int(rng, 0, 2))]
        T_q, T_k, D, D_v = _int(rng, 1, 6), _int(rng, 2, 7), _int(rng, 2, 16), _int(rng, 1, 5)
        if trial < 4:
            D = 64  # a large D makes a missing scale obvious
        q, k, v = _randn(rng, *lead, T_q, D), _randn(rng, *lead, T_k, D), _randn(rng, *lead, T_k, D_v)
        mask = None
        if trial % 2:
            mask = torch.rand(T_q, T_k, generator=rng) < 0.6
            mask[:, 0] = True  # every query sees at least one key; the all-masked row is tested below
        case = (f"q {shape_text(q.shape)}, k {shape_text(k.shape)}, v {shape_text(v.shape)}"
                + (f", mask {shape_text(mask.shape, 'i j')}" if mask is not None else ", no mask"))
        got = learner(q, k, v, case=case) if mask is None else _call_with_mask(learner, q, k, v, mask, case)
        want = scaled_dot_product_attention(q, k, v, mask=mask)
        compare(got, want, name=learner.name, case=case, mistakes=_attention_mistakes(q, k, v, mask, D),
                names=" ".join(["B", "H"][:len(lead)] + ["i", "D_v"]))
        n += 1
    q, k, v = _randn(rng, 2, 3, 4), _randn(rng, 2, 5, 4), _randn(rng, 2, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    case = "a mask whose row 1 is all False (query 1 may see no key)"
    compare(_call_with_mask(learner, q, k, v, mask, case), scaled_dot_product_attention(q, k, v, mask=mask),
            name=learner.name, case=case, mistakes=_attention_mistakes(q, k, v, mask, 4))
    return n + 1


def _call_with_mask(learner, q, k, v, mask, case):
    if not learner.accepts(4):
        raise Wrong(f"{learner.name} takes no mask: give it a fourth argument, mask=None (a boolean tensor, "
                    f"True where query i may attend to key j).\n  case: {case}")
    return learner(q, k, v, mask, case=case)


@check("causal mask")
def check_causal_mask(learner, rng) -> int:
    """``fn(T_q, T_k)``: boolean ``(i, j)``, True where query i may see key j; with a cache
    (``T_k > T_q``) the queries are the last T_q positions."""
    n = 0
    sizes = [(4, 4), (7, 7), (2, 5), (3, 8), (1, 6), (1, 1)] + [(t, t + _int(rng, 0, 4)) for t in
                                                               [_int(rng, 1, 9) for _ in range(10)]]
    for T_q, T_k in sizes:
        case = f"T_q={T_q}, T_k={T_k}"
        want = causal_mask(T_q, T_k)
        got = learner(T_q, T_k, case=case)
        shift = T_k - T_q
        ones = torch.ones(T_q, T_k, dtype=torch.bool)
        compare(got, want, name=learner.name, names="i j", case=case, mistakes=[
            ("the mask is off by one: query i must see itself, so the diagonal (j = i) is True.",
             lambda g: torch.equal(g, ones.tril(shift - 1))),
            ("off by one the other way: query i must not see key i + 1 (the next token).",
             lambda g: torch.equal(g, ones.tril(shift + 1))),
            ("the mask is inverted: True must mean 'may attend' (the past and the present), not 'hidden'.",
             lambda g: torch.equal(g, ~want)),
            ("this is the upper triangle: rows are queries i, columns keys j, and query i may see the keys "
             "j <= i, the lower triangle (torch.tril).", lambda g: torch.equal(g, ones.triu(shift))),
            ("with a cache (T_k > T_q) the T_q queries are the *last* positions: align the triangle to the "
             "bottom right, so that query i sees keys 0 .. i + T_k - T_q (tril with diagonal=T_k - T_q).",
             lambda g: torch.equal(g, ones.tril(0))),
            ("return a boolean tensor: True where attention is allowed.", lambda g: g.dtype != torch.bool),
        ])
        n += 1
    return n


@check("a self-attention head")
def check_self_attention(learner, rng) -> int:
    """``fn(x, W_q, W_k, W_v, causal)``: one head for x ``(B, T, C)`` and weights ``(C, D)``,
    returning ``(B, T, D)`` (lama's ``attention_matmul``)."""
    n = 0
    for trial in range(16):
        B, T, C, D = _int(rng, 1, 3), _int(rng, 2, 7), _int(rng, 4, 24), _int(rng, 2, 16)
        if trial < 4:
            C, D = 48, 32
        causal = bool(trial % 2)
        x = _randn(rng, B, T, C)
        W_q, W_k, W_v = (_randn(rng, C, D, scale=C ** -0.5) for _ in range(3))
        case = f"x {shape_text(x.shape, 'B T C')}, weights (C, D) = ({C}, {D}), causal={causal}"
        want = attention_matmul(x, W_q, W_k, W_v, causal=causal)
        q, k, v = x @ W_q, x @ W_k, x @ W_v
        m = causal_mask(T) if causal else None
        mistakes = []
        if causal:
            mistakes += [
                ("the causal mask is off by one: position t must see itself (the diagonal is allowed).",
                 lambda g: close(g, scaled_dot_product_attention(q, k, v, mask=torch.ones(T, T, dtype=torch.bool).tril(-1)))),
                ("the causal mask is ignored: with causal=True, position t may only see positions <= t.",
                 lambda g: close(g, scaled_dot_product_attention(q, k, v))),
                ("the causal mask is transposed: query i (row) may see keys j <= i (the lower triangle).",
                 lambda g: close(g, scaled_dot_product_attention(q, k, v, mask=m.T))),
            ]
        mistakes += [
            (f"the scale uses √C (C = {C}, the model width); use √D (D = {D}, the head size: the length of "
             "the vectors whose dot products are the scores).",
             lambda g: close(g, scaled_dot_product_attention(q, k, v, mask=m, scale=C ** -0.5))),
        ] + _attention_mistakes(q, k, v, m, D)
        compare(learner(x, W_q, W_k, W_v, causal, case=case), want, name=learner.name, names="B T D", case=case,
                mistakes=mistakes)
        n += 1
    return n


@check("split the heads")
def check_split_heads(learner, rng) -> int:
    """``fn(x, n_head)``: ``(B, T, C) -> (B, H, T, D)`` with C = H·D, head h owning channels h·D .. (h+1)·D - 1."""
    n = 0
    for _ in range(12):
        B, T, H, D = _int(rng, 1, 3), _int(rng, 2, 6), _int(rng, 2, 4), _int(rng, 2, 5)
        x = _randn(rng, B, T, H * D)
        case = f"x {shape_text(x.shape, 'B T C')}, n_head={H}"
        compare(learner(x, H, case=case), split_heads(x, H), name=learner.name, names="B H T D", case=case, mistakes=[
            ("the heads are not moved before T: after splitting C into (H, D), transpose (B, T, H, D) to "
             "(B, H, T, D), e.g. rearrange(x, 'b t (h d) -> b h t d', h=H).",
             lambda g: g.shape == (B, T, H, D)),
            ("x was reshaped straight to (B, H, T, D): that cuts the sequence into pieces instead of the "
             "channels. Split C into (H, D) first, giving (B, T, H, D), then swap T and H.",
             lambda g: close(g, x.reshape(B, H, T, D))),
            ("the channels were split as (D, H): head h must own the contiguous slice of channels "
             "h·D .. (h+1)·D - 1, i.e. 'b t (h d)', not 'b t (d h)'.",
             lambda g: close(g, rearrange(x, "b t (d h) -> b h t d", h=H))),
        ])
        n += 1
    return n


@check("merge the heads")
def check_merge_heads(learner, rng) -> int:
    """``fn(x)``: ``(B, H, T, D) -> (B, T, H·D)``, the heads' outputs side by side."""
    n = 0
    for _ in range(12):
        B, H, T, D = _int(rng, 1, 3), _int(rng, 2, 4), _int(rng, 2, 6), _int(rng, 2, 5)
        x = _randn(rng, B, H, T, D)
        case = f"x {shape_text(x.shape, 'B H T D')}"
        compare(learner(x, case=case), merge_heads(x), name=learner.name, names="B T C", case=case, mistakes=[
            ("x was reshaped straight to (B, T, H·D) without moving T back before H: that mixes positions. "
             "Transpose to (B, T, H, D) first (or rearrange(x, 'b h t d -> b t (h d)')).",
             lambda g: close(g, x.reshape(B, T, H * D))),
            ("the heads were interleaved channel by channel ('(d h)'): head h's output must be the "
             "contiguous slice h·D .. (h+1)·D - 1, i.e. 'b t (h d)'.",
             lambda g: close(g, rearrange(x, "b h t d -> b t (d h)"))),
        ])
        n += 1
    return n


@check("KV-cache update")
def check_kv_cache_update(learner, rng) -> int:
    """``fn(cache, k_new, v_new) -> (k, v)``: ``cache`` is None or the previous ``(k, v)``,
    each ``(B, H, T, D)``; append the new positions along T and return everything so far."""
    n = 0
    for _ in range(6):
        B, H, D = _int(rng, 1, 2), _int(rng, 1, 4), _int(rng, 2, 8)
        cache, k_all, v_all = None, [], []
        first = 1 if n == 0 else _int(rng, 2, 5)  # the first run decodes from one token: wrong axes show as shapes
        for step, T_new in enumerate([first] + [1] * _int(rng, 2, 4)):
            k_new, v_new = _randn(rng, B, H, T_new, D), _randn(rng, B, H, T_new, D)
            k_all.append(k_new)
            v_all.append(v_new)
            case = (f"step {step} ({'the prompt' if step == 0 else 'one new token'}): k_new and v_new "
                    f"{shape_text(k_new.shape, 'B H T D')}, cache {'None' if cache is None else 'of ' + str(cache[0].shape[-2]) + ' positions'}")
            got = learner(cache, k_new, v_new, case=case)
            if not (isinstance(got, (tuple, list)) and len(got) == 2):
                raise Wrong(f"{learner.name} should return the pair (k, v), got {type(got).__name__}.\n  case: {case}")
            want_k, want_v = torch.cat(k_all, dim=-2), torch.cat(v_all, dim=-2)
            old_k = None if cache is None else cache[0]
            for g, want, what in ((got[0], want_k, "the keys k"), (got[1], want_v, "the values v")):
                compare(g, want, name=learner.name, names="B H T D", case=case, what=what, mistakes=[
                    ("the new positions were appended along H (dim 1): keys and values grow along T, dim=-2.",
                     lambda g: old_k is not None and g.shape[1] != H),
                    ("the new positions were appended along D (dim -1): keys and values grow along T, dim=-2.",
                     lambda g: old_k is not None and g.shape[-1] != D),
                    ("the cache forgot the past: return the cached positions followed by the new ones, "
                     "torch.cat([cached, new], dim=-2).", lambda g: old_k is not None and g.shape[-2] == k_new.shape[-2]),
                    ("the new positions come before the old ones: the cache must keep positions in order, "
                     "cached first.", lambda g: old_k is not None and g.shape == want.shape
                     and close(g[..., :k_new.shape[-2], :], (k_new if what == "the keys k" else v_new))),
                    ("keys and values were swapped.", lambda g: close(g, want_v if what == "the keys k" else want_k)),
                ])
            cache = (got[0], got[1])
            n += 1
    return n
