"""Probes: reading what a trained model holds at each depth, and how far gradients reach.

Covers (chapter 15): ``residual_stream(model, idx)``, the residual stream of a ``lama.gpt.GPT``
after the embedding and after every block, taken with forward hooks so that it is exactly what
the model's own forward pass computes; ``logit_lens(model, idx)``, each of those states read out
with the model's final norm and language-model head (the "logit lens", nostalgebraist 2020);
and ``jacobian_norms(f, x)``, the size of the derivative of one output position with respect
to every input position, ``‖∂y_t / ∂x_s‖`` for all s — how much of position s can reach
position t in one differentiable step, for any sequence model (an RNN or a transformer).
Leaves out: trained probes (linear probes, the tuned lens), attention-pattern analysis
(chapter 5), and causal interventions such as activation patching.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

__all__ = ["residual_stream", "logit_lens", "jacobian_norms"]


def _check_gpt(model: nn.Module) -> None:
    tr = getattr(model, "transformer", None)
    if not isinstance(tr, nn.ModuleDict) or "h" not in tr or "drop" not in tr or not hasattr(model, "lm_head"):
        raise TypeError(f"model must be a lama.gpt.GPT (transformer.drop, transformer.h, lm_head), "
                        f"got {type(model).__name__}")


@torch.no_grad()
def residual_stream(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream of a GPT on ``idx (B, T)``: a tensor ``(L + 1, B, T, C)``.

    Entry 0 is the input to the first block (token plus position embedding, after dropout);
    entry l is the output of block l. The model runs once, unchanged, in its current mode.
    """
    _check_gpt(model)
    states: list[torch.Tensor] = []
    record = lambda mod, inp, out: states.append(out)  # noqa: E731
    handles = [model.transformer.drop.register_forward_hook(record)]
    handles += [block.register_forward_hook(record) for block in model.transformer.h]
    try:
        model(idx)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(states)  # (L + 1, B, T, C)


@torch.no_grad()
def logit_lens(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Logits ``(L + 1, B, T, V)`` read from the residual stream at every depth.

    Each state goes through the model's final norm (``transformer.ln_f``, where the model has
    one; post-LN blocks end in a norm themselves) and ``lm_head``, as the last block's output
    does. The last entry therefore equals the model's own logits.
    """
    x = residual_stream(model, idx)  # (L + 1, B, T, C)
    if "ln_f" in model.transformer:
        x = model.transformer.ln_f(x)
    return model.lm_head(x)  # (L + 1, B, T, V)


def jacobian_norms(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, position: int = -1) -> torch.Tensor:
    """``‖∂y_position / ∂x_s‖_F`` for every input position s, averaged over the batch: a tensor ``(T,)``.

    ``f`` maps ``x (B, T, C_in)`` to ``y (B, T, C_out)`` and must treat the examples of a batch
    independently (no batch statistics). The Frobenius norm of each ``(C_out, C_in)`` block of
    the Jacobian is computed exactly, with one backward pass per output feature.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point (B, T, C) tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    B, T, _ = x.shape
    if not -T <= position < T:
        raise ValueError(f"position must be in [-{T}, {T}) for a sequence of T={T}, got {position}")
    x = x.detach().requires_grad_(True)
    y = f(x)
    if not isinstance(y, torch.Tensor) or y.dim() != 3 or y.shape[:2] != (B, T):
        raise ValueError(f"f(x) must return a (B, T, C_out) tensor with B={B}, T={T}, "
                         f"got {tuple(getattr(y, 'shape', ()))}")
    squares = torch.zeros(B, T, dtype=x.dtype, device=x.device)
    for c in range(y.shape[-1]):
        (g,) = torch.autograd.grad(y[:, position, c].sum(), x, retain_graph=True)  # (B, T, C_in)
        squares += (g ** 2).sum(-1)  # examples are independent, so row b is ∂y[b] / ∂x[b]
    return squares.sqrt().mean(0)  # (T,)
