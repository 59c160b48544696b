"""``db.batches.id_batches``: every id once, in order, in lists of the bound length."""

from __future__ import annotations

import pytest

from neocloud.server.db.batches import IDS_PER_QUERY, id_batches


@pytest.mark.parametrize("n", [0, 1, IDS_PER_QUERY - 1, IDS_PER_QUERY, IDS_PER_QUERY + 1,
                               3 * IDS_PER_QUERY + 7])
def test_every_id_once_in_order_and_no_batch_over_the_bound(n: int) -> None:
    ids = [f"id{i}" for i in range(n)]
    batches = [list(b) for b in id_batches(ids)]
    assert [i for b in batches for i in b] == ids
    assert all(0 < len(b) <= IDS_PER_QUERY for b in batches)
    assert len(batches) == -(-n // IDS_PER_QUERY)


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(id_batches(["a"], 0))
