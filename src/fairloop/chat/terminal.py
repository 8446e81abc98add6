"""``fairloop chat`` in a terminal: rich rendering of the agent's steps, approvals as y/N prompts.

Lines typed at the prompt go to the agent, except the commands: ``/export PATH`` (write the
transcript), ``/state`` (the workspace: run, current model, sets, budgets used) and ``/exit``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

HELP = "commands: /export PATH, /state, /exit (Ctrl-D also exits)"


def render(console: Console, events) -> str | None:
    """Print a stream of session events; return the approval question it stopped at, if any."""
    streaming = False
    for event in events:
        kind = event["kind"]
        if kind == "token":
            if not streaming:
                console.print("[bold green]fairloop:[/] ", end="")
                streaming = True
            console.print(escape(event["text"]), end="", highlight=False)
            continue
        if streaming:
            console.print()
            streaming = False
        if kind == "call":
            console.print(f"[dim]→ {escape(event['name'])} {escape(json.dumps(event['args']))}[/]", highlight=False)
        elif kind == "result":
            text = event["text"] if len(event["text"]) <= 400 else event["text"][:400] + " …"
            console.print(f"[dim]← {escape(event['name'])}: {escape(text)}[/]", highlight=False)
            for path in event["files"]:
                console.print(f"  [bold]saved:[/] {escape(path)}", highlight=False)
        elif kind == "answer" and not event["streamed"]:
            console.print(f"[bold green]fairloop:[/] {escape(event['text'])}", highlight=False)
        elif kind == "question":
            return event["text"]
    if streaming:
        console.print()
    return None


def ask(console: Console, question: str) -> bool:
    """y/yes approves, n/no/empty declines; anything else asks again (a typed message is not an answer)."""
    while True:
        answer = console.input(f"[bold yellow]approve?[/] {escape(question)} [y/N] ").strip().lower()
        if answer in ("y", "yes", "n", "no", ""):
            return answer in ("y", "yes")
        console.print("answer y or n")


def chat_loop(session, console: Console) -> None:
    """Read, send, render, until /exit or end of input; a pending approval is asked first."""
    console.print(f"[bold]fairloop chat[/] thread [cyan]{escape(session.thread)}[/] on run "
                  f"{escape(str(session.values.get('run') or session.agent.ws.folder))}  ({HELP})", highlight=False)
    question = session.pending()
    try:
        while True:
            if question:
                question = render(console, session.answer(ask(console, question)))
                continue
            text = console.input("[bold blue]you>[/] ").strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text.startswith("/export"):
                path = Path(text.removeprefix("/export").strip() or f"{session.thread}.md")
                console.print(f"wrote {escape(str(session.save_transcript(path)))}")
                continue
            if text == "/state":
                values = session.values
                console.print({k: values.get(k) for k in ("run", "model", "baseline", "images_used", "tokens_used")},
                              {"sets": [(s["set"], s["description"], s["kept"]) for s in values.get("sets", [])]})
                continue
            if text.startswith("/"):
                console.print(HELP)
                continue
            question = render(console, session.send(text))
    except EOFError:
        pass
    path = session.transcript_path()
    console.print(f"thread {escape(session.thread)} saved; resume with: fairloop chat --thread {escape(session.thread)}"
                  + (f"; transcript: {escape(str(path))}" if path and path.exists() else ""), highlight=False)
