"""Issue 12's architecture zoo: 32 transformers architectures (tiny random-init configs) export
with dynamic shapes and agree with torch at two shapes, within 1e-4 relative to the output scale.
The entries live in tests/arch_zoo.py, which also regenerates the README's table (`make zoo`)."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")

import arch_zoo  # noqa: E402
from nac.errors import NacError  # noqa: E402

pytestmark = pytest.mark.heavy  # 32 exports, about 4 minutes on 2 cores: the suite starts this module first


@pytest.mark.parametrize("name", list(arch_zoo.ARCHS))
def test_architecture_matches_torch(name, tmp_path):
    arch = arch_zoo.ARCHS[name]
    if arch.unsupported:  # listed in the README with its reason; fails loudly once it starts working
        with pytest.raises(NacError):
            row = arch_zoo.check(arch, tmp_path)
            if not row["ok"]:
                raise NacError(row["error"])
        return
    row = arch_zoo.check(arch, tmp_path)
    assert row["ok"], row["error"]
    assert row["max_rel_err"] <= arch_zoo.REL


def test_zoo_is_broad():
    families = {}
    for a in arch_zoo.ARCHS.values():
        families.setdefault(a.family, []).append(a.name)
    assert len(arch_zoo.ARCHS) >= 30
    assert set(families) == {"vision", "text encoder", "decoder", "audio", "multimodal"}


def test_readme_table_lists_every_architecture():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split(arch_zoo.TABLE_BEGIN, 1)[1].split(arch_zoo.TABLE_END, 1)[0]
    for name in arch_zoo.ARCHS:
        assert f"| {name} |" in table, f"README's zoo table lacks {name}: run `make zoo`"
