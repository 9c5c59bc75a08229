"""Stands in for vLLM's server in tests of scripts/vllm-cpu.sh: it starts an engine process, as vLLM's
server starts EngineCore, and answers /health on the port given as its last argument."""

from __future__ import annotations

import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the script keeps this process's output as the server's log."""


def main() -> None:
    port = int(sys.argv[-1])
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"server pid {os.getpid()} engine pid {engine.pid}", flush=True)
    HTTPServer(("127.0.0.1", port), Health).serve_forever()


if __name__ == "__main__":
    main()
