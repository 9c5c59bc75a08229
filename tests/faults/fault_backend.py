"""The fault server (tests/completions/fault_server.py) as a process of its own, so a test can kill it.

Run: ``python -m tests.faults.fault_backend PORT``.
"""

from __future__ import annotations

import sys

import uvicorn

from tests.completions.fault_server import FaultServer


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run(FaultServer(), host="127.0.0.1", port=port, log_level="critical", lifespan="off", access_log=False)


if __name__ == "__main__":
    main()
