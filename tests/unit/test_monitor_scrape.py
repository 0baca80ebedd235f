"""labkit.monitor.scrape reads /metrics through prometheus_client's parser: labelled series add up, `_created`
timestamps never count, text that is not an exposition is refused; the autoscaler reads its queue through it."""
from __future__ import annotations

import httpx
import pytest

from labkit.monitor import scrape
from labkit.scale.autoscaler import scrape_queue
from loopback import background_asgi

pytestmark = pytest.mark.unit

# What prometheus_client writes for two models in the classic text format: every series labelled, a
# `_created` family beside each counter and histogram.
TWO_MODELS = """\
# HELP labkit:generation_tokens_total Tokens generated.
# TYPE labkit:generation_tokens_total counter
labkit:generation_tokens_total{model_name="a"} 30.0
labkit:generation_tokens_total{model_name="b"} 12.0
# HELP labkit:generation_tokens_created Tokens generated.
# TYPE labkit:generation_tokens_created gauge
labkit:generation_tokens_created{model_name="a"} 1.7962264422171946e+09
labkit:generation_tokens_created{model_name="b"} 1.7962264422171946e+09
# HELP labkit:num_requests_running Requests in the running batch.
# TYPE labkit:num_requests_running gauge
labkit:num_requests_running{model_name="a"} 2.0
labkit:num_requests_running{model_name="b"} 1.0
# HELP labkit:num_requests_waiting Requests waiting to be scheduled.
# TYPE labkit:num_requests_waiting gauge
labkit:num_requests_waiting{model_name="a"} 4.0
# HELP labkit:e2e_request_latency_seconds End-to-end request latency.
# TYPE labkit:e2e_request_latency_seconds histogram
labkit:e2e_request_latency_seconds_bucket{le="0.5",model_name="a"} 1.0
labkit:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a"} 3.0
labkit:e2e_request_latency_seconds_count{model_name="a"} 3.0
labkit:e2e_request_latency_seconds_sum{model_name="a"} 2.5
labkit:e2e_request_latency_seconds_created{model_name="a"} 1.7962264422171946e+09
"""


def test_labelled_series_add_up_and_created_timestamps_never_count():
    samples = scrape.parse(TWO_MODELS)
    assert not any(name.endswith("_created") for name in samples)
    assert scrape.value(samples, "labkit:generation_tokens_total") == 42  # every model_name
    assert samples["labkit:generation_tokens_total"][(("model_name", "b"),)] == 12
    assert scrape.value(samples, "labkit:e2e_request_latency_seconds_count") == 3
    assert scrape.buckets(samples, "labkit:e2e_request_latency_seconds") == {0.5: 1, float("inf"): 3}
    assert scrape.value(samples, "labkit:replicas") is None
    assert scrape.families(TWO_MODELS) == {"labkit:generation_tokens", "labkit:num_requests_running",
                                           "labkit:num_requests_waiting", "labkit:e2e_request_latency_seconds"}


def test_two_scrapes_grow_by_the_difference_and_replicas_merge():
    old = scrape.parse(TWO_MODELS)
    new = scrape.parse(TWO_MODELS.replace('model_name="a"} 30.0', 'model_name="a"} 50.0')
                       .replace('le="+Inf",model_name="a"} 3.0', 'le="+Inf",model_name="a"} 5.0'))
    assert scrape.increase(new, old, "labkit:generation_tokens_total") == 20
    assert scrape.bucket_increase(new, old, "labkit:e2e_request_latency_seconds") == {0.5: 0, float("inf"): 2}
    merged = scrape.merge([old, new])
    assert scrape.value(merged, "labkit:generation_tokens_total") == 42 + 62


def test_text_that_is_not_an_exposition_is_refused():
    with pytest.raises(ValueError):
        scrape.parse("<html><body>Not found</body></html>")
    assert scrape.parse("") == {}


def _serving(text: str):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text.encode()})
    return background_asgi(app)


def test_autoscaler_sums_the_queue_over_replicas_and_models_and_skips_what_is_not_metrics():
    with _serving(TWO_MODELS) as replica, _serving("<html>a login page</html>") as html, httpx.Client() as client:
        assert scrape_queue(client, [replica, replica, html, "http://127.0.0.1:9"]) == (6.0, 8.0)
