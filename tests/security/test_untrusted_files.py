"""Issue 11: a `.nac` file is untrusted. Each damaged file below has its CRCs recomputed (so the
parser behind the checksum is reached) and must be refused with a `NacFormatError` naming the
problem, by `nac.load` and by `nac info` (exit status 2, what it could read still shown); never a
crash, another exception type, or a kernel writing past its buffer. Also: interrupted writes and
the mode of written files (item 9)."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import nac
from fuzz.nacfuzz import join_container, seeds, split_container
from nac.apps.cli import main as nac_main
from nac.format.container import GRAPH, METADATA, PARAMS, write_nac


def rewrite(blob: bytes, kind: int, fn) -> bytes:
    """``blob`` with the payload of its section ``kind`` replaced by ``fn(payload)``, CRCs recomputed."""
    sections = split_container(blob)
    for s in sections:
        if s[0] == kind:
            s[2] = fn(s[2])
    return join_container(sections)


def edit_json(fn):
    """A section edit that changes the parsed JSON document in place (``fn(doc)``)."""
    def run(payload: bytes) -> bytes:
        doc = json.loads(payload)
        fn(doc)
        return json.dumps(doc).encode()
    return run


def edit_safetensors_header(fn):
    def run(payload: bytes) -> bytes:
        hlen = struct.unpack_from("<Q", payload)[0]
        header = json.loads(payload[8:8 + hlen])
        fn(header)
        new = json.dumps(header).encode()
        return struct.pack("<Q", len(new)) + new + payload[8 + hlen:]
    return run


def node(doc, op):
    return next(n for n in doc["nodes"] if n["op"] == op)


def value(doc, name):
    return next(v for v in doc["values"] if v["name"] == name)


LINEAR, CONV, ATTN = seeds("reader")  # the fuzzers' seed files: linear+softmax, conv+pool, embedding+attention

# (name, seed file, section kind, edit, what the message must say)
CASES = [
    ("graph nested 100,000 deep", LINEAR, GRAPH, lambda p: b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ("a 5,000-digit integer", LINEAR, GRAPH, lambda p: p.replace(b'"max": 8', b'"max": ' + b"9" * 5000),
     "not valid JSON"),
    ("tensor of shape [2**32, 2**32] (wraps to 0 in int64)", LINEAR, PARAMS,
     edit_safetensors_header(lambda h: h["fc.bias"].update(shape=[2**32, 2**32], data_offsets=[0, 0])),
     "impossible shape|bytes, shape"),
    ("tensor of shape [2**70]", LINEAR, PARAMS,
     edit_safetensors_header(lambda h: h["fc.bias"].update(shape=[2**70])), "impossible shape"),
    ("dimension batch//0", LINEAR, GRAPH, edit_json(lambda d: value(d, "h").update(shape=["batch//0", 3])),
     "divides by zero"),
    ("dimension max()", LINEAR, GRAPH, edit_json(lambda d: value(d, "h").update(shape=["max()", 3])),
     "invalid dimension expression"),
    ("dimension of 5,000 chained terms", LINEAR, GRAPH,
     edit_json(lambda d: value(d, "h").update(shape=["+".join(["batch"] * 5000), 3])), "shorter than or equal to 1024"),
    ("dims.batch.min given as a string", LINEAR, GRAPH, edit_json(lambda d: d["dims"]["batch"].update(min="1")),
     r"dims\.batch\.min"),
    ("node attrs given as a string", LINEAR, GRAPH, edit_json(lambda d: node(d, "linear").update(attrs="relu")),
     r"nodes\[0\]\.attrs"),
    ("a list used as a value name", LINEAR, GRAPH, edit_json(lambda d: node(d, "softmax").update(inputs=[["h"]])),
     r"nodes\[1\]\.inputs\[0\]"),
    ("metadata.tokenizer given as a string", ATTN, METADATA, edit_json(lambda d: d.update(tokenizer="tisa-1")),
     r"metadata field tokenizer"),
    ("reshape shape=-99", CONV, GRAPH, edit_json(lambda d: node(d, "reshape")["attrs"].update(shape=["batch", -99])),
     "reshape"),
    ("perm with an axis out of range", ATTN, GRAPH, edit_json(lambda d: node(d, "permute")["attrs"].update(
        perm=[0, 2, 1, 7])), "not a permutation"),
    ("max-pool output recorded smaller than it is (item 3)", CONV, GRAPH,
     edit_json(lambda d: value(d, "p").update(shape=[1, 4, "h // 2", "h // 2"])), r"node 1 \(max_pool2d, from pool\)"),
    ("a linear output recorded wider than it is", LINEAR, GRAPH,
     edit_json(lambda d: value(d, "h").update(shape=["batch", 30])), r"node 0 \(linear, from fc\)"),
    ("an attention output with the wrong head count", ATTN, GRAPH,
     edit_json(lambda d: value(d, "o").update(shape=["batch", 3, "seq", 4])), "scaled_dot_product_attention"),
    ("a value defined twice", LINEAR, GRAPH, edit_json(lambda d: node(d, "softmax").update(outputs=["h"])),
     "redefines value 'h'"),
    ("an op with too few inputs", LINEAR, GRAPH, edit_json(lambda d: node(d, "linear").update(inputs=["x"])),
     "has 1 inputs"),
    ("a dimension no input binds", LINEAR, GRAPH, edit_json(lambda d: value(d, "h").update(shape=["width", 3])),
     "no input binds"),
    ("an unknown activation", LINEAR, GRAPH,
     edit_json(lambda d: node(d, "linear")["attrs"].update(activation="os.system")), "activation"),
    ("a slice with its step missing", ATTN, GRAPH, edit_json(lambda d: node(d, "slice")["attrs"].pop("step")),
     None),  # a missing optional attribute takes its default: the file loads and runs
    ("a slice with its end missing (found by the fuzzer: KeyError in the kernel)", ATTN, GRAPH,
     edit_json(lambda d: node(d, "slice")["attrs"].pop("end")), None),
]


@pytest.mark.parametrize("name,seed,kind,edit,message", CASES, ids=[c[0] for c in CASES])
def test_damaged_file_is_refused(name, seed, kind, edit, message, tmp_path, capsys):
    path = tmp_path / "bad.nac"
    path.write_bytes(rewrite(seed, kind, edit))
    if message is None:
        m = nac.load(path)
        m.run({"ids": np.array([[1, 2, 3]])})
        return
    with pytest.raises(nac.NacFormatError, match=message):
        nac.load(path)
    assert nac_main(["info", str(path)]) == 2  # nac info: shows what it can, then names the problem
    out, err = capsys.readouterr()
    assert "sections:" in out and "nac: error:" in err


def test_corrupt_recorded_shape_cannot_reach_a_kernel(tmp_path):
    """Item 3's reproduction, exactly: the shape is right at load-time sample points but wrong at run
    time would still be caught by the plan's exact check. Here the recorded shape is a static 1 where
    the pooling produces the batch: every batch > 1 would have overflowed the arena."""
    path = tmp_path / "bad.nac"
    path.write_bytes(rewrite(CONV, GRAPH, edit_json(lambda d: value(d, "p").update(shape=[1, 4, 4, 4]))))
    with pytest.raises(nac.NacFormatError, match="max_pool2d"):
        nac.load(path)


def test_info_json_reports_the_problem(tmp_path, capsys):
    path = tmp_path / "bad.nac"
    path.write_bytes(rewrite(LINEAR, GRAPH, edit_json(lambda d: value(d, "h").update(shape=["batch", 30]))))
    assert nac_main(["info", "--json", str(path)]) == 2
    d = json.loads(capsys.readouterr().out)
    assert d["valid"] is False and "linear" in d["problem"]
    assert d["ops"] == {"linear": 1, "softmax": 1} and d["metadata"]["model"] == "seed-0"


def test_seed_files_are_valid(tmp_path):
    for k, blob in enumerate(seeds("reader")):
        p = tmp_path / f"s{k}.nac"
        p.write_bytes(blob)
        nac.load(p)


# -- item 9: writes --------------------------------------------------------------------------------
def small_graph():
    from fuzz.nacfuzz import _graphs

    return _graphs()[0]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_mode_follows_umask(tmp_path, umask, mode):
    """Not 0600 from a temporary file: a server account in the owner's group must be able to read it."""
    old = os.umask(umask)
    try:
        p = write_nac(tmp_path / "m.nac", small_graph(), {})
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == mode


KILLED_WRITER = """
import sys, time
from fuzz.nacfuzz import _graphs
import nac.format.container as c
g = _graphs()[0]
real = c._atomic_write
def slow(path, chunks):
    def gen():
        for x in chunks:
            yield x
        print("writing", flush=True)
        time.sleep(60)  # killed here, with the temporary on disk
    return real(path, gen())
c._atomic_write = slow
c.write_nac(sys.argv[1], g, {})
"""


def test_killed_writer_leaves_no_file_and_next_write_cleans_up(tmp_path):
    dest = tmp_path / "m.nac"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(__import__("pathlib").Path(__file__).parents[1])]
                                                       + sys.path))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(dest)], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert stale and stale[0].startswith(".m.nac.") and not dest.exists()  # never a partial destination
    write_nac(dest, small_graph(), {})  # the next write to the same destination removes it
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    nac.load(dest)


def test_interrupted_write_removes_its_temporary(tmp_path):
    class Boom(Exception):
        pass

    def chunks():
        yield b"x" * 100
        raise Boom

    from nac.format.container import _atomic_write

    with pytest.raises(Boom):
        _atomic_write(tmp_path / "m.nac", chunks())
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_export_cleans_up(tmp_path):
    """`nac` turns SIGTERM into SystemExit, so the writer's cleanup runs."""
    code = ("import os, signal, sys, time\n"
            "from nac.apps import cli\n"
            "import nac.format.container as c\n"
            "def slow(path, chunks):\n"
            "    fd = os.open(str(path.with_name('.m.nac.%d.abcd.tmp' % os.getpid())), os.O_CREAT | os.O_WRONLY)\n"
            "    try:\n"
            "        print('writing', flush=True); time.sleep(60)\n"
            "    finally:\n"
            "        os.unlink(path.with_name('.m.nac.%d.abcd.tmp' % os.getpid()))\n"
            "cli.cmd_info = lambda args: slow(__import__('pathlib').Path(args.model), [])\n"
            "sys.exit(cli.main(['info', sys.argv[1]]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "m.nac")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
