"""Architecture names stay behind the adapter: hook names come from
:meth:`mechtrunc.core.adapters.ModelAdapter.hook_name`, never from a string written in a module above it.

The scan reads every module's string literals (f-string parts included, docstrings left out) and
fails on a TransformerLens hook-name pattern (``blocks.``, ``hook_...``, ``ln_final.``) outside
``mechtrunc/core/adapters.py``, except for the short allow-list below.  It also checks that the names
the adapter gives are the hooks the models have.
"""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import pytest
import torch

import mechtrunc as mt
from mechtrunc.core.adapters import adapt

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mechtrunc"
#: the one module that writes hook names
ADAPTER = Path("mechtrunc", "core", "adapters.py")
#: a hook name, or the part of one an f-string holds
HOOK_NAME = re.compile(r"[\w.]*(?:\bblocks\.|(?<![A-Za-z])hook_[a-z]|\bln_final\.)[\w.]*")

#: (module, name): the hand-written hook names that stay, each for a reason
ALLOWED = {
    # the linear memory's own adapter (MemoryAdapter) names its model's hooks: it has no blocks,
    # so no TransformerLens layer names to take from ModelAdapter.hook_name
    ("mechtrunc/models/memory.py", "hook_mem_out"),
    ("mechtrunc/models/memory.py", "hook_embed"),
    # a label in the logit lens' output (df.attrs["resid_mid"], printed by `mechtrunc lens logit`):
    # it says which reading was used, it is not looked up
    ("mechtrunc/analysis/lens.py", "hook_resid_mid"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def hook_name_literals(source: str) -> list[str]:
    """The hook names (or parts of one) in the string literals of ``source`` (f-string parts
    included, docstrings not)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [name for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            for name in HOOK_NAME.findall(node.value)]


def _found() -> set[tuple[str, str]]:
    out = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel == ADAPTER:
            continue
        out |= {(rel.as_posix(), s) for s in hook_name_literals(path.read_text())}
    return out


def test_the_scan_sees_plain_and_formatted_names():
    source = ('"""Docstrings may name blocks.0.hook_resid_pre."""\n'
              'def f(acts, layer):\n'
              '    """Nor here: ln_final.hook_scale."""\n'
              '    a = acts[f"blocks.{layer}.attn.hook_z"]\n'
              '    b = acts["hook_pos_embed"]\n'
              '    raise ValueError(f"no hook {b}: its hooks are hook_embed, hook_mem_out")\n'
              '    return a, b, "mlp_out", "pattern", "hook point", "stacks.blocks_"\n')
    assert sorted(hook_name_literals(source)) == [".attn.hook_z", "blocks.", "hook_embed", "hook_mem_out",
                                                  "hook_pos_embed"]


def test_no_hand_written_hook_name_above_the_adapter():
    found = _found()
    extra = sorted(found - ALLOWED)
    assert not extra, ("hook names written outside mechtrunc/core/adapters.py (use adapter.hook_name): "
                       + "; ".join(f"{m}: {s!r}" for m, s in extra))
    stale = sorted(ALLOWED - found)
    assert not stale, f"allow-list entries no longer needed: {stale}"


def _is_adapter_kind(node: ast.AST) -> bool:
    """``adapter.kind``, ``a.kind``, ``self.adapter.kind``, ``adapt(model).kind``."""
    if not (isinstance(node, ast.Attribute) and node.attr == "kind"):
        return False
    v = node.value
    return (isinstance(v, ast.Name) and (v.id == "a" or v.id.endswith("adapter"))
            or isinstance(v, ast.Attribute) and v.attr.endswith("adapter")
            or isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "adapt")


def _own_nodes(scope: ast.AST):
    """The nodes of a module's or function's body, nested functions left out (their own scopes)."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def kind_switches(source: str) -> list[int]:
    """The lines of ``source`` that compare an adapter's kind (``==``, ``!=``, ``in``, ``not
    in``, ``match``), directly or through a name bound to it in the same function or an
    enclosing one (``kind = adapter.kind``, ``kind, L = adapter.kind, ...``)."""
    hits = set()

    def visit(scope: ast.AST, outer: frozenset) -> None:
        bound = set(outer)
        for node in _own_nodes(scope):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name) and _is_adapter_kind(node.value):
                        bound.add(t.id)
                    elif isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        bound |= {e.id for e, v in zip(t.elts, node.value.elts)
                                  if isinstance(e, ast.Name) and _is_adapter_kind(v)}

        def is_kind(x):
            return _is_adapter_kind(x) or isinstance(x, ast.Name) and x.id in bound

        for node in _own_nodes(scope):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                     for op in node.ops):
                if any(is_kind(x) for x in [node.left, *node.comparators]):
                    hits.add(node.lineno)
            elif isinstance(node, ast.Match) and is_kind(node.subject):
                hits.add(node.lineno)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(node, frozenset(bound))

    visit(ast.parse(source), frozenset())
    return sorted(hits)


def test_the_kind_scan_sees_direct_and_bound_switches():
    source = ('def f(adapter, a, model, receiver):\n'
              '    if adapter.kind == "toy": pass\n'               # 2
              '    kind, L = adapter.kind, adapter.n_layers\n'
              '    if kind not in ("bridge", "toy"): pass\n'       # 4
              '    split = kind == "bridge"\n'                     # 5
              '    if a.kind != "memory": pass\n'                  # 6
              '    k = adapt(model).kind\n'
              '    if k in ("hf",): pass\n'                        # 8
              '    raise ValueError(f"not a {adapter.kind} model")\n'
              '    def inner():\n'
              '        return kind == "toy"\n'                     # 11
              'def g(receiver):\n'
              '    kind = receiver[0]\n'
              '    return kind == "logits"\n')
    assert kind_switches(source) == [2, 4, 5, 6, 8, 11]


def test_no_kind_switch_above_the_adapter():
    """Modules ask the adapter for capabilities (sites, matrices, has_hook...), not its kind."""
    hits = [f"{path.relative_to(ROOT)}:{i}" for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(ROOT) != ADAPTER
            for i in kind_switches(path.read_text())]
    assert not hits, hits


# ------------------------------------------------------------------------------- the names
LAYER_HOOKS = {"resid_pre": "blocks.1.hook_resid_pre", "resid_mid": "blocks.1.hook_resid_mid",
               "resid_post": "blocks.1.hook_resid_post", "attn_out": "blocks.1.hook_attn_out",
               "mlp_out": "blocks.1.hook_mlp_out", "mlp_pre": "blocks.1.mlp.hook_pre",
               "mlp_post": "blocks.1.mlp.hook_post", "z": "blocks.1.attn.hook_z", "q": "blocks.1.attn.hook_q",
               "k": "blocks.1.attn.hook_k", "v": "blocks.1.attn.hook_v",
               "attn_scores": "blocks.1.attn.hook_attn_scores", "pattern": "blocks.1.attn.hook_pattern"}
MODEL_HOOKS = {"embed": "hook_embed", "pos_embed": "hook_pos_embed", "final_scale": "ln_final.hook_scale"}


@pytest.mark.parametrize("fixture", ["random_toy", "neox_bridge", "gpt2_bridge"])
def test_hook_names_are_the_models_hooks(fixture, request):
    model = request.getfixturevalue(fixture)
    a = adapt(model)
    for site, name in LAYER_HOOKS.items():
        assert a.hook_name(site, 1) == name
        # a parallel block (GPT-NeoX) has no resid_mid
        assert a.has_hook(name) == (site != "resid_mid" or a.mlp_input_site(1) == "resid_mid"), name
    for site, name in MODEL_HOOKS.items():
        assert a.hook_name(site) == name
    assert a.has_hook("hook_embed") and (a.has_hook("hook_pos_embed") or not a.has_pos_embed())
    assert a.has_hook("ln_final.hook_scale") == (a.final_ln() is not None)
    assert not a.has_hook("blocks.1.hook_nothing")


def test_hook_name_errors(random_toy):
    a = adapt(random_toy)
    with pytest.raises(ValueError, match=r"unknown layer hook 'mlp_output'; valid: mlp_out, attn_out, .*, "
                                         r"z, q, k, v, attn_scores, pattern, q_input, k_input, v_input, mlp_in$"):
        a.hook_name("mlp_output", 0)
    with pytest.raises(ValueError, match=r"unknown layer hook 'embed'.*leave layer out"):
        a.hook_name("embed", 0)
    with pytest.raises(ValueError, match=r"unknown model hook 'z'; valid: embed, pos_embed, final_scale, prev_embed "
                                         r"\(give layer= for a layer's hook\)"):
        a.hook_name("z")
    with pytest.raises(ValueError, match=r"layer 2 is out of range: valid layers are 0\.\.1"):
        a.hook_name("z", 2)


def test_sizes_and_capabilities_come_from_the_adapter(random_toy, neox_bridge):
    from mechtrunc.models.memory import LinearMemory, MemoryConfig

    toy, neox = adapt(random_toy), adapt(neox_bridge)
    assert (toy.n_ctx, toy.d_mlp) == (64, 128) == (random_toy.cfg.n_ctx, random_toy.blocks[0].mlp.W_in.shape[1])
    assert (neox.n_ctx, neox.d_mlp) == (64, 256)
    assert neox.d_mlp == neox.matrix("mlp.W_in", 0).get().shape[1]
    hf = adapt(neox_bridge.original_model)
    assert (hf.n_ctx, hf.d_mlp) == (None, 256)
    mem = adapt(LinearMemory(MemoryConfig(n_inputs=8, n_outputs=8, d=16)))
    assert (mem.sites, mem.matrices, mem.n_ctx) == (("mlp_out",), ("W",), None)
    assert toy.sites == mt.SITES and toy.matrices == mt.MATRICES
    with pytest.raises(ValueError, match="this memory model has no MLP hidden layer of known width"):
        mem.d_mlp
    # ProjectOut at mlp_pre checks its directions against d_mlp
    with pytest.raises(ValueError, match=r"directions must have shape \[n, 128\] for site 'mlp_pre'"):
        with mt.intervene(random_toy, mt.ProjectOut("mlp_pre", 0, torch.randn(2, 32))):
            pass


def test_residual_readers_and_split_inputs_come_from_the_adapter(random_toy, neox_bridge):
    from mechtrunc.studies.dynamics.minimal import MinimalConfig, MinimalModel
    from mechtrunc.models.memory import LinearMemory, MemoryConfig

    toy, neox = adapt(random_toy), adapt(neox_bridge)
    minimal = adapt(MinimalModel(MinimalConfig(d_model=16, embeddings="gaussian", seq_len=8, seed=0)))
    mem = adapt(LinearMemory(MemoryConfig(n_inputs=8, n_outputs=8, d=16)))
    assert toy.residual_readers == neox.residual_readers == ("q", "k", "v", "mlp")
    assert (minimal.residual_readers, minimal.embed_writes_residual, mem.residual_readers) == (("mlp",), False, ())
    assert toy.embed_writes_residual and neox.embed_writes_residual
    # the toy (no LayerNorm) reads through its projections, a bridge at its split inputs
    hook, W = toy.residual_reader("k", 1)
    assert hook == "blocks.1.attn.hook_k" and torch.equal(W, toy.matrix("attn.W_K", 1).get())
    hook, W = toy.residual_reader("mlp", 0)
    assert hook == "blocks.0.mlp.hook_pre" and torch.equal(W, toy.matrix("mlp.W_in", 0).get())
    hook, W = minimal.residual_reader("mlp", 0)
    assert hook == "blocks.0.hook_mlp_out" and torch.equal(W, minimal.matrix("mlp.W_out", 0).get())
    assert neox.residual_reader("v", 2) == ("blocks.2.attn.hook_v_input", None)
    assert neox.residual_reader("mlp", 0) == ("blocks.0.hook_mlp_in", None)
    with pytest.raises(ValueError, match=r"unknown reader 'q'; valid: mlp$"):
        minimal.residual_reader("q", 0)
    with pytest.raises(ValueError, match="this memory model is not a residual stream of heads and MLPs"):
        mem.residual_reader("mlp", 0)
    # split inputs: live inside the block only, the bridge's flags restored after
    assert not toy.has_split_inputs and neox.has_split_inputs
    with pytest.raises(ValueError, match="this toy model has no split query/key/value-input and MLP-input hooks"):
        with toy.split_inputs():
            pass
    flags = (neox_bridge.cfg.use_split_qkv_input, neox_bridge.cfg.use_hook_mlp_in)
    seen = {}
    names = [neox.hook_name(n, 1) for n in ("q_input", "k_input", "v_input", "mlp_in")]
    with neox.split_inputs(), contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(neox.hooked(name, lambda act, name=name: seen.__setitem__(name, act.shape)))
        neox_bridge(torch.zeros(1, 5, dtype=torch.long))
    assert (neox_bridge.cfg.use_split_qkv_input, neox_bridge.cfg.use_hook_mlp_in) == flags
    assert seen == {names[0]: (1, 5, 4, 64), names[1]: (1, 5, 4, 64), names[2]: (1, 5, 4, 64), names[3]: (1, 5, 64)}
