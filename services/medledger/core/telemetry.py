"""OpenTelemetry set-up: traces (OTLP export when an endpoint is set) and Prometheus metrics.

``configure_telemetry`` may be called more than once in a process (tests, or the local
stack running several services): the tracer provider is created once and shared, each
call gets its own meter provider and Prometheus registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, start_http_server

INSTRUMENTATION_NAME = "medledger"
# Buckets in seconds: gRPC calls here range from sub-millisecond health checks to
# multi-second uploads.
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_lock = threading.Lock()
_tracer_provider: TracerProvider | None = None
_otlp_endpoints: set[str] = set()


@dataclass
class Telemetry:
    """The instruments one service records into, and the handles to shut them down."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    metrics_port: int = 0
    _metrics_server: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        meter = self.meter_provider.get_meter(INSTRUMENTATION_NAME)
        self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        self.rpc_requests = meter.create_counter(
            "rpc.server.requests",
            unit="{request}",
            description="gRPC calls handled, by method and status code",
        )
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="s",
            description="Time to handle a gRPC call, by method and status code",
            explicit_bucket_boundaries_advisory=list(_LATENCY_BUCKETS),
        )

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one handled call and its latency."""
        attributes = {
            "rpc.system": "grpc",
            "rpc.method": method,
            "rpc.grpc.status_code": code,
            "medledger.service": self.service_name,
        }
        self.rpc_requests.add(1, attributes)
        self.rpc_duration.record(seconds, attributes)

    def shutdown(self) -> None:
        """Stop the metrics endpoint and flush pending spans."""
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        self.meter_provider.shutdown()
        self.tracer_provider.force_flush(timeout_millis=5_000)


def configure_telemetry(
    service_name: str,
    otlp_endpoint: str | None = None,
    metrics_port: int = 0,
    *,
    metrics_host: str = "127.0.0.1",
) -> Telemetry:
    """Set up tracing and metrics for a service.

    Spans go to the OTLP gRPC collector at ``otlp_endpoint`` when one is given and are
    otherwise only available in-process. With ``metrics_port > 0`` the Prometheus text
    endpoint listens on ``metrics_host:metrics_port`` (``/metrics``).
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    tracer_provider = _shared_tracer_provider(service_name)
    if otlp_endpoint:
        _add_otlp_exporter(tracer_provider, otlp_endpoint)

    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    meter_provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": f"medledger-{service_name}"}),
    )
    with _lock:
        if not isinstance(metrics.get_meter_provider(), MeterProvider):
            metrics.set_meter_provider(meter_provider)

    server: Any = None
    bound_port = 0
    if metrics_port > 0:
        server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=registry)
        bound_port = int(server.server_port)
    return Telemetry(
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        registry=registry,
        metrics_port=bound_port,
        _metrics_server=server,
    )


def _shared_tracer_provider(service_name: str) -> TracerProvider:
    global _tracer_provider
    with _lock:
        if _tracer_provider is None:
            _tracer_provider = TracerProvider(
                resource=Resource.create({"service.name": f"medledger-{service_name}"})
            )
            # The global provider can only be set once per process; NATS hops and
            # library instrumentation find it there.
            if not isinstance(trace.get_tracer_provider(), TracerProvider):
                trace.set_tracer_provider(_tracer_provider)
        return _tracer_provider


def _add_otlp_exporter(provider: TracerProvider, endpoint: str) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    with _lock:
        if endpoint in _otlp_endpoints:
            return
        _otlp_endpoints.add(endpoint)
        insecure = endpoint.startswith("http://")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        )
