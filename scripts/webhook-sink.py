"""A webhook receiver for tests and benchmarks: Alertmanager posts to http://127.0.0.1:PORT/, and each
notification is appended to LOG as one JSON line {"received": epoch seconds, "body": the notification}.
Run on the monitoring host (python3 -c "$(cat scripts/webhook-sink.py)" PORT LOG, under systemd-run); it
serves until stopped. Standard library only."""

import http.server
import json
import sys
import time

PORT, LOG = int(sys.argv[1]), sys.argv[2]


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the handler's name is http.server's)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"received": time.time(), "body": body}) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", PORT), Sink).serve_forever()
