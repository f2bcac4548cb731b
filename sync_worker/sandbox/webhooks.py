"""The sandbox Flexperto's webhooks, delivered as the guide says: a POST of JSON to the
subscription's URL, which must answer within 3 seconds with a status from 200 to 398, or
the delivery is tried again, up to 4 attempts with a backoff from 100 ms that doubles.
Deliveries run concurrently, each in a thread of its own."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

ATTEMPTS = 4
FIRST_BACKOFF_SECONDS = 0.1
ANSWER_WITHIN_SECONDS = 3.0


@dataclass(frozen=True)
class Delivery:
    """One attempt: where, what, and the status it got (None: no answer in time)."""

    url: str
    payload: dict[str, Any]
    status: int | None
    at: float


class Webhooks:
    def __init__(self) -> None:
        self._subscriptions: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._running: list[threading.Thread] = []
        self.attempts: list[Delivery] = []

    def subscribe(self, url: str, topic: str) -> str:
        subscription_id = str(uuid.uuid4())
        with self._lock:
            self._subscriptions[subscription_id] = {"url": url, "topic": topic}
        return subscription_id

    def unsubscribe(self, subscription_id: str) -> bool:
        with self._lock:
            return self._subscriptions.pop(subscription_id, None) is not None

    def subscriptions(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {key: dict(value) for key, value in self._subscriptions.items()}

    def archive_available(self, record: dict[str, Any]) -> None:
        """Notify every subscription that ``record`` became available."""
        data = {
            "archive_id": record["id"],
            "archive_subject": {"conference_id": record["subject"]["conference_id"]},
        }
        for subscription in self.subscriptions().values():
            payload = {"topic": subscription["topic"], "data": data}
            thread = threading.Thread(
                target=self._deliver, args=(subscription["url"], payload), daemon=True
            )
            with self._lock:
                self._running = [t for t in self._running if t.is_alive()]
                self._running.append(thread)
            thread.start()

    def wait(self, timeout: float = 30.0) -> None:
        """Until every delivery under way is done (for tests)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            running = list(self._running)
        for thread in running:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        for _ in range(ATTEMPTS):
            try:
                status: int | None = requests.post(
                    url, json=payload, timeout=ANSWER_WITHIN_SECONDS, allow_redirects=False
                ).status_code
            except requests.RequestException:
                status = None
            with self._lock:
                self.attempts.append(Delivery(url, payload, status, time.time()))
            if status is not None and 199 < status < 399:
                return
            time.sleep(backoff)
            backoff *= 2
