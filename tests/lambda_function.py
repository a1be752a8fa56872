"""A function server with Firehose's data-transformation contract, for tests/transforms.rs.

    lambda_function.py PORT

POST /<mode> with the transformation event. Per record (by its decoded data):
  contains "drop" -> Dropped; contains "fail" -> ProcessingFailed; else Ok with the data upper-cased
  and metadata.partitionKeys {"first": <its first character>, "size": <its length>}.
Modes: /ok; /echo (every record Ok and unchanged, after 0.2 s); /concurrent (as /ok after 0.5 s,
counting the invocations in flight: GET /peak gives the most at once); /missing (the last recordId is left out); /duplicate (the first answered twice);
/notjson; /slow (sleeps 3 s, then answers); /flaky (HTTP 500 for the first 2 requests, then /ok);
/invoke/... (the Lambda Invoke API path: checks an AWS4 Authorization for service `lambda`).
Every event received is appended to the log at GET /events (JSON lines).
GET /invoke/2015-03-31/functions/<name>/configuration is Lambda's GetFunctionConfiguration (AWS4
for `lambda` required): the configuration, or 404 ResourceNotFoundException when the name holds
"missing", or a bare 404 (as an emulator serving invocations only) when it holds "noapi"; each
such request is logged at GET /checks.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EVENTS = []
CHECKS = []
LOCK = threading.Lock()
FLAKY = {"left": 2}
FLIGHT = {"now": 0, "peak": 0}


def answer(event, mode):
    out = []
    for r in event["records"]:
        data = base64.b64decode(r["data"]).decode("utf-8", "replace")
        if "drop" in data:
            out.append({"recordId": r["recordId"], "result": "Dropped"})
        elif "fail" in data:
            out.append({"recordId": r["recordId"], "result": "ProcessingFailed", "data": r["data"]})
        else:
            out.append({
                "recordId": r["recordId"],
                "result": "Ok",
                "data": base64.b64encode(data.upper().encode()).decode(),
                "metadata": {"partitionKeys": {"first": data[:1], "size": str(len(data))}},
            })
    if mode == "missing" and out:
        out.pop()
    if mode == "duplicate" and out:
        out.append(out[0])
    return {"records": out}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/invoke/2015-03-31/functions/") and self.path.endswith("/configuration"):
            return self.function_configuration()
        with LOCK:
            if self.path == "/checks":
                body = "".join(json.dumps(c) + "\n" for c in CHECKS).encode()
            elif self.path == "/peak":
                body = str(FLIGHT["peak"]).encode()
            else:
                body = "".join(json.dumps(e) + "\n" for e in EVENTS).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def function_configuration(self):
        auth = self.headers.get("authorization") or ""
        with LOCK:
            CHECKS.append({"path": self.path, "authorization": auth})
        if "/lambda/aws4_request" not in auth or not self.headers.get("x-amz-date"):
            return self.reply(403, {"message": "missing signature"})
        name = self.path.split("/")[4]
        if "noapi" in name:
            # As Lambda's runtime interface emulator, which serves invocations only.
            return self.reply(404, None, raw=b"404 page not found")
        if "missing" in name:
            body = json.dumps({"Type": "User", "Message": "Function not found: " + name.replace("%3A", ":")}).encode()
            self.send_response(404)
            self.send_header("x-amzn-ErrorType", "ResourceNotFoundException")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return self.reply(200, {"FunctionName": name, "Runtime": "python3.12", "State": "Active"})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        event = json.loads(self.rfile.read(length))
        mode = self.path.strip("/").split("/")[0]
        with LOCK:
            EVENTS.append({"path": self.path, "event": event, "authorization": self.headers.get("authorization")})
        if mode == "invoke":
            auth = self.headers.get("authorization") or ""
            if "/lambda/aws4_request" not in auth or not self.headers.get("x-amz-date"):
                return self.reply(403, {"message": "missing signature"})
            mode = "ok"
        if mode == "flaky":
            with LOCK:
                left = FLAKY["left"]
                FLAKY["left"] = max(0, left - 1)
            if left > 0:
                return self.reply(500, {"message": "try again"})
        if mode == "slow":
            time.sleep(3)
        if mode == "concurrent":
            with LOCK:
                FLIGHT["now"] += 1
                FLIGHT["peak"] = max(FLIGHT["peak"], FLIGHT["now"])
            time.sleep(0.5)
            with LOCK:
                FLIGHT["now"] -= 1
        if mode == "echo":
            time.sleep(0.2)
            return self.reply(200, {"records": [{"recordId": r["recordId"], "result": "Ok", "data": r["data"]} for r in event["records"]]})
        if mode == "notjson":
            return self.reply(200, None, raw=b"this is not json")
        self.reply(200, answer(event, mode))

    def reply(self, status, value, raw=None):
        body = raw if raw is not None else json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
