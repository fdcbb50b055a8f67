"""Nothing is patched in: our classes' methods are their own class bodies, no other package's class holds one of our
functions, torch's global tables are untouched, chapter 7's kernels are a leaf module, `import illama` stays light."""
import dataclasses, importlib, inspect, json, pkgutil, subprocess, sys, types, warnings
from pathlib import Path
import pytest
import illama

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(f'illama.{m.name}' for m in pkgutil.iter_modules(illama.__path__) if not m.name.startswith('_'))
FOREIGN = ('fastai', 'fastcore', 'timm', 'torch', 'accelerate')
HEAVY = ('papermill', 'selenium', 'smalldocs', 'nbdev', 'fastai')
BARE_PACKAGE = ("import importlib.util, sys, types\n"   # `illama` without running its __init__: a module's own imports
                "pkg = types.ModuleType('illama')\n"
                "pkg.__path__ = list(importlib.util.find_spec('illama').submodule_search_locations)\n"
                "sys.modules['illama'] = pkg\n")

def _run(code: str) -> str:
    "Run `code` in a fresh interpreter in the checkout; its stdout (a failure shows its stderr)."
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def _functions(attr) -> list:
    "The plain functions a class attribute holds: itself, or those in a staticmethod, classmethod or property."
    if isinstance(attr, (staticmethod, classmethod)): attr = attr.__func__
    fs = [attr.fget, attr.fset, attr.fdel] if isinstance(attr, property) else [attr]
    return [f for f in fs if isinstance(f, types.FunctionType)]

def _import_all() -> list:
    "Import every module of the package; the ones that import."
    out = []
    for name in MODULES:
        try: out.append(importlib.import_module(name))
        except Exception: pass   # reported by test_every_module_imports
    return out

def test_found_the_modules():
    assert {'illama.vit', 'illama.kernels', 'illama.models', 'illama.data', 'illama.recipes', 'illama.callbacks',
            'illama.checkpoints', 'illama.train'} <= set(MODULES), MODULES

@pytest.mark.parametrize('name', MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)

def _in_class_body(cls, f) -> bool:
    "Whether function `f` was written inside the body of `cls` (its file, within its lines)."
    made_by_dataclass = f.__code__.co_filename in ('<string>', dataclasses.__file__)   # __init__, __repr__, __eq__ ...
    if dataclasses.is_dataclass(cls) and f.__name__.startswith('__') and made_by_dataclass: return True
    lines, start = inspect.getsourcelines(cls)
    return (f.__code__.co_filename == inspect.getsourcefile(cls)
            and start <= f.__code__.co_firstlineno < start + len(lines))

def _patched_ours() -> list:
    "Attributes of our classes that hold a function not written in that class's body."
    bad = []
    for mod in _import_all():
        for cls in [c for c in vars(mod).values() if isinstance(c, type) and c.__module__ == mod.__name__]:
            own = lambda f: (f.__qualname__.startswith(cls.__qualname__ + '.') and f.__module__ == cls.__module__
                             and _in_class_body(cls, f))
            for name, attr in vars(cls).items():   # torch's TorchDispatchMode wraps a subclass's __torch_dispatch__
                bad += [f'{cls.__module__}.{cls.__qualname__}.{name} is {f.__module__}.{f.__qualname__}'
                        for f in _functions(attr)
                        if not (own(f) or isinstance(w := getattr(f, '__wrapped__', None), types.FunctionType)
                                and own(w))]
    return bad

def _foreign_classes() -> dict:
    "Every class found in the loaded modules of fastai, fastcore, timm, torch and accelerate, by id."
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                # deprecated aliases warn when looked at
        for name, mod in list(sys.modules.items()):
            if mod is None or name.split('.')[0] not in FOREIGN: continue
            out.update({id(v): v for v in list(vars(mod).values()) if isinstance(v, type)})
    return out

def _ours(f) -> bool:
    "Whether `f` comes from our package, by its module or by its source file."
    return ((getattr(f, '__module__', None) or '').startswith('illama')
            or f.__code__.co_filename.startswith(str(ROOT / 'illama')))

def _ours_in_foreign() -> list:
    "Attributes of fastai/timm/torch/accelerate classes that hold one of our functions."
    _import_all()
    return [f'{c.__module__}.{c.__qualname__}.{name} is {f.__module__}.{f.__qualname__}'
            for c in _foreign_classes().values() for name, attr in list(vars(c).items()) for f in _functions(attr)
            if _ours(f)]

def test_our_methods_are_our_class_bodies():
    "Every function held by one of our classes was written in that class's body (no `@patch`, no assignment)."
    bad = _patched_ours()
    assert not bad, bad

def test_no_foreign_class_holds_our_functions():
    "After importing all of illama (the trainer too), no fastai/timm/torch/accelerate class holds an illama function."
    _import_all()
    import torch.nn, timm.models.vision_transformer, fastai.learner, fastai.distributed
    classes = _foreign_classes()
    must = [torch.nn.Module, torch.nn.Linear, torch.nn.RMSNorm, timm.models.vision_transformer.VisionTransformer,
            fastai.learner.Learner, fastai.distributed.DistributedDL]
    assert all(id(c) in classes for c in must) and len(classes) > 1000, len(classes)
    bad = _ours_in_foreign()
    assert not bad, bad

def test_the_checks_see_a_patch():
    "fastcore's `@patch` is caught on a foreign class and on one of ours, even claiming the class's module and name."
    from fastcore.basics import patch
    import timm.models.vision_transformer as vt
    ns = {'__name__': 'illama.vit', 'VisionTransformer': vt.VisionTransformer, 'Illama': illama.Illama}
    exec("def extra_a(self: VisionTransformer): return 1\ndef extra_b(self: Illama): return 2\n", ns)
    patch(ns['extra_a'])
    patch(ns['extra_b'])
    try:
        assert vars(illama.Illama)['extra_b'].__qualname__ == 'Illama.extra_b'   # what a qualname check alone sees
        assert any('VisionTransformer.extra_a' in b for b in _ours_in_foreign())
        assert any('Illama.extra_b' in b for b in _patched_ours())
    finally:
        del vt.VisionTransformer.extra_a
        del illama.Illama.extra_b

def test_import_is_light_and_leaves_torch_alone():
    "`import illama` pulls in no trainer, notebook or docs tooling, and changes none of torch's flop formulas."
    out = _run("import sys, json, torch\n"
               "from torch.utils.flop_counter import flop_registry\n"
               "before = dict(flop_registry)\n"
               "import illama\n"
               "heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
               "same = dict(flop_registry) == before\n"
               "import illama.models, illama.kernels\n"
               "print(json.dumps(dict(heavy=heavy, same=same, after_all=dict(flop_registry) == before)))" % (HEAVY,))
    res = json.loads(out)
    assert res == dict(heavy=[], same=True, after_all=True), res

def test_kernels_is_a_leaf():
    "Chapter 7's `illama.kernels` imports no other illama module, so every model chapter can import it."
    out = _run(BARE_PACKAGE + "import illama.kernels\nprint(sorted(m for m in sys.modules if m.startswith('illama.')))")
    assert out.split() == ["['illama.kernels']"], out
