"""A real S3-compatible HTTP server on loopback for tests: moto's S3 server as a child process.

No MinIO or Ceph package installs here from PyPI or Debian; ``moto[s3]`` (with flask) serves the
S3 REST API over HTTP, so the fleet talks to it through boto3 exactly as to MinIO. IAM
authentication is switched on once the test's key pair exists, so a wrong key is refused
(``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``) as a real server refuses it. moto cannot check
presigned URLs with authentication on; :meth:`S3Server.without_auth` is for those tests.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.mosquitto import free_port
from tests.support.processes import stop_process

_ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def isolated_aws_env(**values: str) -> dict[str, str]:
    """AWS settings that ignore the developer's ~/.aws and never ask a cloud metadata service."""
    return {
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
        **values,
    }


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS variables that point a client (the fleet) at this server."""
        return isolated_aws_env(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            **overrides,
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    @contextmanager
    def without_auth(self) -> Iterator[None]:
        """Authentication off for a while: moto's IAM check cannot read presigned (query) signatures."""
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"inf", timeout=5).raise_for_status()
        try:
            yield
        finally:
            httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0", timeout=5).raise_for_status()

    def new_bucket(self) -> str:
        name = f"bundles-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name


def _provision_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed s3:* and its key pair, then authentication on for every later request."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        region_name="us-east-1",
    )
    iam.create_user(UserName="edge-fleet")
    iam.put_user_policy(UserName="edge-fleet", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3))
    key = iam.create_access_key(UserName="edge-fleet")["AccessKey"]
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0", timeout=5).raise_for_status()
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def run_s3(workdir: Path, timeout: float = 30.0) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with one authenticated key pair; stopped on exit."""
    pytest.importorskip("moto.server", reason="needs moto[s3] and flask (the dev extra)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = workdir / "s3.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - the child keeps it
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not answer within {timeout} s") from None
                time.sleep(0.05)
        access, secret = _provision_key(endpoint)
        yield S3Server(endpoint, access, secret)
    finally:
        stop_process(proc)
