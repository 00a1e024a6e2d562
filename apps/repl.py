"""The interactive text-generation session of ``nac run MODEL.nac`` (no prompt).

Line editing and history come from the standard library's ``readline`` (history in
``~/.nac_history``). Generated text streams as it is produced. Ctrl-C stops a generation and
keeps the session; Ctrl-D (or /quit) leaves. In plain mode the context accumulates (each input
continues the text so far) until /reset; in chat mode (/chat on, when the file has a chat
template) the conversation is rendered with the model's own template (Jinja2).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from nac.apps.generate import TextStream, generate
from nac.apps.tasks import text_tokenizer
from nac.engine import Model
from nac.errors import NacError

HELP = """commands:
  /set n N             tokens to generate per turn        /set sample on|off   greedy or sampling
  /set temperature T   sampling temperature (> 0)         /set top_k K         sample from the K most likely
  /set top_p P         nucleus threshold in (0, 1]        /set repetition_penalty R
  /set seed S          random seed                        /settings            show the settings
  /chat on|off         use the model's chat template      /reset               forget the context
  /stats               speed of the last generation       /help, /quit
Ctrl-C stops a generation; Ctrl-D leaves."""


@dataclass
class Settings:
    """Generation settings the user can change with /set."""

    n: int = 128
    sample: bool = False
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def set(self, name: str, value: str) -> str:
        """Parse and apply one setting; returns a confirmation. Raises NacError for bad input."""
        kinds = {"n": int, "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
                 "seed": int, "sample": lambda v: {"on": True, "off": False}[v]}
        if name not in kinds:
            raise NacError(f"unknown setting {name!r}; settable: {', '.join(kinds)}")
        try:
            v = kinds[name](value)
        except (ValueError, KeyError):
            raise NacError(f"bad value {value!r} for {name}") from None
        in_range = {"n": lambda x: x > 0, "temperature": lambda x: x > 0, "top_p": lambda x: 0 < x <= 1,
                    "top_k": lambda x: x >= 0, "repetition_penalty": lambda x: x > 0}
        if name in in_range and not in_range[name](v):
            raise NacError(f"{name} = {value} is out of range (see /help)")
        setattr(self, name, v)
        return f"{name} = {v}"


@dataclass
class Session:
    """One REPL session over a text-generation model."""

    model: Model
    settings: Settings = field(default_factory=Settings)
    context: list = field(default_factory=list)  # token ids so far (plain mode)
    messages: list = field(default_factory=list)  # conversation (chat mode)
    chat: bool = False
    last_stats: str = "nothing generated yet"

    def __post_init__(self):
        self.tok = text_tokenizer(self.model, pad=False)
        self.template = self.model.metadata.get("chat_template")
        self.chat = bool(self.template)

    def command(self, line: str) -> str | None:
        """Run a /command; returns text to print, or None to quit. Raises NacError for bad commands."""
        parts = line[1:].split()
        name = parts[0] if parts else ""
        if name in ("quit", "exit", "q"):
            return None
        if name == "help":
            return HELP
        if name == "set" and len(parts) == 3:
            return self.settings.set(parts[1], parts[2])
        if name == "settings":
            return ", ".join(f"{k} = {v}" for k, v in vars(self.settings).items()) + f", chat = {self.chat}"
        if name == "reset":
            self.context, self.messages = [], []
            return "context cleared"
        if name == "stats":
            return self.last_stats
        if name == "chat" and len(parts) == 2 and parts[1] in ("on", "off"):
            if parts[1] == "on" and not self.template:
                raise NacError("this model has no chat template")
            self.chat = parts[1] == "on"
            self.context, self.messages = [], []
            return f"chat mode {parts[1]} (context cleared)"
        raise NacError(f"unknown command {line!r}; /help lists them")

    def prompt_ids(self, text: str) -> list[int]:
        if not self.chat:
            return self.context + self.tok.encode(text if not self.context else " " + text).ids
        from nac.apps.chat_template import render_chat_template

        self.messages.append({"role": "user", "content": text})
        try:
            rendered = render_chat_template(self.template, self.messages, where=str(self.model.path),
                                            bos_token="", eos_token="")
        except NacError:
            self.messages.pop()
            raise
        return self.tok.encode(rendered).ids

    def turn(self, text: str, out=sys.stdout) -> None:
        """Generate a reply to ``text``, streaming to ``out``. KeyboardInterrupt stops it early."""
        ids = self.prompt_ids(text)
        if not ids:
            raise NacError("empty input")
        s = self.settings
        produced: list[int] = []
        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        stream = TextStream(self.tok, show)
        interrupted = False

        def on_token(t):
            produced.append(int(t[0]))
            stream(t)

        t0 = time.perf_counter()
        try:
            generate(self.model, ids, max_new_tokens=s.n, do_sample=s.sample, temperature=s.temperature, top_k=s.top_k,
                     top_p=s.top_p, repetition_penalty=s.repetition_penalty, seed=s.seed, on_token=on_token)
        except KeyboardInterrupt:
            interrupted = True
        stream.end()
        dt = time.perf_counter() - t0
        out.write("\n[interrupted]\n" if interrupted else "\n")
        out.flush()
        self.last_stats = (f"{len(produced)} tokens in {dt:.2f} s ({len(produced) / dt if dt else 0:.1f} tokens/s), "
                           f"prompt {len(ids)} tokens")
        if self.chat:
            self.messages.append({"role": "assistant", "content": self.tok.decode(produced, skip_special_tokens=True)})
        else:
            self.context = ids + produced


def repl(model: Model) -> int:
    """Run the interactive session until Ctrl-D or /quit; returns the exit status."""
    try:
        import readline

        history = os.path.expanduser("~/.nac_history")
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    except ImportError:  # no readline on this platform: plain input()
        readline, history = None, None
    session = Session(model)
    name = model.metadata.get("model", model.path.name)
    print(f"{name}: {'chat' if session.chat else 'text'} mode, {session.settings.n} tokens per turn. "
          f"/help for commands, Ctrl-D to leave.")
    try:
        while True:
            try:
                line = input(">>> ")
            except KeyboardInterrupt:
                print()
                continue
            except EOFError:
                print()
                return 0
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    reply = session.command(line.strip())
                    if reply is None:
                        return 0
                    print(reply)
                else:
                    session.turn(line)
            except NacError as exc:
                print(f"error: {exc}")
    finally:
        if readline is not None and history:
            try:
                readline.write_history_file(history)
            except OSError:
                pass
