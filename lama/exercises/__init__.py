"""Automatic checks for the book's exercises.

Each ``check_<name>(fn)`` runs a learner's function on many random cases (with a fixed
seed, so every run sees the same cases) against lama's own implementation and prints one
verdict: a pass message, a friendly "not yet" while ``fn`` is still a stub (it raises
``NotImplementedError`` or returns ``None``), or a targeted hint for the usual mistake
(a missing scale, a mask off by one, softmax over the wrong axis, shapes named with the
glossary letters B T C H D V i j). A check never raises and prints no traceback; it returns
a result that is truthy only when ``fn`` passed::

    from lama.exercises import check_softmax

    def my_softmax(x):
        raise NotImplementedError

    check_softmax(my_softmax)   # … softmax: not yet. my_softmax is still a stub ...

Everything is in the installed package (no repository files are read), so the checks work
on Colab after ``pip install``. ``CHECKS`` lists them by chapter.
Leaves out: exercises whose answer is an argument or a number (their solutions in the book
assert the answer instead).
"""

from lama.exercises._harness import Result
from lama.exercises.analysis import (check_frequency_norms, check_induction_score, check_kv_cache_bytes,
                                     check_modular_addition_data, check_online_softmax, check_previous_token_score,
                                     check_score_grad_wq)
from lama.exercises.attention import (check_attention, check_causal_mask, check_kv_cache_update, check_merge_heads,
                                      check_self_attention, check_softmax, check_split_heads)
from lama.exercises.backprop import check_rmsnorm_backward
from lama.exercises.blocks import check_layernorm, check_mean_pool, check_rmsnorm
from lama.exercises.generation import check_teacher_forcing, check_top_k, check_top_p
from lama.exercises.mlm import check_mlm_masking
from lama.exercises.models import check_dependencies, check_greedy_decode, check_mlm_loss, check_wordpiece
from lama.exercises.positions import check_rope, check_sinusoidal
from lama.exercises.tokens import check_merge, check_pair_counts
from lama.exercises.windows import check_lm_windows

# Chapter number -> the checks for the material of that chapter (book/teaching.md lists them;
# each is called by an exercise of its chapter).
CHECKS = {
    1: [check_softmax, check_attention],
    2: [check_pair_counts, check_merge],
    3: [check_sinusoidal, check_rope],
    4: [check_causal_mask, check_self_attention],
    5: [check_split_heads, check_merge_heads, check_kv_cache_update],
    6: [check_layernorm, check_rmsnorm],
    7: [check_top_k, check_top_p],
    8: [check_lm_windows, check_dependencies],
    9: [check_mean_pool, check_wordpiece],
    10: [check_mlm_masking, check_mlm_loss],
    11: [check_teacher_forcing, check_greedy_decode],
    12: [check_previous_token_score, check_induction_score],
    13: [check_modular_addition_data, check_frequency_norms],
    14: [check_rmsnorm_backward, check_online_softmax],
    15: [check_kv_cache_bytes, check_score_grad_wq],
}

__all__ = ["CHECKS", "Result", *sorted(f.__name__ for fs in CHECKS.values() for f in fs)]
