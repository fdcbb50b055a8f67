"Every notebook in nbs/ runs top to bottom under nbdev_test (its cells are the chapter's tests)."
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p.name for p in (ROOT / 'nbs').glob('*.ipynb'))

def test_found_notebooks():
    assert 'index.ipynb' in NBS and '00_vit.ipynb' in NBS, NBS

@pytest.mark.parametrize('nb', NBS)
def test_notebook(nb):
    exe = Path(sys.executable).with_name('nbdev_test')
    r = subprocess.run([str(exe), '--path', f'nbs/{nb}', '--do_print'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]

def test_export_is_in_step_with_notebooks(tmp_path):
    "nbdev_export must leave illama/ unchanged: the package is generated from the notebooks."
    before = {p.name: p.read_text() for p in (ROOT / 'illama').glob('*.py')}
    exe = Path(sys.executable).with_name('nbdev_export')
    subprocess.run([str(exe)], cwd=ROOT, check=True, capture_output=True)
    after = {p.name: p.read_text() for p in (ROOT / 'illama').glob('*.py')}
    assert before == after, [k for k in after if before.get(k) != after[k]]
