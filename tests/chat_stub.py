"""A stub of the OpenAI chat-completions API on 127.0.0.1, for tests of the LLM paths."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def assistant_message(step):
    """A scripted step as an assistant message: text, or ``{"tool": name, "args": {...}}`` as a tool call."""
    if isinstance(step, dict):
        call = {"id": f"call_{step['tool']}_{abs(hash(json.dumps(step, sort_keys=True))) % 10**8}", "type": "function",
                "function": {"name": step["tool"], "arguments": json.dumps(step.get("args", {}))}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {"role": "assistant", "content": step}, "stop"


def stream_payload(step) -> bytes:
    """The same step as server-sent events, text word by word (what ``stream: true`` asks for)."""
    message, finish = assistant_message(step)
    if message.get("tool_calls"):
        deltas = [{"role": "assistant", "tool_calls": [dict(message["tool_calls"][0], index=0)]}]
    else:
        words = message["content"].split(" ")
        deltas = [{"role": "assistant", "content": w + (" " if k < len(words) - 1 else "")} for k, w in enumerate(words)]
    events = [{"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub",
               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    events.append({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


class Stub:
    """POST /v1/chat/completions returning scripted answers in order (the last repeats): a text, a
    tool call, an HTTP status (int), raw bytes, or ``("sleep", seconds, step)``."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                headers = {name.lower(): value for name, value in self.headers.items()}
                stub.requests.append({"path": self.path, "headers": headers, "body": body})
                step = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = step[2]
                if isinstance(step, int):
                    payload, status = b'{"error": {"message": "boom", "type": "server_error"}}', step
                elif isinstance(step, bytes):  # a body that is no chat completion at all
                    payload, status = step, 200
                elif body.get("stream"):
                    status, payload = 200, stream_payload(step)
                else:
                    status = 200
                    message, finish = assistant_message(step)
                    payload = json.dumps({
                        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
                        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if body.get("stream") and status == 200
                                 else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("retry-after-ms", "1")      # keeps the client's own retries fast
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def messages(self, index):
        return self.requests[index]["body"]["messages"]
