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
    assert not (split := split_docstrings(tree)), f'{path.name}: docstrings cut short by a second statement: {split}'
    assert not (bare := undocumented(tree)), f'{path.name}: public functions or classes without a docstring: {bare}'

def _is_str(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(getattr(stmt, 'value', None), ast.Constant) \
        and isinstance(stmt.value.value, str)

def split_docstrings(tree) -> list[str]:
    "Functions and classes whose body opens with two bare strings: the second is a separate statement, not the docstring."
    return [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and len(n.body) > 1 and _is_str(n.body[0]) and _is_str(n.body[1])]

def undocumented(tree) -> list[str]:
    "Names in the module's `__all__` that are functions or classes without a docstring (their API block is empty)."
    public = {e.value for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__'
              for t in n.targets) for e in getattr(n.value, 'elts', [])}
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in public
            and not ast.get_docstring(n)]

def test_docstring_checks_can_fail():
    bad = ast.parse('__all__ = ["f", "g"]\ndef f():\n    "one half "\n    "the other"\ndef g(): pass\ndef _h(): pass')
    assert split_docstrings(bad) == ['f'] and undocumented(bad) == ['g']

# ---------------------------------------------------------------------------------------------------------------------
# ruff's F rules (pyflakes) over the package, with the config in pyproject.toml: no undefined name, no unused import

import json, os, re, shutil, subprocess, sys

ROOT = PKG.parent

def _ruff() -> list[str]:
    "ruff beside this interpreter (the virtualenv's), else `python -m ruff`."
    exe = Path(sys.executable).parent / 'ruff'
    if exe.is_file() and os.access(exe, os.X_OK): return [str(exe)]
    return [sys.executable, '-m', 'ruff']

def test_ruff():
    "`ruff check illama` passes: no undefined name (a missing import), no unused import, nothing else of pyflakes."
    r = subprocess.run(_ruff() + ['check', '--no-cache', '--output-format', 'concise', 'illama'], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 and 'No module named ruff' in r.stderr and not shutil.which('ruff'):
        pytest.fail('ruff is not installed: it is in settings.ini `dev_requirements` (pip install ruff)')
    assert r.returncode == 0, f'ruff check illama (exit {r.returncode}); fix these in the notebooks:\n{r.stdout}{r.stderr}'

# ---------------------------------------------------------------------------------------------------------------------
# The chapters' rhythm: an exported cell is followed by a cell that shows or tests what it defines

NBS = sorted((ROOT / 'nbs').glob('*.ipynb'))
_EXPORT = re.compile(r'^#\s*\|\s*export(i|s)?\b')
_HIDE = re.compile(r'^#\s*\|\s*hide\b')
_MAGIC = re.compile(r'^[%!].*$', re.M)

def _tree(src: str):
    try: return ast.parse(_MAGIC.sub('', src))
    except SyntaxError: return None

def defined_names(src: str) -> set[str]:
    "The names a cell defines at its top level: functions, classes, assignments."
    t, out = _tree(src), set()
    for n in (t.body if t else []):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.add(n.name)
        elif isinstance(n, ast.Assign): out |= {x.id for tg in n.targets for x in ast.walk(tg) if isinstance(x, ast.Name)}
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name): out.add(n.target.id)
    return out

def used_names(src: str) -> set[str]:
    "The names and attributes a cell mentions."
    t = _tree(src)
    if t is None: return set()
    return {x.id for x in ast.walk(t) if isinstance(x, ast.Name)} | \
           {x.attr for x in ast.walk(t) if isinstance(x, ast.Attribute)}

def directives(src: str) -> list[str]:
    "A cell's nbdev directives: its leading `#|` lines (a `#| hide` inside a string further down is not one)."
    out = []
    for line in src.splitlines():
        if not line.strip(): continue
        if not line.lstrip().startswith('#'): break
        if line.lstrip().startswith('#|'): out.append(line.strip())
    return out

def _is(pattern, src: str) -> bool: return any(pattern.match(d) for d in directives(src))

def unfollowed(sources: list[str]) -> tuple[int, list[str]]:
    "How many export cells define names, and the first lines of those not followed by a (shown) cell that uses one."
    n, bad = 0, []
    for i, src in enumerate(sources):
        if not _is(_EXPORT, src) or not (d := defined_names(src)): continue
        n += 1
        nxt = sources[i + 1] if i + 1 < len(sources) else None
        if nxt is None or _is(_EXPORT, nxt) or _is(_HIDE, nxt) or not d & used_names(nxt):
            first = next((l for l in src.splitlines() if l.strip() and not l.startswith('#|')), src[:80])
            bad.append(f'cell {i}: {first[:100]}')
    return n, bad

def test_unfollowed_rule():
    "The rule itself: shown, hidden, export-after-export, and a cell that uses none of the names."
    cells = ['#| export\ndef f(): pass', 'f()',                  # followed
             '#| exporti\nx = 1', '#| hide\nx',                  # hidden: not shown
             '#| export foo\nclass C: pass', '#| export\ny = 2',  # export after export; then the last cell
             '#| export\nimport os', 'os',                      # defines nothing: not counted
             '#| export\nz = 3', "assert '#| hide' not in str(z)"]  # a directive in a string is not one
    n, bad = unfollowed(cells)
    assert n == 5 and [b.split(':')[0] for b in bad] == ['cell 2', 'cell 4', 'cell 5'], (n, bad)

@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_rhythm(nb):
    "At least 80 % of a notebook's exported cells that define names are followed by a cell that shows or tests them."
    cells = json.loads(nb.read_text())['cells']
    sources = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
    n, bad = unfollowed(sources)
    if not n: return
    ratio = (n - len(bad)) / n
    assert ratio >= 0.8, (f'{nb.name}: only {n - len(bad)}/{n} ({ratio:.0%}) exported cells are followed by a cell that '
                          f'uses what they define; not followed (code cell index: first line):\n' + '\n'.join(bad))

# ---------------------------------------------------------------------------------------------------------------------
# walls of text: a reader skims a page by its paragraphs, so none of them (a bullet counts as one) runs on for more
# than PARAGRAPH_WORDS words; a longer thought is split where it turns

PARAGRAPH_WORDS = 170

def long_paragraphs(md: str, limit: int = PARAGRAPH_WORDS) -> list[str]:
    "The paragraphs and bullets of markdown `md` (code blocks left out) with more than `limit` words: their openings."
    prose = re.sub(r'```.*?```', '', md, flags=re.S)
    parts = re.split(r'\n\s*\n|\n(?=\s*(?:[*-]|\d+\.) )', prose)
    return [' '.join(p.split()[:8]) + ' ...' for p in parts if len(p.split()) > limit]

def test_long_paragraphs_found():
    para = ' '.join(['word'] * 200)
    test = f"# t\n\nshort one\n\n- {para}\n- short bullet\n\n```\n{para}\n```"
    assert len(long_paragraphs(test)) == 1 and not long_paragraphs('- a\n- b\n\nc d e')

@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_no_wall_of_text(nb):
    cells = json.loads(nb.read_text())['cells']
    walls = [w for c in cells if c['cell_type'] == 'markdown' for w in long_paragraphs(''.join(c['source']))]
    assert not walls, f"{nb.name}: paragraphs over {PARAGRAPH_WORDS} words (split them): {walls}"
