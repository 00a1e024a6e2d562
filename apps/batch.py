"""`nac batch`: push a corpus through a `.nac` model, on local processes or a Ray cluster.

    nac batch minilm.nac corpus.jsonl -o embeddings.parquet                 # local processes
    nac batch minilm.nac corpus.jsonl -o embeddings.parquet --ray           # a local Ray cluster
    nac batch minilm.nac corpus.jsonl -o embeddings.parquet --ray ray://head:10001

INPUT is a JSONL file (one object per line; the text in ``--column``, default ``text``; a line
that is a bare JSON string is that text), a text file (one text per non-empty line), a Parquet
file, or a folder of images. Each output row keeps its input columns (image bytes excepted) and
adds the task's columns (`nac.integrations.ray.OUTPUTS`); without an ``id`` column in the input,
an ``id`` (the row's position) is added so results can be matched to inputs.

Both paths run `nac.integrations.ray.NacPredictor`: locally in ``--workers`` processes (each loads
the file once) writing one Parquet file in input order; with ``--ray``, as a Ray Data pipeline
(``read_*`` -> ``map_batches(NacPredictor, concurrency=workers)`` -> ``write_parquet``) that writes
a folder of Parquet parts (``OUT.parquet/``), whose rows come in no particular order.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nac.errors import NacError, NacInputError

__all__ = ["read_input", "run_local", "run_ray", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def read_input(path, column: str = "text") -> dict[str, list]:
    """The rows of INPUT as columns (see the module docstring): a dict of equal-length lists.

    Raises:
        NacInputError: a missing file, a line that is not JSON (with its number), a row without
            ``column``, an empty input, or an unknown format.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise NacInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return {"id": list(range(len(files))), "path": [str(p) for p in files]}
    if not path.is_file():
        raise NacInputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise NacInputError(f"{path}: no column {column!r} (columns: {table.column_names})")
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise NacInputError(f"{path}:{n}: not JSON ({exc})") from None
                row = {column: row} if isinstance(row, str) else row
                if not isinstance(row, dict) or column not in row:
                    raise NacInputError(f"{path}:{n}: expected an object with {column!r} (or a JSON string)")
                rows.append(row)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        cols = {k: [r.get(k) for r in rows] for k in keys}
    else:
        with open(path, encoding="utf-8") as f:
            cols = {column: [line.rstrip("\n") for line in f if line.strip()]}
    n = len(next(iter(cols.values()), []))
    if n == 0:
        raise NacInputError(f"{path}: no rows")
    if "id" not in cols:
        cols = {"id": list(range(n)), **cols}
    return cols


# ------------------------------------------------------------------------------------------------
# local processes
# ------------------------------------------------------------------------------------------------
_PREDICTOR = None


def _init_worker(path: str, column: str, max_new_tokens: int) -> None:
    global _PREDICTOR
    os.environ.setdefault("NAC_NUM_THREADS", "1")  # one engine thread per process: the processes are the parallelism
    from nac.integrations.ray import NacPredictor

    _PREDICTOR = NacPredictor(path, column=column, max_new_tokens=max_new_tokens)


def _predict(batch: dict) -> dict:
    return _PREDICTOR(batch)


def _chunks(cols: dict[str, list], size: int):
    n = len(next(iter(cols.values())))
    for k in range(0, n, size):
        yield {name: np.asarray(values[k:k + size], dtype=object) for name, values in cols.items()}


def _to_arrow(results: list[dict]):
    import pyarrow as pa

    names = list(results[0])
    arrays = {}
    for name in names:
        values = [v for r in results for v in r[name]]
        if name == "embedding":
            arrays[name] = pa.array([np.asarray(v, np.float32) for v in values], type=pa.list_(pa.float32()))
        else:
            arrays[name] = pa.array([v.item() if isinstance(v, np.generic) else v for v in values])
    return pa.table(arrays)


def run_local(model, input_path, output, *, batch_size: int = 64, workers: int | None = None, column: str = "text",
              max_new_tokens: int = 32, progress: bool | None = None) -> int:
    """Run ``model`` (a `.nac` path) over INPUT in ``workers`` processes (default: the CPU count;
    1 runs in this process) and write one Parquet file ``output`` in input order. Returns the
    number of rows.

    Raises:
        NacError: as `read_input` and `NacPredictor`; an error in any batch stops the run.
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    cols = read_input(input_path, column)
    total = len(cols["id"])
    workers = max(1, workers or os.cpu_count() or 1)
    batches = list(_chunks(cols, batch_size))
    results = []
    with tqdm(total=total, unit="row", desc="nac batch", file=sys.stderr,
              disable=None if progress is None else not progress) as bar:
        if workers == 1:
            from nac.integrations.ray import NacPredictor

            predictor = NacPredictor(model, column=column, max_new_tokens=max_new_tokens)
            for b in batches:
                results.append(predictor(b))
                bar.update(len(b["id"]))
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold Numba threads
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(str(model), column, max_new_tokens)) as pool:
                for r in pool.map(_predict, batches):
                    results.append(r)
                    bar.update(len(r["id"]))
    pq.write_table(_to_arrow(results), output)
    return total


# ------------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------------
def run_ray(model, input_path, output, *, address: str | None = None, batch_size: int = 64,
            workers: int | None = None, column: str = "text", max_new_tokens: int = 32) -> int:
    """Run ``model`` over INPUT as a Ray Data pipeline and write a folder of Parquet parts.

    ``address``: None or "local" starts a local cluster; "auto" joins the one this machine belongs
    to; ``ray://HOST:PORT`` connects a client (``RAY_ADDRESS`` is honoured when ``address`` is None).
    The model file and the input must be readable at the same paths on every node. Returns the
    number of rows written.

    Raises:
        NacError: Ray is not installed (``pip install "nac[scale]"``), or as `NacPredictor`.
    """
    try:
        import ray
    except ImportError:
        raise NacError('--ray needs Ray: pip install "nac[scale]"') from None
    from nac.integrations.ray import NacPredictor

    path = Path(input_path)
    started = False
    if not ray.is_initialized():
        target = address if address not in (None, "local") else os.environ.get("RAY_ADDRESS")
        ray.init(address=target, num_cpus=None if target else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        suffix = path.suffix.lower()
        if path.is_dir():
            ds = ray.data.read_binary_files(str(path.resolve()), include_paths=True,
                                            file_extensions=[s.lstrip(".") for s in IMAGE_SUFFIXES])
        elif suffix == ".parquet":
            ds = ray.data.read_parquet(str(path.resolve()))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            ds = ray.data.read_json(str(path.resolve()), lines=True)
        else:
            ds = ray.data.read_text(str(path.resolve())).filter(lambda row: bool(row["text"].strip()))
            if column != "text":
                ds = ds.rename_columns({"text": column})
        actors = max(1, workers or int(ray.cluster_resources().get("CPU", 1)))
        # The actors must leave a CPU for the read tasks, or a small cluster waits forever.
        cpus = max(0.25, min(1.0, (ray.cluster_resources().get("CPU", 1) - 1) / actors))
        ds = ds.map_batches(NacPredictor, fn_constructor_kwargs={"path": str(Path(model).resolve()), "column": column,
                                                                 "max_new_tokens": max_new_tokens},
                            batch_size=batch_size, concurrency=actors, num_cpus=cpus, batch_format="numpy")
        ds.write_parquet(str(Path(output).resolve()))
        import pyarrow.dataset as pads

        return pads.dataset(str(Path(output).resolve()), format="parquet").count_rows()
    finally:
        if started:
            ray.shutdown()
