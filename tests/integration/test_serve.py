"""`medledger serve <name>` as production runs it: settings from the environment,
gRPC health SERVING once ready, a clean exit 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medledger.core.embedded_nats import EmbeddedNats
from medledger.ledger.genesis import create_consortium
from medledger.testing.ledger import FAST_PARAMETERS, ValidatorProcess


def test_serve_ledger_reports_health_and_exits_cleanly_on_sigterm(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    create_consortium(
        tmp_path / "consortium",
        ["org-a"],
        "serve-test",
        int(time.time() * 1000),
        parameters=FAST_PARAMETERS,
    )
    validator = ValidatorProcess(tmp_path / "consortium", "org-a", [nats_server.url], tmp_path)
    validator.start(timeout=30)
    assert validator.serving()
    # The chart's `helm test` script passes against the real service.
    script = Path(__file__).parents[2] / "charts" / "medledger" / "files" / "helm_test.py"
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "MEDLEDGER_TEST_TARGETS": f"ledger={validator.address}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GetLatestBlock answered as expected" in result.stdout
    pid = validator.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while validator.process.running and time.monotonic() < deadline:
        time.sleep(0.05)
    log = validator.process.log_path.read_text()
    assert validator.process.returncode == 0, log[-2000:]
    assert "shutdown requested" in log
    assert not validator.serving()
