"""The exported code reads like the model chapters: lines of at most 120 characters, one statement per line (no `;`),
functions under 40 lines. The notebooks are the source: a failure here names the module, fix it in its notebook."""
import ast, io, tokenize
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'illama'
MODULES = sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py')

@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_module_style(path):
    src = path.read_text()
    tree = ast.parse(src)
    generated = set()   # nbdev writes these: the module docstring (the chapter's summary) and `__all__`
    for n in tree.body:
        doc = isinstance(n, ast.Expr) and isinstance(getattr(n, 'value', None), ast.Constant) and n.lineno == 1
        if doc or (isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in n.targets)):
            generated |= set(range(n.lineno, n.end_lineno + 1))
    long = [i for i, l in enumerate(src.splitlines(), 1) if len(l) > 120 and i not in generated]
    tokens = tokenize.generate_tokens(io.StringIO(src).readline)
    semis = [t.start[0] for t in tokens if t.type == tokenize.OP and t.string == ';']
    big = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 40]
    assert not long, f'{path.name}: lines over 120 characters: {long}'
    assert not semis, f'{path.name}: statements joined with ";" on lines {semis}'
    assert not big, f'{path.name}: functions over 40 lines: {big}'
