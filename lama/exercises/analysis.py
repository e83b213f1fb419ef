"""Checks for the analysis chapters: flash attention's online softmax (chapter 14), scores that
find attention heads (chapter 12), the grokking task and its Fourier analysis (chapter 13) and
two formulas of chapter 15.

* ``check_online_softmax(fn)``: one tile of FlashAttention's running softmax,
  ``fn(m, l, a, s, v) -> (m', l', a')``, against the update ``lama.flash_attention`` performs;
* ``check_previous_token_score(fn)`` and ``check_induction_score(fn)``: a head's score from its
  ``(..., T, T)`` attention weights, against ``lama.circuits``;
* ``check_modular_addition_data(fn)`` and ``check_frequency_norms(fn)``: the ``a + b mod p``
  dataset and the norm of an embedding per Fourier frequency, against ``lama.grokking``;
* ``check_kv_cache_bytes(fn)`` and ``check_score_grad_wq(fn)``: two of chapter 15's answers as
  formulas, the KV cache's size in bytes and the gradient of one attention score with respect
  to ``W_Q``, against the formula and autograd.

Each check names the usual slip (a running sum not rescaled, a diagonal off by one, queries
outside the repeat averaged in, a label without ``mod p``, an unnormalised basis).
Leaves out: the tiled backward pass and the progress measures of chapter 13 (the chapters
assert them).
"""

from __future__ import annotations

import torch

from lama.exercises._harness import Wrong, check, close, compare, shape_text

__all__ = ["check_online_softmax", "check_previous_token_score", "check_induction_score",
           "check_modular_addition_data", "check_frequency_norms", "check_kv_cache_bytes", "check_score_grad_wq",
           "online_softmax_update"]


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


def _parts(got, n, names, learner, case):
    if not (isinstance(got, (tuple, list)) and len(got) == n):
        raise Wrong(f"{learner.name} should return {n} values ({', '.join(names)}), got "
                    f"{type(got).__name__}{'' if not isinstance(got, (tuple, list)) else f' of length {len(got)}'}."
                    f"\n  case: {case}")
    return got


# --- chapter 14: the online softmax ---------------------------------------------------------

def online_softmax_update(m, l, a, s, v):
    """One tile: ``m (i,)`` running max, ``l (i,)`` running Σ exp(s − m), ``a (i, D)`` running
    Σ exp(s − m) v; scores ``s (i, j)`` and values ``v (j, D)`` of the new tile."""
    m_new = torch.maximum(m, s.amax(-1))  # (i,)
    p = torch.exp(s - m_new[..., None])  # (i, j)
    rescale = torch.exp(m - m_new)  # (i,)
    return m_new, l * rescale + p.sum(-1), a * rescale[..., None] + p @ v


@check("online softmax")
def check_online_softmax(learner, rng) -> int:
    """``fn(m, l, a, s, v) -> (m', l', a')`` for one tile of keys; the first tile starts from
    ``m = -inf``, ``l = 0``, ``a = 0``."""
    n = 0
    for trial in range(12):
        i, D = _int(rng, 1, 5), _int(rng, 1, 6)
        spread = [1.0, 4.0, 20.0][trial % 3]
        m = torch.full((i,), float("-inf"), dtype=torch.float64)
        l, a = torch.zeros(i, dtype=torch.float64), torch.zeros(i, D, dtype=torch.float64)
        for tile in range(_int(rng, 1, 3) if trial % 4 else 1):  # reach a later tile through the reference
            j = _int(rng, 1, 6)
            s = torch.randn(i, j, generator=rng, dtype=torch.float64) * spread + 3 * tile
            v = torch.randn(j, D, generator=rng, dtype=torch.float64)
            m, l, a = online_softmax_update(m, l, a, s, v)
        j = _int(rng, 1, 6)
        s = torch.randn(i, j, generator=rng, dtype=torch.float64) * spread + [0.0, 5.0, -5.0][trial % 3]
        v = torch.randn(j, D, generator=rng, dtype=torch.float64)
        case = (f"m, l {shape_text(m.shape, 'i')}, a {shape_text(a.shape, 'i D')}, s {shape_text(s.shape, 'i j')}, "
                f"v {shape_text(v.shape, 'j D')}" + (", the first tile (m = -inf, l = 0, a = 0)"
                                                     if torch.isinf(m).all() else ""))
        got = _parts(learner(m, l, a, s, v, case=case), 3, ("m'", "l'", "a'"), learner, case)
        want_m, want_l, want_a = online_softmax_update(m, l, a, s, v)
        p_old = torch.exp(s - torch.where(torch.isfinite(m), m, want_m)[..., None])
        up = torch.exp(want_m - m)  # the inverted factor
        down = torch.exp(m - want_m)
        p = torch.exp(s - want_m[..., None])
        compare(got[0], want_m, name=learner.name, names="i", case=case, what="m'", mistakes=[
            ("m' is the larger of the old maximum and this tile's maximum: max(m, max_j s_j); this tile's "
             "maximum alone forgets the earlier tiles.", lambda g: close(g, s.amax(-1))),
            ("m' is a maximum over the keys j, one per query i: s.max(-1), not over the queries.",
             lambda g: g.numel() == s.shape[-1]),
        ])
        compare(got[1], want_l, name=learner.name, names="i", case=case, what="l'", mistakes=[
            ("the old sum l was computed under the old maximum m: multiply it by exp(m − m') before adding "
             "this tile's terms.", lambda g: close(g, l + p.sum(-1))),
            ("the rescaling factor is exp(m − m'), which is ≤ 1 (the maximum only grows), not exp(m' − m).",
             lambda g: close(g, l * up + p.sum(-1)) or torch.isinf(g).any()),
            ("exponentiate this tile's scores relative to the new maximum: exp(s − m'), not exp(s − m) or "
             "exp(s).", lambda g: close(g, l * down + p_old.sum(-1)) or close(g, l * down + torch.exp(s).sum(-1))),
        ])
        compare(got[2], want_a, name=learner.name, names="i D", case=case, what="a'", mistakes=[
            ("a is rescaled like l: a' = exp(m − m') · a + Σ_j exp(s_j − m') v_j (the old terms were "
             "weighted under the old maximum).", lambda g: close(g, a + p @ v)),
            ("a stays unnormalised until the last tile (the output is a / l only at the end): do not divide "
             "by l' here.", lambda g: close(g, want_a / want_l[..., None])),
            ("the rescaling factor is exp(m − m'), which is ≤ 1, not exp(m' − m).",
             lambda g: close(g, a * up[..., None] + p @ v) or torch.isinf(g).any()),
        ])
        n += 1
    return n


# --- chapter 12: scores that find heads -----------------------------------------------------

def _random_attn(rng, lead, T, peaked: bool):
    logits = torch.randn(*lead, T, T, generator=rng) * (4.0 if peaked else 1.0)
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(logits, -1)  # causal rows that sum to 1, (..., T, T)


def _previous_token(attn):
    from lama.circuits import pattern_scores
    return pattern_scores(attn, ["x"] * attn.shape[-1])["previous token"]


@check("previous-token score")
def check_previous_token_score(learner, rng) -> int:
    """``fn(attn) -> (...)``: the mean weight each head puts on key ``j = i − 1``, over the queries
    ``i ≥ 1``, for attention weights ``attn (..., T, T)`` (e.g. ``(L, H, T, T)``)."""
    n = 0
    for trial in range(12):
        lead = [_int(rng, 1, 3) for _ in range(trial % 3)]
        T = _int(rng, 3, 9)
        attn = _random_attn(rng, lead, T, peaked=trial % 2 == 1)
        case = f"attn {shape_text(attn.shape, ' '.join(['L', 'H'][-len(lead):] if lead else []) + ' i j')}"
        got = learner(attn, case=case)
        want = _previous_token(attn)
        d = lambda k: attn.diagonal(offset=k, dim1=-2, dim2=-1)  # noqa: E731
        compare(got, want, name=learner.name, case=case, mistakes=[
            ("keep one score per head: average over the queries i only (the last two dimensions are "
             "(i, j)), not over the heads.", lambda g: g.numel() == 1 and want.numel() > 1),
            ("the previous token of query i is key j = i − 1, below the diagonal: attn.diagonal(offset=-1, "
             "dim1=-2, dim2=-1). Rows are queries, columns keys.",
             lambda g: close(g, d(1).mean(-1)) or close(g, d(1)[..., 1:].sum(-1) / (T - 1))),
            ("j = i is the token itself; the previous token is the diagonal just below it (offset −1).",
             lambda g: close(g, d(0).mean(-1)) or close(g, d(0)[..., 1:].mean(-1))),
            ("query 0 has no previous token: average over the T − 1 queries i ≥ 1, not over all T.",
             lambda g: close(g, d(-1).sum(-1) / T)),
            ("a score is a mean over the queries, in [0, 1], not a sum.", lambda g: close(g, d(-1).sum(-1))),
        ])
        n += 1
    return n


@check("induction score")
def check_induction_score(learner, rng) -> int:
    """``fn(attn, period) -> (...)``: for a sequence that repeats with ``period`` (position ``i``
    holds the same token as ``i − period``), the mean weight on key ``j = i − period + 1`` over the
    queries of the repeat, ``i ≥ period``."""
    from lama.circuits import induction_score
    n = 0
    for trial in range(12):
        lead = [_int(rng, 1, 3) for _ in range(trial % 3)]
        period = _int(rng, 2, 6)
        T = period + _int(rng, 2, period + 2)
        attn = _random_attn(rng, lead, T, peaked=trial % 2 == 1)
        case = f"attn {shape_text(attn.shape)}, period={period}"
        got = learner(attn, period, case=case)
        want = induction_score(attn, period)
        d = lambda k: attn.diagonal(offset=-k, dim1=-2, dim2=-1)  # noqa: E731  key j = i - k
        compare(got, want, name=learner.name, case=case, mistakes=[
            ("keep one score per head: average over the queries only, not over the heads.",
             lambda g: g.numel() == 1 and want.numel() > 1),
            ("j = i − period is the previous copy of the current token itself (a duplicate-token head); an "
             "induction head looks one further, at the token that followed it: j = i − period + 1.",
             lambda g: close(g, d(period).mean(-1))),
            ("key j = i − period + 1 is right, but only the queries of the repeat count, i ≥ period; query "
             "i = period − 1 is still in the first copy.", lambda g: close(g, d(period - 1).mean(-1))),
            ("j = i − period − 1 is the token before the previous copy; the induction target is the one "
             "after it, j = i − period + 1.",
             lambda g: close(g, d(period + 1).mean(-1)) or close(g, d(period + 1).sum(-1) / (T - period))),
            ("a score is a mean over the queries i ≥ period, not a sum.",
             lambda g: close(g, d(period - 1)[..., 1:].sum(-1))),
        ])
        n += 1
    return n


# --- chapter 13: grokking -------------------------------------------------------------------

@check("modular-addition data")
def check_modular_addition_data(learner, rng) -> int:
    """``fn(p, train_frac, seed) -> (tokens, labels, is_train)``: every input ``[a, b, =]`` (rows in
    order ``a·p + b``, the token ``=`` is ``p``), ``labels = (a + b) mod p`` and a boolean mask with
    ``int(train_frac · p²)`` training rows, the same for the same seed."""
    from lama.grokking import modular_addition_data
    n = 0
    for trial, (p, frac) in enumerate([(3, 0.5), (5, 0.3), (7, 0.6), (11, 0.3), (13, 0.25), (2, 0.5)]):
        seed = _int(rng, 0, 1000)
        case = f"p={p}, train_frac={frac}, seed={seed}"
        tokens, labels, is_train = _parts(learner(p, frac, seed, case=case), 3, ("tokens", "labels", "is_train"),
                                          learner, case)
        want_t, want_l, _ = modular_addition_data(p, frac, seed)
        a, b = want_t[:, 0], want_t[:, 1]
        compare(tokens, want_t, name=learner.name, case=case, what="tokens", mistakes=[
            ("each row is three tokens [a, b, =]: the '=' token (id p) is part of the input.",
             lambda g: g.shape == (p * p, 2)),
            ("the '=' token has its own id, p (numbers use 0 … p − 1), so the vocabulary has p + 1 tokens.",
             lambda g: g.shape == want_t.shape and torch.equal(g[:, :2], want_t[:, :2])),
            ("rows go in order a·p + b (a is the slow index, as torch.cartesian_prod gives them), not b·p + a.",
             lambda g: g.shape == want_t.shape and torch.equal(g[:, [1, 0, 2]], want_t)),
        ])
        compare(labels, want_l, name=learner.name, case=case, what="labels", mistakes=[
            ("the label is (a + b) mod p: without the mod, sums ≥ p are labels the model cannot output.",
             lambda g: torch.equal(g.long(), a + b)),
        ])
        if not isinstance(is_train, torch.Tensor) or is_train.dtype != torch.bool or is_train.shape != (p * p,):
            raise Wrong(f"is_train should be a boolean tensor of shape {shape_text((p * p,))} (True = training "
                        f"row), got {getattr(is_train, 'dtype', type(is_train).__name__)} "
                        f"{shape_text(getattr(is_train, 'shape', ()))}.\n  case: {case}")
        k = int(is_train.sum())
        if k != int(frac * p * p):
            hint = (" Round down, as int(train_frac * p * p) does, not to the nearest integer."
                    if k == round(frac * p * p) else "")
            raise Wrong(f"is_train should mark int(train_frac · p²) = {int(frac * p * p)} training rows, "
                        f"got {k}.{hint}\n  case: {case}")
        again = _parts(learner(p, frac, seed, case=case), 3, ("tokens", "labels", "is_train"), learner, case)[2]
        if not (isinstance(again, torch.Tensor) and torch.equal(again, is_train)):
            raise Wrong("the same seed should give the same split: draw the permutation from "
                        f"torch.Generator().manual_seed(seed), not from the global random state.\n  case: {case}")
        n += 1
    p, frac = 13, 0.5
    splits = set()
    for seed in range(3):
        case = f"p={p}, train_frac={frac}, seed={seed}"
        is_train = _parts(learner(p, frac, seed, case=case), 3, ("tokens", "labels", "is_train"), learner, case)[2]
        splits.add(tuple(torch.as_tensor(is_train).tolist()))
    if len(splits) == 1:
        raise Wrong("every seed gives the same split: the seed should choose the random permutation "
                    f"(torch.randperm with a generator seeded by it), not be ignored.\n  case: p={p}, seeds 0, 1, 2")
    return n + 1


@check("frequency norms")
def check_frequency_norms(learner, rng) -> int:
    """``fn(W_E) -> ((p+1)/2,)``: for the embeddings of the numbers ``0 … p−1``, ``W_E (p, C)``, the
    norm of its constant component, then of its cos + sin pair at each frequency k = 1 … (p−1)/2,
    in the orthonormal Fourier basis over Z_p."""
    from lama.grokking import fourier_basis, frequency_norms
    n = 0
    for trial, p in enumerate([3, 5, 7, 11, 13, 17, 5, 9]):
        C = _int(rng, 1, 6) if trial != 6 else 4
        C += C == p  # C ≠ p, so that a transform over the wrong axis shows in the shape
        W = torch.randn(p, C, generator=rng) + (2.0 if trial % 2 else 0.0)
        if trial == 3:  # a pure frequency, as a grokked embedding has
            x = torch.arange(p, dtype=torch.float32)
            W = torch.stack([torch.cos(2 * torch.pi * 2 * x / p), torch.sin(2 * torch.pi * 2 * x / p)], -1) * 3
            C = 2
        case = f"W_E {shape_text(W.shape, 'p C')}"
        got = learner(W, case=case)
        want = frequency_norms(W)
        basis = fourier_basis(p)
        raw = basis * basis.new_tensor([p ** 0.5] + [(p / 2) ** 0.5] * (p - 1))[:, None]  # unnormalised rows
        sq = (basis @ W.double()).pow(2).sum(-1)
        sq_raw = (raw @ W.double()).pow(2).sum(-1)
        pair = lambda t: torch.cat([t[:1], t[1:].view(-1, 2).sum(-1)])  # noqa: E731
        compare(got, want, name=learner.name, case=case, mistakes=[
            ("cos and sin of the same frequency form one pair: add their squared norms and return one entry "
             "per frequency, (p + 1) / 2 in all.", lambda g: g.numel() == p),
            ("the Fourier transform runs over the p numbers, the rows of W_E (dimension p), not over C.",
             lambda g: g.numel() != (p + 1) // 2),
            ("these are squared norms: take the square root of the sum of squares.", lambda g: close(g, pair(sq))),
            ("normalise the basis rows to length 1 (divide cos and sin by √(p/2), the constant by √p), so that "
             "the norms over all frequencies give the norm of W_E.", lambda g: close(g, pair(sq_raw).sqrt())),
        ])
        n += 1
    return n


# --- chapter 15: two answers as formulas ----------------------------------------------------

@check("KV-cache size")
def check_kv_cache_bytes(learner, rng) -> int:
    """``fn(n_layer, n_head, n_kv_head, head_dim, T, batch, bytes_per_number) -> int``: the bytes a
    KV cache holds for ``batch`` sequences of ``T`` tokens: keys and values, for every layer and
    every key/value head (grouped-query attention shares them among the ``n_head`` query heads)."""
    n = 0
    for trial in range(10):
        L, H_kv, D, T, B = (_int(rng, 1, 12), _int(rng, 1, 4), 2 ** _int(rng, 3, 7), _int(rng, 1, 2048),
                            _int(rng, 1, 8))
        H = H_kv * _int(rng, 2, 4) if trial % 2 else H_kv
        nbytes = [4, 1, 2][trial % 3]
        case = (f"n_layer={L}, n_head={H}, n_kv_head={H_kv}, head_dim={D}, T={T}, batch={B}, "
                f"bytes_per_number={nbytes}")
        got = learner(L, H, H_kv, D, T, B, nbytes, case=case)
        want = 2 * L * H_kv * D * T * B * nbytes
        try:
            value = float(got)
        except (TypeError, ValueError):
            raise Wrong(f"{learner.name} should return a number of bytes, got {type(got).__name__}."
                        f"\n  case: {case}") from None
        if value == want:
            n += 1
            continue
        hints = [
            (want / 2, "count the keys *and* the values: a factor 2."),
            (want // H_kv * H, "with grouped-query attention only the n_kv_head key/value heads are cached; the "
                               "n_head query heads are never stored."),
            (want * 8, "bytes_per_number is already in bytes: no factor 8 (that would be bits)."),
            (want / nbytes, "multiply by bytes_per_number: the formula so far counts numbers, not bytes."),
            (want / B, "every sequence of the batch has its own cache: multiply by batch."),
            (want / L, "every layer has its own keys and values: multiply by n_layer."),
        ]
        for wrong, hint in hints:
            if value == wrong and wrong != want:
                raise Wrong(f"{hint}\n  expected {want:,} bytes, got {value:,.0f}.\n  case: {case}")
        raise Wrong(f"expected {want:,} bytes, got {got!r}.\n  case: {case}")
    return n


def _score_grad(x_i, x_j, W_Q, W_K):
    W = W_Q.detach().clone().requires_grad_(True)
    ((x_i @ W) @ (x_j @ W_K) / W_K.shape[1] ** 0.5).backward()
    return W.grad


@check("score gradient")
def check_score_grad_wq(learner, rng) -> int:
    """``fn(x_i, x_j, W_Q, W_K) -> (C, D)``: the gradient with respect to ``W_Q (C, D)`` of one
    attention score ``s = (x_i W_Q) · (x_j W_K) / √D``, for token vectors ``x_i``, ``x_j`` of size C."""
    n = 0
    for trial in range(10):
        C, D = _int(rng, 2, 8), _int(rng, 1, 6)
        D += D == C  # C ≠ D, so that a transposed answer shows in the shape
        x_i, x_j = (torch.randn(C, generator=rng, dtype=torch.float64) for _ in range(2))
        W_Q, W_K = (torch.randn(C, D, generator=rng, dtype=torch.float64) for _ in range(2))
        case = f"x_i, x_j (C,) = ({C},), W_Q and W_K (C, D) = ({C}, {D})"
        got = learner(x_i, x_j, W_Q, W_K, case=case)
        want = _score_grad(x_i, x_j, W_Q, W_K)
        k_j, q_i, r = x_j @ W_K, x_i @ W_Q, D ** 0.5
        compare(got, want, name=learner.name, names="C D", case=case, what="dW_Q", mistakes=[
            ("dW_Q has the shape of W_Q, (C, D): the outer product x_i k_jᵀ, with x_i first.",
             lambda g: g.shape == (D, C)),
            ("the score is divided by √D, and so is its gradient.", lambda g: close(g, torch.outer(x_i, k_j))),
            ("W_Q multiplies the query token x_i: dW_Q = x_i k_jᵀ / √D, with k_j = x_j W_K; x_j enters only "
             "through the key.", lambda g: close(g, torch.outer(x_j, x_i @ W_K) / r)
             or close(g, torch.outer(x_j, k_j) / r)),
            ("the gradient of q_i · k_j with respect to q_i is the key k_j = x_j W_K, not the query.",
             lambda g: close(g, torch.outer(x_i, q_i) / r) or close(g, torch.outer(x_i, x_j) / r)),
        ])
        n += 1
    return n
