"""An S3-compatible store on loopback for the sandbox: moto's server (a real HTTP server
speaking the S3 API, from the test extras), with a bucket that has Object Lock enabled.

One server can hold the buckets of many sandboxes (the tests start one and share it);
each :class:`SandboxBucket` makes a bucket of its own. Given an ``ssl.SSLContext``, the
server speaks HTTPS, and the sandbox's own S3 client trusts ``ca_bundle``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
from typing import Any

ACCESS_KEY_ID = "sandbox-key-id"
SECRET_ACCESS_KEY = "sandbox-secret-access-key"
REGION = "eu-central-1"
_numbers = itertools.count()


class S3Server:
    """moto's S3 server on 127.0.0.1, started now, until :meth:`stop`; over HTTPS with
    ``tls``."""

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

    def __init__(self, server: S3Server, locked: bool = True) -> None:
        self.server = server
        self.name = f"sandbox-{next(_numbers)}-{secrets.token_hex(4)}"
        self.client().create_bucket(
            Bucket=self.name,
            CreateBucketConfiguration={"LocationConstraint": REGION},
            ObjectLockEnabledForBucket=locked,
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            verify=self.server.verify,
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
