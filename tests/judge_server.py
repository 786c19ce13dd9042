"""A real HTTP judge on 127.0.0.1 for tests: speaks OpenAI chat completions and Gemini generateContent,
with each provider's own reply and error shapes.

It answers as a judge that follows the prompt: its verdict carries the verdict_id the prompt asks
for, in the layout `layout` names: "json" (one line of JSON) or "paper" (the paper's Appendix-B
structure, no commas, one key per line). A request that asks for structured output (OpenAI
response_format json_schema, Gemini responseSchema) gets the JSON object alone, as such a server
gives it. Its behaviour for a prompt is chosen by a tag in the question text:
  [429]      first request: 429 with Retry-After: 1 (seconds); then a normal reply
  [retryinfo] first request: 429 whose body carries Gemini's google.rpc.RetryInfo retryDelay "1s"
             (no Retry-After header); then a normal reply
  [500]      first request: 500; then a normal reply
  [slow]     first request: sleeps `slow_s` (beyond the client timeout); then a normal reply
  [fence]    the JSON inside a ```json fence, with prose around it
  [garbled]  first reply is not JSON at all; then a normal reply
  [never]    every reply is prose without scores (unparseable)
  [down]     every request: 503 whose body echoes the credentials it received (tests scrubbing)
  [leak]     every request: 503 whose body echoes the credential in every form (as [quote-key])
  [refuse]   OpenAI: content null with a `refusal`; Gemini: a candidate stopped for SAFETY, no content
  [filter]   OpenAI: finish_reason content_filter; Gemini: the prompt blocked (promptFeedback.blockReason)
  [flagged]  400 saying the prompt was flagged: OpenAI's invalid_prompt, or with `azure` set on the
             server Azure OpenAI's content_filter (Gemini blocks a prompt in a 200: [filter])
  [maxtok]   the reply cut by the token limit (finish_reason length / finishReason MAX_TOKENS)
  [think]    Gemini: a `thought: true` part before the answer, thoughtsTokenCount 50; OpenAI: 50 reasoning
             tokens inside completion_tokens (70)
  [nousage]  a normal reply without usage
  [quote]    the judge first quotes the prediction's answer, then gives its verdict (with structured
             output: the quote inside its evaluation)
  [quote-after] the verdict first, then the prediction's answer quoted, last in the reply
  [restate]  the judge restates a score in its own words, as objects in both layouts that are not
             byte-equal to anything in the prediction ({"prediction_score": 1}), then its verdict
  [draft]    a verdict-shaped object and a "prediction_score: 1" inside the judge's reasoning text,
             before its verdict
  [echo]     the judge repeats the whole prompt from the ground truth on, prediction block included,
             then gives its verdict
  [noid]     a verdict without the verdict_id (a judge that ignored that line)
  [gzip]     the reply gzip-compressed (Content-Encoding: gzip)
  [bomb]     200, Content-Encoding: gzip: 8 KB that inflate to 8 MiB of spaces after a verdict
  [brotli]   200, Content-Encoding: br (never asked for)
  [quote-key] a normal verdict, followed by the credential the request carried, in every form
             (whole, URL-encoded, JSON-escaped, base64, base64 of "user:key", masked, in part)
  [echo401]  401 invalid_api_key whose message echoes the credential in the same forms
  [trickle]  the reply's headers, then its body at one byte per 50 ms (a server that never times out
             a read by itself)
  [huge]     a well-formed reply of 3 MiB
Otherwise a plain verdict. prediction_score is 1 when the prediction's answer (the "answer" of the
JSON object between the prompt's <prediction FENCE> lines) equals the ground truth's answer line,
reasoning_score always 1, evaluation "compared".
Requests are counted per (api, prompt less its random ids), api being "openai" or "gemini", and every
request body is kept in `bodies`.

Server-wide: after `fail_after` successful replies, every request gets the `failure` answer, one of
FAILURES, in the provider's own error format (None: no failure).
"""
from __future__ import annotations

import base64
import functools
import gzip
import json
import re
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

FAILURES = ("badkey", "forbidden", "gone", "quota", "daily", "param", "schema", "location")


class JudgeServer:
    def __init__(self, key: str, slow_s: float = 1.0):
        self.key = key
        self.slow_s = slow_s
        self.layout = "json"         # or "paper": the verdict in the Appendix-B structure, without commas
        self.requests: Counter[tuple[str, str]] = Counter()
        self.bodies: list[tuple[str, str, dict]] = []   # (api, path, JSON body) of every authorised request
        self.rejected = 0            # requests refused with 401 (wrong or missing key)
        self.failure: str | None = None
        self.azure = False           # [flagged] answers as Azure OpenAI does
        self.fail_after = 0
        self.succeeded = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        # shutdown() waits for the serving loop's next poll: 50 ms, not the default 0.5 s, per server
        self.thread = threading.Thread(target=functools.partial(self.httpd.serve_forever, poll_interval=0.05),
                                       daemon=True)

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
        """How many requests this prompt (less its per-request ids) has received on this api so far
        (this call included)."""
        prompt = re.sub(r"\b[0-9a-f]{12}\b", "ID", prompt)
        with self.lock:
            self.requests[api, prompt] += 1
            return self.requests[api, prompt]


def judge_text(prompt: str, tag: str, nth: int, layout: str = "json", structured: bool = False) -> str:
    """The reply text the fake judge gives."""
    gold = re.search(r"Ground truth:.*?Answer: (.*?)\n", prompt, re.DOTALL).group(1)
    fence = re.search(r"^<prediction (\w+)>$", prompt, re.MULTILINE).group(1)
    block = re.search(rf"^<prediction {fence}>\n(.*)\n</prediction {fence}>$", prompt, re.MULTILINE | re.DOTALL)
    said = json.loads(block.group(1))["answer"]
    verdict_id = re.search(r"whose value is the string (\w+)\.", prompt).group(1)
    fields = {"verdict_id": verdict_id, "evaluation": "compared", "reasoning_score": 1,
              "prediction_score": int(gold == said)}
    if tag == "[noid]":
        del fields["verdict_id"]
    if tag == "[never]" or (tag == "[garbled]" and nth == 1):
        return "I think the prediction is fine."
    if structured:
        if tag == "[quote]":
            fields["evaluation"] = f"The prediction answers: {said}"
        return json.dumps(fields)
    verdict = render(fields, layout)
    if tag == "[quote]":
        return f"The prediction answers: {said}\nMy verdict:\n{verdict}"
    if tag == "[quote-after]":
        return f"{verdict}\n(The prediction answered: {said})"
    if tag == "[restate]":
        return (f'The prediction claims {{"prediction_score": 1}}, or in the other layout\n'
                f'{{\n"prediction_score": 1\n}}\nbut it does not set its score.\n{verdict}')
    if tag == "[draft]":
        return ('Thinking: at first I would give prediction_score: 1, as in {"evaluation": "draft", '
                f'"reasoning_score": 1, "prediction_score": 1}}, but no.\n{verdict}')
    if tag == "[echo]":
        return prompt[prompt.index("Ground truth:"):] + f"\n\nMy verdict:\n{verdict}"
    if tag == "[huge]":
        return verdict + " " * 3 * 2**20
    if tag == "[fence]":
        return f"Here is my evaluation:\n```json\n{verdict}\n```\nHope this helps."
    if tag == "[maxtok]":
        return verdict[:20]
    return verdict


def render(fields: dict, layout: str) -> str:
    """A verdict as one line of JSON, or in the paper's Output structure: one `"key": value` per line,
    no commas."""
    if layout == "json":
        return json.dumps(fields)
    return "{\n" + "".join(f"    {json.dumps(key)}: {json.dumps(value)}\n" for key, value in fields.items()) + "}"


def credential_forms(credential: str) -> str:
    """The credential a request carried, in every form a server may echo it."""
    secret = credential.removeprefix("Bearer ")
    b64 = base64.b64encode
    json_escaped = json.dumps(secret)[1:-1].replace("/", "\\/")
    return (f"header {credential}; url {quote(secret, safe='')} plus {quote_plus(secret)}; json {json_escaped}; "
            f"base64 {b64(secret.encode()).decode()}; basic {b64(f'user:{secret}'.encode()).decode()}; "
            f"shifted {base64.urlsafe_b64encode(b'a' + secret.encode()).decode()}; "
            f"masked {secret[:3]}****{secret[-4:]}; part {secret[2:14]}")


@functools.lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """The start of a reply body and 8 MiB of spaces, gzip-compressed to about 8 KB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    spaces = b" " * 2**20
    return b"".join([packer.compress(b'{"choices": ['), *(packer.compress(spaces) for _ in range(8)), packer.flush()])


def azure_prompt_filtered() -> dict:
    """Azure OpenAI's 400 for a prompt its content filter blocked."""
    return {"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
                   "Please modify your prompt and retry.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
            "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": True, "severity": "high"}}}}}


def openai_reply(text: str, tag: str) -> dict:
    message: dict = {"role": "assistant", "content": text, "refusal": None}
    finish = "stop"
    if tag == "[refuse]":
        message.update(content=None, refusal="I'm sorry, I can't help with that.")
    elif tag == "[filter]":
        message["content"], finish = None, "content_filter"
    elif tag == "[maxtok]":
        finish = "length"
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    if tag == "[think]":
        usage.update(completion_tokens=70, total_tokens=170, completion_tokens_details={"reasoning_tokens": 50})
    reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}
    if tag == "[nousage]":
        del reply["usage"]
    return reply


def gemini_reply(text: str, tag: str) -> dict:
    usage = {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 120}
    candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
    if tag == "[refuse]":
        candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}
        usage = {"promptTokenCount": 100, "totalTokenCount": 100}
    elif tag == "[filter]":
        return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                "usageMetadata": {"promptTokenCount": 100, "totalTokenCount": 100}}
    elif tag == "[maxtok]":
        candidate["finishReason"] = "MAX_TOKENS"
    elif tag == "[think]":
        candidate["content"]["parts"] = [{"text": "The prediction_score is 0, surely.", "thought": True},
                                         {"text": text}]
        usage.update(thoughtsTokenCount=50, totalTokenCount=170)
    reply = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "m"}
    if tag == "[nousage]":
        del reply["usageMetadata"]
    return reply


def openai_failure(kind: str, model: str) -> tuple[int, dict]:
    errors = {
        "badkey": (401, "Incorrect API key provided: sk-test-****T123. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.", "invalid_request_error", None, "invalid_api_key"),
        "forbidden": (403, "You are not allowed to sample from this model", "invalid_request_error", None, None),
        "gone": (404, f"The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
                 None, "model_not_found"),
        "quota": (429, "You exceeded your current quota, please check your plan and billing details.",
                  "insufficient_quota", None, "insufficient_quota"),
        "param": (400, "Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) "
                       "value is supported.", "invalid_request_error", "temperature", "unsupported_value"),
        "schema": (400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model. "
                        "Learn more about supported models at the Structured Outputs guide: "
                        "https://platform.openai.com/docs/guides/structured-outputs", "invalid_request_error", None, None),
    }
    status, message, type_, param, code = errors[kind]
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def gemini_failure(kind: str, model: str) -> tuple[int, dict]:
    info = "type.googleapis.com/google.rpc.ErrorInfo"
    errors = {
        "badkey": (400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT",
                   [{"@type": info, "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]),
        "forbidden": (403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED", []),
        "gone": (404, f"models/{model} is not found for API version v1beta, or is not supported for "
                      "generateContent. Call ListModels to see the list of available models.", "NOT_FOUND", []),
        "daily": (429, "You exceeded your current quota, please check your plan and billing details.",
                  "RESOURCE_EXHAUSTED",
                  [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                      {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                       "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                   {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}]),
        "param": (400, 'Invalid JSON payload received. Unknown name "thinkingConfig" at \'generation_config\': '
                       "Cannot find field.", "INVALID_ARGUMENT", []),
        "location": (400, "User location is not supported for the API use.", "FAILED_PRECONDITION", []),
    }
    status, message, state, details = errors[kind]
    return status, {"error": {"code": status, "message": message, "status": state, "details": details}}


def _handler(server: JudgeServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:   # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            gemini_path = re.fullmatch(r"/v1beta/models/([\w.-]+):generateContent", self.path)
            if self.path == "/v1/chat/completions":
                api, model = "openai", body["model"]
                credential = self.headers.get("Authorization", "")
                authorised = credential == f"Bearer {server.key}"
                prompt = body["messages"][0]["content"]
            elif gemini_path:
                api, model = "gemini", gemini_path.group(1)
                credential = self.headers.get("x-goog-api-key", "")
                authorised = credential == server.key
                prompt = body["contents"][0]["parts"][0]["text"]
            else:
                return self._send(404, {"error": f"no route {self.path}"})
            if not authorised:
                server.rejected += 1
                return self._send(401, {"error": "bad key"})
            with server.lock:
                server.bodies.append((api, self.path, body))
                failing = server.failure is not None and server.succeeded >= server.fail_after
            if failing:
                status, payload = (openai_failure if api == "openai" else gemini_failure)(server.failure, model)
                return self._send(status, payload)
            tag = re.search(r"Question: (\[[\w-]+\])?", prompt).group(1) or ""
            nth = server.count(api, prompt)
            if tag == "[down]":
                return self._send(503, {"error": f"overloaded, you sent {credential}"})
            if tag == "[leak]":
                return self._send(503, {"error": {"message": f"bad credential: {credential_forms(credential)}"}})
            if tag == "[echo401]":
                message = f"Incorrect API key provided: {credential_forms(credential)}"
                return self._send(401, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                                  "code": "invalid_api_key"}})
            if tag == "[flagged]" and api == "openai":
                return self._send(400, azure_prompt_filtered() if server.azure else {"error": {
                    "message": "Invalid prompt: your prompt was flagged as potentially violating our usage policy. "
                               "Please try again with a different prompt: "
                               "https://platform.openai.com/docs/guides/reasoning#advice-on-prompting",
                    "type": "invalid_request_error", "param": None, "code": "invalid_prompt"}})
            if tag == "[bomb]":
                return self._send_bytes(200, gzip_bomb(), {"Content-Encoding": "gzip"})
            if tag == "[brotli]":
                return self._send_bytes(200, b"\x1b\x00\x00", {"Content-Encoding": "br"})
            if tag == "[429]" and nth == 1:
                return self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
            if tag == "[retryinfo]" and nth == 1:
                return self._send(429, {"error": {"code": 429, "message": "Resource has been exhausted.",
                                                  "status": "RESOURCE_EXHAUSTED", "details": [
                                                      {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                       "retryDelay": "1s"}]}})
            if tag == "[500]" and nth == 1:
                return self._send(500, {"error": "oops"})
            if tag == "[slow]" and nth == 1:
                time.sleep(server.slow_s)
            if tag == "[trickle]":
                return self._trickle()
            structured = "response_format" in body or "responseSchema" in body.get("generationConfig", {})
            text = judge_text(prompt, tag, nth, server.layout, structured)
            if tag == "[quote-key]":
                text += f"\nBy the way, you sent {credential_forms(credential)}"
            with server.lock:
                server.succeeded += 1
            reply = openai_reply(text, tag) if api == "openai" else gemini_reply(text, tag)
            if tag == "[gzip]":
                return self._send_bytes(200, gzip.compress(json.dumps(reply).encode()), {"Content-Encoding": "gzip"})
            self._send(200, reply)

        def _trickle(self) -> None:
            """Headers at once, then a byte every 50 ms, for at most 10 s (until the client hangs up)."""
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "200")
                self.end_headers()
                for _ in range(200):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            self._send_bytes(status, json.dumps(payload).encode(), headers)

        def _send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
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
