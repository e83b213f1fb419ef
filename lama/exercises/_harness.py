"""The machinery shared by every ``check_<name>``: calling the learner's function safely,
comparing its answers with lama's, naming the usual mistake, and printing one short verdict.

A check never raises and never prints a traceback. It prints one of three verdicts:

* ``✓ <title>: ...`` the function agrees with lama's reference on every case;
* ``… <title>: not yet ...`` the function is still a stub (raises ``NotImplementedError``
  or returns ``None``);
* ``✗ <title>: ...`` it disagrees, with a hint for the mistake (when it is a known one),
  the case that exposed it and, for other errors, the exception's one-line message.

and returns a :class:`Result`, which is truthy only when the function passed (so
``assert check_softmax(my_softmax)`` works) and displays nothing more in a notebook.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import torch

__all__ = ["Result", "NotYet", "Wrong", "Learner", "check", "close", "compare", "shape_text"]


class NotYet(Exception):
    """The learner's function is still a stub."""


class Wrong(Exception):
    """The learner's function gave a wrong answer; the message is the hint."""


class Result:
    """Outcome of one check: ``bool(result)`` is True when it passed; ``status`` is one of
    ``"passed"``, ``"not yet"``, ``"wrong"``; ``message`` is the text that was printed."""

    def __init__(self, title: str, status: str, message: str):
        self.title, self.status, self.message = title, status, message

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        return f"Result({self.title!r}, status={self.status!r})"

    def _ipython_display_(self) -> None:  # the verdict is already printed; show nothing more
        pass


def shape_text(shape, names: str | None = None) -> str:
    """``(2, 3, 5)`` or, with glossary letters ``"B T V"``, ``(B, T, V) = (2, 3, 5)``."""
    dims = "(" + ", ".join(str(int(s)) for s in shape) + ")"
    if names:
        letters = names.split()
        if len(letters) == len(shape):
            return "(" + ", ".join(letters) + ") = " + dims
    return dims


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {shape_text(value.shape)}".replace("torch.", "")
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"a {type(value).__name__} of length {len(value)}"
    return repr(value)


class Learner:
    """Calls the learner's function on copies of the inputs and turns its failures into verdicts."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", "your function")
        if self.name == "<lambda>":
            self.name = "your function"
        try:
            params = inspect.signature(fn).parameters.values()
            self.n_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
            self.varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):  # builtins without a signature
            self.n_positional, self.varargs = 99, True

    def accepts(self, n: int) -> bool:
        """Whether the function takes at least ``n`` positional arguments."""
        return self.varargs or self.n_positional >= n

    def __call__(self, *args, case: str = ""):
        copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        try:
            out = self.fn(*copies)
        except NotImplementedError:
            raise NotYet(f"{self.name} is still a stub (it raises NotImplementedError). "
                         "Write its body, then run this cell again.") from None
        except Exception as e:  # the learner's bug: report it in one line, no traceback
            where = f"\n  when called with {case}" if case else ""
            raise Wrong(f"{self.name} raised {type(e).__name__}: {e}{where}") from None
        if out is None:
            raise NotYet(f"{self.name} returned None. Did you forget the `return` line?")
        for a, c in zip(args, copies):
            if isinstance(a, torch.Tensor) and (c.shape != a.shape or not torch.equal(torch.nan_to_num(c),
                                                                                     torch.nan_to_num(a))):
                raise Wrong(f"{self.name} changed its input in place (an `x -= ...` or `x[...] = ...`). "
                            "Work on a new tensor so that the caller's data stays as it was.")
        return out


def compare(got, want: torch.Tensor, *, name: str, names: str | None = None, case: str = "",
            mistakes=(), atol: float = 1e-5, rtol: float = 1e-4, what: str = "the output") -> None:
    """Raise :class:`Wrong` unless ``got`` matches ``want``.

    ``mistakes`` is a sequence of ``(hint, predicate)``: when the answer is wrong, the first
    predicate that returns True for ``got`` supplies the hint. ``names`` are the glossary
    letters of ``want``'s dimensions, used in shape messages.
    """
    where = f"\n  case: {case}" if case else ""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{name} should return a torch.Tensor, got {_describe(got)}.{where}")
    if got.shape != want.shape:
        for hint, wrong in mistakes:
            if _safe(wrong, got):
                raise Wrong(f"{hint}\n  expected {what} of shape {shape_text(want.shape, names)}, "
                            f"got {shape_text(got.shape)}.{where}")
        raise Wrong(f"{what} should have shape {shape_text(want.shape, names)}, got {shape_text(got.shape)}.{where}")
    if want.dtype == torch.bool:
        if got.dtype != torch.bool:
            raise Wrong(f"{name} should return a boolean tensor (True = may attend), got dtype "
                        f"{str(got.dtype).replace('torch.', '')}.{where}")
        if torch.equal(got, want):
            return
    else:
        if not (got.is_floating_point() or got.is_complex()) and want.is_floating_point():
            got = got.to(want.dtype)
        g, w = got.detach().to(torch.float64), want.to(torch.float64)
        if torch.allclose(g, w, atol=atol, rtol=rtol, equal_nan=True):
            return
    for hint, wrong in mistakes:
        if _safe(wrong, got):
            raise Wrong(f"{hint}{where}")
    raise Wrong(f"{what} differs from lama's{_worst(got, want)}.{where}")


def _safe(predicate, got) -> bool:
    try:
        return bool(predicate(got))
    except Exception:
        return False


def _worst(got: torch.Tensor, want: torch.Tensor) -> str:
    if want.dtype == torch.bool or want.numel() == 0:
        n = int((got != want).sum())
        return f" in {n} of {want.numel()} entries"
    diff = (got.detach().double() - want.double()).abs().nan_to_num(nan=float("inf"))
    idx = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), tuple(diff.shape)))
    return (f" (largest difference at index {idx}: you gave {float(got[idx]):.6g}, "
            f"lama gives {float(want[idx]):.6g})")


def close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Same shape and close values (NaN equal to NaN): the test behind each planted mistake."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol, equal_nan=True))


def check(title: str):
    """Decorator turning ``body(learner, rng) -> n_cases`` into ``check_<name>(fn) -> Result``."""
    def decorate(body):
        @functools.wraps(body)
        def run(fn, *, quiet: bool = False) -> Result:
            if not callable(fn):
                status, text = "wrong", f"✗ {title}: pass your function itself (no parentheses), got {_describe(fn)}."
            else:
                learner = Learner(fn)
                try:
                    n = body(learner, torch.Generator().manual_seed(0))
                except NotYet as e:
                    status, text = "not yet", f"… {title}: not yet. {e}"
                except Wrong as e:
                    status, text = "wrong", f"✗ {title}: not right yet. {e}"
                else:
                    status, text = "passed", f"✓ {title}: {learner.name} agrees with lama on all {n} cases. Well done!"
            if not quiet:
                print(text)
            return Result(title, status, text)
        return run
    return decorate
