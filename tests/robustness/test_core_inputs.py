"""Every library-API case of ``cases_core.py`` ends as its corpus entry says."""

from __future__ import annotations

import pytest
from cases_core import CASES


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path):
    if case.error is None:
        case.run(tmp_path)
    else:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
