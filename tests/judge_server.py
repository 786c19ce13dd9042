"""A real HTTP judge on 127.0.0.1 for tests: speaks OpenAI chat completions and Gemini generateContent.

Its behaviour for a prompt is chosen by a tag in the question text:
  [429]     first request: 429 with Retry-After: 1 (seconds); then a normal reply
  [500]     first request: 500; then a normal reply
  [slow]    first request: sleeps `slow_s` (beyond the client timeout); then a normal reply
  [fence]   the JSON inside a ```json fence, with prose around it
  [garbled] first reply is not JSON at all; then a normal reply
  [never]   every reply is prose without scores (unparseable)
  [down]    every request: 503 whose body echoes the credentials it received (tests scrubbing)
Otherwise a plain JSON reply. prediction_score is 1 when the prediction's answer line equals the
ground truth's answer line, reasoning_score always 1. Requests are counted per (api, prompt), api
being "openai" or "gemini".
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, key: str, slow_s: float = 1.0):
        self.key = key
        self.slow_s = slow_s
        self.requests: Counter[tuple[str, str]] = Counter()
        self.rejected = 0            # requests refused with 401 (wrong or missing key)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, api: str, prompt: str) -> int:
        """How many requests this prompt has received on this api so far (this call included)."""
        with self.lock:
            self.requests[api, prompt] += 1
            return self.requests[api, prompt]


def judge_text(prompt: str, tag: str, nth: int) -> str | None:
    """The reply text the fake judge gives, or None for an HTTP error decided by the caller."""
    gold = re.search(r"Ground truth:.*?Answer: (.*?)\n", prompt, re.DOTALL).group(1)
    said = re.search(r"Prediction:.*?Answer: (.*)$", prompt, re.DOTALL).group(1)
    verdict = {"evaluation": "compared", "reasoning_score": 1, "prediction_score": int(gold == said)}
    if tag == "[never]" or (tag == "[garbled]" and nth == 1):
        return "I think the prediction is fine."
    if tag == "[fence]":
        return f"Here is my evaluation:\n```json\n{json.dumps(verdict)}\n```\nHope this helps."
    return json.dumps(verdict)


def _handler(server: JudgeServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:   # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/chat/completions":
                api = "openai"
                credential = self.headers.get("Authorization", "")
                authorised = credential == f"Bearer {server.key}"
                prompt = body["messages"][0]["content"]
            elif re.fullmatch(r"/v1beta/models/[\w.-]+:generateContent", self.path):
                api = "gemini"
                credential = self.headers.get("x-goog-api-key", "")
                authorised = credential == server.key
                prompt = body["contents"][0]["parts"][0]["text"]
            else:
                return self._send(404, {"error": f"no route {self.path}"})
            if not authorised:
                server.rejected += 1
                return self._send(401, {"error": "bad key"})
            tag = re.search(r"Question: (\[\w+\])?", prompt).group(1) or ""
            nth = server.count(api, prompt)
            if tag == "[down]":
                return self._send(503, {"error": f"overloaded, you sent {credential}"})
            if tag == "[429]" and nth == 1:
                return self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
            if tag == "[500]" and nth == 1:
                return self._send(500, {"error": "oops"})
            if tag == "[slow]" and nth == 1:
                time.sleep(server.slow_s)
            text = judge_text(prompt, tag, nth)
            if api == "openai":
                reply = {"choices": [{"message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 20}}
            else:
                reply = {"candidates": [{"content": {"parts": [{"text": text}]}}],
                         "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20}}
            self._send(200, reply)

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):   # the client gave up on a slow reply
                pass

    return Handler
