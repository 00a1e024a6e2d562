"""Helpers for the server tests: a tiny chat model and a uvicorn server in a thread."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import nac
from conftest import byte_level_bpe

KEY = "test-key-123"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_chat(folder):
    """A tiny random GPT-2 text generator with a trained tokenizer and a chat template."""
    import torch
    import transformers

    from nac.apps.sources import causal_lm

    corpus = ["the cat sat on the mat and the dog ran in the park", "a bird sang in the tall green tree"] * 40
    tok = byte_level_bpe(corpus, 300, special_tokens=["<|im_start|>", "<|im_end|>"])
    eos = tok.token_to_id("<|im_end|>")
    torch.manual_seed(7)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=tok.get_vocab_size(), n_positions=1024,
                                  bos_token_id=None, eos_token_id=eos)
    job = causal_lm(transformers.GPT2LMHeadModel(cfg).eval(), "tiny-chat", tok.to_str().encode(),
                    extra_meta={"chat_template": CHATML})
    path = folder / "tiny-chat.nac"
    return nac.export(job.module, job.args, path, dynamic_shapes=job.dynamic_shapes, metadata=job.metadata,
                      tokenizer=job.tokenizer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """A uvicorn server for ``app`` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


