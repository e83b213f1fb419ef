"""lama.exercises: every check passes lama's own function (or an independent PyTorch one), says
"not yet" for a stub, and fails each planted mistake with the hint written for it."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from lama import exercises as ex
from lama.attention import attention_matmul, causal_mask, merge_heads, scaled_dot_product_attention, split_heads
from lama.bert import mean_pool
from lama.date_task import VOCAB, encode_pairs
from lama.gpt import sample_next
from lama.mlm import mask_tokens
from lama.positional import RotaryEmbedding, SinusoidalPositionalEncoding
from lama.tokenizers.bpe_train import merge, pair_counts
from lama.train import lm_batches

# Checks whose module has its own test file (tests/test_exercises_<module>.py) are tested there.
OWN_FILES = {p.stem.removeprefix("test_exercises_") for p in Path(__file__).parent.glob("test_exercises_*.py")}
# Every registered check: the harness's behaviour (stubs, crashes) is tested here for all of them.
EVERY_CHECK = [c for cs in ex.CHECKS.values() for c in cs]
ALL_CHECKS = [c for c in EVERY_CHECK if c.__module__.rsplit(".", 1)[-1] not in OWN_FILES]


def verdict(check, fn):
    result = check(fn, quiet=True)
    return result.status, result.message


# --- solutions: independent implementations (PyTorch's own where it has one) ---------------

def sm(x, tau=1.0):
    return torch.softmax(x / tau, dim=-1).nan_to_num(0.0)  # PyTorch's softmax; all -inf rows -> 0


def sdpa_torch(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is not None:  # PyTorch gives NaN for a query with no visible key; the book's convention is 0
        out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return out


def kv_update(cache, k, v):
    return (k, v) if cache is None else (torch.cat([cache[0], k], -2), torch.cat([cache[1], v], -2))


def sinusoidal_loop(T, C):
    pe = torch.zeros(T, C)
    for pos in range(T):
        for k in range(C // 2):
            w = 10000 ** (-2 * k / C)
            pe[pos, 2 * k], pe[pos, 2 * k + 1] = math.sin(pos * w), math.cos(pos * w)
    return pe


def mlm_bernoulli(input_ids, special_ids, mask_id, vocab_size, generator, *, select_specials=False,
                  all_mask=False, labels_all=False, in_place=False, two_draws=False, global_rng=False,
                  random_any=False, labels_only_masked=False, labels_corrupted=False):
    """MLM corruption written the way Hugging Face's collator does it (Bernoulli draws: 0.8 of the selected
    become [MASK], half of the rest random), independent of lama.mlm.mask_tokens; the flags plant mistakes."""
    g = None if global_rng else generator
    special = torch.as_tensor(list(special_ids))
    p_select = torch.full(input_ids.shape, 0.15)
    if not select_specials:
        p_select.masked_fill_(torch.isin(input_ids, special), 0.0)
    selected = torch.bernoulli(p_select, generator=g).bool()
    out = input_ids if in_place else input_ids.clone()
    labels = input_ids.clone() if labels_all else torch.where(selected, input_ids, -100)
    masked = selected & torch.bernoulli(torch.full(input_ids.shape, 1.0 if all_mask else 0.8), generator=g).bool()
    p_random = 0.1 if two_draws else 0.5
    rand = selected & ~masked & torch.bernoulli(torch.full(input_ids.shape, p_random), generator=g).bool()
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[special] = False
    pool = torch.arange(vocab_size) if random_any else ordinary.nonzero().squeeze(1)
    out[masked] = mask_id
    out[rand] = pool[torch.randint(len(pool), (int(rand.sum()),), generator=g)]
    if labels_only_masked:
        labels = torch.where(masked, input_ids, -100)
    if labels_corrupted:
        labels = torch.where(selected, out, -100)
    return out, labels


def rmsnorm_grads_autograd(dy, x, w, eps):
    """RMSNorm's (dx, dw) by autograd through the formula written out in float64 (not F.rms_norm)."""
    xt, wt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    y = xt / torch.sqrt(xt.pow(2).mean(-1, keepdim=True) + eps) * wt
    dx, dw = torch.autograd.grad(y, (xt, wt), torch.tensor(dy))
    return dx.numpy(), dw.numpy()


def _rms_grads(mistake=None):
    def f(dy, x, w, eps):
        r = np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        xhat, g = x / r, dy * w
        dx = {"no_r": g / r, "sum": (g - xhat * (g * xhat).sum(-1, keepdims=True)) / r,
              "layernorm": (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / r,
              }.get(mistake, (g - xhat * (g * xhat).mean(-1, keepdims=True)) / r)
        dw = {"unsummed": dy * xhat, "x": (dy * x).reshape(-1, w.size).sum(0)}.get(
            mistake, (dy * xhat).reshape(-1, w.size).sum(0))
        return dx, dw
    return f


def windows_loop(ids, T, stride, drop_last=False, unshifted=False, step=None):
    """Training windows with a Python loop over the starts (independent of unfold); flags plant mistakes."""
    starts = range(0, len(ids) - T - (1 if drop_last else 0), step(T, stride) if step else stride)
    w = torch.stack([ids[s:s + T + 1] for s in starts])  # (N, T + 1)
    return w[:, :-1], (w[:, :-1] if unshifted else w[:, 1:])


def _mlm(**mistake):
    return lambda ids, special, mask_id, V, g: mlm_bernoulli(ids, special, mask_id, V, g, **mistake)


def rope_complex(x):
    """RoPE via complex multiplication of the pairs (x_k, x_{k+D/2}): independent of lama's code."""
    T, D = x.shape[-2:]
    w = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double())
    z = z * torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), w))
    return torch.cat([z.real, z.imag], -1).float()


SOLUTIONS = {
    ex.check_softmax: sm,
    ex.check_attention: sdpa_torch,
    ex.check_causal_mask: lambda T_q, T_k: torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q),
    ex.check_self_attention: attention_matmul,
    ex.check_split_heads: split_heads,
    ex.check_merge_heads: merge_heads,
    ex.check_kv_cache_update: kv_update,
    ex.check_pair_counts: pair_counts,
    ex.check_merge: merge,
    ex.check_sinusoidal: sinusoidal_loop,
    ex.check_rope: rope_complex,
    ex.check_layernorm: lambda x, w, b, eps=1e-5: F.layer_norm(x, (x.shape[-1],), w, b, eps),
    ex.check_rmsnorm: lambda x, w, eps=1e-6: F.rms_norm(x, (x.shape[-1],), w, eps),
    ex.check_mean_pool: mean_pool,
    ex.check_top_k: ex.generation.top_k_filter,
    ex.check_top_p: ex.generation.top_p_filter,
    ex.check_teacher_forcing: lambda ids, bos, eos: ([bos] + ids, ids + [eos]),
    ex.check_mlm_masking: mlm_bernoulli,
    ex.check_rmsnorm_backward: rmsnorm_grads_autograd,
    ex.check_lm_windows: windows_loop,
}


def test_every_check_has_a_solution_here():
    assert set(SOLUTIONS) == set(ALL_CHECKS)
    assert len(ALL_CHECKS) == len(set(ALL_CHECKS)) >= 16


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_solution_passes(check, capsys):
    result = check(SOLUTIONS[check])
    assert result and result.status == "passed", result.message
    out = capsys.readouterr().out
    assert out.startswith("✓") and "agrees with lama" in out


def _stub(*args):
    raise NotImplementedError("your code here")


def _forgot_return(*args):
    args[0] if args else None


@pytest.mark.parametrize("check", EVERY_CHECK, ids=lambda c: c.__name__)
@pytest.mark.parametrize("stub", [_stub, _forgot_return], ids=["raises", "returns-None"])
def test_stub_is_not_yet_without_traceback(check, stub, capsys):
    result = check(stub)
    out = capsys.readouterr().out
    assert not result and result.status == "not yet"
    assert out.startswith("… ") and "not yet" in out and "Traceback" not in out
    assert ("NotImplementedError" in out) if stub is _stub else ("return" in out)


@pytest.mark.parametrize("check", EVERY_CHECK, ids=lambda c: c.__name__)
def test_crash_and_non_function_are_reported_in_one_line(check, capsys):
    def crashes(*args):
        raise IndexError("list index out of range")

    result = check(crashes)
    assert result.status == "wrong" and "raised IndexError: list index out of range" in result.message
    assert check(42).status == "wrong" and "pass your function itself" in check(42, quiet=True).message
    assert "Traceback" not in capsys.readouterr().out


def test_input_modified_in_place_is_named():
    def in_place(x):
        x -= x.max(-1, keepdim=True).values
        return torch.softmax(x, -1)

    status, msg = verdict(ex.check_softmax, in_place)
    assert status == "wrong" and "in place" in msg


def test_result_is_quiet_in_notebooks():
    result = ex.check_causal_mask(SOLUTIONS[ex.check_causal_mask], quiet=True)
    assert result._ipython_display_() is None and "passed" in repr(result)


# --- planted mistakes: (check, wrong function, words the hint must contain) ----------------

def _naive_softmax(x, tau=1.0):
    e = torch.exp(x / tau)
    return e / e.sum(-1, keepdim=True)


def _max_softmax(x, tau=1.0):  # stable, but NaN on an all -inf row
    x = x / tau
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _sdpa(scale=None, dim=-1, fill=float("-inf"), invert=False, ignore_mask=False, after=False):
    def attention(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale(q.shape[-1]))
        if mask is not None and not ignore_mask and not after:
            s = s.masked_fill(mask if invert else ~mask, fill)
        w = torch.softmax(s, dim=dim).nan_to_num(0.0)
        if mask is not None and after:
            w = w * mask
        return w @ v
    return attention


def _self_attention(scale_by_C=False, diagonal=0):
    def head(x, W_q, W_k, W_v, causal=False):
        q, k, v = x @ W_q, x @ W_k, x @ W_v
        d = x.shape[-1] if scale_by_C else q.shape[-1]
        s = q @ k.transpose(-2, -1) / math.sqrt(d)
        if causal:
            T = x.shape[1]
            s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(diagonal), float("-inf"))
        return torch.softmax(s, -1).nan_to_num(0.0) @ v
    return head


def _merge_right_to_left(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def _merge_first(ids, pair, new_id):
    for t in range(len(ids) - 1):
        if (ids[t], ids[t + 1]) == tuple(pair):
            return ids[:t] + [new_id] + ids[t + 2:]
    return ids


def _merge_drops_last(ids, pair, new_id):
    out, t = [], 0
    while t < len(ids) - 1:
        if (ids[t], ids[t + 1]) == tuple(pair):
            out.append(new_id)
            t += 2
        else:
            out.append(ids[t])
            t += 1
    return out


def _pairs_missing_last(ids):
    return pair_counts(ids[:-1])


def _pairs_nonoverlapping(ids):
    counts, t = {}, 0
    while t + 1 < len(ids):
        counts[(ids[t], ids[t + 1])] = counts.get((ids[t], ids[t + 1]), 0) + 1
        t += 2 if ids[t] == ids[t + 1] else 1
    return counts


def _table(T, C, halves=False, exponent=2, start=0, swap=False):
    pos = torch.arange(start, start + T, dtype=torch.float64)[:, None]
    ang = pos * 10000.0 ** (-exponent * torch.arange(C // 2, dtype=torch.float64) / C)
    a, b = (ang.cos(), ang.sin()) if swap else (ang.sin(), ang.cos())
    return (torch.cat([a, b], -1) if halves else torch.stack([a, b], -1).flatten(1)).float()


def _layernorm(unbiased=False, eps_outside=False, affine=True, dim=-1):
    def ln(x, w, b, eps=1e-5):
        mu, var = x.mean(dim, keepdim=True), x.var(dim, keepdim=True, unbiased=unbiased)
        y = (x - mu) / (var.sqrt() + eps if eps_outside else torch.sqrt(var + eps))
        return y * w + b if affine else y
    return ln


def _top_p(strict=False, renormalise=True, sort=True):
    def f(probs, p):
        if sort:
            sp, order = probs.sort(-1, descending=True)
        else:
            sp, order = probs, torch.arange(probs.shape[-1]).expand_as(probs)
        keep = sp.cumsum(-1) <= p if strict else sp.cumsum(-1) - sp < p
        keep[..., 0] = True
        out = torch.zeros_like(probs).scatter(-1, order, sp * keep)
        return out / out.sum(-1, keepdim=True) if renormalise else out
    return f


PLANTED = [
    (ex.check_softmax, lambda x, tau=1.0: torch.softmax(x / tau, dim=0), "wrong axis"),
    (ex.check_softmax, _naive_softmax, "overflow"),
    (ex.check_softmax, _max_softmax, "entirely -inf"),
    (ex.check_softmax, lambda x, tau=1.0: sm(x * tau), "temperature"),
    (ex.check_softmax, lambda x, tau=1.0: torch.exp(x) / 3, "sum to 1"),
    (ex.check_attention, _sdpa(scale=lambda D: 1.0), "missing scale"),
    (ex.check_attention, _sdpa(scale=lambda D: 1.0 / D), "1/√D"),
    (ex.check_attention, _sdpa(dim=-2), "wrong axis"),
    (ex.check_attention, _sdpa(invert=True), "inverted"),
    (ex.check_attention, _sdpa(ignore_mask=True), "no effect"),
    (ex.check_attention, _sdpa(fill=0.0), "set to 0"),
    (ex.check_attention, _sdpa(after=True), "after the softmax"),
    (ex.check_attention, lambda q, k, v: sdpa_torch(q, k, v), "fourth argument"),
    (ex.check_causal_mask, lambda T_q, T_k: torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q - 1), "off by one"),
    (ex.check_causal_mask, lambda T_q, T_k: torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q + 1), "next token"),
    (ex.check_causal_mask, lambda T_q, T_k: ~causal_mask(T_q, T_k), "inverted"),
    (ex.check_causal_mask, lambda T_q, T_k: torch.ones(T_q, T_k, dtype=torch.bool).triu(T_k - T_q), "upper triangle"),
    (ex.check_causal_mask, lambda T_q, T_k: torch.ones(T_q, T_k, dtype=torch.bool).tril(), "bottom right"),
    (ex.check_causal_mask, lambda T_q, T_k: causal_mask(T_q, T_k).float(), "boolean"),
    (ex.check_self_attention, _self_attention(scale_by_C=True), "√C"),
    (ex.check_self_attention, _self_attention(diagonal=-1), "off by one"),
    (ex.check_self_attention, lambda x, a, b, c, causal: _self_attention()(x, a, b, c, False), "ignored"),
    (ex.check_split_heads, lambda x, H: rearrange(x, "b t (h d) -> b t h d", h=H), "not moved before T"),
    (ex.check_split_heads, lambda x, H: x.reshape(x.shape[0], H, x.shape[1], -1), "straight to (B, H, T, D)"),
    (ex.check_split_heads, lambda x, H: rearrange(x, "b t (d h) -> b h t d", h=H), "(D, H)"),
    (ex.check_merge_heads, lambda x: x.reshape(x.shape[0], x.shape[2], -1), "without moving T"),
    (ex.check_merge_heads, lambda x: rearrange(x, "b h t d -> b t (d h)"), "interleaved"),
    (ex.check_kv_cache_update, lambda c, k, v: (k, v), "forgot the past"),
    (ex.check_kv_cache_update, lambda c, k, v: (k, v) if c is None else (torch.cat([c[0], k], 1), torch.cat([c[1], v], 1)),
     "along H"),
    (ex.check_kv_cache_update, lambda c, k, v: (k, v) if c is None else (torch.cat([k, c[0]], -2), torch.cat([v, c[1]], -2)),
     "before the old"),
    (ex.check_kv_cache_update, lambda c, k, v: kv_update(c, v, k), "swapped"),
    (ex.check_pair_counts, _pairs_missing_last, "last pair"),
    (ex.check_pair_counts, _pairs_nonoverlapping, "overlapping pairs"),
    (ex.check_pair_counts, lambda ids: pair_counts(ids[::-1]), "reversed"),
    (ex.check_merge, _merge_right_to_left, "resolve to the left"),
    (ex.check_merge, _merge_first, "only the first"),
    (ex.check_merge, _merge_drops_last, "end of the sequence"),
    (ex.check_merge, lambda ids, pair, new: merge(ids, pair, tuple(pair)), "tuple"),
    (ex.check_sinusoidal, lambda T, C: _table(T, C).T, "transposed"),
    (ex.check_sinusoidal, lambda T, C: _table(T, C, halves=True), "interleaves"),
    (ex.check_sinusoidal, lambda T, C: _table(T, C, swap=True), "swapped"),
    (ex.check_sinusoidal, lambda T, C: _table(T, C, exponent=1), "10000^(−k/C)"),
    (ex.check_sinusoidal, lambda T, C: _table(T, C, start=1), "start at 0"),
    (ex.check_rope, lambda x: RotaryEmbedding(x.shape[-1], x.shape[-2], interleaved=True).rotate(x), "layout"),
    (ex.check_rope, lambda x: RotaryEmbedding(x.shape[-1], x.shape[-2] + 1).rotate(x, offset=1), "start at 0"),
    (ex.check_rope, lambda x: rope_complex(x.flip(-1)).flip(-1) if x.shape[-1] == 2 else
     torch.cat(rope_complex(torch.cat([x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]], -1)).chunk(2, -1)[::-1], -1),
     "wrong way"),
    (ex.check_layernorm, _layernorm(unbiased=True), "biased variance"),
    (ex.check_layernorm, _layernorm(eps_outside=True), "inside the square root"),
    (ex.check_layernorm, _layernorm(affine=False), "weight and bias are missing"),
    (ex.check_layernorm, _layernorm(dim=0), "wrong axis"),
    (ex.check_layernorm, lambda x, w, b, eps=1e-5: x * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w + b,
     "mean is not subtracted"),
    (ex.check_rmsnorm, lambda x, w, eps=1e-6: _layernorm(affine=False)(x, w, 0, eps) * w, "does not subtract the mean"),
    (ex.check_rmsnorm, lambda x, w, eps=1e-6: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "inside the square"),
    (ex.check_rmsnorm, lambda x, w, eps=1e-6: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), "weight is missing"),
    (ex.check_mean_pool, lambda x, m: x.mean(1), "padding was averaged in"),
    (ex.check_mean_pool, lambda x, m: (x * m[..., None]).sum(1) / x.shape[1], "number of real tokens"),
    (ex.check_top_k, lambda z, k: ex.generation.top_k_filter(z, k + 1), "off by one"),
    (ex.check_top_k, lambda z, k: ex.generation.top_k_filter(z, k).nan_to_num(neginf=0.0), "not 0"),
    (ex.check_top_k, lambda z, k: ex.generation.top_k_filter(z.T, k).T, "within each row"),
    (ex.check_top_p, _top_p(strict=True), "carries the total past p"),
    (ex.check_top_p, _top_p(renormalise=False), "renormalise"),
    (ex.check_top_p, _top_p(sort=False), "sort first"),
    (ex.check_teacher_forcing, lambda ids, b, e: (ids + [e], [b] + ids), "swapped"),
    (ex.check_teacher_forcing, lambda ids, b, e: ([b] + ids + [e], [b] + ids + [e]), "shifted by one"),
    (ex.check_teacher_forcing, lambda ids, b, e: ([b] + ids, ids), "same length"),
    (ex.check_teacher_forcing, lambda ids, b, e: (ids + [e], ids + [e]), "shifted by one"),
    (ex.check_mlm_masking, _mlm(select_specials=True), "special tokens were selected"),
    (ex.check_mlm_masking, _mlm(all_mask=True), "all selected tokens became [MASK]"),
    (ex.check_mlm_masking, _mlm(labels_all=True), "labels are set on every position"),
    (ex.check_mlm_masking, _mlm(in_place=True), "start from a copy"),
    (ex.check_mlm_masking, _mlm(two_draws=True), "second independent draw"),
    (ex.check_mlm_masking, _mlm(global_rng=True), "draw every random number from the generator"),
    (ex.check_mlm_masking, _mlm(random_any=True), "a random replacement is a special token"),
    (ex.check_mlm_masking, _mlm(labels_only_masked=True), "a position you changed has label -100"),
    (ex.check_mlm_masking, _mlm(labels_corrupted=True), "the labels hold [MASK]"),
    (ex.check_mlm_masking, lambda ids, s, m, V, g: (ids.clone(), ids.masked_fill(torch.isin(ids, torch.as_tensor(s)), -100)),
     "labels are set on every ordinary position"),
    (ex.check_rmsnorm_backward, _rms_grads("no_r"), "misses the path through r"),
    (ex.check_rmsnorm_backward, _rms_grads("sum"), "averages over C"),
    (ex.check_rmsnorm_backward, _rms_grads("layernorm"), "LayerNorm's gradient"),
    (ex.check_rmsnorm_backward, _rms_grads("unsummed"), "summed over every position"),
    (ex.check_rmsnorm_backward, _rms_grads("x"), "normalised input"),
    (ex.check_lm_windows, lambda ids, T, s: windows_loop(ids, T, s, drop_last=True), "last window is missing"),
    (ex.check_lm_windows, lambda ids, T, s: windows_loop(ids, T, s, unshifted=True), "targets are not shifted"),
    (ex.check_lm_windows, lambda ids, T, s: windows_loop(ids, T, s, step=lambda T, s: 1), "not every token"),
    (ex.check_lm_windows, lambda ids, T, s: windows_loop(ids, T, s)[::-1], "swapped"),
    (ex.check_lm_windows, lambda ids, T, s: (ids.unfold(0, T + 1, s), ids.unfold(0, T + 1, s)[:, 1:]), "first T tokens"),
]


@pytest.mark.parametrize("check, wrong, hint", PLANTED,
                         ids=[f"{c.__name__}-{h}" for c, _, h in PLANTED])
def test_planted_mistake_gets_its_hint(check, wrong, hint):
    status, msg = verdict(check, wrong)
    assert status == "wrong", msg
    assert hint in msg, msg
    assert "case:" in msg or "when called with" in msg  # the case that exposed it is shown


def test_every_check_has_planted_mistakes():
    planted = {c for c, _, _ in PLANTED}
    assert planted == set(ALL_CHECKS)


# --- the references inside lama.exercises are the ones sample_next and encode_pairs use -----

def test_top_k_and_top_p_filters_match_sample_next():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, generator=g) * 2
    for kwargs, allowed in ((dict(top_k=4), ex.generation.top_k_filter(logits, 4).isfinite()),
                            (dict(top_p=0.7), ex.generation.top_p_filter(logits.softmax(-1), 0.7) > 0)):
        draws = sample_next(logits.repeat_interleave(4000, 0), generator=g, **kwargs).view(3, 4000)
        seen = torch.zeros(3, 12, dtype=torch.bool).scatter(1, draws, True)
        assert torch.equal(seen, allowed), kwargs  # sample_next draws exactly the kept tokens
    filtered = ex.generation.top_p_filter(logits.softmax(-1), 0.7)
    draws = sample_next(logits[:1].expand(20000, 12), top_p=0.7, generator=g)
    freq = torch.bincount(draws.flatten(), minlength=12) / 20000
    torch.testing.assert_close(freq, filtered[0], atol=0.015, rtol=0)


def test_mlm_check_passes_lamas_mask_tokens():
    """The chapter's own function passes, as does the independent Bernoulli version (SOLUTIONS)."""
    result = ex.check_mlm_masking(mask_tokens, quiet=True)
    assert result, result.message


def test_windows_reference_is_what_lm_batches_draws():
    ids = torch.randint(0, 500, (103,), generator=torch.Generator().manual_seed(0))
    for T, stride in ((8, 1), (8, 8), (5, 3)):
        x, y = ex.windows.lm_windows(ids, T, stride)
        bx, by = lm_batches({"train": ids}, T, stride=stride)("train", 4000, torch.Generator().manual_seed(1))
        rows = {tuple(r) for r in torch.cat([x, y[:, -1:]], 1).tolist()}
        drawn = {tuple(r) for r in torch.cat([bx, by[:, -1:]], 1).tolist()}
        assert drawn == rows, (T, stride)  # the same set of windows, each one drawn
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_teacher_forcing_reference_is_encode_pairs():
    ref = encode_pairs([("1 May 2020", "2020-05-01")])
    ids = VOCAB.encode("2020-05-01")
    assert ref["tgt"][0].tolist() == [VOCAB.bos] + ids and ref["targets"][0].tolist() == ids + [VOCAB.eos]


def test_references_agree_with_pytorch():
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(SinusoidalPositionalEncoding(8, 5)(5), sinusoidal_loop(5, 8))
    torch.testing.assert_close(RotaryEmbedding(8, 5).rotate(x), rope_complex(x))
    m = torch.rand(5, 5) < 0.5
    m[:, 0] = True
    torch.testing.assert_close(scaled_dot_product_attention(x, x, x, mask=m), sdpa_torch(x, x, x, m))


def test_checks_need_no_repository_files(tmp_path):
    """The checks run from the package alone, as after `pip install` on Colab: a copy of lama/ in an
    empty folder, no repository around it and no data folder, imports and runs them."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = Path(ex.__file__).resolve().parents[1]
    shutil.copytree(package, tmp_path / "site" / "lama", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import lama, lama.exercises as e, torch; "
            "assert lama.__file__.startswith(%r), lama.__file__; "
            "ok = e.check_causal_mask(lambda a, b: torch.ones(a, b, dtype=torch.bool).tril(b - a)); "
            "e.check_teacher_forcing(lambda ids, b, s: ([b] + ids, ids + [s])); "
            "print(bool(ok))") % str(tmp_path / "site")
    env = dict(os.environ, LAMA_DATA=str(tmp_path / "no-data"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True" and "teacher forcing" in out.stdout
