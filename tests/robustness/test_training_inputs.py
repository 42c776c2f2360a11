"""Every bad training input of the corpus (``cases_training.py``) ends as recorded: a clear error or success."""

from __future__ import annotations

import pytest
from cases_training import CASES


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_training_input(case, tmp_path):
    if case.error is None:
        case.run(tmp_path)
        return
    with pytest.raises(case.error, match=case.match):
        case.run(tmp_path)


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
