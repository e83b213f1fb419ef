"""Tests for lama.circuits: captured attention weights against independent references, pattern
and induction scores on hand-made matrices, the repeated-sequence data and the attention-only model."""

import math

import pytest
import torch
import torch.nn as nn
from einops import rearrange
from torch.testing import assert_close

from lama.attention import MultiHeadAttention
from lama.bert import Bert, BertConfig
from lama.circuits import (AttnOnlyConfig, AttnOnlyTransformer, attention_maps, capture_attention, induction_score,
                           matching_heads, pattern_scores, repeat_batches, repeated_tokens, word_ids)
from lama.gpt import GPT, GPTConfig
from lama.layers import Block


def _recompute(attn: MultiHeadAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    """softmax(q kᵀ/√D) from the module's own projection, written out independently of lama.attention."""
    C, H = attn.n_embd, attn.n_head
    D = C // H
    qkv = x @ attn.c_attn.weight.T + (0 if attn.c_attn.bias is None else attn.c_attn.bias)  # (B, T, 3C)
    q = rearrange(qkv[..., :C], "b t (h d) -> b h t d", h=H)  # (B, H, T, D)
    k = rearrange(qkv[..., C:2 * C], "b t (h d) -> b h t d", h=H)  # (B, H, T, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    T = x.shape[1]
    allowed = torch.ones(T, T, dtype=torch.bool)
    if attn.causal:
        allowed = allowed.tril()
    if mask is not None:
        allowed = allowed & mask
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


@pytest.mark.parametrize("causal", [True, False])
def test_captured_weights_match_pytorch_multihead_attention(one_thread, causal):
    torch.manual_seed(0)
    B, T, C, H = 2, 7, 24, 4
    ours = MultiHeadAttention(C, H, causal=causal).eval()
    ref = nn.MultiheadAttention(C, H, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)  # both lay out [q | k | v]
        ref.in_proj_bias.copy_(ours.c_attn.bias)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        ref.out_proj.bias.copy_(ours.c_proj.bias)
    x = torch.randn(B, T, C)
    mask = torch.ones(T, T, dtype=torch.bool).tril() if causal else None
    with torch.no_grad():
        want_y, want_w = ref(x, x, x, attn_mask=None if mask is None else ~mask, need_weights=True,
                             average_attn_weights=False)
        plain = ours(x)
        with capture_attention(ours) as maps:
            y = ours(x)
    assert len(maps) == 1 and maps[0].shape == (B, H, T, T)
    assert_close(maps[0], want_w, atol=1e-6, rtol=1e-5)
    assert_close(maps[0], _recompute(ours, x), atol=1e-6, rtol=1e-5)
    assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    assert_close(y, plain, atol=1e-6, rtol=1e-5)  # asking for the weights does not change the output
    # outside the with-block the hooks are gone
    assert not ours._forward_hooks and not ours._forward_pre_hooks


def test_return_attn_leaves_block_and_attention_outputs_unchanged(one_thread):
    torch.manual_seed(1)
    cfg = GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=16)
    block = Block(cfg).eval()
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        y, w = block(x, return_attn=True)
        assert_close(y, block(x), atol=1e-6, rtol=1e-5)
        assert_close(w, _recompute(block.attn, block.ln_1(x)), atol=1e-6, rtol=1e-5)
        a, w2 = block.attn(x, return_attn=True)
        assert_close(a, block.attn(x), atol=1e-6, rtol=1e-5)
        with capture_attention(block) as maps:  # the caller's own return_attn still gets its tuple
            y2, w3 = block(x, return_attn=True)
    assert_close(y2, y)
    assert_close(maps[0], w3)


def test_every_gpt_layer_matches_a_recomputation_from_its_own_input(one_thread):
    torch.manual_seed(2)
    cfg = GPTConfig(block_size=16, vocab_size=13, n_layer=3, n_head=4, n_embd=32, dropout=0.1)
    model = GPT(cfg).train()  # attention_maps switches to eval and back
    idx = torch.randint(13, (2, 10))
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.transformer.h]
    A = attention_maps(model, idx)
    for h in hooks:
        h.remove()
    assert model.training
    assert A.shape == (3, 2, 4, 10, 10)
    for l, block in enumerate(model.transformer.h):
        with torch.no_grad():
            assert_close(A[l], _recompute(block.attn, inputs[l]), atol=1e-6, rtol=1e-5)
    assert (A.triu(1) == 0).all()  # causal: nothing on future keys
    assert_close(A.sum(-1), torch.ones(3, 2, 4, 10))
    model.eval()
    with torch.no_grad():
        plain, _ = model(idx)
        with capture_attention(model):
            hooked, _ = model(idx)
    assert_close(hooked, plain, atol=1e-5, rtol=1e-5)


def test_capture_on_bert_equals_its_return_attn_and_respects_padding(one_thread):
    torch.manual_seed(3)
    model = Bert(BertConfig(vocab_size=50, n_embd=32, n_layer=2, n_head=4, hidden=64, block_size=16)).eval()
    ids = torch.randint(1, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        x, attns = model(ids, attention_mask=mask, return_attn=True)
        x_plain = model(ids, attention_mask=mask)
    A = attention_maps(model, ids, attention_mask=mask)
    assert A.shape == (2, 2, 4, 9, 9)
    assert_close(A, torch.stack(attns))
    assert_close(x, x_plain, atol=1e-5, rtol=1e-5)
    assert (A[:, 1, :, :, 6:] == 0).all()  # no weight on padding keys


def test_capture_errors():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with capture_attention("gpt"):
            pass
    with pytest.raises(ValueError, match="no lama MultiHeadAttention"):
        with capture_attention(nn.Linear(2, 2)):
            pass


# --- scores -----------------------------------------------------------------------------------

def _shifted(T, offset):
    """Each query puts all its weight on key i + offset (clamped into the sequence)."""
    a = torch.zeros(T, T)
    for i in range(T):
        a[i, min(max(i + offset, 0), T - 1)] = 1.0
    return a


def test_word_ids_follow_wordpiece_continuations():
    assert word_ids(["[CLS]", "the", "un", "##believ", "##able", "cat", "[SEP]"]) == [0, 1, 2, 2, 2, 3, 4]
    assert word_ids(["##x", "a"]) == [0, 1]  # a leading ## piece starts the first word


def test_pattern_scores_on_hand_made_heads():
    tokens = ["[CLS]", "play", "##ing", "cats", "[SEP]"]
    T = len(tokens)
    heads = torch.stack([_shifted(T, -1), _shifted(T, 1), _shifted(T, -T), torch.full((T, T), 1 / T)])  # (4, T, T)
    s = pattern_scores(heads, tokens)
    assert set(s) == {"previous token", "next token", "first token", "[SEP]", "same word"}
    # where each head looks: keys [0,0,1,2,3], [1,2,3,4,4], [0,0,0,0,0], and evenly
    assert_close(s["previous token"], torch.tensor([1.0, 0.0, 1 / 4, 1 / T]))  # head 2: query 1 -> key 0
    assert_close(s["next token"], torch.tensor([0.0, 1.0, 0.0, 1 / T]))
    assert_close(s["first token"], torch.tensor([2 / T, 0.0, 1.0, 1 / T]))  # query 0 counts its own [CLS]
    assert_close(s["[SEP]"], torch.tensor([0.0, 2 / T, 0.0, 1 / T]))  # [SEP] (last) attends to itself under +1
    # "play" (1) and "##ing" (2) are one word: ##ing -> play under -1, play -> ##ing under +1
    assert_close(s["same word"], torch.tensor([0.5, 0.5, 0.0, 1 / T]))
    assert "same word" not in pattern_scores(heads, ["a", "b", "c", "d", "e"])
    assert "[SEP]" not in pattern_scores(heads, ["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="one entry per position T=5"):
        pattern_scores(heads, tokens[:4])
    with pytest.raises(ValueError, match=r"\(\.\.\., T, T\)"):
        pattern_scores(torch.zeros(3, 4), tokens)


def test_matching_heads_best_first():
    scores = torch.tensor([[0.1, 0.9], [0.7, 0.2]])
    assert [(l, h) for l, h, _ in matching_heads(scores, 0.5)] == [(0, 1), (1, 0)]
    assert matching_heads(scores, 0.95) == []
    with pytest.raises(ValueError, match=r"\(L, H\)"):
        matching_heads(torch.zeros(3), 0.5)


def test_induction_score_is_one_on_the_stripe_and_small_elsewhere():
    P, T = 5, 10
    stripe = _shifted(T, -(P - 1))  # query i -> key i - P + 1
    assert_close(induction_score(stripe, P), torch.tensor(1.0))
    assert_close(induction_score(_shifted(T, -1), P), torch.tensor(0.0))
    assert_close(induction_score(torch.full((2, 3, T, T), 1 / T), P), torch.full((2, 3), 1 / T))
    with pytest.raises(ValueError, match="period must be an int in"):
        induction_score(stripe, T)


# --- data and model ---------------------------------------------------------------------------

def test_repeated_tokens_repeat_with_each_rows_period():
    g = torch.Generator().manual_seed(0)
    seq = repeated_tokens(4, 6, 50, generator=g)
    assert seq.shape == (4, 12) and (seq[:, :6] == seq[:, 6:]).all()
    seq = repeated_tokens(64, (3, 7), 1000, length=20, generator=g)
    periods = set()
    for row in seq:
        p = next(p for p in range(3, 8) if (row[p:] == row[:-p]).all())
        periods.add(p)
    assert periods == {3, 4, 5, 6, 7}
    with pytest.raises(ValueError, match="period must satisfy"):
        repeated_tokens(2, (5, 3), 10)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        repeated_tokens(2, 3, 0)


def test_repeat_batches_give_shifted_targets():
    get = repeat_batches((4, 8), 30, 16)
    x, y = get("train", 5, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (5, 16)
    assert (x[:, 1:] == y[:, :-1]).all()


def test_attn_only_transformer_is_causal_and_has_no_mlp(one_thread):
    torch.manual_seed(0)
    cfg = AttnOnlyConfig(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16)
    model = AttnOnlyTransformer(cfg).eval()
    assert not any("mlp" in n for n, _ in model.named_parameters())
    idx = torch.randint(20, (2, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 12, 20) and loss.ndim == 0
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 20
    assert_close(model(changed)[0][:, :8], logits[:, :8])  # the future does not leak back
    assert model(idx)[1] is None
    assert attention_maps(model, idx).shape == (2, 2, 2, 12, 12)
    with pytest.raises(ValueError, match="longer than block_size=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible by n_head=3"):
        AttnOnlyConfig(n_embd=16, n_head=3)
    with pytest.raises(TypeError, match="AttnOnlyConfig"):
        AttnOnlyTransformer(cfg.__dict__)
