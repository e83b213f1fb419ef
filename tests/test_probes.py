"""Tests for lama.probes: residual stream, logit lens, Jacobian norms."""

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from lama.gpt import GPT, GPTConfig
from lama.probes import jacobian_norms, logit_lens, residual_stream


def small_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=11, n_layer=3, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_residual_stream_matches_a_walk_through_the_blocks(one_thread):
    model = small_gpt()
    idx = torch.randint(0, 11, (2, 9))
    states = residual_stream(model, idx)
    assert states.shape == (4, 2, 9, 16)
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(9))
    assert_close(states[0], x)
    for layer, block in enumerate(tr.h, start=1):
        x = block(x)
        assert_close(states[layer], x)


def test_logit_lens_last_entry_is_the_model_output(one_thread):
    for norm_position in ("pre", "post"):
        model = small_gpt(norm_position=norm_position)
        idx = torch.randint(0, 11, (3, 7))
        lens = logit_lens(model, idx)
        assert lens.shape == (4, 3, 7, 11)
        assert_close(lens[-1], model(idx)[0])


def test_logit_lens_at_depth_zero_reads_the_embedding(one_thread):
    model = small_gpt()
    idx = torch.randint(0, 11, (1, 5))
    tr = model.transformer
    expected = model.lm_head(tr.ln_f(tr.wte(idx) + tr.wpe(torch.arange(5))))
    assert_close(logit_lens(model, idx)[0], expected)


def test_probes_leave_no_hooks_behind(one_thread):
    model = small_gpt()
    residual_stream(model, torch.zeros(1, 4, dtype=torch.long))
    assert not model.transformer.drop._forward_hooks
    assert all(not b._forward_hooks for b in model.transformer.h)


def test_jacobian_norms_of_a_causal_linear_map():
    # y_t = sum_{s <= t} A x_s: the block dy_t/dx_s is A for s <= t and 0 after.
    torch.manual_seed(0)
    A = torch.randn(5, 3, dtype=torch.float64)
    f = lambda x: torch.cumsum(x, dim=1) @ A.T  # noqa: E731
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    norms = jacobian_norms(f, x, position=3)
    expected = torch.tensor([A.norm()] * 4 + [0.0, 0.0], dtype=torch.float64)
    assert_close(norms, expected)


def test_jacobian_norms_agree_with_torch_functional_jacobian(one_thread):
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True).double()
    f = lambda x: lstm(x)[0]  # noqa: E731
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    norms = jacobian_norms(f, x)
    ref = []
    for b in range(2):
        J = torch.autograd.functional.jacobian(lambda xb: f(xb[None])[0, -1], x[b])  # (C_out, T, C_in)
        ref.append(J.pow(2).sum(dim=(0, 2)).sqrt())
    assert_close(norms, torch.stack(ref).mean(0))


def test_jacobian_norms_rejects_bad_inputs():
    f = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="x must be a floating-point"):
        jacobian_norms(f, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="position must be in"):
        jacobian_norms(f, torch.zeros(1, 3, 2), position=3)
    with pytest.raises(ValueError, match="f\\(x\\) must return"):
        jacobian_norms(lambda x: x.sum(1), torch.zeros(1, 3, 2))


def test_gpt_probes_reject_other_models():
    with pytest.raises(TypeError, match="lama.gpt.GPT"):
        residual_stream(nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))
