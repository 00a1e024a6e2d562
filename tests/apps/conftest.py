"""Fixtures shared by the app tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random GPT-2 text generator with a trained byte-level BPE tokenizer and a ChatML
    chat template (`serving.build_tiny_chat`), named tiny-chat."""
    pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
    from serving import build_tiny_chat

    return build_tiny_chat(tmp_path_factory.mktemp("serve"))
