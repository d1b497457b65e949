"""A batch that runs the device out of memory, computed again in halves.

The batch computations that need the most device memory, the FUNGI gradient pass of a
bank build and the scoring of an evaluation batch, give each image a result that does
not depend on the other images of its batch: a bank's bytes and an evaluation's scores
are the same for any bank.batch_size / eval.batch_size (tests/test_fungi_variants.py,
tests/test_research_code_pipeline.py). So when a batch runs out of memory, its two
halves computed apart and joined give the very result of the whole batch, only later.
A half that runs out too is split again, down to one image, whose out-of-memory error
is raised as it is: then a setting has to change (the benchmark's `memory_guard` names
them).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence, TypeVar

__all__ = ["in_halves_when_out_of_memory"]

Result = TypeVar("Result")


def in_halves_when_out_of_memory(compute: Callable[..., Result], join: Callable[[list[Result]], Result],
                                 *batch: Sequence, setting: str) -> Result:
    """`compute(*batch)`, where each part of `batch` (a list, an array, a tensor) holds the
    same B images; out of device memory, `join([compute(first halves), compute(second
    halves)])`, each half split again if need be. `setting`: the batch size setting
    whose smaller value avoids the retries, named in the note printed on stderr."""
    import torch

    try:
        return compute(*batch)
    except torch.OutOfMemoryError:
        count = len(batch[0])
        if count < 2:
            raise
    # Past the except block the error's traceback, which holds the failed attempt's
    # tensors, is gone: their cached blocks can go back to the device for the halves.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = (count + 1) // 2
    print(f"segfungi: out of memory on a batch of {count} images; computing {half} and {count - half} apart "
          f"(the same result; a smaller {setting} avoids the retry)", file=sys.stderr)
    first = in_halves_when_out_of_memory(compute, join, *(part[:half] for part in batch), setting=setting)
    second = in_halves_when_out_of_memory(compute, join, *(part[half:] for part in batch), setting=setting)
    return join([first, second])
