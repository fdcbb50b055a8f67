"""The package's structure: no import cycle (imports inside functions included), the library never imports the
workshop, every public `plot_*` function runs in a fresh process, and only the layout module spells the experiments/
layout. These read the package's source with `ast`; a failure names the module: fix it in its notebook."""
import ast, os, subprocess, sys, textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'illama'
MODULES = sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py')

def modname(path: Path) -> str:
    "`illama/workshop/repro.py` -> `illama.workshop.repro`; `illama/workshop/__init__.py` -> `illama.workshop`."
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

FILES = {modname(p): p for p in MODULES}   # every importable module of the package, packages by their __init__.py

# ---------------------------------------------------------------------------------------------------------------------
# 1. Imports: every `illama` module each module imports, at any depth of its tree

def _package(path: Path) -> list[str]:
    "The package a module's relative imports start from (a package's own __init__ counts as inside it)."
    parts = modname(path).split('.')
    return parts if path.name == '__init__.py' else parts[:-1]

def imported_names(path: Path) -> set[str]:
    "Every dotted `illama...` name the module imports: import statements anywhere, `importlib.import_module('illama...')`."
    out = set()
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import): out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                pkg = _package(path)
                if n.level - 1 > len(pkg): continue   # beyond the top package: Python refuses it
                base = '.'.join(pkg[:len(pkg) - n.level + 1] + ([n.module] if n.module else []))
            else: base = n.module or ''
            out.add(base)
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one; else it is a name in pkg
            out |= {f'{base}.{a.name}' for a in n.names if a.name != '*'}
        elif isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant) \
                and isinstance(n.args[0].value, str):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', None)
            if name in ('import_module', '__import__'): out.add(n.args[0].value)
    return {x for x in out if x == 'illama' or x.startswith('illama.')}

def _candidates(name: str) -> set[str]:
    "`illama.a.b` imports `illama`, `illama.a` and `illama.a.b`."
    parts = name.split('.')
    return {'.'.join(parts[:i]) for i in range(1, len(parts) + 1)}

def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules its import runs. A package counts only where its __init__.py exists; the
    module's own ancestors are left out: they are being imported already when it runs, so they make no cycle."""
    g = {}
    for mod, path in FILES.items():
        ancestors = _candidates(mod) if path.name == '__init__.py' else _candidates(mod) - {mod}
        targets = set().union(set(), *(_candidates(x) for x in imported_names(path)))
        g[mod] = {t for t in targets if t in FILES and t not in ancestors and t != mod}
    return g

def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    "One cycle (a -> ... -> a) in each strongly connected component of more than one module (Tarjan)."
    index, low, stack, on, comps = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v: break
            if len(comp) > 1: comps.append(comp)
    for v in sorted(g):
        if v not in index: visit(v)
    return [_cycle_in(g, c) for c in comps]

def _cycle_in(g, comp: set[str]) -> list[str]:
    "A shortest path from the component's first module back to itself, through the component (breadth-first)."
    start = min(comp)
    prev, todo = {}, [start]
    while todo:
        nxt = []
        for v in todo:
            for w in sorted(g[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start: path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        todo = nxt
    return sorted(comp)

def test_import_graph_helpers():
    "The resolver and the cycle finder themselves: relative imports, packages, a planted cycle."
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c', 'a']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []
    assert _candidates('illama.workshop.repro') == {'illama', 'illama.workshop', 'illama.workshop.repro'}

def test_imports_resolve(tmp_path, monkeypatch):
    "Relative imports, `from .. import paper`, imports inside functions and `import_module` strings are all seen."
    pkg = tmp_path / 'illama'
    (pkg / 'workshop').mkdir(parents=True)
    (pkg / '__init__.py').write_text('from .vit import *\n')
    (pkg / 'vit.py').write_text('import os\n')
    (pkg / 'paper.py').write_text('')
    (pkg / 'workshop' / 'a.py').write_text(
        'from .. import paper\ndef f():\n    from .b import g\n    import importlib\n'
        '    return importlib.import_module("illama.vit")\n')
    (pkg / 'workshop' / 'b.py').write_text('from illama.workshop.a import f\nfrom . import a\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    files = {modname(p): p for p in sorted(pkg.rglob('*.py'))}
    monkeypatch.setattr(sys.modules[__name__], 'FILES', files)
    g = import_graph()
    assert g['illama.workshop.a'] == {'illama.paper', 'illama.workshop.b', 'illama.vit'}, g
    assert g['illama.workshop.b'] == {'illama.workshop.a'}, g      # no __init__ in workshop/: no node for it
    assert g['illama'] == {'illama.vit'}, g
    assert find_cycles(g) == [['illama.workshop.a', 'illama.workshop.b', 'illama.workshop.a']]

def test_no_import_cycle():
    "No cycle among the package's imports, those inside functions included (they make the import order fragile)."
    cycles = find_cycles(import_graph())
    assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)

def test_library_never_imports_workshop():
    "The library (illama/, outside illama/workshop/) never imports the workshop: the workshop builds on it."
    bad = {mod: sorted(x for x in imported_names(p) if x == 'illama.workshop' or x.startswith('illama.workshop.'))
           for mod, p in FILES.items() if not (mod == 'illama.workshop' or mod.startswith('illama.workshop.'))}
    bad = {m: xs for m, xs in bad.items() if xs}
    assert not bad, f'library modules that import the workshop: {bad}'

# ---------------------------------------------------------------------------------------------------------------------
# 2. Every public plot_* function runs in a fresh process (a missing import in its module is a NameError there)

class Skip(str):
    "An entry of PLOT_ARGS for a function that cannot be called here; the string is the reason."

# HOW TO ADD AN ENTRY: key 'illama.<module>.<plot_function>'; value a Python snippet that sets `args` (a tuple) and
# `kwargs` (a dict). The snippet runs in a fresh process after `from illama.<module> import <plot_function>`, with
# `mod` (that module, for its own helpers such as `mod.get_rows`), `tmp` (a pathlib.Path to an empty temporary folder:
# write every output there) and `Path` at hand. Use tiny synthetic inputs, never real training or downloads, and
# import no other illama module. A function that needs the dataset gets `Skip('the reason')` instead of a snippet.
# Build the inputs the way the notebook cell after the function's definition does (nbs/).
PLOT_ARGS = {
    'illama.masks.plot_mask_schemes': "args, kwargs = (), dict(n_patches=3)",
    'illama.soft_mask.plot_soft_mask_schedules': "args, kwargs = (), dict(epochs=4, cutoff=2, iters_per_epoch=2)",
    'illama.train.plot_history': """
history = [dict(epoch=e, train_loss=2.0 / e, val_ce=2.2 / e, top1=20.0 * e, top5=40.0 * e) for e in (1, 2, 3)]
args, kwargs = (history,), dict(fn=tmp / 'history.png', alpha_curve=([0, 1, 2, 3], [1.0, 0.5, 0.0, 0.0]))
""",
    'illama.workshop.tables.plot_soft_mask_curves': """
hist = [dict(epoch=e, top1=10.0 + e, train_loss=2.0 - 0.1 * e) for e in (1, 2, 3)]
recipe = dict(soft_mask='linear', cutoff_epochs=1.5)
res = {s.run_id: [dict(run_id=s.run_id, seed=0, status='ok', top1=13.0, history=hist, config=dict(recipe=recipe))]
       for s in mod.get_rows('table3', ['no soft mask']) + mod.get_rows('table17', ['+ soft mask'])}
args, kwargs = ('cpu',), dict(root=str(tmp), seed=0, res=res)
""",
    'illama.workshop.tables.plot_collapse_curves': """
hist = [dict(epoch=e, top1=10.0 + e) for e in (1, 2, 3)]
def rec(s, size, patch):
    model = dict(img_size=[size, size], patch_size=patch, num_classes=10)
    return [dict(run_id=s.run_id, seed=0, status='ok', top1=13.0, history=hist, config=dict(model=model))]
res = {}
for s in mod.TABLES['tokens197']: res.update({s.run_id: rec(s, 112, 8), s.baseline.run_id: rec(s.baseline, 48, 6)})
args, kwargs = ('cpu',), dict(root=str(tmp), seed=0, res=res)
""",
    'illama.workshop.analyses.plot_table4': """
curves = {'iLLaMA': dict(top1=[50.0, 55.0], train_loss=[2.0, 1.5]),
          'iLLaMA, no soft mask': dict(top1=[49.0, 53.0], train_loss=[2.1, 1.6])}
args, kwargs = (dict(regime='smoke', cutoff_epochs=1, curves=curves), tmp / 'table4.png'), {}
""",
    'illama.workshop.attention.plot_rank': """
def run(L, H): return dict(curve=[[[0.5, 0.8, 0.95, 1.0]] * H] * L, rank=[[2.0] * H] * L,
                           example=[[0.25] * 4 for _ in range(4)])
per_model = {m: {'0': run(1, 1), '1': run(1, 1)} for m in ('ViT', 'iLLaMA')}
args, kwargs = (dict(tokens=4, energy=0.8, per_model=per_model), tmp / 'rank.png'), {}
""",
    'illama.workshop.attention.plot_rank_layers': """
def run(L, H): return dict(curve=[[[0.5, 0.8, 0.95, 1.0]] * H] * L, rank=[[2.0] * H] * L)
per_model = {m: {'0': run(2, 2)} for m in ('ViT', 'iLLaMA')}
args, kwargs = (dict(tokens=4, energy=0.8, per_model=per_model), tmp / 'rank_layers.png'), {}
""",
    # `data` names a folder that is not there: the images are not at hand, the Grad-CAM maps are drawn alone
    'illama.workshop.attention.plot_gradcam': """
cam = [[0.1 * (i + j) for j in range(4)] for i in range(4)]
res = dict(regime='smoke', data=str(tmp / 'no-data'), grid=[0, 1], grid_labels=[3, 5],
           grid_cams={m: {'0': [cam, cam]} for m in ('ViT', 'iLLaMA')})
args, kwargs = (res, tmp / 'gradcam.png'), {}
""",
    'illama.workshop.robustness.plot_reliability': """
b = dict(share=[0.0, 0.2, 0.3, 0.5], accuracy=[0.0, 0.3, 0.6, 0.9])
res = dict(n_bins=4, bins={m: {'0': b, '1': b} for m in ('ViT', 'iLLaMA')},
           metrics=dict(ece={m: {'0': 0.05, '1': 0.04} for m in ('ViT', 'iLLaMA')}))
args, kwargs = (res, tmp / 'reliability.png'), {}
""",
    'illama.workshop.robustness.plot_landscape': """
s = dict(grid=[-1.0, 0.0, 1.0], loss=[[3.0, 2.0, 3.0], [2.0, 1.0, 2.0], [3.0, 2.0, 3.0]])
res = dict(surfaces={m: {'0': s} for m in ('ViT', 'iLLaMA')},
           metrics=dict(sharpness={m: {'0': 1.5} for m in ('ViT', 'iLLaMA')}))
args, kwargs = (res, tmp / 'landscape.png'), {}
""",
    'illama.workshop.tables.plot_roadmap': """
cpu = {s.run_id: [dict(status='ok', top1=50.0 + i)] for i, s in enumerate(mod.get_rows('table17'))}
args, kwargs = ({'cpu': cpu, 'smoke': {}},), {}
""",
}

def plot_functions() -> dict[str, tuple[str, str]]:
    "Qualname -> (module, function) of every public module-level `plot_*` function in the package."
    out = {}
    for mod, p in FILES.items():
        for n in ast.parse(p.read_text(), str(p)).body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith('plot_'):
                out[f'{mod}.{n.name}'] = (mod, n.name)
    return out

FOUND = plot_functions()

_RUNNER = '''
import sys
from pathlib import Path
tmp = Path(sys.argv[1])
from {mod} import {fn}
mod = sys.modules[{mod!r}]
{snippet}
out = {fn}(*args, **kwargs)
assert out is not None, "{fn} drew nothing (returned None): give it inputs it can draw"
if isinstance(out, Path): assert out.is_file() and out.stat().st_size > 0, f"{{out}} was not written"
print('PLOT-OK', type(out).__name__)
'''

def _run_plot(qualname: str, tmp: Path) -> subprocess.CompletedProcess:
    mod, fn = FOUND[qualname]
    code = _RUNNER.format(mod=mod, fn=fn, snippet=textwrap.dedent(PLOT_ARGS[qualname]).strip())
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    # a guard against a hang only, far above the few seconds an import and a plot take
    return subprocess.run([sys.executable, '-c', code, str(tmp)], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)

@pytest.fixture(scope='module')
def plot_runs(tmp_path_factory):
    "Run every covered plot function at once, each in its own fresh process (they are independent): qualname -> result."
    todo = [q for q in sorted(FOUND) if q in PLOT_ARGS and not isinstance(PLOT_ARGS[q], Skip)]
    base = tmp_path_factory.mktemp('plots')
    with ThreadPoolExecutor(max(2, min(len(todo), os.cpu_count() or 2))) as ex:
        futs = {q: ex.submit(_run_plot, q, base / q.replace('.', '_')) for q in todo}
        return {q: f.result() for q, f in futs.items()}

@pytest.mark.parametrize('qualname', sorted(FOUND))
def test_plot_function_runs(qualname, plot_runs):
    "Each public plot_* function imports what it uses: called from a fresh process, it draws without a NameError."
    assert qualname in PLOT_ARGS, (f'{qualname} has no entry in PLOT_ARGS (tests/test_structure.py): add a snippet '
                                   f'that builds its arguments, or Skip("reason") if it needs the dataset')
    if isinstance(PLOT_ARGS[qualname], Skip): pytest.skip(PLOT_ARGS[qualname])
    src = PLOT_ARGS[qualname]
    assert 'import illama' not in src and 'from illama' not in src, f'{qualname}: its snippet imports illama itself'
    r = plot_runs[qualname]
    tail = r.stderr[-4000:]
    assert 'NameError' not in r.stderr, f'{qualname} raised a NameError (a missing import in its module?):\n{tail}'
    assert r.returncode == 0, f'{qualname} failed (exit {r.returncode}):\n{tail}'
    assert 'PLOT-OK' in r.stdout

def test_plot_args_not_stale():
    "Every PLOT_ARGS entry names a plot function that exists (a moved or renamed one needs its entry moved too)."
    stale = sorted(set(PLOT_ARGS) - set(FOUND))
    assert not stale, f'PLOT_ARGS entries with no such function in illama/: {stale}; found: {sorted(FOUND)}'

def test_plot_functions_found():
    "The discovery itself finds plot functions (an empty parametrization would pass silently)."
    assert FOUND, 'no public plot_* function found in illama/'

# ---------------------------------------------------------------------------------------------------------------------
# 3. Only the layout module spells the experiments/ layout

LAYOUT = PKG / 'workshop' / 'layout.py'
LAYOUT_DIRS = {'results', 'runs', 'checkpoints', 'tables', 'figures', 'analyses'}
# (module, literal) -> how many `/` joins of that literal the module may hold, each with its reason:
LAYOUT_ALLOWED = {
    # illama-train's default output folder, `Path('runs') / name`: the train CLI's own runs/, not the experiments layout
    ('illama/train.py', 'runs'): 1,
}

def layout_joins(path: Path) -> list[tuple[int, str]]:
    "(line, literal) of every `/` whose left or right side is one of the layout's folder names as a str constant."
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
            for side in (n.left, n.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and side.value in LAYOUT_DIRS:
                    out.append((n.lineno, side.value))
    return out

def test_layout_joins_detects(tmp_path):
    "The detector sees a join on either side, at any depth, and ignores other folder names and plain strings."
    f = tmp_path / 'm.py'
    f.write_text("from pathlib import Path\nx = Path(r) / 'tables' / g / 'f.png'\ny = 'results' / Path(r)\n"
                 "z = Path(r) / 'data'\nw = 'runs/x'\n")
    assert sorted(layout_joins(f)) == [(2, 'tables'), (3, 'results')]

def test_layout_module_exists():
    assert LAYOUT.is_file(), f'{LAYOUT.relative_to(ROOT)} (the experiments/ layout) does not exist'

def test_only_layout_spells_layout():
    "No module but illama/workshop/layout.py joins 'results', 'runs', 'checkpoints', ... into a path with `/`."
    bad = {}
    for p in MODULES:
        if p == LAYOUT: continue
        rel = str(p.relative_to(ROOT))
        hits = layout_joins(p)
        for lit in {s for _, s in hits}:
            n = sum(s == lit for _, s in hits)
            if n > LAYOUT_ALLOWED.get((rel, lit), 0): bad.setdefault(rel, []).extend(h for h in hits if h[1] == lit)
    bad = {m: sorted(set(h)) for m, h in bad.items()}
    assert not bad, ('modules that spell the experiments/ layout (ask illama/workshop/layout.py instead), '
                     f'(line, folder): {bad}')
