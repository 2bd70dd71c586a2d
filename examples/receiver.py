#!/usr/bin/env python3
"""A webhook receiver for rppg-agent events, standard library only (Python 3.8+).

    RPPG_HOOK_SECRET=whsec_... PORT=8080 python3 examples/receiver.py

It verifies every request over the RAW bytes it received: the Standard
Webhooks headers (webhook-id, webhook-timestamp, webhook-signature:
HMAC-SHA256 of "id.timestamp.body" with the base64 key after "whsec_"),
and for format = "circadify" the body's own `signature` (hex HMAC-SHA256,
same key, of the body's JSON without `signature`, compact, keys in the
order received). It prints one JSON line per request and answers 204 when
the signature holds, 401 when not. Deduplicate by webhook-id: a retry
carries the same id. (The `standardwebhooks` package on PyPI does the
same check: Webhook(secret).verify(raw_body, headers).)
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ.get("RPPG_HOOK_SECRET", "")
if not SECRET.startswith("whsec_"):
    sys.exit("set RPPG_HOOK_SECRET to the destination secret (whsec_...)")
KEY = base64.b64decode(SECRET[len("whsec_"):])
TOLERANCE_S = 300


def standard_webhooks(headers, raw):
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if abs(time.time() - int(ts)) > TOLERANCE_S:
        return "timestamp outside 5 minutes"
    mac = hmac.new(KEY, f"{msg_id}.{ts}.".encode() + raw, hashlib.sha256).digest()
    for sig in sigs.split(" "):
        version, _, b64 = sig.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(b64 or ""), mac):
            return None
    return "no signature matches"


def circadify_signature(body):
    rest = {k: v for k, v in body.items() if k != "signature"}
    # ensure_ascii (the default) and compact separators: the agent's bytes.
    text = json.dumps(rest, separators=(",", ":"))
    mac = hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(str(body.get("signature")), mac)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        problem = standard_webhooks(self.headers, raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        line = {
            "id": self.headers.get("webhook-id"),
            "event": (body.get("event") or body.get("resourceType")) if isinstance(body, dict) else None,
            "verified": problem is None,
            "problem": problem,
        }
        if isinstance(body, dict) and "signature" in body:
            line["circadify_signature"] = circadify_signature(body)
        print(json.dumps(line), flush=True)
        self.send_response(204 if problem is None else 401)
        self.end_headers()

    def log_message(self, *args):
        pass  # one JSON line per request on stdout is the log


server = HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler)
print(f"listening on http://127.0.0.1:{server.server_port}/", file=sys.stderr, flush=True)
server.serve_forever()
