"""`nac.export`: torch.nn.Module -> torch.export (non-strict) -> core ATen -> NAC graph -> passes -> file."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from nac.compile.binding import finish_graph
from nac.compile.lowering import RULES, Lowerer, module_path, nac_dtype, sym_text, target_name
from nac.errors import NacError, NacExportError
from nac.format.container import same_tensor, write_nac
from nac.format.graph import DTYPES, Graph

__all__ = ["export", "compile_graph", "compile_methods", "compile_unbound", "to_graph", "attach_tokenizer"]


def export(module: torch.nn.Module, args=(), path=None, *, kwargs: dict | None = None, dynamic_shapes=None,
           weights: str | None = "inline", metadata: dict | None = None, tokenizer=None,
           optimize_graph: bool = True, quantize=None, bundle_inputs: int = 0) -> Path:
    """Compile a PyTorch module into a `.nac` file.

    Args:
        module: the model; it is run in eval mode under ``torch.no_grad`` (its mode is restored).
        args: example positional inputs (tensors), as for ``torch.export.export``.
        path: the `.nac` file to write (its folder must exist).
        kwargs: example keyword inputs (tensors; ``None`` values are left out).
        dynamic_shapes: as for ``torch.export.export``; give each ``torch.export.Dim`` a name
            (``Dim("seq", max=512)``) and that name is what `nac info` and errors show.
        weights: ``"inline"``, ``"external"`` (a sibling ``.safetensors`` file), or None: a
            weight-free export of a model whose parameters are on the ``meta`` device (see
            `compile_unbound`); the file records every weight's name, dtype and shape, and
            `nac.bind` fills them later.
        metadata: JSON-serialisable task metadata stored in the file (task, labels, ...).
        tokenizer: a Hugging Face ``tokenizer.json`` (path, bytes, text or dict) or a TISA
            ``Program``: compiled to TISA bytecode and stored in the file's tokenizer section, so
            ``nac.load(path).tokenizer`` encodes text with no ``tokenizers`` package.
        optimize_graph: run the optimisation passes (constant folding, batch-norm folding,
            activation fusion, dead-code elimination).
        quantize: None, ``"int8"``, ``"ternary"`` or ``{module glob: scheme}``; see
            `nac.compile.quantize`. Weights that are exactly ternary (BitLinear) are always stored
            in 2 bits.
        bundle_inputs: store this many example inputs with the module's own outputs in the
            file's test-vectors section (the export's example, then variations of it), for
            `nac.verify` to replay on any machine; see `nac.apps.verify.bundle_vectors`.
    Returns:
        ``path`` as a `pathlib.Path`.
    Raises:
        NacExportError: torch.export fails, the graph uses ATen ops NAC lacks (all listed with
            their module paths), or an input is not a tensor. Nothing is written then.
        NacFormatError: the file cannot be written (missing folder, bad ``weights``).
        NacError: the tokenizer is missing or uses a component TISA does not support.
    """
    if path is None:
        raise NacExportError("export needs a destination path")
    meta = dict(metadata or {})
    blob = attach_tokenizer(tokenizer, meta)  # before the slow part: a bad tokenizer fails fast
    if weights is None:
        if bundle_inputs:
            raise NacExportError("bundle_inputs needs the weights (the reference outputs come from running "
                                 "the model); bundle them when binding, or export with weights")
        graph, meta = compile_unbound(module, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, metadata=meta,
                                      optimize_graph=optimize_graph, quantize=quantize)
        return write_nac(path, graph, meta, tokenizer=blob)
    graph, meta = compile_graph(module, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, metadata=meta,
                                optimize_graph=optimize_graph, quantize=quantize)
    vectors = None
    if bundle_inputs:
        from nac.apps.verify import bundle_vectors

        vectors = bundle_vectors(module, args, kwargs, graph, meta, bundle_inputs)
    return write_nac(path, graph, meta, weights=weights, tokenizer=blob, test_vectors=vectors)


def attach_tokenizer(tokenizer, metadata: dict) -> bytes | None:
    """Compile ``tokenizer`` (see `export`) to a TISA section and record it in ``metadata``
    (``metadata["tokenizer"]``, keeping keys already there). None stays None."""
    if tokenizer is None:
        return None
    from nac.tokenizer_vm import tokenizer_section

    blob, info = tokenizer_section(tokenizer)
    metadata["tokenizer"] = {**(metadata.get("tokenizer") or {}), **info}
    return blob


def compile_graph(module: torch.nn.Module, args=(), *, kwargs: dict | None = None, dynamic_shapes=None,
                  metadata: dict | None = None, optimize_graph: bool = True, quantize=None,
                  progress=None) -> tuple[Graph, dict]:
    """Everything `export` does before writing: lower, optimise, quantise; returns the graph and
    the metadata to store (the caller's, plus the ``compile`` report). ``progress(stage)`` is
    called as each stage starts (``"torch.export + lowering"``, ``"optimising"``,
    ``"quantising"``). Raises as `export`."""
    step = progress or (lambda stage: None)
    step("torch.export + lowering")
    graph = to_graph(module, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    meta = _compile_metadata(graph, metadata, args, kwargs)
    return finish_graph(graph, meta, optimize_graph=optimize_graph, quantize=quantize, progress=step), meta


def compile_methods(methods: dict, *, metadata: dict | None = None, optimize_graph: bool = True, quantize=None,
                    progress=None) -> tuple[dict[str, Graph], dict]:
    """`compile_graph` for a model of several methods (graphs) sharing one parameter section.

    Args:
        methods: method name -> an object with ``module``, ``args``, ``kwargs`` and
            ``dynamic_shapes`` (an `nac.apps.sources.ExportJob`), or a tuple ``(module, args)``
            or ``(module, args, dynamic_shapes)``; the first is the file's default method.
    Returns:
        ``({name: Graph}, metadata)`` for `nac.format.container.write_nac`: the metadata's
        ``compile`` report is the first method's, plus ``methods`` (each method's report) and
        ``method_example_dims`` (each other method's export example sizes). A parameter name
        that two methods use for different data (a folded or quantised tensor) is renamed
        ``<method>.<name>`` in the later method.
    Raises:
        NacExportError: as `export`, naming the method.
    """
    step = progress or (lambda stage: None)
    graphs: dict[str, Graph] = {}
    reports: dict[str, dict] = {}
    stored: dict[str, np.ndarray] = {}
    for name, job in methods.items():
        module, args, kwargs, shapes = _method_parts(job)
        step(f"{name}: torch.export + lowering")
        try:
            graph, meta = compile_graph(module, args, kwargs=kwargs, dynamic_shapes=shapes, metadata={},
                                        optimize_graph=optimize_graph, quantize=quantize, progress=step)
        except NacExportError as exc:
            raise NacExportError(f"method {name!r}: {exc}") from exc.__cause__
        _rename_clashes(graph, stored, name)
        stored.update(graph.params)
        graphs[name] = graph
        reports[name] = meta["compile"]
    first, *others = graphs
    out = dict(metadata or {})
    out["compile"] = {**reports[first], "methods": reports,
                      "method_example_dims": {n: reports[n].get("example_dims", {}) for n in others}}
    return graphs, out


def _method_parts(job):
    if isinstance(job, tuple):
        module, args, *rest = job
        return module, args, None, rest[0] if rest else None
    return job.module, job.args, job.kwargs or None, job.dynamic_shapes


def _rename_clashes(graph: Graph, stored: dict, method: str) -> None:
    """Rename ``graph``'s parameters whose name is taken in ``stored`` by different data."""
    for name in list(graph.params):
        seen = stored.get(name)
        if seen is None or same_tensor(seen, graph.params[name]):
            continue
        new = f"{method}.{name}"
        while new in graph.values or new in stored:
            new += "_"
        graph.rename_value(name, new)


def _compile_metadata(graph: Graph, metadata: dict | None, args, kwargs) -> dict:
    """The caller's metadata plus the start of the ``compile`` report: torch's version and the
    export example's sizes (what `nac emit` fixes symbolic sizes to by default)."""
    meta = dict(metadata or {})
    meta.setdefault("compile", {})["torch"] = torch.__version__
    examples = _example_dims(graph, args, kwargs)
    if examples:
        meta["compile"]["example_dims"] = examples
    return meta


def compile_unbound(module: torch.nn.Module, args=(), *, kwargs: dict | None = None, dynamic_shapes=None,
                    metadata: dict | None = None, optimize_graph: bool = True, quantize=None) -> tuple[Graph, dict]:
    """The weight-free half of `compile_graph`, for a model whose parameters live on PyTorch's
    ``meta`` device (``with torch.device("meta"): ...``, or accelerate's ``init_empty_weights``):
    lowers the model without reading any weight and returns the unoptimised graph and metadata
    whose ``compile.unbound`` records, for every state_dict tensor, its dtype, shape and the
    state_dict keys it may be found under (tied weights have several), and what `nac.bind` must
    do afterwards (``optimize``, ``quantize``). Every state_dict entry is left for `bind`, even
    one that holds data here (a persistent buffer's initial value is not the checkpoint's);
    tensors outside the state_dict (non-persistent buffers built in ``__init__``, such as rotary
    tables) keep their data and are listed as ``kept``.

    Raises:
        NacExportError: as `export`; also when no parameter is on the meta device.
    """
    # Everything in the state_dict comes from the weights at bind time (a persistent buffer such as
    # batch norm's running mean included: its value here is only the initial one); tensors outside
    # it (non-persistent buffers: rotary tables, position ids) are computed by the module and kept.
    in_state = set(module.state_dict().keys())
    real = {n: t for n, t in _real_tensors(module).items() if n not in in_state}
    names_of: dict[int, list[str]] = {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        names_of.setdefault(id(t), []).append(name)
    keys = {n: names for names in names_of.values() for n in names}
    with _all_on_meta(module, real):
        meta_args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a
                          for a in (args if isinstance(args, (tuple, list)) else (args,)))
        meta_kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in (kwargs or {}).items()}
        unbound: dict[str, dict] = {}
        tied = {n: names[-1] for names in names_of.values() for n in names}  # the name torch.export gives a tied weight
        graph = to_graph(module, meta_args, kwargs=meta_kwargs, dynamic_shapes=dynamic_shapes, real=real,
                         unbound=unbound, tied=tied)
    if not unbound:
        raise NacExportError("weights=None exports a model without its state_dict, yet this graph reads none of it "
                             "(export it with weights='inline')")
    for name, entry in unbound.items():
        entry["keys"] = keys.get(name, [name])
    meta = _compile_metadata(graph, metadata, args, kwargs)
    meta["compile"]["unbound"] = {"tensors": unbound, "kept": sorted(n for n in real if n in graph.params),
                                  "optimize": bool(optimize_graph),
                                  "quantize": dict(quantize) if isinstance(quantize, dict) else quantize}
    return graph, meta


def _real_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers that hold data (not on the meta device), by name."""
    return {n: t.detach() for n, t in [*module.named_parameters(remove_duplicate=False),
                                       *module.named_buffers(remove_duplicate=False)]
            if t is not None and t.device.type != "meta"}


@contextlib.contextmanager
def _all_on_meta(module: torch.nn.Module, real: dict):
    """Temporarily put every real parameter and buffer of ``module`` on the meta device (so the
    trace never mixes devices); the caller keeps their data in ``real``. Restored on exit."""
    swapped = []
    for mod in module.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in list(store.items()):
                if t is not None and t.device.type != "meta":
                    swapped.append((store, k, t))
                    m = t.detach().to("meta")
                    store[k] = torch.nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(
                        t, torch.nn.Parameter) else m
    try:
        yield
    finally:
        for store, k, t in swapped:
            store[k] = t


def _example_dims(graph: Graph, args, kwargs) -> dict[str, int]:
    """The named dimensions' sizes in the export's example inputs (empty if they do not map)."""
    from nac.engine.plan import bind_dims

    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
    if len(tensors) != len(graph.inputs):
        return {}
    try:
        return bind_dims(graph, {n: tuple(t.shape) for n, t in zip(graph.inputs, tensors)})
    except NacError:
        return {}


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Export in eval mode, then give every submodule back its own mode (``train(flag)`` on the
    root would recurse and switch on dropout in submodules the caller had put in eval mode)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _export_program(module, args, kwargs, dynamic_shapes) -> torch.export.ExportedProgram:
    if not isinstance(module, torch.nn.Module):
        raise NacExportError(f"export expects a torch.nn.Module, got {type(module).__name__}")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    dropped = {k for k, v in (kwargs or {}).items() if v is None}
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    if isinstance(dynamic_shapes, dict):
        dynamic_shapes = {k: v for k, v in dynamic_shapes.items() if k not in dropped}
    with _eval_mode(module), torch.no_grad():
        try:
            ep = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
        except NacError:
            raise
        except Exception as exc:  # torch raises many types here; all mean "cannot export"
            msg = str(exc).strip().splitlines()
            raise NacExportError(f"torch.export failed for {type(module).__name__}: {type(exc).__name__}: "
                                 f"{' '.join(msg[:6])}") from exc
        return ep.run_decompositions(_decompositions())


def _decompositions() -> dict:
    """torch.export's core-ATen table, less the ops NAC runs whole (a fused kernel beats the parts)."""
    table = torch.export.default_decompositions()
    for op in list(table):
        if op in (torch.ops.aten.scaled_dot_product_attention.default,):
            del table[op]
    return table


class _ConstantFolder:
    """Evaluates, with torch at export time, an FX node whose value depends only on parameters,
    buffers and literals (no model input, no symbolic size): such a subgraph becomes one stored
    tensor, whatever ATen ops it uses (BEiT's relative-position index built with slice_scatter).

    ``value(node)`` returns the tensor (a detached CPU tensor of at most MAX_ELEMENTS elements and a
    dtype NAC stores) or None when the node is not constant, too large, or torch fails on it.
    """

    MAX_ELEMENTS = 1 << 24

    def __init__(self, params: dict):
        self.known: dict = {n: t.detach() for n, t in params.items()}
        self.not_constant: set = set()

    def value(self, node):
        if node in self.known:
            return self.known[node]
        if node in self.not_constant or node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            return None
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or any(not isinstance(s, int) for s in val.shape) \
                or val.numel() > self.MAX_ELEMENTS:
            self.not_constant.add(node)
            return None
        leaves = []
        torch.fx.node.map_arg((node.args, node.kwargs), leaves.append)
        try:
            if any(self.value(a) is None for a in leaves):
                self.not_constant.add(node)
                return None
        except RecursionError:  # a constant chain deeper than Python's stack: left to the rules
            self.not_constant.add(node)
            return None

        def real(a):
            if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                raise TypeError("symbolic")
            return a

        try:
            args, kwargs = torch.fx.node.map_aggregate((node.args, node.kwargs), real)
            args, kwargs = torch.fx.node.map_arg((args, kwargs), lambda a: self.known[a])
            with torch.no_grad():
                out = node.target(*args, **kwargs)
            nac_dtype(out.dtype)
            if out.device.type == "meta":  # depends on a weight a weight-free export does not have
                raise TypeError("meta")
        except Exception:  # symbolic, unsupported dtype, or torch refuses: not foldable
            self.not_constant.add(node)
            return None
        self.known[node] = out.detach().contiguous()
        return self.known[node]


def _report_unsupported(missing: dict[str, list[str]], refused: list[str]) -> None:
    """One NacExportError listing every unsupported ATen op and every construct a rule refused."""
    if not missing and not refused:
        return
    parts = []
    if missing:
        parts.append(f"the model uses {len(missing)} ATen op(s) NAC does not support:\n" + "\n".join(
            f"  {op}  at {', '.join(sorted(set(paths))[:5])}{' ...' if len(set(paths)) > 5 else ''}"
            for op, paths in sorted(missing.items())))
    if refused:
        unique = list(dict.fromkeys(refused))
        parts.append(f"{len(unique)} construct(s) NAC does not support:\n" + "\n".join(f"  {r}" for r in unique))
    raise NacExportError("\n".join(parts))


def _dim_names(ep, dynamic_shapes) -> dict:
    """Name torch's shape symbols after the user's `Dim` names (else ``<input>_dim<i>``)."""
    names: dict = {}
    user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    specs: dict[str, object] = {}
    if isinstance(dynamic_shapes, dict):
        specs = dict(dynamic_shapes)
    elif isinstance(dynamic_shapes, (list, tuple)):
        specs = {n.name: s for n, s in zip(user_inputs, dynamic_shapes)}
    taken = set()
    for n in user_inputs:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        spec = specs.get(n.name)
        for axis, size in enumerate(val.shape):
            if not isinstance(size, torch.SymInt):
                continue
            expr = size.node.expr
            if not expr.is_Symbol:  # a derived dimension (32 * Dim("h"), Dim("n") + 1): name its root
                free = list(expr.free_symbols)
                if len(free) != 1:
                    continue
                expr = free[0]
            if expr in names:
                continue
            dim = None
            if isinstance(spec, dict):
                dim = spec.get(axis)
            elif isinstance(spec, (list, tuple)) and axis < len(spec):
                dim = spec[axis]
            dim = getattr(dim, "root", dim)  # torch's derived Dim keeps the Dim it is derived from
            label = getattr(dim, "__name__", None) or f"{n.name}_dim{axis}"
            label = "".join(c if c.isalnum() or c == "_" else "_" for c in label)
            if not label[0].isalpha():
                label = "d_" + label
            while label in taken:
                label += "_"
            taken.add(label)
            names[expr] = label
    return names


def _output_names(ep, count: int) -> list[str]:
    try:
        from torch.utils._pytree import keystr, tree_flatten_with_path, tree_unflatten

        spec = ep.call_spec.out_spec
        tree = tree_unflatten(list(range(count)), spec)
        paths = [keystr(p) for p, _ in tree_flatten_with_path(tree)[0]]
        names = []
        for p in paths:
            s = p.strip("[]().'\"").replace("']['", ".").replace("'].", ".").replace("[", "_").replace("]", "")
            s = "".join(c if c.isalnum() or c == "_" else "_" for c in s).strip("_")
            names.append(s if s and not s[0].isdigit() else f"output_{s}" if s else "output")
        if len(set(names)) == count:
            return names
    except Exception:  # naming is cosmetic; fall back to positions
        pass
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def to_graph(module: torch.nn.Module, args=(), *, kwargs=None, dynamic_shapes=None, real: dict | None = None,
             unbound: dict | None = None, tied: dict | None = None) -> Graph:
    """Export ``module`` and lower it to an (unoptimised) NAC `Graph`. See `export` for arguments.

    For a weight-free export (`compile_unbound`): ``real`` gives the data of tensors the trace saw
    on the meta device, by state_dict name; a weight with neither data nor an entry there becomes
    a declared value with no data, recorded in ``unbound`` (name -> dtype and shape). ``tied``
    maps each state_dict name to the name torch.export gives the tensor it shares storage with: the trace
    of a meta model lifts tied weights separately, a real one once, and the graph must not differ.

    Raises:
        NacExportError: as `export`.
    """
    ep = _export_program(module, args, kwargs, dynamic_shapes)
    missing: dict[str, list[str]] = {}  # unsupported ATen op -> module paths (not foldable at export)
    refused: list[str] = []  # every construct a rule refuses, reported together at the end
    sig = ep.graph_signature
    names = _dim_names(ep, dynamic_shapes)
    graph = Graph()
    for sym, label in names.items():
        vr = ep.range_constraints.get(sym)
        lo = int(vr.lower) if vr is not None and vr.lower.is_finite else 0
        hi = int(vr.upper) if vr is not None and vr.upper.is_finite else None
        graph.dims[label] = {"min": lo, "max": hi}
    L = Lowerer(graph, names)
    L.unbound = unbound or {}
    state = {**ep.state_dict, **ep.constants}
    fqn_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    if real:
        state = {k: real.get(k, t) for k, t in state.items()}
    folder = _ConstantFolder({n: state[fqn_of[n.name]] for n in ep.graph.nodes
                              if n.op == "placeholder" and n.name in fqn_of})

    for node in ep.graph.nodes:
        L.node = node
        if node.op == "placeholder":
            if node.name in fqn_of:
                t = state[fqn_of[node.name]].detach()
                dtype = nac_dtype(t.dtype, f"parameter {fqn_of[node.name]}")
                if t.device.type == "meta" and unbound is not None:  # a weight-free export: bound later
                    first = (tied or {}).get(fqn_of[node.name], fqn_of[node.name])
                    if first not in graph.values:  # a data-free stand-in while lowering (rules look at params)
                        shape = tuple(int(d) for d in t.shape)
                        graph.add_value(first, dtype, shape)  # (add_param would copy the zero-stride array)
                        graph.params[first] = np.broadcast_to(np.zeros((), np.dtype(DTYPES[dtype][0])), shape)
                        unbound[first] = {"dtype": dtype, "shape": list(shape)}
                    L.env[node] = first
                    continue
                L.env[node] = graph.add_param(fqn_of[node.name], t.cpu().contiguous().numpy())
            else:
                val = node.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    raise NacExportError(f"input {node.name!r} is a {type(val).__name__}; NAC models take tensors only")
                v = graph.add_value(node.name, nac_dtype(val.dtype, f"input {node.name}"), L.shape(node))
                graph.inputs.append(v)
                L.env[node] = v
        elif node.op == "call_function":
            val = node.meta.get("val")
            if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
                L.env[node] = sym_text(val.node.expr, names) if isinstance(val, torch.SymInt) else int(val)
                continue
            if isinstance(val, (torch.SymFloat, torch.SymBool, float, bool)):
                L.env[node] = val
                continue
            rule = RULES.get(target_name(node.target))
            if rule is None:
                folded = folder.value(node)
                if folded is not None:  # a constant subgraph (e.g. a relative-position table): torch computes it
                    L.env[node] = graph.add_param(f"folded.{node.name}", folded.numpy())
                    continue
                # listed with the unsupported ATen ops; keep lowering to find every problem
                missing.setdefault(target_name(node.target), []).append(module_path(node))
                L.env[node] = _stand_in(L, node)
                continue
            try:
                L.env[node] = rule(L, node, *node.args, **node.kwargs)
            except NacExportError as exc:
                folded = folder.value(node)
                if folded is not None:
                    L.env[node] = graph.add_param(f"folded.{node.name}", folded.numpy())
                    continue
                refused.append(str(exc))
                L.env[node] = _stand_in(L, node)  # keep lowering so every problem is found
            except Exception:
                if not (missing or refused):
                    raise
                L.env[node] = _stand_in(L, node)  # a consequence of an earlier stand-in
        elif missing or refused:
            continue  # the graph is not built: report what is unsupported, all of it
        elif node.op == "output":
            outs = node.args[0]
            flat = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            # names follow the flattened outputs; keep those of the tensor outputs
            labels = [label for o, label in zip(flat, _output_names(ep, len(flat))) if isinstance(o, torch.fx.Node)]
            for o, label in zip([o for o in flat if isinstance(o, torch.fx.Node)], labels):
                v = L.env[o]
                if v in graph.outputs or v in graph.inputs or v in graph.params or graph.values[v].const is not None:
                    L.node = o
                    v = L.emit("copy", [v], name=label, shape=graph.values[v].shape, dtype=graph.values[v].dtype)
                graph.outputs.append(v)
    _report_unsupported(missing, refused)
    _rename_outputs(graph, labels)
    for name in unbound or ():
        del graph.params[name]  # declared, without data: `nac.bind` provides it
    return graph


def _stand_in(L: Lowerer, node):
    """A value standing for a node that could not be lowered, so later rules can still run and
    report their own problems. Tuple-valued nodes get one per element."""
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return tuple(L.graph.add_value(f"{node.name}_{k}", "float32", ()) for k in range(len(val)))
    try:
        return L.graph.add_value(node.name, L.dtype(node), L.shape(node))
    except NacExportError:
        return L.graph.add_value(node.name, "float32", ())


def _rename_outputs(graph: Graph, labels: list[str]) -> None:
    """Give output values the model's output names (``last_hidden_state``) where free."""
    for old, new in zip(list(graph.outputs), labels):
        if old != new and new not in graph.values:
            graph.rename_value(old, new)
