"Every notebook in nbs/ runs top to bottom under nbdev_test (its cells are the chapter's tests)."
import shutil, subprocess, sys
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
    "nbdev_export, run in a copy of the project, writes exactly the committed package: it is generated from the notebooks."
    copy = tmp_path / 'proj'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns('.venv', '.git', '_docs', '_proc', 'experiments', 'runs',
                                                              '__pycache__', '*.egg-info'))
    subprocess.run([str(Path(sys.executable).with_name('nbdev_export'))], cwd=copy, check=True, capture_output=True)
    mine = {p.relative_to(ROOT / 'illama'): p.read_text() for p in (ROOT / 'illama').rglob('*.py')}
    made = {p.relative_to(copy / 'illama'): p.read_text() for p in (copy / 'illama').rglob('*.py')}
    assert sorted(map(str, made)) == sorted(map(str, mine))
    assert [str(k) for k in made if made[k] != mine[k]] == []
