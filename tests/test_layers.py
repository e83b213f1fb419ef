"""Tests for lama.layers: norms, activations and feed-forward nets against PyTorch's own, and the block."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from lama import layers
from lama.layers import MLP, Block, LayerNorm, RMSNorm, SwiGLU, gelu, init_weights, swiglu_hidden



def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- LayerNorm / RMSNorm ------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(eps, bias):
    g = _gen()
    C = 24
    ours, ref = LayerNorm(C, eps=eps, bias=bias), nn.LayerNorm(C, eps=eps, bias=bias)
    with torch.no_grad():  # non-trivial affine parameters, shared
        ours.weight.copy_(torch.randn(C, generator=g))
        ref.weight.copy_(ours.weight)
        if bias:
            ours.bias.copy_(torch.randn(C, generator=g))
            ref.bias.copy_(ours.bias)
    x = (3 * torch.randn(2, 5, C, generator=g) + 1.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert_close(y, y_ref)
    # the backward pass, too: input and parameter gradients
    w = torch.randn(y.shape, generator=g)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    assert_close(x.grad, x_ref.grad)
    assert_close(ours.weight.grad, ref.weight.grad)
    if bias:
        assert_close(ours.bias.grad, ref.bias.grad)
    else:
        assert ours.bias is None and sum(p.numel() for p in ours.parameters()) == C


@pytest.mark.parametrize("eps", [1e-5, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_written_out_norms_match_torch_and_the_modules(eps, bias):
    # The modules call the fused kernels; layer_norm and rms_norm are the same maths written
    # out (the teaching stage). Both forward and backward must agree with PyTorch's modules.
    g = _gen(7)
    C = 24
    ln, rms = nn.LayerNorm(C, eps=eps, bias=bias), nn.RMSNorm(C, eps=eps)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(C, generator=g))
        rms.weight.copy_(torch.randn(C, generator=g))
        if bias:
            ln.bias.copy_(torch.randn(C, generator=g))
    ours_ln, ours_rms = LayerNorm(C, eps=eps, bias=bias), RMSNorm(C, eps=eps)
    ours_ln.load_state_dict(ln.state_dict())
    ours_rms.load_state_dict(rms.state_dict())
    x = 3 * torch.randn(2, 5, C, generator=g) + 1.5
    for written, module, ref in (
        (lambda t: layers.layer_norm(t, ln.weight, ln.bias, eps), ours_ln, ln),
        (lambda t: layers.rms_norm(t, rms.weight, eps), ours_rms, rms),
    ):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = written(xa), ref(xb)
        assert_close(ya, yb)
        assert_close(module(x), ya)
        w = torch.randn(ya.shape, generator=g)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert_close(xa.grad, xb.grad)


def test_layernorm_output_statistics_and_eps_matters():
    x = torch.randn(4, 7, 16, generator=_gen()) * 10 + 3
    y = LayerNorm(16)(x)
    assert_close(y.mean(-1), torch.zeros(4, 7), atol=1e-5, rtol=0)
    assert_close(y.var(-1, unbiased=False), torch.ones(4, 7), atol=1e-3, rtol=0)
    # a large eps shrinks a small-variance input: the eps is inside the square root
    small = torch.tensor([[0.0, 0.1]])
    assert LayerNorm(2, eps=1.0)(small).abs().max() < 0.1 < LayerNorm(2, eps=1e-5)(small).abs().max()


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rmsnorm_matches_torch(eps):
    g = _gen(1)
    C = 20
    ours, ref = RMSNorm(C, eps=eps), nn.RMSNorm(C, eps=eps)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(C, generator=g))
        ref.weight.copy_(ours.weight)
    x = (2 * torch.randn(3, 4, C, generator=g) - 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert_close(x.grad, x_ref.grad)
    assert_close(ours.weight.grad, ref.weight.grad)


def test_rmsnorm_is_layernorm_without_centring():
    x = torch.randn(5, 12, generator=_gen(2))
    x = x - x.mean(-1, keepdim=True)  # zero-mean vectors: the two norms agree
    assert_close(RMSNorm(12, eps=1e-5)(x), LayerNorm(12, eps=1e-5, bias=False)(x))
    shifted = x + 4.0
    assert not torch.allclose(RMSNorm(12)(shifted), LayerNorm(12)(shifted), atol=1e-2)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_norms_check_their_arguments(cls):
    with pytest.raises(ValueError, match="n_embd"):
        cls(0)
    with pytest.raises(ValueError, match="eps"):
        cls(4, eps=0.0)
    with pytest.raises(ValueError, match=r"C=4"):
        cls(4)(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cls(4)([1.0, 2.0, 3.0, 4.0])


# --- activations --------------------------------------------------------------------------------

@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate):
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.randn(1000, generator=_gen(3))]).double()
    x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = gelu(x, approximate=approximate), F.gelu(x_ref, approximate=approximate)
    assert_close(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    assert_close(x.grad, x_ref.grad)


def test_gelu_approximations_differ_slightly():
    x = torch.linspace(-6, 6, 10001, dtype=torch.float64)
    gap = (gelu(x) - gelu(x, approximate="tanh")).abs().max().item()
    assert 1e-5 < gap < 1e-3  # close, but not the same function: GPT-2 weights need the tanh form
    with pytest.raises(ValueError, match="approximate"):
        gelu(x, approximate="sigmoid")


def test_relu_and_silu_match_torch():
    x = torch.randn(100, generator=_gen(4))
    assert_close(layers.relu(x), F.relu(x))
    assert_close(layers.silu(x), F.silu(x))


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh"])
def test_mlp_activations_are_the_written_out_functions(name):
    # ACTIVATIONS holds PyTorch's fused kernels; they must compute the functions written out.
    written = {"relu": layers.relu, "gelu": gelu, "gelu_tanh": lambda t: gelu(t, approximate="tanh")}[name]
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y2 = layers.ACTIVATIONS[name](x), written(x2)
    assert_close(y, y2)
    y.sum().backward()
    y2.sum().backward()
    assert_close(x.grad, x2.grad)


# --- feed-forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,torch_act", [
    ("relu", nn.ReLU()), ("gelu", nn.GELU()), ("gelu_tanh", nn.GELU(approximate="tanh")),
])
def test_mlp_equals_torch_sequential(activation, torch_act):
    torch.manual_seed(0)
    C = 16
    mlp = MLP(C, activation=activation)
    ref = nn.Sequential(nn.Linear(C, 4 * C), torch_act, nn.Linear(4 * C, C))
    ref[0].load_state_dict(mlp.c_fc.state_dict())
    ref[2].load_state_dict(mlp.c_proj.state_dict())
    x = torch.randn(2, 6, C)
    assert_close(mlp(x), ref(x))


def test_mlp_parameter_count():
    C = 32
    assert sum(p.numel() for p in MLP(C).parameters()) == 2 * C * 4 * C + 4 * C + C
    assert sum(p.numel() for p in MLP(C, hidden=50, bias=False).parameters()) == 2 * C * 50


def test_swiglu_matches_reference():
    torch.manual_seed(0)
    C, hidden = 12, 40
    ffn = SwiGLU(C, hidden)
    x = torch.randn(3, 5, C)
    # straightforward reference: the formula from Shazeer (2020), with PyTorch's silu
    Wg, Wu, Wo = ffn.c_gate.weight, ffn.c_fc.weight, ffn.c_proj.weight
    ref = (F.silu(x @ Wg.T) * (x @ Wu.T)) @ Wo.T
    assert_close(ffn(x), ref)
    assert ffn.c_gate.bias is None and ffn.c_fc.bias is None and ffn.c_proj.bias is None
    with_bias = SwiGLU(C, hidden, bias=True)
    ref_b = F.linear(F.silu(F.linear(x, with_bias.c_gate.weight, with_bias.c_gate.bias))
                     * F.linear(x, with_bias.c_fc.weight, with_bias.c_fc.bias),
                     with_bias.c_proj.weight, with_bias.c_proj.bias)
    assert_close(with_bias(x), ref_b)


@pytest.mark.parametrize("C", [8, 48, 64, 100, 768])
def test_swiglu_default_width_matches_mlp_budget(C):
    h = swiglu_hidden(C)
    assert h % 8 == 0 and 8 * C / 3 <= h < 8 * C / 3 + 8
    n_swiglu = sum(p.numel() for p in SwiGLU(C).parameters())
    n_mlp = sum(p.numel() for p in MLP(C, bias=False).parameters())
    assert n_swiglu == 3 * C * h
    assert n_mlp <= n_swiglu < n_mlp + 3 * C * 8  # equal up to the rounding of the width


@pytest.mark.parametrize("make", [lambda: MLP(8), lambda: SwiGLU(8), lambda: LayerNorm(8), lambda: RMSNorm(8)])
def test_position_wise_layers_commute_with_permuting_positions(make):
    torch.manual_seed(0)
    f = make()
    x = torch.randn(2, 9, 8)
    perm = torch.randperm(9)
    assert_close(f(x[:, perm]), f(x)[:, perm])


def test_feed_forward_arguments_are_checked():
    with pytest.raises(ValueError, match="activation"):
        MLP(8, activation="tanh")
    with pytest.raises(ValueError, match="hidden"):
        MLP(8, hidden=0)
    with pytest.raises(ValueError, match="dropout"):
        SwiGLU(8, dropout=1.5)
    with pytest.raises(ValueError, match=r"C=8"):
        MLP(8)(torch.zeros(2, 3, 7))


def test_mlp_dropout_only_in_training():
    torch.manual_seed(0)
    mlp = MLP(8, dropout=0.5)
    x = torch.randn(4, 8)
    assert not torch.equal(mlp(x), mlp(x))
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))


# --- initialisation -----------------------------------------------------------------------------

def test_init_weights_follows_gpt2():
    torch.manual_seed(0)
    n_layer, C = 6, 128
    model = nn.ModuleDict({
        "wte": nn.Embedding(500, C),
        "ln": LayerNorm(C),
        "mlp": MLP(C),
        "ffn": SwiGLU(C, bias=True),
    })
    with torch.no_grad():
        model["ln"].weight.fill_(3.0)
    init_weights(model, n_layer)
    resid_std = 0.02 / math.sqrt(2 * n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(resid_std, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name == "ln.weight":
            assert torch.all(p == 1)
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(p.mean().item()) < 0.002, name
    with pytest.raises(ValueError, match="n_layer"):
        init_weights(model, 0)


# --- the block ----------------------------------------------------------------------------------

def _cfg(**kw):
    base = dict(n_embd=32, n_head=4, block_size=16, dropout=0.0, bias=True, positional="learned")
    base.update(kw)
    return SimpleNamespace(**base)


def test_block_checks_its_config():
    with pytest.raises(ValueError, match="norm_position"):
        Block(_cfg(norm_position="middle"))
    with pytest.raises(ValueError, match="activation"):
        Block(_cfg(activation="tanh"))
    with pytest.raises(ValueError, match="norm"):
        Block(_cfg(norm="batchnorm"))
    with pytest.raises(ValueError, match="n_head"):
        Block(SimpleNamespace(n_embd=32))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
@pytest.mark.parametrize("activation,norm", [("gelu", "layernorm"), ("gelu_exact", "layernorm"),
                                             ("relu", "layernorm"), ("swiglu", "rmsnorm")])
def test_block_shapes_and_every_parameter_gets_a_gradient(norm_position, activation, norm):
    torch.manual_seed(0)
    block = Block(_cfg(norm_position=norm_position, activation=activation, norm=norm))
    assert [n for n, _ in block.named_children()][:4] == ["ln_1", "attn", "ln_2", "mlp"]
    assert isinstance(block.ln_1, RMSNorm if norm == "rmsnorm" else LayerNorm)
    assert isinstance(block.mlp, SwiGLU if activation == "swiglu" else MLP)
    x = torch.randn(3, 10, 32, requires_grad=True)
    y, attn = block(x, return_attn=True)
    assert y.shape == (3, 10, 32) and attn.shape == (3, 4, 10, 10)
    assert_close(block(x), y)  # the fused attention path (no weights asked) agrees
    y.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_block_activation_names_follow_gpt2():
    assert Block(_cfg()).mlp.activation == "gelu_tanh"  # GPT-2's "gelu" is the tanh form
    assert Block(_cfg(activation="gelu_exact")).mlp.activation == "gelu"
    assert Block(_cfg(mlp_hidden=40)).mlp.hidden == 40
    assert Block(_cfg(bias=False)).ln_1.bias is None


def test_block_pre_ln_is_stream_plus_sublayers():
    torch.manual_seed(0)
    block = Block(_cfg()).eval()
    x = torch.randn(2, 7, 32)
    h = x + block.attn(block.ln_1(x))
    expected = h + block.mlp(block.ln_2(h))
    assert_close(block(x), expected)
    # without the residual connections the stream is replaced, not added to
    block.residual = False
    h = block.attn(block.ln_1(x))
    assert_close(block(x), block.mlp(block.ln_2(h)))


def test_block_post_ln_normalises_its_output():
    torch.manual_seed(0)
    block = Block(_cfg(norm_position="post")).eval()
    x = 5 * torch.randn(2, 7, 32) + 2
    h = block.ln_1(x + block.attn(x))
    y = block(x)
    assert_close(y, block.ln_2(h + block.mlp(h)))
    assert_close(y.mean(-1), torch.zeros(2, 7), atol=1e-5, rtol=0)  # ln_2 weight 1, bias 0 at init
    assert_close(y.var(-1, unbiased=False), torch.ones(2, 7), atol=1e-3, rtol=0)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_is_causal(norm_position):
    torch.manual_seed(0)
    block = Block(_cfg(norm_position=norm_position)).eval()
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 32)  # change only the future
    assert_close(block(x)[:, :5], block(x2)[:, :5])
    assert not torch.allclose(block(x)[:, 5:], block(x2)[:, 5:])


def test_block_dropout_only_in_training():
    torch.manual_seed(0)
    block = Block(_cfg(dropout=0.3))
    x = torch.randn(2, 6, 32)
    assert not torch.equal(block(x), block(x))
    block.eval()
    assert torch.equal(block(x), block(x))


def test_block_passes_mask_to_attention():
    torch.manual_seed(0)
    block = Block(_cfg(causal=False)).eval()
    x = torch.randn(2, 6, 32)
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]  # (B, 1, 1, T_k)
    y, attn = block(x, mask=pad, return_attn=True)
    assert torch.all(attn[1, :, :, 4:] == 0)
    x2 = x.clone()
    x2[1, 4:] = torch.randn(2, 32)  # padded positions do not affect the real ones
    assert_close(block(x2, mask=pad)[1, :4], y[1, :4])


def test_block_decodes_with_a_kv_cache():
    from lama.attention import KVCache

    torch.manual_seed(0)
    block = Block(_cfg()).eval()
    x = torch.randn(2, 9, 32)
    full = block(x)
    cache = KVCache()
    steps = [block(x[:, :5], kv_cache=cache)] + [block(x[:, t:t + 1], kv_cache=cache) for t in range(5, 9)]
    assert_close(torch.cat(steps, dim=1), full)


def test_init_weights_scales_every_residual_projection_of_a_stack():
    torch.manual_seed(0)
    n_layer = 8
    stack = nn.ModuleList(Block(_cfg(n_embd=256, n_head=4)) for _ in range(n_layer))
    init_weights(stack, n_layer)
    scaled = [n for n, _ in stack.named_parameters() if n.endswith("c_proj.weight")]
    assert len(scaled) == 2 * n_layer  # attention and MLP output projections of every block
    for name, p in stack.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05), name
        elif name.endswith("c_attn.weight") or name.endswith("c_fc.weight"):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
