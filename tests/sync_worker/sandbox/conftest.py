"""Fixtures for talking to the sandbox servers with plain ``requests``.

``sandbox`` (seeded, on a FakeClock) and ``clock`` come from the root conftest.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest
import requests

from sync_worker.sandbox import Sandbox


@pytest.fixture
def fx(sandbox: Sandbox) -> Iterator[requests.Session]:
    """A session that sends the Flexperto api-key."""
    with requests.Session() as session:
        session.headers["api-key"] = sandbox.api_key
        yield session


@pytest.fixture
def fx_api(sandbox: Sandbox) -> str:
    return f"{sandbox.flexperto_url}/api/v2"


@pytest.fixture
def basic_auth(sandbox: Sandbox) -> dict[str, str]:
    pair = f"{sandbox.client_id}:{sandbox.client_secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


@pytest.fixture
def get_token(sandbox: Sandbox, basic_auth: dict[str, str]) -> Callable[[], requests.Response]:
    def post() -> requests.Response:
        return requests.post(
            f"{sandbox.totalexpert_url}/token",
            headers=basic_auth,
            json={"grant_type": "client_credentials"},
            timeout=5,
        )

    return post


@pytest.fixture
def te(sandbox: Sandbox, get_token: Callable[[], requests.Response]) -> Iterator[requests.Session]:
    """A session carrying a fresh TE bearer token."""
    answer = get_token()
    assert answer.status_code == 200
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer " + answer.json()["access_token"]
        yield session
