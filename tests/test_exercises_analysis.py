"""lama.exercises.analysis: each check passes lama's function and an independent solution, says
"not yet" for a stub, and fails each planted mistake with the hint written for it."""

import math

import pytest
import torch

from lama import exercises as ex
from lama.circuits import induction_score, pattern_scores
from lama.exercises import analysis
from lama.flash_attention import flash_attention_forward
from lama.grokking import frequency_norms, modular_addition_data

CHECKS = [analysis.check_online_softmax, analysis.check_previous_token_score, analysis.check_induction_score,
          analysis.check_modular_addition_data, analysis.check_frequency_norms, analysis.check_kv_cache_bytes,
          analysis.check_score_grad_wq]


def verdict(check, fn):
    result = check(fn, quiet=True)
    return result.status, result.message


# --- independent solutions -------------------------------------------------------------------

def online_logsumexp(m, l, a, s, v, mistake=None):
    """The update through log-sum-exp: lse' = logaddexp(lse, logsumexp(s)), then back to (m', l')."""
    m_new = torch.maximum(m, s.max(-1).values)
    lse_old = m + torch.log(l)  # -inf on the first tile
    lse_new = torch.logaddexp(lse_old, torch.logsumexp(s, -1))
    w_old = torch.exp(lse_old - lse_new)  # share of the old keys in the softmax over all keys so far
    out_old = torch.where(l > 0, 1.0, 0.0)[:, None] * a / torch.where(l > 0, l, 1.0)[:, None]
    out_new = torch.softmax(s, -1) @ v
    out = w_old[:, None] * out_old + (1 - w_old)[:, None] * out_new  # normalised output so far
    l_new = torch.exp(lse_new - m_new)
    a_new = out * l_new[:, None]
    if mistake == "a":
        a_new = a + torch.exp(s - m_new[:, None]) @ v
    elif mistake == "l":
        l_new = l + torch.exp(s - m_new[:, None]).sum(-1)
    elif mistake == "tile_max":
        m_new = s.max(-1).values
    elif mistake == "normalised":
        a_new = out
    elif mistake == "inverted":
        up = torch.exp(m_new - m)
        l_new = l * up + torch.exp(s - m_new[:, None]).sum(-1)
    elif mistake == "old_max":
        base = torch.where(torch.isfinite(m), m, m_new)
        l_new = l * torch.exp(m - m_new) + torch.exp(s - base[:, None]).sum(-1)
    return m_new, l_new, a_new


def previous_token_loop(attn, mistake=None):
    T = attn.shape[-1]
    lead = attn.shape[:-2]
    flat = attn.reshape(-1, T, T)
    out = torch.zeros(flat.shape[0])
    queries = range(T) if mistake == "all_queries" else range(1, T)
    for h in range(flat.shape[0]):
        for i in queries:
            j = {"next": i + 1, "self": i}.get(mistake, i - 1)
            out[h] += flat[h, i, j] if 0 <= j < T else 0.0
    score = out if mistake == "sum" else out / (T if mistake == "all_queries" else T - 1)
    return score.mean() if mistake == "heads" else score.reshape(lead)


def induction_loop(attn, period, mistake=None):
    T = attn.shape[-1]
    back = {"duplicate": period, "before": period + 1}.get(mistake, period - 1)
    first = period - 1 if mistake == "early" else period
    flat = attn.reshape(-1, T, T)
    score = torch.stack([sum(flat[h, i, i - back] for i in range(first, T)) for h in range(flat.shape[0])])
    score = score if mistake == "sum" else score / (T - first)
    return score.mean() if mistake == "heads" else score.reshape(attn.shape[:-2])


def modular_loops(p, train_frac, seed, mistake=None):
    rows, labels = [], []
    for a in range(p):
        for b in range(p):
            x, y = (b, a) if mistake == "order" else (a, b)
            rows.append([x, y] if mistake == "no_eq" else [x, y, 0 if mistake == "eq_id" else p])
            labels.append(x + y if mistake == "no_mod" else (x + y) % p)
    n_train = round(train_frac * p * p) if mistake == "round" else int(train_frac * p * p)
    g = None if mistake == "global" else torch.Generator().manual_seed(seed if mistake != "ignore_seed" else 0)
    order = torch.randperm(p * p, generator=g) if g is not None else torch.randperm(p * p)
    is_train = torch.zeros(p * p, dtype=torch.bool)
    is_train[order[:n_train]] = True
    return torch.tensor(rows), torch.tensor(labels), is_train


def frequency_norms_fft(W_E, mistake=None):
    """Through the FFT: |F_k|² / (p/2) is the squared norm of the normalised cos + sin pair of k."""
    p = W_E.shape[0]
    F_ = torch.fft.rfft(W_E.double(), dim=0)  # ((p+1)/2, C), k = 0 .. (p-1)/2
    sq = F_.abs().pow(2).sum(-1)
    if mistake != "raw":
        sq = sq / torch.tensor([p] + [p / 2] * ((p - 1) // 2), dtype=torch.float64)
    else:  # unnormalised cos and sin rows: |F_k|² as it comes
        sq = sq * torch.tensor([1.0] + [1.0] * ((p - 1) // 2), dtype=torch.float64)
    if mistake == "squared":
        return sq
    if mistake == "split":
        return torch.cat([sq[:1], sq[1:].repeat_interleave(2) / 2]).sqrt()
    if mistake == "over_C":
        return frequency_norms_fft(W_E.T.contiguous()) if W_E.shape[1] % 2 else torch.ones(W_E.shape[1] + 7)
    return sq.sqrt()


def kv_bytes(n_layer, n_head, n_kv_head, head_dim, T, batch, nbytes, mistake=None):
    """Allocate the cache as chapter 5's KVCache would (a K and a V tensor per layer) and count."""
    dtype = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32}[nbytes]
    heads = n_head if mistake == "n_head" else n_kv_head
    per_layer = [torch.empty(batch, heads, T, head_dim, dtype=dtype, device="meta")
                 for _ in range(1 if mistake == "no_v" else 2)]
    total = n_layer * sum(t.numel() * t.element_size() for t in per_layer)
    return {"bits": total * 8, "numbers": total // nbytes}.get(mistake, total)


def score_grad_formula(x_i, x_j, W_Q, W_K, mistake=None):
    """ds/dW_Q = x_i k_jᵀ / √D, written with einsum."""
    D = W_Q.shape[1]
    k_j = torch.einsum("c,cd->d", x_j, W_K)
    if mistake == "query":
        k_j = torch.einsum("c,cd->d", x_i, W_Q)
    g = torch.einsum("c,d->cd", x_j if mistake == "x_j" else x_i, k_j)
    if mistake == "transposed":
        g = g.T
    return g if mistake == "unscaled" else g / math.sqrt(D)


SOLUTIONS = {
    analysis.check_online_softmax: [analysis.online_softmax_update, online_logsumexp],
    analysis.check_previous_token_score: [lambda a: pattern_scores(a, ["x"] * a.shape[-1])["previous token"],
                                          previous_token_loop],
    analysis.check_induction_score: [induction_score, induction_loop],
    analysis.check_modular_addition_data: [modular_addition_data, modular_loops],
    analysis.check_frequency_norms: [frequency_norms, frequency_norms_fft],
    analysis.check_kv_cache_bytes: [lambda L, H, H_kv, D, T, B, nb: 2 * L * H_kv * D * T * B * nb, kv_bytes],
    analysis.check_score_grad_wq: [analysis._score_grad, score_grad_formula],
}


def test_registered_by_chapter():
    assert ex.CHECKS[12][-2:] == [ex.check_previous_token_score, ex.check_induction_score]
    assert ex.CHECKS[13][-2:] == [ex.check_modular_addition_data, ex.check_frequency_norms]
    assert ex.check_online_softmax in ex.CHECKS[14]
    assert ex.CHECKS[15][-2:] == [ex.check_kv_cache_bytes, ex.check_score_grad_wq]
    assert set(SOLUTIONS) == set(CHECKS) == {c for cs in ex.CHECKS.values() for c in cs
                                             if c.__module__ == "lama.exercises.analysis"}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("which", [0, 1], ids=["lama", "independent"])
def test_solution_passes(check, which, capsys):
    result = check(SOLUTIONS[check][which])
    assert result and result.status == "passed", result.message
    out = capsys.readouterr().out
    assert out.startswith("✓") and "agrees with lama" in out


# Stubs and crashes: tests/test_exercises.py covers every registered check.


# --- planted mistakes: (check, wrong function, words the hint must contain) -----------------

def _osm(mistake):
    return lambda m, l, a, s, v: online_logsumexp(m, l, a, s, v, mistake)


PLANTED = [
    (analysis.check_online_softmax, _osm("tile_max"), "forgets the earlier tiles"),
    (analysis.check_online_softmax, _osm("l"), "multiply it by exp(m − m')"),
    (analysis.check_online_softmax, _osm("inverted"), "not exp(m' − m)"),
    (analysis.check_online_softmax, _osm("old_max"), "relative to the new maximum"),
    (analysis.check_online_softmax, _osm("a"), "a is rescaled like l"),
    (analysis.check_online_softmax, _osm("normalised"), "unnormalised until the last tile"),
    (analysis.check_online_softmax, lambda m, l, a, s, v: analysis.online_softmax_update(m, l, a, s, v)[:2],
     "should return 3 values"),
    (analysis.check_previous_token_score, lambda a: previous_token_loop(a, "next"), "below the diagonal"),
    (analysis.check_previous_token_score, lambda a: previous_token_loop(a, "self"), "token itself"),
    (analysis.check_previous_token_score, lambda a: previous_token_loop(a, "all_queries"), "query 0"),
    (analysis.check_previous_token_score, lambda a: previous_token_loop(a, "sum"), "not a sum"),
    (analysis.check_previous_token_score, lambda a: previous_token_loop(a, "heads"), "one score per head"),
    (analysis.check_induction_score, lambda a, n: induction_loop(a, n, "duplicate"), "duplicate-token head"),
    (analysis.check_induction_score, lambda a, n: induction_loop(a, n, "early"), "still in the first copy"),
    (analysis.check_induction_score, lambda a, n: induction_loop(a, n, "before"), "token before the previous"),
    (analysis.check_induction_score, lambda a, n: induction_loop(a, n, "sum"), "not a sum"),
    (analysis.check_induction_score, lambda a, n: induction_loop(a, n, "heads"), "one score per head"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "no_eq"), "part of the input"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "eq_id"), "its own id"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "order"), "slow index"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "no_mod"), "without the mod"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "round"), "Round down"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "global"), "same seed"),
    (analysis.check_modular_addition_data, lambda p, f, s: modular_loops(p, f, s, "ignore_seed"), "every seed"),
    (analysis.check_frequency_norms, lambda W: frequency_norms_fft(W, "squared"), "square root"),
    (analysis.check_frequency_norms, lambda W: frequency_norms_fft(W, "raw"), "normalise the basis rows"),
    (analysis.check_frequency_norms, lambda W: frequency_norms_fft(W, "split"), "one pair"),
    (analysis.check_frequency_norms, lambda W: frequency_norms_fft(W, "over_C"), "not over C"),
    (analysis.check_kv_cache_bytes, lambda *a: kv_bytes(*a, mistake="no_v"), "*and* the values"),
    (analysis.check_kv_cache_bytes, lambda *a: kv_bytes(*a, mistake="n_head"), "n_kv_head"),
    (analysis.check_kv_cache_bytes, lambda *a: kv_bytes(*a, mistake="bits"), "no factor 8"),
    (analysis.check_kv_cache_bytes, lambda *a: kv_bytes(*a, mistake="numbers"), "multiply by bytes_per_number"),
    (analysis.check_kv_cache_bytes, lambda *a: str(kv_bytes(*a)) + " bytes", "should return a number"),
    (analysis.check_score_grad_wq, lambda *a: score_grad_formula(*a, mistake="transposed"), "shape of W_Q"),
    (analysis.check_score_grad_wq, lambda *a: score_grad_formula(*a, mistake="unscaled"), "divided by √D"),
    (analysis.check_score_grad_wq, lambda *a: score_grad_formula(*a, mistake="x_j"), "query token x_i"),
    (analysis.check_score_grad_wq, lambda *a: score_grad_formula(*a, mistake="query"), "not the query"),
]


@pytest.mark.parametrize("check, wrong, hint", PLANTED, ids=[f"{c.__name__}-{h}" for c, _, h in PLANTED])
def test_planted_mistake_gets_its_hint(check, wrong, hint):
    status, msg = verdict(check, wrong)
    assert status == "wrong", msg
    assert hint in msg, msg
    assert "case:" in msg or "when called with" in msg  # the case that exposed it is shown


def test_every_check_has_three_planted_mistakes():
    for c in CHECKS:
        assert sum(check is c for check, _, _ in PLANTED) >= 3, c.__name__


# --- the references are what lama's code computes ---------------------------------------------

def test_online_softmax_tiles_give_flash_attentions_output():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(T, 4, generator=g, dtype=torch.float64) for T in (6, 8, 8))
    s = q @ k.T / 2  # (i, j) = (6, 8), scaled by 1/√D
    m, l, a = torch.full((6,), -math.inf, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), torch.zeros_like(q)
    for j0 in range(0, 8, 3):
        m, l, a = analysis.online_softmax_update(m, l, a, s[:, j0:j0 + 3], v[j0:j0 + 3])
    out, lse = flash_attention_forward(q, k, v, block_q=6, block_k=3)
    torch.testing.assert_close(a / l[:, None], torch.softmax(s, -1) @ v)
    torch.testing.assert_close(a / l[:, None], out)
    torch.testing.assert_close(m + torch.log(l), lse)


def test_head_scores_on_pure_patterns():
    T, period = 8, 3
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    assert float(previous_token_loop(prev)) == 1.0
    induct = torch.eye(T)
    induct[torch.arange(period, T), torch.arange(1, T - period + 1)] = 1
    induct[torch.arange(period, T), torch.arange(period, T)] = 0
    assert float(induction_score(induct, period)) == float(induction_loop(induct, period)) == 1.0


def test_fft_norms_match_the_basis_and_sum_to_the_norm():
    W = torch.randn(11, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frequency_norms_fft(W), frequency_norms(W))
    torch.testing.assert_close(frequency_norms(W).pow(2).sum(), W.double().pow(2).sum())
