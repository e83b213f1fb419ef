"""Checks for chapter 2 (tokens): counting adjacent pairs and one BPE merge step.

The references are ``lama.tokenizers.bpe_train.pair_counts`` and ``merge``. The cases are
random id sequences over a small alphabet (so that pairs repeat and overlap), plus the
edge cases that catch the usual bugs: empty and one-token inputs, runs like ``[a, a, a]``,
and a pair at the very end. Leaves out: training a whole tokenizer (chapter 2 compares its
trainer with the naive one and with tiktoken's GPT-2 in tests/test_tokenizers.py).
"""

from __future__ import annotations

from collections import Counter

import torch

from lama.exercises._harness import Wrong, check
from lama.tokenizers.bpe_train import merge, pair_counts

__all__ = ["check_pair_counts", "check_merge"]


def _sequences(rng: torch.Generator, n: int) -> list[list[int]]:
    fixed = [[], [7], [1, 2, 1, 2], [7, 7, 7, 3], [3, 1, 2], [7, 7], [7, 7, 7], [7, 7, 7, 7]]
    rand = []
    for _ in range(n):
        length = int(torch.randint(2, 30, (1,), generator=rng))
        alphabet = int(torch.randint(2, 5, (1,), generator=rng))
        rand.append(torch.randint(0, alphabet, (length,), generator=rng).tolist())
    return fixed + rand


def _nonoverlapping_counts(ids):
    counts, t = Counter(), 0
    while t + 1 < len(ids):
        counts[(ids[t], ids[t + 1])] += 1
        t += 2 if ids[t] == ids[t + 1] else 1
    return counts


@check("count the pairs")
def check_pair_counts(learner, rng) -> int:
    """``fn(ids) -> {(a, b): count}``: how often each adjacent pair occurs (overlaps count)."""
    seqs = _sequences(rng, 30)
    for ids in seqs:
        case = f"ids = {ids}"
        got = learner(list(ids), case=case)
        if not hasattr(got, "items"):
            raise Wrong(f"{learner.name} should return a dict (or Counter) from pair to count, got "
                        f"{type(got).__name__}.\n  case: {case}")
        got = {tuple(p): c for p, c in got.items() if c}
        want = dict(pair_counts(ids))
        if got == want:
            continue
        if ids and got == dict(pair_counts(ids[:-1])):
            hint = "the last pair (ids[-2], ids[-1]) is missing: loop over zip(ids, ids[1:])."
        elif got == dict(Counter(zip(ids[1:], ids))):
            hint = "the pairs are reversed: count (ids[t], ids[t + 1]), in reading order."
        elif got == dict(_nonoverlapping_counts(ids)):
            hint = ("overlapping pairs must each count: in [a, a, a] the pair (a, a) occurs twice. (Only the "
                    "merge skips over the pair it has just replaced.)")
        else:
            wrong = sorted(set(got) ^ set(want) | {p for p in want if got.get(p) != want[p]})[:3]
            hint = "some counts differ: " + ", ".join(f"{p}: you {got.get(p, 0)}, lama {want.get(p, 0)}" for p in wrong) + "."
        raise Wrong(f"{hint}\n  case: {case}")
    return len(seqs)


def _merge_right_to_left(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def _merge_first_only(ids, pair, new_id):
    for t in range(len(ids) - 1):
        if (ids[t], ids[t + 1]) == tuple(pair):
            return list(ids[:t]) + [new_id] + list(ids[t + 2:])
    return list(ids)


@check("one BPE merge")
def check_merge(learner, rng) -> int:
    """``fn(ids, pair, new_id) -> list``: replace each occurrence of ``pair``, scanning left to
    right, by ``new_id`` (overlaps resolve to the left: ``(a, a)`` in ``[a, a, a]`` gives ``[new, a]``)."""
    n = 0
    for ids in _sequences(rng, 30):
        pairs = list(zip(ids, ids[1:]))
        pair = pairs[int(torch.randint(0, len(pairs), (1,), generator=rng))] if pairs else (7, 7)
        if ids[-2:] and len(ids) >= 2 and n % 3 == 0:
            pair = (ids[-2], ids[-1])  # a pair at the very end
        new_id = 256 + n
        case = f"ids = {ids}, pair = {pair}, new_id = {new_id}"
        got = learner(list(ids), pair, new_id, case=case)
        if not isinstance(got, (list, tuple)):
            raise Wrong(f"{learner.name} should return a list of ids, got {type(got).__name__}.\n  case: {case}")
        got, want = list(got), merge(ids, pair, new_id)
        n += 1
        if got == want:
            continue
        if got == _merge_right_to_left(ids, pair, new_id):
            hint = "overlaps must resolve to the left: scan from the start, and after a merge skip both tokens."
        elif got == _merge_first_only(ids, pair, new_id):
            hint = "only the first occurrence was merged: replace every occurrence of the pair."
        elif got == want + ids[len(ids) - 1:] or (want and got == want[:-1]) or got == want[:-1] + ids[-1:]:
            hint = "the end of the sequence is handled wrongly: a last token that is not part of a merge must be kept once."
        elif any(isinstance(t, tuple) for t in got):
            hint = "the merged pair must become the single id new_id, not a tuple."
        else:
            hint = f"you returned {got}, lama returns {want}."
        raise Wrong(f"{hint}\n  case: {case}")
    return n
