"""Checks for generating and for encoder-decoder training: top-k and top-p (nucleus) filtering
(chapter 7) and teacher forcing's shifted decoder input and targets (chapter 11).

The filters are the steps inside ``lama.gpt.sample_next``, written out here on their own so a
learner's function can be compared with them (tests/test_exercises.py ties both to
``sample_next``'s draws); teacher forcing is compared with ``lama.date_task.encode_pairs``.
Hints: k or p off by one (the token that carries the total past p must stay), forgetting to
sort or to renormalise, filling with 0 instead of −inf, the shift going the wrong way.
Leaves out: temperature (chapter 1's softmax exercise covers it) and beam search.
"""

from __future__ import annotations

import datetime as dt

import torch

from lama.date_task import VOCAB, encode_pairs
from lama.exercises._harness import Wrong, check, close, compare, shape_text

__all__ = ["check_top_k", "check_top_p", "check_teacher_forcing", "top_k_filter", "top_p_filter"]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row ``(B, V)`` (k clamped to V); the others become −inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens of each row ``(B, V)`` whose probabilities sum to
    at least p, and renormalise: a token stays when the mass of the tokens more likely than it is < p."""
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)  # (B, V)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
    sorted_p = sorted_p.masked_fill(before >= p, 0.0)  # the first token always stays
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)  # (B, V)
    return kept / kept.sum(-1, keepdim=True)


def _int(rng, lo, hi):
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


@check("top-k filtering")
def check_top_k(learner, rng) -> int:
    """``fn(logits, k)``: logits ``(B, V)`` with all but the k largest of each row set to −inf."""
    n = 0
    for trial in range(20):
        B, V = _int(rng, 2, 4), _int(rng, 3, 30)
        k = [1, V, V + 3][trial] if trial < 3 else _int(rng, 2, V - 1)
        logits = torch.randn(B, V, generator=rng) * 2  # continuous values: no ties
        case = f"logits {shape_text(logits.shape, 'B V')}, k={k}"
        want = top_k_filter(logits, k)
        compare(learner(logits, k, case=case), want, name=learner.name, names="B V", case=case, mistakes=[
            ("k is larger than V here: keep every token (clamp k to V) rather than failing.",
             lambda g: k > V and not g.isfinite().all()),
            ("off by one: keep exactly k tokens per row (torch.topk(logits, k).values[:, -1:] is the k-th "
             "largest; drop what is strictly smaller).", lambda g: any(
                close(g, top_k_filter(logits, kk)) for kk in (k - 1, k + 1) if 1 <= kk)),
            ("filtered logits must be −inf (probability 0 after the softmax), not 0: a logit of 0 still "
             "gets probability e⁰ / Σ.", lambda g: close(g, want.masked_fill(want.isinf(), 0.0))),
            ("the k largest must be chosen within each row (the V logits of one sequence): topk along dim=-1.",
             lambda g: B > 1 and close(g, top_k_filter(logits.T, k).T)),
            ("the kept logits must stay as they were; only the others change.",
             lambda g: g.isfinite().sum() == want.isfinite().sum()),
        ])
        n += 1
    return n


def _p_off_by_one(probs, p):
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) > p, 0.0)  # drops the token that crosses p
    sorted_p[..., 0] = torch.where(sorted_p.sum(-1) > 0, sorted_p[..., 0], torch.sort(probs, -1, True).values[..., 0])
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def _p_unsorted(probs, p):
    before = probs.cumsum(-1) - probs
    kept = probs.masked_fill(before >= p, 0.0)
    return kept / kept.sum(-1, keepdim=True)


@check("top-p (nucleus) filtering")
def check_top_p(learner, rng) -> int:
    """``fn(probs, p)``: probabilities ``(B, V)`` restricted to the smallest set of most likely tokens
    whose total is at least p, renormalised to sum to 1."""
    n = 0
    for trial in range(24):
        B, V = _int(rng, 2, 4), _int(rng, 3, 30)
        probs = (torch.randn(B, V, generator=rng) * [0.5, 1.5, 3.0][trial % 3]).softmax(-1)
        p = [0.9, 0.5, 0.99, 1e-3][trial % 4] if trial < 8 else float(torch.rand(1, generator=rng) * 0.9 + 0.05)
        case = f"probs {shape_text(probs.shape, 'B V')}, p={p:.3g}"
        want = top_p_filter(probs, p)
        compare(learner(probs, p, case=case), want, name=learner.name, names="B V", case=case, mistakes=[
            ("the token that carries the total past p must stay: keep a token while the mass of the tokens "
             "*before* it is < p (cumsum − p_token < p), so that the kept set sums to at least p.",
             lambda g: close(g, _p_off_by_one(probs, p))),
            ("renormalise: divide the kept probabilities by their sum, so that each row sums to 1.",
             lambda g: close(g / g.sum(-1, keepdim=True), want)),
            ("sort first: the nucleus is made of the *most likely* tokens, so accumulate the probabilities "
             "in descending order (torch.sort(..., descending=True)) and scatter back.",
             lambda g: close(g, _p_unsorted(probs, p))),
            ("each row (one sequence's distribution over V) is filtered on its own: sort and accumulate "
             "along dim=-1.", lambda g: B > 1 and close(g, top_p_filter(probs.T, p).T)),
        ])
        n += 1
    return n


@check("teacher forcing")
def check_teacher_forcing(learner, rng) -> int:
    """``fn(target_ids, bos, eos) -> (decoder_input, targets)``: lists of ids, the input starting with
    <s> and the targets ending with </s>, so that position t reads token t − 1 and predicts token t."""
    n = 0
    for _ in range(12):
        day = dt.date(1900, 1, 1) + dt.timedelta(days=_int(rng, 0, 70000))
        target = day.isoformat()
        ids = VOCAB.encode(target)
        ref = encode_pairs([(target, target)])
        want_in, want_out = ref["tgt"][0].tolist(), ref["targets"][0].tolist()
        case = f"target '{target}' = {ids}, bos={VOCAB.bos}, eos={VOCAB.eos}"
        got = learner(list(ids), VOCAB.bos, VOCAB.eos, case=case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise Wrong(f"{learner.name} should return a pair (decoder_input, targets), got "
                        f"{type(got).__name__}.\n  case: {case}")
        d_in, d_out = (x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in got)
        n += 1
        if (d_in, d_out) == (want_in, want_out):
            continue
        if (d_out, d_in) == (want_in, want_out):
            hint = "the two are swapped: the decoder *reads* <s> + target and must *predict* target + </s>."
        elif d_in == d_out:
            hint = ("the decoder input and the targets must be shifted by one position: otherwise each "
                    "position is asked to predict the token it is reading.")
        elif len(d_in) != len(d_out):
            hint = (f"the decoder input and the targets must have the same length (one prediction per input "
                    f"position); you gave {len(d_in)} and {len(d_out)}.")
        elif d_in[:1] != [VOCAB.bos]:
            hint = "the decoder input must start with <s> (bos): the first prediction has nothing else to read."
        elif d_out[-1:] != [VOCAB.eos]:
            hint = "the targets must end with </s> (eos): the model has to learn when to stop."
        else:
            hint = f"you gave {d_in} and {d_out}; expected {want_in} and {want_out}."
        raise Wrong(f"{hint}\n  case: {case}")
    return n
