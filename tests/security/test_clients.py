"""Finding 8, client side: retries are budgeted (a lasting outage is not multiplied by the
retry policy), and inference's feature client reports a refused token loudly."""

import logging

import grpc
import pytest

from services.features.server import build_server as build_features
from services.inference.features_client import FeatureClient
from shared import metrics
from shared.clients import ClientConfig, open_channel
from shared.errors import Unavailable
from shared.settings import Settings
from tests.reliability.test_retries import METHOD, FlakyHandler, flaky_server  # noqa: F401

CALLS = 20


def test_a_lasting_outage_is_not_multiplied_by_retries(flaky_server) -> None:  # noqa: F811
    handler = FlakyHandler(failures=10_000)
    target = flaky_server(handler)
    with open_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for _ in range(CALLS):
            with pytest.raises(grpc.RpcError):
                call(b"x", timeout=20)
    # Without a budget: 5 attempts per call (100). With it: the first call's 5, then 1 each.
    assert handler.attempts <= CALLS + 5


def test_a_refused_token_is_logged_and_counted(serve_in_process, sqlite_url, background_loop,
                                               caplog: pytest.LogCaptureFixture) -> None:
    features = serve_in_process(lambda: build_features(Settings(database_url=sqlite_url, auth_token="right"),
                                                       port=0))
    counter = metrics.FEATURE_AUTH_FAILURES.labels("UNAUTHENTICATED")
    before = counter._value.get()
    client = background_loop.run(lambda: FeatureClient(f"127.0.0.1:{features.port}", 5.0, 10,
                                                       ClientConfig(token="wrong", retries=False)))
    with caplog.at_level(logging.ERROR), pytest.raises(Unavailable):
        background_loop.run(client.history("someone"))
    background_loop.run(client.close)
    assert counter._value.get() == before + 1
    assert any("refused inference's credentials" in r.getMessage() for r in caplog.records)
