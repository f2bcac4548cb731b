"""The S3 server the S3 tests use instead of moto, when the environment names one: to
qualify a store (MinIO, Ceph RGW, AWS...) with the suite.

``SYNC_WORKER_TEST_S3_ENDPOINT`` (its URL: https, or http on loopback) switches to it;
``_ACCESS_KEY_ID`` and ``_SECRET_ACCESS_KEY`` are required with it, ``_REGION`` (default
us-east-1) and ``_BUCKET_PREFIX`` (default ``sync-worker-test-``) are not. Each test makes
buckets of its own under the prefix (with Object Lock), locks archives in GOVERNANCE mode
and removes the buckets after it (BypassGovernanceRetention): the credentials need to
create, empty and delete buckets. Tests that need moto itself are marked ``moto_only`` and
skipped there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sync_worker.sandbox.bucket import SandboxBucket

ENV = "SYNC_WORKER_TEST_S3_"
ENDPOINT = ENV + "ENDPOINT"
REQUIRED = ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")


class EndpointSettingsError(Exception):
    """The environment names an S3 endpoint for the tests but not all it needs."""


@dataclass
class ExternalS3:
    """An S3 server outside the tests (see the module docstring)."""

    url: str
    region: str
    access_key_id: str
    secret_access_key: str
    bucket_prefix: str
    verify: str | bool = True
    retention_mode: str = "GOVERNANCE"  # COMPLIANCE objects could never be removed
    external: bool = True
    buckets: list[SandboxBucket] = field(default_factory=list)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> ExternalS3 | None:
        """The server ``env`` names; None when it names none (moto is used)."""
        url = env.get(ENDPOINT, "")
        if not url:
            return None
        missing = [ENV + name for name in REQUIRED if not env.get(ENV + name)]
        if missing:
            raise EndpointSettingsError(f"{ENDPOINT} is set: set {' and '.join(missing)} too")
        return cls(
            url=url,
            region=env.get(ENV + "REGION") or "us-east-1",
            access_key_id=env[ENV + "ACCESS_KEY_ID"],
            secret_access_key=env[ENV + "SECRET_ACCESS_KEY"],
            bucket_prefix=env.get(ENV + "BUCKET_PREFIX") or "sync-worker-test-",
        )

    def stop(self) -> None:
        """Remove the buckets the tests left (a test's own, made without a sandbox)."""
        for bucket in list(self.buckets):
            bucket.remove()


def external() -> bool:
    """Whether the S3 tests use a server named by the environment, not moto."""
    return bool(os.environ.get(ENDPOINT))
