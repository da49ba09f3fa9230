"""Property-based run of the OpenAPI schema (schemathesis): no generated request gets a 5xx.

Every operation of ``/openapi.json`` gets a bounded number of generated requests (random query values,
random bodies for each documented content type, multipart with and without the ``file`` field). The app
runs in-process on the real small model with seeded random weights.
"""

from __future__ import annotations

import time

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the dev extra has it)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from masklab.serve import ServeSettings, create_app  # noqa: E402
from masklab.settings import InferenceSettings  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(small_weights):
    from schemathesis.python import asgi

    inference = InferenceSettings(model=str(small_weights), device="cpu", score_thresh=0.0, min_size=96, max_size=128)
    app = create_app(ServeSettings(inference=inference, max_body_bytes=2_000_000))
    # schemathesis starts the app's lifespan once and keeps it for the process; wait until the model is warm
    # so a generated request never meets the start-up 503.
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 120
        while client.get("http://testserver/readyz").status_code != 200:
            assert time.monotonic() < deadline, "model never became ready"
            time.sleep(0.05)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# Operations are driven with plain Hypothesis over schemathesis' strategies (its lazy pytest fixture
# loader reads a private pytest attribute that pytest 9 removed).
def test_no_generated_request_gets_a_server_error(api_schema):
    from hypothesis import given

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/v1/segment"), ("POST", "/v1/render")}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=30,  # a few dozen per operation keeps the run near half a minute on a shared CPU
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
            derandomize=True,  # the same cases every run: a failure reproduces
            database=None,
        )
        def run(case):
            case.call_and_validate(checks=[not_a_server_error])

        run()

    # The generated requests really reached the app (counted by its own metrics).
    from schemathesis.python import asgi

    with asgi.get_client(api_schema.app) as client:
        metrics = client.get("http://testserver/metrics").text
    for path in ("/v1/segment", "/v1/render"):
        counts = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(f'masklab_requests_total{{path="{path}"')]
        assert sum(counts) >= 20, (path, counts)
