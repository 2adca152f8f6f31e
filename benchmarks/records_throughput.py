"""Records throughput: encrypted upload/download through the records service with the directory
backend and with an S3 server, against the raw minio put/get of the same bytes, in one run.

    .venv/bin/python benchmarks/records_throughput.py              # quick (64 MiB)
    .venv/bin/python benchmarks/records_throughput.py --size 1GiB  # the real measurement

Uses MEDLEDGER_TEST_S3_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY) when set, otherwise starts moto's
S3 server in a separate process. Prints MiB/s, ratios to the raw reference and peak RSS growth;
the last line is JSON. The gRPC leg comes with the records API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from medledger.crypto.kek import LocalKeyFileProvider
from medledger.records.directory import DirectoryBlobStorage
from medledger.records.memory import MemoryAudit, MemoryLedger, StaticConsent
from medledger.records.s3 import S3BlobStorage, S3Config
from medledger.records.service import Caller, RecordsService, UploadRequest
from medledger.records.storage import BlobStorage
from medledger.records.store import SqliteMetadataStore
from medledger.testing.s3server import MotoS3Server, S3Endpoint, endpoint_from_env

MIB = 1024 * 1024
BLOCK = MIB
CALLER = Caller("principals/bench", "organisations/bench")
_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": MIB, "GIB": 1024 * MIB}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]iB|B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MiB, 1GiB)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RepeatingReader:
    """A file-like source of `size` bytes built from one random block: nothing whole in memory."""

    def __init__(self, block: bytes, size: int) -> None:
        self._block, self._left, self._at = block, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self._block) - self._at)
            out += self._block[self._at : self._at + take]
            self._at = (self._at + take) % len(self._block)
        self._left -= n
        return bytes(out)


async def source(block: bytes, size: int) -> AsyncIterator[bytes]:
    for _ in range(size // len(block)):
        yield block
    if size % len(block):
        yield block[: size % len(block)]


def raw_minio(endpoint: S3Endpoint, block: bytes, size: int) -> tuple[float, float]:
    config = S3Config(
        endpoint.url,
        f"bench-raw-{uuid.uuid4().hex[:8]}",
        endpoint.access_key,
        endpoint.secret_key,
        region=endpoint.region,
    )
    client = config.client()
    client.make_bucket(config.bucket, config.region)
    started = time.perf_counter()
    client.put_object(
        config.bucket,
        "raw",
        cast(BinaryIO, RepeatingReader(block, size)),
        size,
        part_size=config.part_size,
        num_parallel_uploads=1,
    )
    put = time.perf_counter() - started
    started = time.perf_counter()
    response = client.get_object(config.bucket, "raw")
    received = 0
    try:
        while piece := response.read(BLOCK):
            received += len(piece)
    finally:
        response.close()
        response.release_conn()
    get = time.perf_counter() - started
    assert received == size
    client.remove_object(config.bucket, "raw")
    return put, get


async def through_service(
    storage: BlobStorage, work: Path, block: bytes, size: int
) -> tuple[float, float]:
    store = SqliteMetadataStore(work / f"meta-{uuid.uuid4().hex[:8]}.sqlite3")
    service = RecordsService(
        storage=storage,
        store=store,
        keys=LocalKeyFileProvider({"kek-bench": os.urandom(32)}, "kek-bench"),
        consent=StaticConsent(),
        ledger=MemoryLedger(),
        audit=MemoryAudit(),
        custodian="organisations/bench",
    )
    request = UploadRequest(CALLER, "pp-bench", "IMAGING", "application/octet-stream", "TREAT")
    started = time.perf_counter()
    record = await service.upload(request, source(block, size))
    upload = time.perf_counter() - started
    started = time.perf_counter()
    download = await service.download(record.record_id, CALLER, "TREAT")
    received = 0
    async for piece in download.content:
        received += len(piece)
    elapsed = time.perf_counter() - started
    assert received == size
    await storage.delete(record.blob_key)
    await store.close()
    return upload, elapsed


async def run(size: int, endpoint: S3Endpoint, work: Path) -> dict[str, Any]:
    block = os.urandom(BLOCK)
    rss_start = peak_rss_mib()
    mib = size / MIB
    raw_put, raw_get = await asyncio.to_thread(raw_minio, endpoint, block, size)
    directory = DirectoryBlobStorage(work / "blobs")
    dir_up, dir_down = await through_service(directory, work, block, size)
    await directory.close()
    s3 = await S3BlobStorage.open(
        S3Config(
            endpoint.url,
            f"bench-svc-{uuid.uuid4().hex[:8]}",
            endpoint.access_key,
            endpoint.secret_key,
            region=endpoint.region,
        )
    )
    s3_up, s3_down = await through_service(s3, work, block, size)
    await s3.close()
    rates = {
        "raw_minio_put": mib / raw_put,
        "raw_minio_get": mib / raw_get,
        "directory_upload": mib / dir_up,
        "directory_download": mib / dir_down,
        "s3_upload": mib / s3_up,
        "s3_download": mib / s3_down,
    }
    return {
        "size_bytes": size,
        "mib_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_to_raw": {
            "s3_upload": round(rates["s3_upload"] / rates["raw_minio_put"], 3),
            "s3_download": round(rates["s3_download"] / rates["raw_minio_get"], 3),
            "directory_upload": round(rates["directory_upload"] / rates["raw_minio_put"], 3),
            "directory_download": round(rates["directory_download"] / rates["raw_minio_get"], 3),
        },
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_growth_mib": round(peak_rss_mib() - rss_start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=64 * MIB, help="e.g. 64MiB, 1GiB")
    args = parser.parse_args()
    endpoint = endpoint_from_env()
    with tempfile.TemporaryDirectory(prefix="records-bench-") as temporary:
        work = Path(temporary)
        if endpoint is None:
            with MotoS3Server(log_dir=work / "moto") as server:
                result = asyncio.run(run(args.size, server.endpoint, work))
        else:
            result = asyncio.run(run(args.size, endpoint, work))
    for name, rate in result["mib_per_s"].items():
        print(f"{name:>20}: {rate:8.1f} MiB/s")
    for name, ratio in result["ratio_to_raw"].items():
        print(f"{name + ' / raw':>26}: {ratio:.3f}")
    print(f"peak RSS {result['peak_rss_mib']} MiB (growth {result['peak_rss_growth_mib']} MiB)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
