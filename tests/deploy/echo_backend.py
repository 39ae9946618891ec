#!/usr/bin/env python3
"""Echo backend standing in for the artefatos binary in the nginx/cluster.sh checks:
it answers like a process of the cluster (`migrate` exits 0; `api`/`worker` serve
/health/ready on ARTEFATOS_LISTEN and stop on SIGTERM) and echoes what nginx
forwarded (method, path, X-Request-Id, body length, which process answered), so
the tests can observe nginx's behaviour. It is not a model of the service.

Fault: while the file $ECHO_FAULT_DIR/drop-<port> exists, the process reads each
request and closes the connection without answering (a replica dying after the
request was sent), noting the request line in drop-<port>.log."""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body_len = len(self.rfile.read(length)) if length else 0
        port = os.environ["ARTEFATOS_LISTEN"].rsplit(":", 1)[1]
        fault_dir = os.environ.get("ECHO_FAULT_DIR")
        if fault_dir and self.path != "/health/ready" \
                and os.path.exists(os.path.join(fault_dir, f"drop-{port}")):
            with open(os.path.join(fault_dir, f"drop-{port}.log"), "a") as log:
                log.write(f"{self.command} {self.path}\n")
            self.close_connection = True
            return
        payload = json.dumps({
            "role": sys.argv[1],
            "listen": os.environ["ARTEFATOS_LISTEN"],
            "method": self.command,
            "path": self.path,
            "request_id": self.headers.get("X-Request-Id"),
            "body_len": body_len,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.headers.get("X-Request-Id"):
            self.send_header("x-request-id", self.headers["X-Request-Id"])  # as the API does
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


def main():
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "migrate":
        return 0
    if role not in ("api", "worker", "all"):
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    host, port = os.environ["ARTEFATOS_LISTEN"].rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
