"""Chat templates from a `.nac` file, rendered the way transformers renders them, but safely.

A chat template is Jinja2 text that came with the model, so it is untrusted: it is rendered in
`jinja2.sandbox.ImmutableSandboxedEnvironment` with transformers' globals (``raise_exception``,
``strftime_now``) and ``tojson`` filter and nothing else (transformers'
``_compile_jinja_template``). Attribute access to internals (``__globals__``, ``__class__``,
...) raises a security error instead of reaching Python. Rendering is also bounded: a template
that runs longer than `RENDER_SECONDS` or writes more than `MAX_OUTPUT` characters is stopped.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime

from nac.errors import NacFormatError, NacInputError

RENDER_SECONDS = 2.0
MAX_OUTPUT = 4 << 20


class _TemplateRaised(Exception):
    """What the template's own ``raise_exception(message)`` raises (e.g. roles that do not alternate)."""


class _Deadline(Exception):
    pass


def _environment():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise _TemplateRaised(str(message))

    def strftime_now(fmt):
        return datetime.now().strftime(str(fmt))

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Bounded(ImmutableSandboxedEnvironment):
        """Repetition and powers are checked before they run: ``'a' * 10**10`` would allocate 10 GB."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            from jinja2.sandbox import SecurityError

            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"power with exponent {right} is too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                        raise SecurityError(f"repetition to {len(seq) * n} items is too large")
            return super().call_binop(context, operator, left, right)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_chat_template(template: str, messages: list[dict], *, where: str = "chat template",
                         add_generation_prompt: bool = True, **variables) -> str:
    """Render a chat template over ``messages`` (``[{"role": ..., "content": ...}, ...]``).

    Args:
        template: the Jinja2 source (``metadata["chat_template"]`` of a file).
        where: what to call the template in errors (e.g. the file's name).
        add_generation_prompt, variables: passed to the template (``bos_token``, ``eos_token``, ...).
    Returns:
        The rendered prompt text.
    Raises:
        NacFormatError: the template does not parse, reaches for something the sandbox forbids,
            fails while rendering, runs longer than `RENDER_SECONDS` or writes more than
            `MAX_OUTPUT` characters. Nothing it names is executed.
        NacInputError: the template itself rejected the conversation (``raise_exception``).
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    try:
        tpl = _environment().from_string(template)
    except jinja2.TemplateError as exc:
        raise NacFormatError(f"{where}: the chat template does not parse ({exc})") from None
    deadline = time.monotonic() + RENDER_SECONDS

    def tracer(frame, event, arg):  # only the template's own compiled code is traced
        if frame.f_code.co_filename != "<template>":
            return None

        def line(frame, event, arg):
            if time.monotonic() > deadline:
                raise _Deadline
            return line
        return line

    previous = sys.gettrace()
    sys.settrace(tracer)
    out, size = [], 0
    try:
        for chunk in tpl.generate(messages=messages, add_generation_prompt=add_generation_prompt, **variables):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise NacFormatError(f"{where}: the chat template writes more than {MAX_OUTPUT} characters; refused")
            if time.monotonic() > deadline:
                raise _Deadline
            out.append(chunk)
    except _TemplateRaised as exc:
        raise NacInputError(f"{where}: the chat template rejected the conversation: {exc}") from None
    except SecurityError as exc:
        raise NacFormatError(f"{where}: the chat template tried something the sandbox forbids ({exc}); "
                             f"nothing was run") from None
    except _Deadline:
        raise NacFormatError(f"{where}: the chat template ran longer than {RENDER_SECONDS:g} s; refused") from None
    except NacFormatError:
        raise
    except Exception as exc:  # an error inside the template's own logic (TypeError, UndefinedError, ...)
        raise NacFormatError(f"{where}: the chat template failed while rendering "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        sys.settrace(previous)
    return "".join(out)
