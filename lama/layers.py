"""The transformer block: normalisation, the feed-forward network, and the residual stream.

Covers (chapter 6): ``layer_norm`` and ``rms_norm`` written out, and the modules ``LayerNorm``
and ``RMSNorm`` (equal to ``nn.LayerNorm`` and ``nn.RMSNorm``); the activations ``relu``,
``gelu`` (exact, and the tanh approximation GPT-2 uses) and ``silu`` written out — the
modules call PyTorch's fused kernels for the same functions, a test ties each pair; the position-wise feed-forward network ``MLP`` and its gated variant
``SwiGLU``; ``Block``, one transformer layer — attention then feed-forward, each reading
from and adding into the residual stream — in pre-LN or post-LN form, with residual
connections that can be switched off for experiments; and ``init_weights``, GPT-2's
initialisation with the residual output projections scaled by 1/√(2·n_layer).
Leaves out: attention itself (``lama.attention``), positions (``lama.positional``), and the
embeddings, final norm and language-model head around the stack of blocks (``lama.gpt``).

Shapes: activations are ``(B, T, C)``; the feed-forward hidden layer is ``(B, T, hidden)``.
Every layer here except attention acts on each position on its own ("position-wise").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lama.attention import MultiHeadAttention

__all__ = [
    "LayerNorm", "RMSNorm", "layer_norm", "rms_norm", "relu", "gelu", "silu", "ACTIVATIONS", "MLP", "SwiGLU",
    "swiglu_hidden", "Block", "init_weights",
]


def _check_width(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dropout(p) -> None:
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p!r}")


def _check_input(x, n_embd: int, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != n_embd:
        raise ValueError(f"{who}: x must have shape (..., C={n_embd}), got {tuple(x.shape)}")


# --- normalisation --------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al., 2016) over the last dimension C.

    Each position's vector is shifted to mean 0 and scaled to variance 1 (the biased variance,
    dividing by C, as PyTorch does), then multiplied by a learned ``weight`` (initialised to 1)
    and shifted by a learned ``bias`` (initialised to 0; ``bias=False`` drops it)::

        y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

    ``layer_norm`` below is that line written out; the module calls PyTorch's fused kernel,
    which computes the same thing (tests/test_layers.py ties the two) in one pass over memory.
    """

    def __init__(self, n_embd: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        _check_width("n_embd", n_embd)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.n_embd, self.eps = n_embd, float(eps)
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.n_embd, "LayerNorm")
        # = layer_norm(x, self.weight, self.bias, self.eps), fused into one kernel
        return F.layer_norm(x, (self.n_embd,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.n_embd}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich, 2019): LayerNorm without the centring.

    Divides each vector by its root mean square and multiplies by a learned ``weight``;
    no mean is subtracted and there is no bias::

        y = x / sqrt(mean(x²) + eps) * weight
    """

    def __init__(self, n_embd: int, eps: float = 1e-6):
        super().__init__()
        _check_width("n_embd", n_embd)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.n_embd, self.eps = n_embd, float(eps)
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.n_embd, "RMSNorm")
        # = rms_norm(x, self.weight, self.eps), fused into one kernel
        return F.rms_norm(x, (self.n_embd,), self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.n_embd}, eps={self.eps}"


def layer_norm(x: torch.Tensor, weight, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm written out: what ``LayerNorm`` computes (through ``F.layer_norm``)."""
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = x.var(dim=-1, keepdim=True, unbiased=False)  # (..., 1): biased, divide by C
    y = (x - mean) * torch.rsqrt(var + eps) * weight
    return y if bias is None else y + bias


def rms_norm(x: torch.Tensor, weight, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm written out: what ``RMSNorm`` computes (through ``F.rms_norm``)."""
    ms = x.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
    return x * torch.rsqrt(ms + eps) * weight


def _make_norm(kind: str, n_embd: int, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return LayerNorm(n_embd, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(n_embd)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


# --- activations ----------------------------------------------------------------------------

def relu(x: torch.Tensor) -> torch.Tensor:
    """max(0, x)."""
    return x.clamp_min(0)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Gaussian error linear unit (Hendrycks & Gimpel, 2016): x·Φ(x), Φ the standard normal CDF.

    ``approximate="none"``: Φ(x) = ½(1 + erf(x/√2)), exact.
    ``approximate="tanh"``: Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the form GPT-2 was
    trained with (so loading its weights needs it). Both equal ``torch.nn.functional.gelu``.
    """
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(x) ("swish" with β = 1), the gate nonlinearity of SwiGLU."""
    return x * torch.sigmoid(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# The MLP's activations by name. The models call PyTorch's fused kernels, which compute
# exactly the functions written out above (tests/test_layers.py ties each pair): one pass
# over memory instead of a handful, which is most of an activation's cost on a CPU.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
}


# --- feed-forward ---------------------------------------------------------------------------

class MLP(nn.Module):
    """The position-wise feed-forward network: C -> hidden -> C with a nonlinearity between.

    ``c_fc`` expands each position's vector to ``hidden`` features (4·C by default, as in the
    original transformer and GPT-2), the activation acts elementwise, ``c_proj`` projects back
    to C, and dropout is applied to the output (before it is added to the residual stream).
    ``activation`` is one of ``"relu"``, ``"gelu"`` (exact) or ``"gelu_tanh"``.
    Parameters: 2·C·hidden weights, plus hidden + C biases when ``bias``.
    """

    def __init__(self, n_embd: int, hidden: int | None = None, activation: str = "gelu",
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        hidden = 4 * n_embd if hidden is None else hidden
        _check_width("n_embd", n_embd)
        _check_width("hidden", hidden)
        _check_dropout(dropout)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.n_embd, self.hidden, self.activation = n_embd, hidden, activation
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.n_embd, "MLP")
        h = self.act(self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(h))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def swiglu_hidden(n_embd: int, multiple_of: int = 8) -> int:
    """SwiGLU's default hidden width: 2/3 of 4·C, rounded up to a multiple of ``multiple_of``.

    SwiGLU has three weight matrices instead of two, so 2/3·4C keeps its parameter count
    equal to (or just above) a 4·C MLP's, as in Shazeer (2020) and LLaMA.
    """
    _check_width("n_embd", n_embd)
    _check_width("multiple_of", multiple_of)
    h = math.ceil(8 * n_embd / 3)
    return multiple_of * math.ceil(h / multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward network (Shazeer, 2020), as used by PaLM and LLaMA::

        y = c_proj(silu(c_gate(x)) ⊙ c_fc(x))

    The gate branch ``c_gate`` decides, feature by feature, how much of the linear branch
    ``c_fc`` passes. ``hidden`` defaults to ``swiglu_hidden(C)`` (≈ 8C/3), which keeps the
    parameter count that of a 4·C MLP: 3·C·hidden weights. No biases by default, as in LLaMA.
    """

    def __init__(self, n_embd: int, hidden: int | None = None, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        hidden = swiglu_hidden(n_embd) if hidden is None else hidden
        _check_width("n_embd", n_embd)
        _check_width("hidden", hidden)
        _check_dropout(dropout)
        self.n_embd, self.hidden = n_embd, hidden
        self.c_gate = nn.Linear(n_embd, hidden, bias=bias)
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.n_embd, "SwiGLU")
        h = F.silu(self.c_gate(x)) * self.c_fc(x)  # (B, T, hidden); F.silu = silu, fused
        return self.dropout(self.c_proj(h))  # (B, T, C)


# --- the block ------------------------------------------------------------------------------

# Block's activation names -> the MLP's ("gelu" in a GPT config means GPT-2's tanh form).
_BLOCK_ACTIVATIONS = {"gelu": "gelu_tanh", "gelu_exact": "gelu", "relu": "relu", "swiglu": "swiglu"}


class Block(nn.Module):
    """One transformer layer: self-attention then a feed-forward network, around a residual stream.

    Pre-LN (``norm_position="pre"``, GPT-2 and most models since)::

        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))

    Post-LN (``"post"``, the original transformer of Vaswani et al., 2017)::

        x = ln_1(x + attn(x))
        x = ln_2(x + mlp(x))

    With ``residual=False`` the ``x +`` is dropped (for the experiment that shows why it is
    there). Dropout sits where GPT-2 has it: on the attention weights and on each sub-layer's
    output before it joins the stream (inside ``attn`` and ``mlp``).

    Reads from ``config`` (any object; missing attributes take the defaults): ``n_embd``,
    ``n_head``, ``n_kv_head=None``, ``block_size=None``, ``dropout=0.0``, ``bias=True``,
    ``norm_position="pre"``, ``norm="layernorm"`` (or ``"rmsnorm"``), ``activation="gelu"``
    (tanh form, as GPT-2; or ``"gelu_exact"``, ``"relu"``, ``"swiglu"``), ``mlp_hidden=None``
    (the feed-forward width; None = 4·C, or ≈ 8C/3 for SwiGLU), ``positional="learned"``
    (passed to attention, which handles ``"rope"`` and ``"alibi"`` itself), ``causal=True``,
    ``residual=True``.
    """

    def __init__(self, config):
        super().__init__()
        get = lambda name, default: getattr(config, name, default)  # noqa: E731
        n_embd, n_head = get("n_embd", None), get("n_head", None)
        _check_width("config.n_embd", n_embd)
        _check_width("config.n_head", n_head)
        dropout, bias = get("dropout", 0.0), get("bias", True)
        self.norm_position = get("norm_position", "pre")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"config.norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        activation = get("activation", "gelu")
        if activation not in _BLOCK_ACTIVATIONS:
            raise ValueError(f"config.activation must be one of {sorted(_BLOCK_ACTIVATIONS)}, got {activation!r}")
        self.residual = bool(get("residual", True))
        norm, hidden = get("norm", "layernorm"), get("mlp_hidden", None)
        if norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"config.norm must be 'layernorm' or 'rmsnorm', got {norm!r}")

        self.ln_1 = _make_norm(norm, n_embd, bias)
        self.attn = MultiHeadAttention(
            n_embd, n_head, n_kv_head=get("n_kv_head", None), bias=bias, dropout=dropout,
            causal=get("causal", True), positional=get("positional", "learned"),
            block_size=get("block_size", None),
        )
        self.ln_2 = _make_norm(norm, n_embd, bias)
        if activation == "swiglu":
            self.mlp = SwiGLU(n_embd, hidden, bias=bias, dropout=dropout)
        else:
            self.mlp = MLP(n_embd, hidden, activation=_BLOCK_ACTIVATIONS[activation], bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor, mask=None, kv_cache=None, return_attn: bool = False):
        """x ``(B, T, C)`` -> ``(B, T, C)``, or ``(y, attn)`` with attn ``(B, H, T, T_k)`` if asked.

        ``mask`` (bool, True = may attend) and ``kv_cache`` are passed on to the attention.
        """
        add = (lambda x, f: x + f) if self.residual else (lambda x, f: f)  # the residual connection
        if self.norm_position == "pre":
            a = self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache, return_attn=return_attn)
            a, w = a if return_attn else (a, None)
            x = add(x, a)
            x = add(x, self.mlp(self.ln_2(x)))
        else:
            a = self.attn(x, mask=mask, kv_cache=kv_cache, return_attn=return_attn)
            a, w = a if return_attn else (a, None)
            x = self.ln_1(add(x, a))
            x = self.ln_2(add(x, self.mlp(x)))
        return (x, w) if return_attn else x


def init_weights(model: nn.Module, n_layer: int) -> nn.Module:
    """GPT-2's initialisation, in place; returns ``model``.

    Every ``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, 0.02²), every Linear bias = 0;
    norms keep weight 1, bias 0. Then each residual output projection — every parameter whose
    name ends with ``c_proj.weight`` — is redrawn with std 0.02/√(2·n_layer): the stream is a
    sum of 2·n_layer such contributions, so this keeps its variance at initialisation from
    growing with depth (Radford et al., 2019).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_width("n_layer", n_layer)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            elif isinstance(m, (LayerNorm, RMSNorm, nn.LayerNorm, nn.RMSNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        std = 0.02 / math.sqrt(2 * n_layer)
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std)
    return model
