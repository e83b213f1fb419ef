"""Checks for chapter 3 (positions): the sinusoidal table and a rotary (RoPE) rotation.

References: ``lama.positional.SinusoidalPositionalEncoding`` (PE[pos, 2k] = sin(pos·ω_k),
PE[pos, 2k+1] = cos(pos·ω_k), ω_k = 10000^(−2k/C)) and ``RotaryEmbedding.rotate`` in its
default "rotate half" layout (pair k is dimensions k and k + D/2). The hints name the usual
slips: sines and cosines in two halves instead of interleaved, a frequency exponent of k/C
instead of 2k/C, positions counted from 1, a rotation by −θ, the interleaved RoPE layout.
Leaves out: ALiBi (its slopes are a closed formula; chapter 3 plots them).
"""

from __future__ import annotations

import torch

from lama.exercises._harness import check, close, compare, shape_text
from lama.positional import RotaryEmbedding, SinusoidalPositionalEncoding

__all__ = ["check_sinusoidal", "check_rope"]


def _table(T: int, C: int, *, exponent: str = "2k", start: int = 0, layout: str = "interleaved",
           first: str = "sin") -> torch.Tensor:
    pos = torch.arange(start, start + T, dtype=torch.float64)[:, None]  # (T, 1)
    k = torch.arange(C // 2, dtype=torch.float64)
    power = {"2k": 2 * k / C, "k": k / C}[exponent]
    angles = pos * 10000.0 ** (-power)  # (T, C/2)
    a, b = (angles.sin(), angles.cos()) if first == "sin" else (angles.cos(), angles.sin())
    if layout == "interleaved":
        return torch.stack([a, b], dim=-1).flatten(1).float()  # (T, C/2, 2) -> (T, C)
    return torch.cat([a, b], dim=-1).float()  # (T, C)


def _per_column_frequency(T: int, C: int) -> torch.Tensor:
    """The slip of using the column index i in ω = 10000^(−i/C) for both sin and cos columns."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(C, dtype=torch.float64)
    angles = pos * 10000.0 ** (-i / C)  # (T, C)
    return torch.where(i % 2 == 0, angles.sin(), angles.cos()).float()


@check("sinusoidal positional encoding")
def check_sinusoidal(learner, rng) -> int:
    """``fn(T, C)``: the ``(T, C)`` table with PE[pos, 2k] = sin(pos·ω_k), PE[pos, 2k+1] = cos(pos·ω_k)."""
    sizes = [(1, 2), (4, 8), (16, 4), (50, 32), (64, 64)]
    sizes += [(int(torch.randint(1, 40, (1,), generator=rng)), 2 * int(torch.randint(1, 24, (1,), generator=rng)))
              for _ in range(10)]
    for T, C in sizes:
        case = f"T={T}, C={C}"
        want = SinusoidalPositionalEncoding(C, T)(T)
        compare(learner(T, C, case=case), want, name=learner.name, names="T C", case=case, atol=1e-4, mistakes=[
            ("the table is transposed: one row per position, (T, C).", lambda g: g.shape == (C, T)),
            ("the layout: lama interleaves, column 2k is sin(pos·ω_k) and column 2k+1 is cos(pos·ω_k). You put "
             "all the sines first (an equivalent table up to a permutation of the columns, but not the book's).",
             lambda g: close(g, _table(T, C, layout="halves"), atol=1e-4)),
            ("sin and cos are swapped: column 2k is the sine, column 2k+1 the cosine.",
             lambda g: close(g, _table(T, C, first="cos"), atol=1e-4)),
            ("the frequencies: ω_k = 10000^(−2k/C) for k = 0 .. C/2 − 1. You used 10000^(−k/C), so the slowest "
             "wavelength is far too short.", lambda g: close(g, _table(T, C, exponent="k"), atol=1e-4)),
            ("the sin column 2k and the cos column 2k+1 must share one frequency ω_k = 10000^(−2k/C); you gave "
             "each column i its own 10000^(−i/C).", lambda g: close(g, _per_column_frequency(T, C), atol=1e-4)),
            ("positions start at 0: the first row is sin(0) = 0 and cos(0) = 1.",
             lambda g: close(g, _table(T, C, start=1), atol=1e-4)),
        ])
    return len(sizes)


def _rotate(x: torch.Tensor, *, interleaved: bool = False, sign: float = 1.0, start: int = 0) -> torch.Tensor:
    T, D = x.shape[-2], x.shape[-1]
    rope = RotaryEmbedding(D, T + start, interleaved=interleaved)
    cos, sin = rope.cos[start:start + T], rope.sin[start:start + T] * sign  # (T, D/2)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)  # (..., T, D)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, D)


@check("rotary position embedding (RoPE)")
def check_rope(learner, rng) -> int:
    """``fn(x)``: rotate x ``(..., T, D)`` at positions 0 .. T−1, pairing dimension k with k + D/2
    (the "rotate half" layout of ``RotaryEmbedding``), base 10000."""
    n = 0
    for _ in range(14):
        lead = [int(torch.randint(1, 4, (1,), generator=rng)) for _ in range(int(torch.randint(0, 3, (1,), generator=rng)))]
        T, D = int(torch.randint(2, 20, (1,), generator=rng)), 2 * int(torch.randint(1, 9, (1,), generator=rng))
        x = torch.randn(*lead, T, D, generator=rng)
        case = f"x of shape {shape_text(x.shape)} (T={T}, D={D})"
        compare(learner(x, case=case), RotaryEmbedding(D, T).rotate(x), name=learner.name, case=case, atol=1e-4, mistakes=[
            ("the layout: lama's default pairs dimension k with k + D/2 ('rotate half', as in GPT-NeoX and "
             "Llama); you paired 2k with 2k+1 (the RoFormer layout, interleaved=True).",
             lambda g: D > 2 and close(g, _rotate(x, interleaved=True), atol=1e-4)),
            ("the rotation goes the wrong way: (x1, x2) -> (x1·cos θ − x2·sin θ, x1·sin θ + x2·cos θ).",
             lambda g: close(g, _rotate(x, sign=-1.0), atol=1e-4)),
            ("positions start at 0: the first position is not rotated at all.",
             lambda g: close(g, _rotate(x, start=1), atol=1e-4)),
            ("the lengths changed: a rotation keeps the norm of every pair (x_k, x_{k+D/2}).",
             lambda g: not close(g.norm(dim=-1), x.norm(dim=-1), atol=1e-3)),
        ])
        n += 1
    return n
