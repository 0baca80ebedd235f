"""SLO judgement: met or not, and the phase a miss is blamed on."""
from __future__ import annotations

import pytest

from labkit.monitor.slo import SLO

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("slo, timings, phase", [
    (SLO(), {"ttft_s": 99.0, "e2e_s": 99.0}, None),
    (SLO(ttft_ms=100), {"queue_s": 0.02, "ttft_s": 0.1, "e2e_s": 5.0}, None),  # exactly on the budget meets it
    (SLO(ttft_ms=100), {"queue_s": 0.15, "ttft_s": 0.2, "e2e_s": 1.0}, "queue"),
    (SLO(ttft_ms=100), {"queue_s": 0.05, "ttft_s": 0.2, "e2e_s": 1.0}, "prefill"),
    (SLO(ttft_ms=100), {"ttft_s": 0.2, "e2e_s": 1.0}, "prefill"),  # a client's view: no queue time
    (SLO(ttft_ms=100), {"queue_s": 0.01, "ttft_s": None, "e2e_s": 1.0}, "prefill"),  # never got a token
    (SLO(itl_ms=50), {"ttft_s": 0.1, "e2e_s": 1.0, "itl_s": [0.01, 0.2]}, "decode"),  # mean 105 ms
    (SLO(itl_ms=50), {"ttft_s": 0.1, "e2e_s": 1.0, "itl_s": [0.01, 0.08]}, None),  # mean 45 ms
    (SLO(itl_ms=50), {"ttft_s": 0.1, "e2e_s": 1.0, "itl_s": []}, None),  # one token: no gap to judge
    (SLO(e2e_ms=500), {"queue_s": 0.6, "ttft_s": 0.7, "e2e_s": 0.9}, "queue"),
    (SLO(e2e_ms=500), {"queue_s": 0.1, "ttft_s": 0.7, "e2e_s": 0.9}, "prefill"),
    (SLO(e2e_ms=500), {"queue_s": 0.1, "ttft_s": 0.2, "e2e_s": 0.9}, "decode"),
    (SLO(ttft_ms=100, itl_ms=10), {"queue_s": 0.2, "ttft_s": 0.3, "e2e_s": 1.0, "itl_s": [0.5]}, "queue"),
])
def test_a_miss_is_blamed_on_the_earliest_phase_that_broke_a_budget(slo, timings, phase):
    assert slo.missed_phase(**timings) == phase
    assert slo.met(**timings) is (phase is None)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "100"])
def test_an_slo_must_be_a_positive_number_of_milliseconds(bad):
    with pytest.raises(ValueError, match="ttft_ms"):
        SLO(ttft_ms=bad)


def test_targets_are_given_in_seconds_for_the_slos_set():
    assert SLO(ttft_ms=250, e2e_ms=2000).targets_s() == {"ttft": 0.25, "e2e": 2.0}
    assert not SLO().is_set and SLO(itl_ms=1).is_set
