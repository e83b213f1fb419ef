"""Tests for the attention modules of lama.attention (chapters 4 and 5).

References: torch.nn.MultiheadAttention (weights copied over) and
torch.nn.functional.scaled_dot_product_attention; the teaching stages are tied to the modules.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from lama.attention import (
    CrossAttention, KVCache, MultiHeadAttention, SelfAttention, attention_loop, attention_matmul,
    causal_mask, merge_heads, merge_heads_view, split_heads, split_heads_view,
)
from lama.positional import ALiBi, RotaryEmbedding


def _x(B=2, T=6, C=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g, dtype=dtype)


def _mha(*args, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    m = MultiHeadAttention(*args, **kw).to(dtype).eval()
    with torch.no_grad():  # non-zero biases so that bias handling is tested too
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


# --- chapter 4: teaching stages ------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_stages_agree_with_self_attention_module(causal):
    x = _x()
    torch.manual_seed(1)
    att = SelfAttention(16, head_size=8, causal=causal).double()
    Wq, Wk, Wv = (m.weight.T for m in (att.query, att.key, att.value))  # (C, D) each
    ref = att(x)
    assert ref.shape == (2, 6, 8)
    assert_close(attention_loop(x, Wq, Wk, Wv, causal=causal), ref)
    assert_close(attention_matmul(x, Wq, Wk, Wv, causal=causal), ref)


def test_matmul_stage_with_padding_mask_matches_module():
    x = _x()
    att = SelfAttention(16, head_size=8, causal=True).double()
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # (B, T)
    mask = pad[:, None, :].expand(2, 6, 6)  # (B, i, j): keys that are real tokens
    Wq, Wk, Wv = (m.weight.T for m in (att.query, att.key, att.value))
    assert_close(attention_matmul(x, Wq, Wk, Wv, causal=True, mask=mask), att(x, mask=mask))


def test_causal_output_ignores_the_future():
    att = SelfAttention(16, causal=True).double()
    x = _x()
    x2 = x.clone()
    x2[:, -1] += 10.0  # change only the last token
    assert_close(att(x)[:, :-1], att(x2)[:, :-1])
    assert not torch.allclose(att(x)[:, -1], att(x2)[:, -1])


def test_stage_weight_checks():
    x = _x()
    W = torch.randn(16, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"W_k must be a \(C=16, D\) matrix"):
        attention_matmul(x, W, torch.randn(15, 8, dtype=torch.float64), W)
    with pytest.raises(TypeError, match="W_v has dtype torch.float32"):
        attention_loop(x, W, W, W.float())


# --- heads -----------------------------------------------------------------------------------

def test_split_merge_einops_equals_view_transpose():
    x = _x(B=3, T=5, C=24)
    a, b = split_heads(x, 4), split_heads_view(x, 4)
    assert a.shape == (3, 4, 5, 6)
    assert torch.equal(a, b)
    assert torch.equal(merge_heads(a), merge_heads_view(b))
    assert torch.equal(merge_heads(a), x)
    # head h holds channels h*D .. (h+1)*D-1
    assert torch.equal(a[:, 2], x[..., 12:18])


def test_mha_is_heads_of_self_attention_concatenated_then_projected():
    C, H = 16, 4
    D = C // H
    m = _mha(C, H, bias=False)
    x = _x()
    Wq, Wk, Wv = m.c_attn.weight.split(C, dim=0)  # (C, C) each, rows = output channels
    heads = []
    for h in range(H):
        sa = SelfAttention(C, head_size=D, causal=True).double()
        with torch.no_grad():
            sa.query.weight.copy_(Wq[h * D:(h + 1) * D])
            sa.key.weight.copy_(Wk[h * D:(h + 1) * D])
            sa.value.weight.copy_(Wv[h * D:(h + 1) * D])
        heads.append(sa(x))
    assert_close(m(x), m.c_proj(torch.cat(heads, dim=-1)))


# --- parity with torch.nn.MultiheadAttention ---------------------------------------------

def _torch_mha_from(m: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(m.n_embd, m.n_head, bias=m.c_attn.bias is not None, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(m.c_attn.weight)  # both laid out [q | k | v]
        ref.out_proj.weight.copy_(m.c_proj.weight)
        if m.c_attn.bias is not None:
            ref.in_proj_bias.copy_(m.c_attn.bias)
            ref.out_proj.bias.copy_(m.c_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_parity_with_nn_multihead_attention_causal(bias):
    m = _mha(16, 4, bias=bias, causal=True)
    ref = _torch_mha_from(m)
    x = _x(T=7)
    T = x.shape[1]
    y_ref, w_ref = ref(x, x, x, attn_mask=~causal_mask(T), need_weights=True, average_attn_weights=False)
    y, w = m(x, return_attn=True)
    assert_close(y, y_ref)
    assert_close(w, w_ref)
    assert_close(m(x), y_ref)  # the fused path too


def test_parity_with_nn_multihead_attention_padding_and_causal():
    m = _mha(16, 4, causal=True)
    ref = _torch_mha_from(m)
    x = _x(B=3, T=6)
    real = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)  # (B, T)
    y_ref, w_ref = ref(x, x, x, attn_mask=~causal_mask(6), key_padding_mask=~real,
                       need_weights=True, average_attn_weights=False)
    pad = real[:, None, None, :]  # (B, 1, 1, T_k)
    y, w = m(x, mask=pad, return_attn=True)
    assert_close(y, y_ref)
    assert_close(w, w_ref)
    assert_close(m(x, mask=pad), y_ref)


def test_parity_with_nn_multihead_attention_bidirectional_with_mask():
    m = _mha(16, 2, causal=False)
    ref = _torch_mha_from(m)
    x = _x(T=5)
    g = torch.Generator().manual_seed(3)
    allowed = torch.rand(2, 2, 5, 5, generator=g) > 0.3
    allowed[..., 0] = True  # at least one key per row (nn.MultiheadAttention gives NaN otherwise)
    y_ref = ref(x, x, x, attn_mask=(~allowed).reshape(4, 5, 5), need_weights=False)[0]
    assert_close(m(x, mask=allowed), y_ref)
    assert_close(m(x, mask=allowed, return_attn=True)[0], y_ref)


def test_parity_with_f_scaled_dot_product_attention():
    m = _mha(16, 4, causal=True)
    x = _x()
    q, k, v = m.c_attn(x).split(16, dim=-1)
    q, k, v = (split_heads(t, 4) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
    assert_close(m(x), m.c_proj(merge_heads(o)))
    assert_close(m(x, return_attn=True)[0], m.c_proj(merge_heads(o)))


def test_cross_attention_parity_with_nn_multihead_attention():
    torch.manual_seed(0)
    ca = CrossAttention(16, 4).double().eval()
    ref = nn.MultiheadAttention(16, 4, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ca.q_proj.weight, ca.kv_proj.weight]))  # [q | k | v]
        ref.in_proj_bias.copy_(torch.cat([ca.q_proj.bias, ca.kv_proj.bias]))
        ref.out_proj.weight.copy_(ca.c_proj.weight)
        ref.out_proj.bias.copy_(ca.c_proj.bias)
    x, ctx = _x(T=4), _x(T=7, seed=1)
    real = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])  # (B, S)
    y_ref, w_ref = ref(x, ctx, ctx, key_padding_mask=~real, average_attn_weights=False)
    y, w = ca(x, ctx, context_mask=real, return_attn=True)
    assert w.shape == (2, 4, 4, 7)
    assert_close(y, y_ref)
    assert_close(w, w_ref)
    assert_close(ca(x, ctx, context_mask=real), y_ref)


# --- fast path == lama path, across the options ------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(causal=True), dict(causal=False), dict(n_kv_head=2), dict(n_kv_head=1),
    dict(positional="rope", block_size=16), dict(positional="alibi"),
    dict(positional="alibi", n_kv_head=2, causal=False),
])
def test_fused_and_lama_paths_agree(kw):
    m = _mha(16, 4, **kw)
    x = _x()
    pad = torch.tensor([[True] * 6, [True] * 5 + [False]])[:, None, None, :]
    for mask in (None, pad):
        y_fast = m(x, mask=mask)
        y_slow, w = m(x, mask=mask, return_attn=True)
        assert_close(y_fast, y_slow)
        assert_close(w.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))


def test_alibi_and_rope_match_manual_computation():
    x = _x()
    m = _mha(16, 4, positional="alibi", bias=False)
    q, k, v = (split_heads(t, 4) for t in m.c_attn(x).split(16, dim=-1))
    bias = ALiBi(4)(6, 6).double().masked_fill(~causal_mask(6), float("-inf"))  # (H, i, j)
    ref = m.c_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias)))
    assert_close(m(x), ref)

    m = _mha(16, 4, positional="rope", block_size=8, bias=False)
    q, k, v = (split_heads(t, 4) for t in m.c_attn(x).split(16, dim=-1))
    q, k = RotaryEmbedding(4, 8)(q, k)
    ref = m.c_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    assert_close(m(x), ref)


# --- masks: fully masked rows are zeros, never NaN ---------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("return_attn", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(dtype, return_attn):
    m = _mha(16, 4, bias=False, causal=False, dtype=dtype)
    x = _x(dtype=dtype)
    allowed = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    allowed[0, :, 2] = False  # query 2 of batch 0 may see nothing
    allowed[1] = False  # batch 1 sees nothing at all
    out = m(x, mask=allowed, return_attn=return_attn)
    y = out[0] if return_attn else out
    assert not torch.isnan(y).any()
    assert torch.equal(y[0, 2], torch.zeros(16, dtype=dtype))
    assert torch.equal(y[1], torch.zeros(6, 16, dtype=dtype))
    assert y[0, 3].abs().sum() > 0
    if return_attn:
        assert torch.equal(out[1][1], torch.zeros(4, 6, 6, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_attention_all_padding_context_gives_zeros(dtype):
    ca = CrossAttention(16, 2, bias=False).to(dtype).eval()
    x, ctx = _x(T=3, dtype=dtype), _x(T=5, dtype=dtype, seed=2)
    real = torch.tensor([[True] * 5, [False] * 5])
    for r in (False, True):
        out = ca(x, ctx, context_mask=real, return_attn=r)
        y = out[0] if r else out
        assert not torch.isnan(y).any()
        assert torch.equal(y[1], torch.zeros(3, 16, dtype=dtype))


# --- the KV cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(), dict(n_kv_head=2), dict(n_kv_head=1), dict(positional="rope", block_size=16),
    dict(positional="alibi"),
])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1]])
def test_kv_cache_decoding_equals_full_causal_attention(kw, chunks):
    m = _mha(16, 4, **kw)
    x = _x(T=7)
    full = m(x)
    cache = KVCache()
    outs, t = [], 0
    for n in chunks:
        outs.append(m(x[:, t:t + n], kv_cache=cache))
        t += n
        assert cache.length == t
    assert_close(torch.cat(outs, dim=1), full)
    G = kw.get("n_kv_head", 4)
    assert cache.k.shape == cache.v.shape == (2, G, 7, 4)
    # the lama path with the cache agrees as well
    cache.reset()
    assert cache.length == 0 and cache.k is None
    y0, w0 = m(x[:, :5], kv_cache=cache, return_attn=True)
    y1, w1 = m(x[:, 5:], kv_cache=cache, return_attn=True)
    assert w1.shape == (2, 4, 2, 7)
    assert_close(torch.cat([y0, y1], 1), full)


def test_kv_cache_checks_and_memory():
    c = KVCache(max_len=4)
    k = torch.zeros(2, 3, 3, 8)
    c.update(k, k)
    assert c.length == 3 and c.nbytes == 2 * k.nbytes
    with pytest.raises(ValueError, match="max_len=4"):
        c.update(k, k)
    with pytest.raises(ValueError, match="do not match the cache"):
        c.update(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))
    with pytest.raises(ValueError, match=r"\(B, H_kv, T_new, D\)"):
        c.update(torch.zeros(3, 8), torch.zeros(3, 8))
    # Llama-2-7B-like: 32 layers, 32 KV heads of 128, fp16 -> 0.5 MiB per token
    assert KVCache.bytes_per_token(32, 32, 128, 2) == 512 * 1024


# --- multi-query and grouped-query attention ---------------------------------------------

@pytest.mark.parametrize("G", [4, 2, 1])
def test_gqa_shapes_and_parameter_counts(G):
    m = MultiHeadAttention(32, 4, n_kv_head=G)
    D = 8
    assert m.c_attn.weight.shape == (32 + 2 * G * D, 32)
    n = sum(p.numel() for p in m.parameters())
    assert n == (32 + 1) * (32 + 2 * G * D) + (32 + 1) * 32
    y, w = m(torch.randn(2, 5, 32), return_attn=True)
    assert y.shape == (2, 5, 32) and w.shape == (2, 4, 5, 5)


def test_gqa_equals_mha_with_shared_key_value_heads():
    C, H, G = 16, 4, 2
    D, r = C // H, H // G
    g = _mha(C, H, n_kv_head=G)
    full = _mha(C, H)
    with torch.no_grad():
        Wq, Wk, Wv = g.c_attn.weight.split([C, G * D, G * D])
        bq, bk, bv = g.c_attn.bias.split([C, G * D, G * D])
        # query head h reads key/value head h // r: repeat each KV head's rows r times
        rep = lambda t: t.reshape(G, D, *t.shape[1:]).repeat_interleave(r, 0).reshape(H * D, *t.shape[1:])  # noqa: E731
        full.c_attn.weight.copy_(torch.cat([Wq, rep(Wk), rep(Wv)]))
        full.c_attn.bias.copy_(torch.cat([bq, rep(bk), rep(bv)]))
        full.c_proj.load_state_dict(g.c_proj.state_dict())
    x = _x()
    assert_close(g(x), full(x))


# --- bad input -------------------------------------------------------------------------------

def test_bad_input_errors():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3"):
        MultiHeadAttention(100, 3)
    with pytest.raises(ValueError, match="n_embd=10 is not divisible by n_head=4"):
        CrossAttention(10, 4)
    with pytest.raises(ValueError, match="n_kv_head=3 must be a positive int dividing n_head=4"):
        MultiHeadAttention(16, 4, n_kv_head=3)
    with pytest.raises(ValueError, match="needs block_size"):
        MultiHeadAttention(16, 4, positional="rope")
    with pytest.raises(ValueError, match="positional must be one of"):
        MultiHeadAttention(16, 4, positional="relative")
    m = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"mask must broadcast to \(B, H, T, T_k\) = \(2, 4, 5, 5\), got shape \(2, 4\)"):
        m(x, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got shape \(3, 1, 1, 5\)"):
        m(x, mask=torch.ones(3, 1, 1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        m(x, mask=torch.ones(5, 5))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the module's weights are torch.float32"):
        m(x.double())
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, C=16\), got \(2, 5, 8\)"):
        m(torch.randn(2, 5, 8))
    ca = CrossAttention(16, 4)
    with pytest.raises(ValueError, match=r"context_mask|mask must broadcast to \(B, S\)"):
        ca(x, torch.randn(2, 7, 16), context_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="context has dtype"):
        ca(x, torch.randn(2, 7, 16).half())


def test_dropout_only_in_training():
    m = _mha(16, 4, dropout=0.5, dtype=torch.float32)
    x = _x(dtype=torch.float32)
    assert_close(m(x), m(x))  # eval: deterministic
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(x), m.eval()(x))


# --- property: the fused path equals lama's path for random shapes and masks -----------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 7), H_G=st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (4, 1)]),
       causal=st.booleans(), positional=st.sampled_from(["none", "rope", "alibi"]), seed=st.integers(0, 2**16))
def test_fused_equals_lama_path_random(B, T, H_G, causal, positional, seed):
    H, G = H_G
    m = _mha(4 * H, H, n_kv_head=G, causal=causal, positional=positional, block_size=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4 * H, generator=g, dtype=torch.float64)
    mask = torch.rand(B, 1, T, T, generator=g) > 0.3  # may contain fully masked rows
    y_fast = m(x, mask=mask)
    y_slow, w = m(x, mask=mask, return_attn=True)
    assert_close(y_fast, y_slow)
    assert not torch.isnan(y_fast).any()
    allowed = mask & causal_mask(T) if causal else mask.expand(B, H, T, T)
    assert torch.equal(w != 0, allowed.expand(B, H, T, T))  # weight exactly where attending is allowed


def test_kv_cache_buffer_grows_in_place_and_matches_concatenation():
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randn(2, 3, n, 4, generator=g) for n in (5, 1, 1, 20, 1, 40)]
    for max_len in (None, 68):
        c = KVCache(max_len=max_len)
        for i, t in enumerate(chunks):
            k, v = c.update(t, -t)
            want = torch.cat(chunks[:i + 1], dim=-2)  # (B, H_kv, T, D)
            assert_close(k, want)
            assert_close(v, -want)
            assert c.length == want.shape[-2] and c.nbytes == 2 * want.nbytes
        if max_len is not None:  # the buffer was allocated once, at max_len
            assert c._k.shape[-2] == max_len
    # earlier views keep their values when the cache grows (no aliasing of positions)
    c = KVCache()
    k0, _ = c.update(chunks[0], chunks[0])
    snapshot = k0.clone()
    for t in chunks[1:]:
        c.update(t, t)
    assert_close(k0, snapshot)


def test_kv_cache_keeps_gradients_when_autograd_records():
    m = _mha(16, 4)
    x = _x(T=6).requires_grad_()
    cache = KVCache()
    y = torch.cat([m(x[:, :4], kv_cache=cache), m(x[:, 4:], kv_cache=cache)], dim=1)
    y.square().sum().backward()  # would fail if the cache had written in place into saved tensors
    x2 = x.detach().clone().requires_grad_()
    m(x2).square().sum().backward()
    assert_close(x.grad, x2.grad)
