"""An S3-compatible store on loopback for the sandbox: moto's server (a real HTTP server
speaking the S3 API, from the test extras), with a bucket that has Object Lock enabled.

One server can hold the buckets of many sandboxes (the tests start one and share it);
each :class:`SandboxBucket` makes a bucket of its own. Given an ``ssl.SSLContext``, the
server speaks HTTPS, and the sandbox's own S3 client trusts ``ca_bundle``.

Any other server with the attributes of :class:`S3Endpoint` can hold them too (the tests
can be pointed at a real S3 store): buckets are then named under its ``bucket_prefix``,
locked in its ``retention_mode`` and removed when their sandbox stops (``external``).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
from typing import Any, Protocol

ACCESS_KEY_ID = "sandbox-key-id"
SECRET_ACCESS_KEY = "sandbox-secret-access-key"
REGION = "eu-central-1"
_numbers = itertools.count()


class S3Endpoint(Protocol):
    """Where sandbox buckets are made, and how they are reached and kept."""

    url: str
    verify: str | bool
    region: str
    access_key_id: str
    secret_access_key: str
    bucket_prefix: str
    retention_mode: str  # what the sandbox's configs lock archives in
    external: bool  # outlives the tests: its buckets are removed after them
    buckets: list[SandboxBucket]  # those made and not removed yet

    def stop(self) -> None: ...


class S3Server:
    """moto's S3 server on 127.0.0.1, started now, until :meth:`stop`; over HTTPS with
    ``tls``. Its buckets go with it (moto holds them in memory)."""

    region = REGION
    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY
    bucket_prefix = "sandbox-"
    retention_mode = "COMPLIANCE"
    external = False

    def __init__(self, tls: ssl.SSLContext | None = None, ca_bundle: str | None = None) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError(
                "the sandbox's S3 store needs moto: pip install 'moto[server]' "
                "(make test installs it)"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        server_class = ThreadedMotoServer if tls is None else _tls_server(tls)
        self._server = server_class(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.verify: str | bool = ca_bundle or True
        self.buckets: list[SandboxBucket] = []

    def stop(self) -> None:
        self._server.stop()


def _tls_server(tls: ssl.SSLContext) -> type:
    """moto's threaded server class, serving over HTTPS with ``tls``."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class TLSMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(
                self._ip_address,
                self._port,
                app,
                True,
                request_handler=MotoRequestHandler,
                ssl_context=tls,
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return TLSMotoServer


class SandboxBucket:
    """A bucket of its own on ``server``, with Object Lock enabled unless not ``locked``."""

    def __init__(self, server: S3Endpoint, locked: bool = True) -> None:
        self.server = server
        self.name = f"{server.bucket_prefix}{next(_numbers)}-{secrets.token_hex(4)}"
        where: dict[str, Any] = {}
        if server.region != "us-east-1":  # named by leaving it out: AWS refuses it there
            where["CreateBucketConfiguration"] = {"LocationConstraint": server.region}
        self.client().create_bucket(Bucket=self.name, ObjectLockEnabledForBucket=locked, **where)
        server.buckets.append(self)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name=self.server.region,
            aws_access_key_id=self.server.access_key_id,
            aws_secret_access_key=self.server.secret_access_key,
            verify=self.server.verify,
        )

    def storage_toml(self, spool: str, prefix: str = "archives/") -> str:
        """A config's ``[storage]`` section for this bucket."""
        server = self.server
        return (
            f'[storage]\nbackend = "s3"\narchive_dir = "{spool}"\nbucket = "{self.name}"\n'
            f'prefix = "{prefix}"\nendpoint_url = "{server.url}"\nregion = "{server.region}"\n'
            f'access_key_id = "{server.access_key_id}"\n'
            f'secret_access_key = "{server.secret_access_key}"\n'
            f'retention_days = 1\nretention_mode = "{server.retention_mode}"\n'
        )

    def discard(self) -> None:
        """Remove the bucket if its server outlives the tests (moto's go with it)."""
        if self.server.external:
            self.remove()

    def remove(self) -> None:
        """Delete every version in the bucket (those under GOVERNANCE retention too: the
        credentials need s3:BypassGovernanceRetention), its incomplete uploads, then it."""
        client = self.client()
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=self.name):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=self.name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in client.get_paginator("list_object_versions").paginate(Bucket=self.name):
            versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
            if versions:
                self._delete(
                    client, [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
                )
        client.delete_bucket(Bucket=self.name)
        self.server.buckets.remove(self)

    def _delete(self, client: Any, versions: list[dict[str, str]]) -> None:
        answer = client.delete_objects(
            Bucket=self.name,
            Delete={"Objects": versions, "Quiet": True},
            BypassGovernanceRetention=True,
        )
        if answer.get("Errors"):
            raise RuntimeError(f"bucket {self.name} could not be emptied: {answer['Errors']}")

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def incomplete_uploads(self) -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=self.name)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
