"""Issue 17: `nac batch`, in local processes and as a Ray Data pipeline on a local cluster.

The Ray run embeds 10,000 real corpus lines on `ray.init(num_cpus=2)` with a sentence encoder
that has MiniLM's real tokenizer and pooling but a tiny random BERT (MiniLM itself needs about
40 s per 10,000 short lines on two cores: too long for CI; the local tests run the real one).
Every row must match the single-process run (same id, embedding within 1e-6: batches are padded
to different lengths, which moves float32 sums by rounding only).
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest

import nac
from nac.apps.cli import main

pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (pip install 'nac[scale]')")

DATA = Path(__file__).resolve().parents[1] / "data"


def _corpus(path: Path, n: int, max_chars: int = 120) -> Path:
    """``n`` real lines of the test corpus (short ones, to keep CI quick) as JSONL with ids."""
    out = []
    with lzma.open(DATA / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)
            if 0 < len(text.strip()) <= max_chars:
                out.append(json.dumps({"id": len(out), "text": text}, ensure_ascii=False))
                if len(out) == n:
                    break
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def _by_id(table) -> dict[int, dict]:
    d = table.to_pydict()
    return {i: {k: d[k][j] for k in d} for j, i in enumerate(d["id"])}


def test_local_processes_equal_one_process(minilm_nac, tmp_path):
    src = _corpus(tmp_path / "c.jsonl", 300)
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert main(["batch", str(minilm_nac[0]), str(src), "-o", str(one), "--workers", "1", "--batch-size", "32"]) == 0
    assert main(["batch", str(minilm_nac[0]), str(src), "-o", str(two), "--workers", "2", "--batch-size", "50"]) == 0
    a, b = pq.read_table(one), pq.read_table(two)
    assert a.column_names == ["id", "text", "embedding"] and a.num_rows == 300
    assert a.column("id").to_pylist() == list(range(300))  # input order
    ea, eb = np.array(a.column("embedding").to_pylist()), np.array(b.column("embedding").to_pylist())
    assert ea.shape == (300, 384) and np.abs(ea - eb).max() <= 1e-6
    from nac.apps.tasks import embed_sentences

    texts = a.column("text").to_pylist()[:5]
    assert np.abs(ea[:5] - embed_sentences(nac.load(minilm_nac[0]), texts)).max() <= 1e-6


def test_a_folder_of_images_and_a_text_file(effnet_nac, minilm_nac, tmp_path):
    from skimage import data as skdata

    from nac.apps.tasks import classify_images

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png", "motorcycle_left.png"):
        (photos / name).write_bytes((Path(skdata.__file__).parent / name).read_bytes())
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "labels.parquet"
    assert main(["batch", str(effnet_nac[0]), str(photos), "-o", str(out), "--workers", "1"]) == 0
    rows = pq.read_table(out).to_pydict()
    want = classify_images(nac.load(effnet_nac[0]), sorted(photos.glob("*.png")), 1)
    assert rows["label"] == [w[0].label for w in want]
    assert rows["path"] == [str(p) for p in sorted(photos.glob("*.png"))]
    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\nsecond line\n")
    out2 = tmp_path / "lines.parquet"
    assert main(["batch", str(minilm_nac[0]), str(lines), "-o", str(out2), "--workers", "1"]) == 0
    assert pq.read_table(out2).column("text").to_pylist() == ["first line", "second line"]


def test_bad_inputs_are_named(minilm_nac, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    assert main(["batch", str(minilm_nac[0]), str(bad), "-o", str(tmp_path / "x.parquet")]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "x"}\n')
    assert main(["batch", str(minilm_nac[0]), str(nocol), "-o", str(tmp_path / "x.parquet")]) == 2
    assert "expected an object with 'text'" in capsys.readouterr().err


@pytest.mark.heavy
def test_ray_pipeline_embeds_ten_thousand_lines(tiny_encoder, tmp_path):
    ray = pytest.importorskip("ray", reason="needs Ray (pip install 'nac[scale]')")
    from nac.apps.batch import run_local, run_ray
    from nac.integrations.ray import NacPredictor

    src = _corpus(tmp_path / "corpus.jsonl", 10_000, max_chars=80)
    local = tmp_path / "local.parquet"
    run_local(tiny_encoder, src, local, workers=1, batch_size=128, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray.parquet"
        assert run_ray(tiny_encoder, src, out, workers=2, batch_size=128) == 10_000
        import pyarrow.dataset as pads

        ray_rows = _by_id(pads.dataset(str(out), format="parquet").to_table())
        # the public class in a pipeline of the user's own
        ds = ray.data.from_items([{"id": 0, "text": "A man is eating food."}])
        mine = ds.map_batches(NacPredictor, fn_constructor_kwargs={"path": str(tiny_encoder)}, concurrency=1,
                              num_cpus=0.5, batch_format="numpy").take_all()
    finally:
        ray.shutdown()
    local_rows = _by_id(pq.read_table(local))
    assert sorted(ray_rows) == sorted(local_rows) == list(range(10_000))
    worst = max(float(np.abs(np.asarray(ray_rows[i]["embedding"]) - np.asarray(local_rows[i]["embedding"])).max())
                for i in local_rows)
    assert worst <= 1e-6
    assert all(ray_rows[i]["text"] == local_rows[i]["text"] for i in local_rows)
    from nac.apps.tasks import embed_sentences

    want = embed_sentences(nac.load(tiny_encoder), ["A man is eating food."])[0]
    assert np.abs(np.asarray(mine[0]["embedding"]) - want).max() <= 1e-6
