"""Records throughput: upload and download of one object through the records service over gRPC
(encryption + storage, directory and S3 backends), against two raw references measured in the
same run: the same bytes put/get with the minio client directly, and streamed over plain gRPC
(the same protobuf messages, no encryption, no storage). Also the domain layer in-process.

    .venv/bin/python benchmarks/records_throughput.py              # quick (64 MiB)
    .venv/bin/python benchmarks/records_throughput.py --size 1GiB  # the real measurement

The service and the plain-gRPC reference each run in their own process (this script with
--serve), so the service's peak RSS is its own: VmHWM from /proc minus its RSS once started.
Consent, ledger and audit are the in-memory stand-ins (they cost nothing per byte).
Uses MEDLEDGER_TEST_S3_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY) when set, otherwise starts moto's
S3 server in a separate process. Prints MiB/s, ratios to the slower raw reference and the
service's peak RSS growth; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import grpc

from medledger._gen.common.v1 import access_pb2
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.core.auth import AllowAll, CallerIdentity
from medledger.core.grpc_server import GrpcServer
from medledger.core.logging import configure_logging
from medledger.core.settings import CommonSettings
from medledger.crypto.kek import LocalKeyFileProvider
from medledger.records.api import RecordsApi, records_grpc_service
from medledger.records.directory import DirectoryBlobStorage
from medledger.records.memory import MemoryAudit, MemoryLedger, StaticConsent
from medledger.records.memory_tuning import limit_malloc_arenas
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
        registration_wait_seconds=1.0,
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
    service.close()
    return upload, elapsed


# --- the gRPC legs -----------------------------------------------------------------------

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 8 * MIB),
    ("grpc.max_receive_message_length", 8 * MIB),
]
REFERENCE_SERVICE = "bench.PlainStream"


class BenchSettings(CommonSettings):
    service_name = "records-bench"


def plain_reference_handler() -> grpc.GenericRpcHandler[Any, Any]:
    """The records API's message shapes with nothing behind them: receive and drop, or send."""

    async def sink(requests: AsyncIterator[pb.UploadRecordRequest], context: Any) -> pb.Record:
        size = 0
        async for message in requests:
            size += len(message.chunk)
        return pb.Record(size_bytes=size)

    async def source(
        request: pb.DownloadRecordRequest, context: Any
    ) -> AsyncIterator[pb.DownloadRecordResponse]:
        block = os.urandom(BLOCK)
        yield pb.DownloadRecordResponse(header=pb.DownloadHeader(length=request.offset))
        for _ in range(request.offset // BLOCK):
            yield pb.DownloadRecordResponse(chunk=block)

    return grpc.method_handlers_generic_handler(
        REFERENCE_SERVICE,
        {
            "Sink": grpc.stream_unary_rpc_method_handler(
                sink, pb.UploadRecordRequest.FromString, pb.Record.SerializeToString
            ),
            "Source": grpc.unary_stream_rpc_method_handler(
                source,
                pb.DownloadRecordRequest.FromString,
                pb.DownloadRecordResponse.SerializeToString,
            ),
        },
    )


async def serve(kind: str, port_file: Path, work: Path) -> None:
    """Run one server (the reference, or the records service on `dir` or `s3`) until killed."""
    settings = BenchSettings(org_id="bench", grpc_port=0, log_level="WARNING")
    configure_logging("WARNING", "console")
    if kind == "reference":
        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers([plain_reference_handler()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    else:
        # As records.main.build does for the real service.
        limit_malloc_arenas()
        storage: BlobStorage
        if kind == "dir":
            storage = DirectoryBlobStorage(work / f"grpc-blobs-{uuid.uuid4().hex[:8]}")
        else:
            endpoint = endpoint_from_env()
            assert endpoint is not None
            storage = await S3BlobStorage.open(
                S3Config(
                    endpoint.url,
                    f"bench-grpc-{uuid.uuid4().hex[:8]}",
                    endpoint.access_key,
                    endpoint.secret_key,
                    region=endpoint.region,
                )
            )
        service = RecordsService(
            storage=storage,
            store=SqliteMetadataStore(work / f"grpc-meta-{uuid.uuid4().hex[:8]}.sqlite3"),
            keys=LocalKeyFileProvider({"kek-bench": os.urandom(32)}, "kek-bench"),
            consent=StaticConsent(),
            ledger=MemoryLedger(),
            audit=MemoryAudit(),
            custodian="organisations/bench",
            registration_wait_seconds=1.0,
        )
        caller = CallerIdentity("organisations/bench/principals/bench", "bench")
        grpc_server = GrpcServer(
            service_name="records",
            settings=settings,
            services=[records_grpc_service(RecordsApi(service))],
            authenticator=AllowAll(caller),
        )
        port = await grpc_server.start()
    # Written whole, then renamed: the parent never reads a half-written port.
    await asyncio.to_thread(_publish_port, port_file, port)
    await asyncio.Event().wait()


def _publish_port(port_file: Path, port: int) -> None:
    temporary = port_file.with_suffix(".tmp")
    temporary.write_text(str(port))
    temporary.replace(port_file)


class ServerProcess:
    """This script with --serve KIND in a child process; its memory is read from /proc."""

    def __init__(self, kind: str, work: Path, env: dict[str, str]) -> None:
        self.kind = kind
        port_file = work / f"{kind}-{uuid.uuid4().hex[:6]}.port"
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                kind,
                "--port-file",
                str(port_file),
                "--work",
                str(work),
            ],
            env=env,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text()}"
        self.baseline_rss_mib = self.memory_mib("VmRSS")

    def memory_mib(self, field: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for pid {self.process.pid}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def _upload_messages(
    first: pb.UploadRecordRequest, block: bytes, size: int
) -> AsyncIterator[pb.UploadRecordRequest]:
    yield first
    async for piece in source(block, size):
        yield pb.UploadRecordRequest(chunk=piece)


async def grpc_reference(address: str, block: bytes, size: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        sink = channel.stream_unary(
            f"/{REFERENCE_SERVICE}/Sink",
            pb.UploadRecordRequest.SerializeToString,
            pb.Record.FromString,
        )
        started = time.perf_counter()
        done = await sink(_upload_messages(pb.UploadRecordRequest(), block, size))
        up = time.perf_counter() - started
        assert done.size_bytes == size
        source_call = channel.unary_stream(
            f"/{REFERENCE_SERVICE}/Source",
            pb.DownloadRecordRequest.SerializeToString,
            pb.DownloadRecordResponse.FromString,
        )
        started = time.perf_counter()
        received = 0
        async for message in source_call(pb.DownloadRecordRequest(offset=size)):
            received += len(message.chunk)
        down = time.perf_counter() - started
        assert received == size // BLOCK * BLOCK
    return up, down


async def grpc_service(address: str, block: bytes, size: int) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.RecordsServiceStub(channel)
        header = pb.UploadRecordRequest(
            header=pb.RecordHeader(
                patient_pseudonym="pp-bench",
                data_class=access_pb2.DataClass(category=access_pb2.RECORD_CATEGORY_IMAGING),
                content_type="application/octet-stream",
                purpose=access_pb2.PURPOSE_OF_USE_TREAT,
                expected_size_bytes=size,
            )
        )
        started = time.perf_counter()
        record = await stub.UploadRecord(_upload_messages(header, block, size))
        up = time.perf_counter() - started
        assert record.size_bytes == size and record.state == pb.RECORD_STATE_AVAILABLE
        started = time.perf_counter()
        received = 0
        call = stub.DownloadRecord(
            pb.DownloadRecordRequest(name=record.name, purpose=access_pb2.PURPOSE_OF_USE_TREAT)
        )
        async for message in call:
            received += len(message.chunk)
        down = time.perf_counter() - started
        assert received == size
    return up, down


def _child_env(endpoint: S3Endpoint) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MEDLEDGER_TEST_S3_ENDPOINT": endpoint.url,
            "MEDLEDGER_TEST_S3_ACCESS_KEY": endpoint.access_key,
            "MEDLEDGER_TEST_S3_SECRET_KEY": endpoint.secret_key,
            "MEDLEDGER_TEST_S3_REGION": endpoint.region,
        }
    )
    return env


async def grpc_legs(
    size: int, endpoint: S3Endpoint, work: Path, block: bytes
) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds per leg, service peak RSS growth in MiB per backend)."""
    env = _child_env(endpoint)
    seconds: dict[str, float] = {}
    growth: dict[str, float] = {}
    reference = ServerProcess("reference", work, env)
    try:
        seconds["grpc_plain_upload"], seconds["grpc_plain_download"] = await grpc_reference(
            reference.address, block, size
        )
    finally:
        reference.stop()
    for kind in ("dir", "s3"):
        server = ServerProcess(kind, work, env)
        try:
            up, down = await grpc_service(server.address, block, size)
            seconds[f"grpc_{kind}_upload"], seconds[f"grpc_{kind}_download"] = up, down
            growth[kind] = server.memory_mib("VmHWM") - server.baseline_rss_mib
        finally:
            server.stop()
    return seconds, growth


async def run(size: int, endpoint: S3Endpoint, work: Path) -> dict[str, Any]:
    block = os.urandom(BLOCK)
    rss_start = peak_rss_mib()
    mib = size / MIB
    raw_put, raw_get = await asyncio.to_thread(raw_minio, endpoint, block, size)
    seconds, service_growth = await grpc_legs(size, endpoint, work, block)
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
    seconds.update(
        {
            "raw_minio_put": raw_put,
            "raw_minio_get": raw_get,
            "inprocess_dir_upload": dir_up,
            "inprocess_dir_download": dir_down,
            "inprocess_s3_upload": s3_up,
            "inprocess_s3_download": s3_down,
        }
    )
    rates = {name: mib / elapsed for name, elapsed in seconds.items()}
    slower_up = min(rates["raw_minio_put"], rates["grpc_plain_upload"])
    slower_down = min(rates["raw_minio_get"], rates["grpc_plain_download"])
    ratios = {
        f"{name}": round(rates[name] / (slower_up if name.endswith("upload") else slower_down), 3)
        for name in ("grpc_s3_upload", "grpc_s3_download", "grpc_dir_upload", "grpc_dir_download")
    }
    return {
        "size_bytes": size,
        "mib_per_s": {k: round(v, 1) for k, v in sorted(rates.items())},
        "slower_reference_mib_per_s": {
            "upload": round(slower_up, 1),
            "download": round(slower_down, 1),
        },
        "ratio_to_slower_reference": ratios,
        "targets_met": all(ratio >= 0.7 for ratio in ratios.values())
        and all(growth < 64 for growth in service_growth.values()),
        "service_peak_rss_growth_mib": {k: round(v, 1) for k, v in service_growth.items()},
        "bench_peak_rss_growth_mib": round(peak_rss_mib() - rss_start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=64 * MIB, help="e.g. 64MiB, 1GiB")
    parser.add_argument("--serve", choices=("reference", "dir", "s3"), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port_file, args.work))
        return
    endpoint = endpoint_from_env()
    with tempfile.TemporaryDirectory(prefix="records-bench-") as temporary:
        work = Path(temporary)
        if endpoint is None:
            with MotoS3Server(log_dir=work / "moto") as server:
                result = asyncio.run(run(args.size, server.endpoint, work))
        else:
            result = asyncio.run(run(args.size, endpoint, work))
    print(f"object size {result['size_bytes'] / MIB:.0f} MiB")
    for name, rate in result["mib_per_s"].items():
        print(f"{name:>24}: {rate:8.1f} MiB/s")
    slower = result["slower_reference_mib_per_s"]
    print(f"slower raw reference: upload {slower['upload']} MiB/s, download {slower['download']}")
    for name, ratio in result["ratio_to_slower_reference"].items():
        print(f"{name + ' / slower reference':>42}: {ratio:.3f}")
    for backend, growth in result["service_peak_rss_growth_mib"].items():
        print(f"service ({backend}) peak RSS growth: {growth} MiB")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
