"""The text-generation REPL as a user meets it: driven through a pseudo-terminal (pexpect)."""
from __future__ import annotations

import sys

import pytest

import nac
from conftest import byte_level_bpe

pexpect = pytest.importorskip("pexpect", reason="needs pexpect (pip install 'nac[test]')")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402

from nac.apps.sources import causal_lm  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory):
    tok = byte_level_bpe(["the cat sat on the mat and the dog ran in the park"] * 40, 280)
    torch.manual_seed(0)
    # large enough that 3000 tokens take seconds, so the test can interrupt them
    cfg = transformers.GPT2Config(n_layer=4, n_head=4, n_embd=256, vocab_size=tok.get_vocab_size(), n_positions=4096,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # no EOS: a random model could sample it and end the generation the test interrupts
    job = causal_lm(model, "tiny-gpt2", tok.to_str().encode(), {"chat_template": TEMPLATE})
    path = tmp_path_factory.mktemp("repl") / "tiny.nac"
    return nac.export(job.module, job.args, path, dynamic_shapes=job.dynamic_shapes, metadata=job.metadata,
                      tokenizer=job.tokenizer)


def spawn(path, tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "nac.apps.cli", "run", str(path)], encoding="utf-8", timeout=120,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    child.expect("chat mode")  # the model has a chat template: chat mode is the default
    child.expect(">>> ")
    return child


def test_repl_session(lm_file, tmp_path):
    child = spawn(lm_file, tmp_path)
    child.sendline("/chat off")
    child.expect("chat mode off")
    child.expect(">>> ")
    child.sendline("/set n 5")
    child.expect("n = 5")
    child.expect(">>> ")
    child.sendline("the cat")  # a reply is streamed, then the prompt comes back
    child.expect(">>> ")
    child.sendline("/stats")
    child.expect(r"5 tokens in [0-9.]+ s \(")
    child.expect(">>> ")
    child.sendline("/set temperature -1")  # a bad setting: an error, and the session goes on
    child.expect("error: temperature = -1 is out of range")
    child.expect(">>> ")
    child.sendline("/set sample on")
    child.expect("sample = True")
    child.expect(">>> ")
    child.sendline("/set n 3000")
    child.expect(">>> ")
    child.sendline("/reset")
    child.expect("context cleared")
    child.expect(">>> ")
    child.sendline("the dog ran")  # a long generation, interrupted with Ctrl-C
    child.expect("the dog ran")
    import time

    time.sleep(1.0)
    child.sendintr()
    child.expect(r"\[interrupted\]")
    child.expect(">>> ")
    child.sendline("/chat on")
    child.expect("chat mode on")
    child.expect(">>> ")
    child.sendline("/set n 4")
    child.expect(">>> ")
    child.sendline("hello there")
    child.expect(">>> ")
    child.sendline("/stats")
    child.expect(r"4 tokens in .* prompt (\d+) tokens")
    assert int(child.match.group(1)) > 3  # the chat template wrapped the message
    child.expect(">>> ")
    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / ".nac_history").is_file()  # line history is kept
