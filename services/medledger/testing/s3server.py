"""A local S3 endpoint: moto's server as a separate process on a free loopback port, or a real
external MinIO named by MEDLEDGER_TEST_S3_* environment variables."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from medledger.testing.processes import (
    LOOPBACK,
    LoggedProcess,
    ProcessError,
    free_port,
    python_module_argv,
)

ENDPOINT_ENV = "MEDLEDGER_TEST_S3_ENDPOINT"
ACCESS_KEY_ENV = "MEDLEDGER_TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "MEDLEDGER_TEST_S3_SECRET_KEY"  # noqa: S105 -- a variable name
REGION_ENV = "MEDLEDGER_TEST_S3_REGION"

# moto accepts any credentials; these only have to be consistent between client and server.
MOTO_ACCESS_KEY = "medledger-test"
MOTO_SECRET_KEY = "medledger-test-secret"  # noqa: S105 -- moto accepts anything
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3-compatible server listens and how to sign requests to it."""

    url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = DEFAULT_REGION

    @property
    def host(self) -> str:
        """host:port, as the minio client wants it."""
        return urlsplit(self.url).netloc

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "https"


def endpoint_from_env(environ: Mapping[str, str] = os.environ) -> S3Endpoint | None:
    """The external S3 (e.g. MinIO) named by MEDLEDGER_TEST_S3_*, or None if not configured."""
    url = environ.get(ENDPOINT_ENV)
    if not url:
        return None
    if "://" not in url:
        url = f"http://{url}"
    return S3Endpoint(
        url=url.rstrip("/"),
        access_key=environ.get(ACCESS_KEY_ENV, ""),
        secret_key=environ.get(SECRET_KEY_ENV, ""),
        region=environ.get(REGION_ENV, DEFAULT_REGION),
    )


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):  # noqa: S310 -- fixed loopback http URL
            return True
    except urllib.error.HTTPError:
        # Any HTTP answer, even an error status, means the server is serving.
        return True
    except OSError:
        return False


class MotoS3Server:
    """moto's S3 server (`python -m moto.server`) in its own process, until stopped."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self._owns_log_dir = log_dir is None
        self.log_dir = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="moto-"))
        self.start_timeout = start_timeout
        self._process = LoggedProcess(
            python_module_argv("moto.server", ["-H", LOOPBACK, "-p", str(self.port)]),
            self.log_dir / "moto-server.log",
        )

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(f"http://{LOOPBACK}:{self.port}", MOTO_ACCESS_KEY, MOTO_SECRET_KEY)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process.running else None

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def start(self) -> S3Endpoint:
        self._process.start()
        try:
            self._process.wait_until(
                lambda: _answers_http(f"{self.endpoint.url}/moto-api/"),
                timeout=self.start_timeout,
                what=f"moto S3 server on port {self.port}",
            )
        except ProcessError:
            self._process.kill()
            raise
        return self.endpoint

    def stop(self) -> None:
        self._process.stop(timeout=5.0)
        if self._owns_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
