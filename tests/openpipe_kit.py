"""What the OpenPipe test modules share: the stand-in as a fixture, waiting for the asynchronous sender."""

from __future__ import annotations

import time

import pytest

from tests.openpipe_server import OpenPipeServer

OPK = "opk-test"


def wait_for(predicate, what: str, limit: float = 15.0):
    """Poll until `predicate()` is truthy (the sender is asynchronous); the limit only bounds a failing test."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def openpipe_fixture():
    server = OpenPipeServer(OPK).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_openpipe_fixture(request):
    if "openpipe" in request.fixturenames:
        request.getfixturevalue("openpipe").reset()


def meta(report: dict) -> dict:
    return report["reqPayload"]["metadata"]
