"""An S3-compatible store on loopback for the sandbox: moto's server (a real HTTP server
speaking the S3 API, from the test extras), with a bucket that has Object Lock enabled.

One server can hold the buckets of many sandboxes (the tests start one and share it);
each :class:`SandboxBucket` makes a bucket of its own.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import Any

ACCESS_KEY_ID = "sandbox-key-id"
SECRET_ACCESS_KEY = "sandbox-secret-access-key"
REGION = "eu-central-1"
_numbers = itertools.count()


class S3Server:
    """moto's S3 server on 127.0.0.1, started now, until :meth:`stop`."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError(
                "the sandbox's S3 store needs moto: pip install 'moto[server]' "
                "(make test installs it)"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


class SandboxBucket:
    """A bucket of its own (Object Lock enabled) on ``server``."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.name = f"sandbox-{next(_numbers)}-{secrets.token_hex(4)}"
        self.client().create_bucket(
            Bucket=self.name,
            CreateBucketConfiguration={"LocationConstraint": REGION},
            ObjectLockEnabledForBucket=True,
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def storage_toml(self, spool: str, prefix: str = "archives/") -> str:
        """A config's ``[storage]`` section for this bucket."""
        return (
            f'[storage]\nbackend = "s3"\narchive_dir = "{spool}"\nbucket = "{self.name}"\n'
            f'prefix = "{prefix}"\nendpoint_url = "{self.server.url}"\nregion = "{REGION}"\n'
            f'access_key_id = "{ACCESS_KEY_ID}"\nsecret_access_key = "{SECRET_ACCESS_KEY}"\n'
            "retention_days = 1\n"
        )

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def incomplete_uploads(self) -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=self.name)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
