"""Check for BERT's masked-language-model corruption (chapter 10): the 15% / 80-10-10 rule.

The learner's function is random, so it cannot be compared with ``lama.mlm.mask_tokens`` value by
value. The check tests what every correct implementation shares instead: structure on every
position of every case (special tokens and padding are never selected, labels hold the original
id at the selected positions and -100 everywhere else, nothing outside the selection changes, a
random replacement is an ordinary token), reproducibility from the ``generator`` it is given, and
the proportions on a large sample (about 100,000 ordinary tokens), with tolerances of six or more
standard deviations, so a correct function fails with negligible probability and the usual
mistakes fail by far. Hints: selecting special tokens or padding, turning all of the 15% into
[MASK], splitting 80/10/10 with two independent draws, labels on every position, labels holding
the corrupted ids, corrupting the caller's tensor instead of a copy, ignoring the generator.
Leaves out: whole-word masking and the per-sequence variants (exactly 15% of each sequence).
"""

from __future__ import annotations

import torch

from lama.exercises._harness import Wrong, check, shape_text

__all__ = ["check_mlm_masking"]

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4  # the special ids of the check's vocabulary
LABELS_EVERYWHERE = ("labels are set on every position: a label is the original id only at the selected "
                     "positions (the 15%) and -100 everywhere else (cross_entropy ignores -100), so that the "
                     "loss counts the prediction targets alone.")
V = 200  # small, so that specials are 2.5% of the ids and a random draw over all ids hits them often


def _batch(rng, B, T):
    """(B, T) ids framed [CLS] ... [SEP] and right-padded, with a few [UNK]s among ordinary ids."""
    lengths = torch.randint(3, T + 1, (B,), generator=rng)
    lengths[0] = T  # one full-length sequence
    ids = torch.randint(5, V, (B, T), generator=rng)
    ids[torch.rand(B, T, generator=rng) < 0.03] = UNK
    pos = torch.arange(T)[None, :]
    ids[:, 0] = CLS
    ids = torch.where(pos == lengths[:, None] - 1, SEP, ids)
    return ids.masked_fill(pos >= lengths[:, None], PAD)


def _call(learner, ids, specials, seed, case):
    try:
        got = learner(ids, specials, MASK, V, torch.Generator().manual_seed(seed), case=case)
    except Wrong as e:
        if "in place" in str(e):
            raise Wrong("the input was corrupted in place: start from a copy, out = input_ids.clone(), and "
                        "write [MASK] and the random ids into the copy. (The caller's batch must stay as it was, "
                        f"and the labels must still see the original ids.)\n  case: {case}") from None
        raise
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise Wrong(f"{learner.name} should return a pair (corrupted_ids, labels), got "
                    f"{type(got).__name__}.\n  case: {case}")
    out, labels = got
    for name, t in (("corrupted_ids", out), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise Wrong(f"{name} should be a torch.Tensor, got {type(t).__name__}.\n  case: {case}")
        if t.shape != ids.shape:
            raise Wrong(f"{name} should have the shape of input_ids, {shape_text(ids.shape, 'B T')}, got "
                        f"{shape_text(t.shape)}.\n  case: {case}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise Wrong(f"{name} should hold integer ids (torch.long), got dtype "
                        f"{str(t.dtype).replace('torch.', '')}.\n  case: {case}")
    return out.long(), labels.long()


def _structure(ids, out, labels, special, case):
    """The rules every position obeys, whatever the random draws."""
    selected = labels != -100
    is_special = torch.isin(ids, special)
    if selected.all():
        raise Wrong(LABELS_EVERYWHERE + f"\n  case: {case}")
    if (selected & is_special).any() or ((out != ids) & is_special).any():
        n = int(((selected | (out != ids)) & is_special).sum())
        raise Wrong("special tokens were selected or changed ([PAD], [CLS], [SEP], [UNK] and [MASK] are never "
                    "targets): select only positions whose id is not in special_ids, e.g. "
                    f"~torch.isin(input_ids, special_ids). {n} special positions were touched.\n  case: {case}")
    if (selected & (labels == out) & (out == MASK)).any():
        raise Wrong("the labels hold [MASK]: they must hold the original ids. Take them from input_ids "
                    f"before (or without) corrupting it.\n  case: {case}")
    if (selected & (labels != ids)).any():
        raise Wrong("at a selected position the label must be the original id, input_ids at that position "
                    f"(the token the model has to recover), not the corrupted one.\n  case: {case}")
    changed = out != ids
    if (changed & ~selected).any():
        raise Wrong("a position you changed has label -100: every position replaced by [MASK] or by a random "
                    "token is a target and gets its original id as label (and so do the selected tokens left "
                    f"unchanged).\n  case: {case}")
    replaced = changed & (out != MASK)
    if ((out < 0) | (out >= V)).any():
        raise Wrong(f"a corrupted id lies outside the vocabulary [0, vocab_size) = [0, {V}).\n  case: {case}")
    if (replaced & torch.isin(out, special)).any():
        raise Wrong("a random replacement is a special token: draw random tokens from the ordinary ids only "
                    "(those not in special_ids), or the model is shown [PAD]s and [CLS]s in mid-sentence.\n"
                    f"  case: {case}")
    return selected


@check("MLM masking")
def check_mlm_masking(learner, rng) -> int:
    """``fn(input_ids, special_ids, mask_id, vocab_size, generator) -> (corrupted_ids, labels)``, both
    ``(B, T)``: each non-special token is selected with probability 0.15; a selected token becomes
    ``mask_id`` with probability 0.8, a random ordinary (non-special) id with probability 0.1, and stays
    itself otherwise; labels are the original ids at the selected positions and -100 elsewhere."""
    special = torch.tensor([PAD, UNK, CLS, SEP, MASK])
    n = 0
    for trial in range(8):
        B, T = int(torch.randint(1, 6, (1,), generator=rng)), int(torch.randint(4, 40, (1,), generator=rng))
        ids = _batch(rng, B, T)
        case = (f"input_ids {shape_text(ids.shape, 'B T')}, special_ids {special.tolist()}, mask_id={MASK}, "
                f"vocab_size={V}")
        out, labels = _call(learner, ids, special, trial, case)
        _structure(ids, out, labels, special, case)
        n += 1

    ids = _batch(rng, 4000, 64)
    case = (f"a large batch, input_ids {shape_text(ids.shape, 'B T')}, special_ids {special.tolist()}, "
            f"mask_id={MASK}, vocab_size={V}")
    out, labels = _call(learner, ids, special, 1, case)
    selected = _structure(ids, out, labels, special, case)
    ordinary = ~torch.isin(ids, special)
    n_sel = int(selected.sum())
    frac = n_sel / int(ordinary.sum())
    if frac > 0.9:
        raise Wrong(f"labels are set on every ordinary position ({frac:.0%} of them): a label is the original id "
                    "only at the selected positions (the 15%) and -100 everywhere else (cross_entropy ignores "
                    f"-100), so that the loss counts the prediction targets alone.\n  case: {case}")
    again = _call(learner, ids, special, 1, case)
    other = _call(learner, ids, special, 2, case)
    if not (torch.equal(again[0], out) and torch.equal(again[1], labels)):
        raise Wrong("two calls with generators seeded alike gave different results: draw every random number "
                    "from the generator you are given (torch.rand(..., generator=generator), torch.randint(..., "
                    f"generator=generator)), so that a seed reproduces a batch.\n  case: {case}")
    if torch.equal(other[1], labels):
        raise Wrong("generators with different seeds selected the same positions: the selection must be random "
                    f"(one uniform draw per position, compared with 0.15).\n  case: {case}")
    if not 0.14 <= frac <= 0.16:
        raise Wrong(f"{frac:.1%} of the ordinary tokens were selected, expected 15%: select each non-special "
                    f"token independently with probability 0.15 (count only ordinary tokens).\n  case: {case}")
    masked = int((selected & (out == MASK)).sum()) / n_sel
    kept = int((selected & (out == ids)).sum()) / n_sel
    rand = 1 - masked - kept
    shares = f"of the selected tokens you gave {masked:.1%} [MASK], {rand:.1%} random, {kept:.1%} unchanged"
    if masked > 0.97:
        hint = ("all selected tokens became [MASK]: BERT replaces 80% of them by [MASK], 10% by a random token and "
                "leaves 10% unchanged, because at fine-tuning time there is no [MASK] and the model must also "
                "predict tokens it can see.")
    elif abs(masked - 0.8) <= 0.02 and rand < 0.05 and kept > 0.15:
        hint = ("the random 10% is short: after the 80% [MASK] draw, a second independent draw with probability 0.1 "
                "picks only 10% of the remaining 20%. Draw once per selected token, u ~ U(0, 1): [MASK] if u < 0.8, "
                "random if 0.8 <= u < 0.9, unchanged otherwise.")
    elif not (abs(masked - 0.8) <= 0.02 and abs(rand - 0.1) <= 0.02 and abs(kept - 0.1) <= 0.02):
        hint = "expected 80% [MASK], 10% random and 10% unchanged, each within two points."
    else:
        hint = ""
    if hint:
        raise Wrong(f"{hint}\n  {shares}.\n  case: {case}")
    replaced = selected & (out != MASK) & (out != ids)
    distinct = int(out[replaced].unique().numel())
    if distinct < 0.8 * (V - len(special)):
        raise Wrong(f"the random replacements use only {distinct} of the {V - len(special)} ordinary ids: draw "
                    f"each uniformly from all ordinary ids.\n  case: {case}")
    return n + 1
