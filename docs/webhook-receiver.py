#!/usr/bin/env python3
"""A tiny Herald webhook receiver for trying things out (docs/webhooks.md).

    python3 docs/webhook-receiver.py PORT [SECRETS_FILE]

Prints every POST it gets (the three webhook-* headers, whether the signature is valid, the
body) and answers 200. SECRETS_FILE holds webhook secrets (`whsec_…`), one per line; it is
read again at every POST, so you can append a secret after creating a webhook. The path of the
URL chooses the answer, to try Herald's failure handling:

    /status/503                  answer 503
    /status/429?retryAfter=3     answer 429 with `Retry-After: 3`
    /status/410                  answer 410 Gone
    /sleep/15                    wait 15 s before answering 200 (longer than Herald's timeout)
    anything else                answer 200

Standard library only (Python 3.9 or later). A demo, not a production server.
"""

import base64
import hashlib
import hmac
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def verify(secret, headers, body, tolerance=300):
    """True when `body` (the raw bytes) was signed by Herald with `secret` ("whsec_...")."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        return False
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old, or from the future: maybe a replay
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(s.removeprefix("v1,"), expected)
        for s in signatures.split()
        if s.startswith("v1,")
    )


PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
SECRETS = sys.argv[2] if len(sys.argv) > 2 else None
PRINT_LOCK = threading.Lock()


def secrets():
    try:
        with open(SECRETS) as f:
            return [line.strip() for line in f if line.strip()]
    except (TypeError, OSError):
        return []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if all(h in self.headers for h in ("webhook-id", "webhook-timestamp", "webhook-signature")):
            ok = any(verify(s, self.headers, body) for s in secrets())
            signature = "valid" if ok else "NOT VALID (unknown secret?)"
        else:
            signature = "missing headers"
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        status, extra = 200, {}
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
            retry_after = parse_qs(url.query).get("retryAfter")
            if retry_after:
                extra["Retry-After"] = retry_after[0]
        elif len(parts) == 2 and parts[0] == "sleep" and parts[1].isdigit():
            time.sleep(int(parts[1]))
        with PRINT_LOCK:
            print(
                f"[{PORT}] {time.strftime('%H:%M:%S')} POST {self.path} -> {status}\n"
                f"    webhook-id: {self.headers.get('webhook-id')}\n"
                f"    webhook-timestamp: {self.headers.get('webhook-timestamp')}\n"
                f"    webhook-signature: {self.headers.get('webhook-signature')} ({signature})\n"
                f"    {body.decode(errors='replace')}",
                flush=True,
            )
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass  # the print above says it all


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
