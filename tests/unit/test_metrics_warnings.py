"""An invocation that counted nothing flushes quietly: no Powertools UserWarning on stderr (in Lambda, a line in
CloudWatch Logs at every such invocation; embedded, a line in the pipeline process's output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_flush_with_no_metrics_prints_no_warning() -> None:
    code = (
        "from forwarder.observability import metrics\n"
        "metrics.flush_metrics()\n"  # nothing was counted
        "print('flushed')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "layers" / "forwarder"),
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONWARNINGS": "default",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "flushed"
    assert "No application metrics" not in done.stderr
