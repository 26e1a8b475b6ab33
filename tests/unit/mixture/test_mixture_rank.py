"""The mixture's sampling and shuffle ranks hash canonical bytes of plain values: the same on every machine and
release, and never dependent on how a scalar prints (numpy 2 prints ``np.int64(1)`` where Python prints ``1``)."""

from __future__ import annotations

import numpy as np
import pytest

from curation.mixture.sampling import rank as _rank


def test_ranks_are_pinned():
    # blake2b-64 of the canonical JSON [0,"shuffle","alpha","alpha-1",0] (and the other), shifted to 63 bits
    assert _rank(0, "shuffle", "alpha", "alpha-1", 0) == 5034161047159121210
    assert _rank(7, "pick", "beta", "k") == 5356662420685071863


def test_a_numpy_scalar_is_refused_rather_than_hashed_by_its_repr():
    with pytest.raises(TypeError, match="plain ints and strings"):
        _rank(0, "shuffle", "alpha", "k", np.int64(1))  # type: ignore[arg-type]
