"illama-repro: rows run through their chapters with papermill; skips, failures, --force, locks; the tables rebuild."
import os, subprocess, sys
from pathlib import Path
import pytest
from illama.data import fake_imagenet
from illama.results import read_result, write_result
from illama.workshop.rows import TABLES, get_rows
from illama.workshop.tables import render_table
from illama.workshop.layout import result_path, run_notebook_path, checkpoint_dir
from illama.workshop import runner
from illama.workshop.runner import ALLOW_DIRTY, run_lock, run_row
from illama.workshop.repro import main

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return fake_imagenet(tmp_path_factory.mktemp('data') / 'ds', n_classes=3, n_train=11, n_val=3)   # 33 >= one batch of 32

@pytest.fixture(autouse=True)
def allow_dirty(monkeypatch):
    "These tests record into temporary folders from whatever tree runs them, committed or not (see the dirty tests)."
    monkeypatch.setenv(ALLOW_DIRTY, '1')

def test_a_dirty_tree_refuses_to_record_and_names_the_flag(ds, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ALLOW_DIRTY)
    monkeypatch.setattr(runner, 'git_revision', lambda: 'abc1234-dirty')     # made up: the repository stays as it is
    args = ['table17', '--rows', 'ViT', '--regime', 'smoke', '--epochs', '1', '--data', str(ds), '--root', str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('illama-repro: error: the package or notebooks have uncommitted changes (revision abc1234-dirty)')
    assert '--allow-dirty' in err and not list(tmp_path.rglob('*.json')) and not list(tmp_path.rglob('*.ipynb'))
    with pytest.raises(runner.DirtyTree, match='allow_dirty=True'):
        runner.train_row('table17', 'ViT', 'smoke', data=ds, epochs=1, root=tmp_path)

def test_allow_dirty_records_and_every_table_marks_it(ds, tmp_path, monkeypatch):
    "With the flag the row is recorded (its chapter's kernel sees the flag); its seed and the claims that use it get a †."
    monkeypatch.delenv(ALLOW_DIRTY)
    monkeypatch.setattr(runner, 'git_revision', lambda: 'abc1234-dirty')
    spec = get_rows('table17', ['+ LLaMA FFN'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1, allow_dirty=True)
    assert r['status'] == 'ok', r.get('error')
    assert ALLOW_DIRTY not in os.environ                                       # set only while the chapter ran
    rec = read_result(result_path(tmp_path, 'smoke', spec, 0))
    write_result(result_path(tmp_path, 'smoke', spec, 0), dict(rec, git_rev='abc1234-dirty'))  # the kernel's own tree
    vit = get_rows('table17', ['ViT'])[0]
    for seed, acc in ((0, 40.0), (1, 42.0)):
        write_result(result_path(tmp_path, 'smoke', vit, seed), dict(run_id=vit.run_id, seed=seed, status='ok', top1=acc,
                     git_rev='abc1234'))
    assert main(['tables', '--regime', 'smoke', '--root', str(tmp_path)]) == 0
    t17 = (tmp_path / 'tables' / 'smoke' / 'table17.md').read_text()
    assert '| + LLaMA FFN |' in t17 and '| 0† |' in t17 and '† recorded from a tree with uncommitted changes' in t17
    claims = (tmp_path / 'tables' / 'smoke' / 'claims.md').read_text()
    line = next(l for l in claims.splitlines() if l.startswith('| 6 | SwiGLU (LLaMA FFN) helps |'))
    assert ']†' in line, line

def test_a_row_runs_through_its_chapter_then_is_skipped_then_forced(ds, tmp_path):
    spec = get_rows('table1', ['causal + PS [cls]'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1)
    assert r['status'] == 'ok', r.get('error')
    assert r['table'] == 'table1' and r['step'] == '+ PS [cls]' and r['epochs'] == 1 and 0 <= r['top1'] <= 100
    assert r['config']['model']['cls_pos'] == 'last' and r['config']['model']['attn'] == 'causal'
    nb = run_notebook_path(tmp_path, 'smoke', spec, 0)
    assert nb.exists() and nb.stat().st_size < 400_000                       # executed chapter kept, small
    res = result_path(tmp_path, 'smoke', spec, 0)
    mtime, said = res.stat().st_mtime_ns, []
    assert run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1, log=said.append) == r
    assert res.stat().st_mtime_ns == mtime and said[-1].endswith('done')    # finished rows are skipped
    assert '| causal + PS [cls] | 71.9 | 80.6 |' in render_table('table1', 'smoke', tmp_path)
    forced = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1, force=True)
    assert forced['status'] == 'ok' and forced['resumed_from_epoch'] == 0   # --force retrains from scratch

def test_a_failed_row_is_recorded_and_shown(ds, tmp_path):
    spec = get_rows('table17', ['ViT'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=2, timeout=1)
    assert r['status'] == 'failed' and r['error'].startswith('timed out')
    assert '**failed**: timed out' in render_table('table17', 'smoke', tmp_path)

def test_bad_input_found_by_a_run_is_an_error_not_a_failed_run(tmp_path):
    "Data the chapter cannot read, before any epoch: a ValueError for the caller, and no record of a failed run."
    spec = get_rows('table17', ['ViT'])[0]
    with pytest.raises(ValueError, match='no-such-data'):
        run_row(spec, 'smoke', 0, tmp_path, data=tmp_path / 'no-such-data', epochs=1)
    assert not result_path(tmp_path, 'smoke', spec, 0).exists()

def test_a_failed_rerun_keeps_the_finished_result(ds, tmp_path):
    "`--force` that fails (here: a timeout) reports the failure and leaves the finished result as it was."
    spec = get_rows('table17', ['ViT'])[0]
    good = write_result(result_path(tmp_path, 'smoke', spec, 0), dict(run_id=spec.run_id, seed=0, status='ok', top1=62.5))
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=2, force=True, timeout=1)
    assert r['status'] == 'failed' and r['error'].startswith('timed out')
    assert read_result(good) == dict(run_id=spec.run_id, seed=0, status='ok', top1=62.5)

def test_a_timeout_says_so(ds, tmp_path):
    spec = get_rows('table17', ['ViT'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=2, timeout=1)
    assert r['status'] == 'failed' and r['error'] == 'timed out: a cell ran longer than --timeout=1 s'

def test_a_second_process_waits_for_the_first(ds, tmp_path):
    "While one process holds a run's lock, an identical illama-repro run waits, says who holds it, then finds it done."
    import select
    spec = get_rows('table17', ['ViT'])[0]
    args = ['table17', '--rows', 'ViT', '--regime', 'smoke', '--epochs', '1', '--data', str(ds), '--root', str(tmp_path)]
    with run_lock(checkpoint_dir(tmp_path.resolve(), 'smoke', spec, 0), log=lambda s: None):   # this test: the first
        second = subprocess.Popen([sys.executable, '-m', 'illama.workshop.repro', *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
        said = ''
        while 'waiting:' not in said and select.select([second.stdout], [], [], 300)[0]:
            line = second.stdout.readline()
            if not line: break                                                        # it exited without waiting
            said += line
        assert f'waiting: table17 / ViT / seed 0 is being trained by process {os.getpid()}' in said, said
        assert second.poll() is None                                                  # still blocked on the lock
        write_result(result_path(tmp_path, 'smoke', spec, 0), dict(run_id=spec.run_id, seed=0, status='ok', top1=40.0,
                     train_loss=1.0, wall_time_s=60, git_rev='abc1234'))             # the first run finishes
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    assert 'skip table17 / ViT / seed 0: done' in out and 'run  table17' not in said + out

def test_tables_rebuild_from_results_without_training(tmp_path, capsys):
    spec = get_rows('table17', ['+ LPE'])[0]
    for seed, acc in ((0, 61.0), (1, 63.0)):
        write_result(result_path(tmp_path, 'cpu', spec, seed), dict(run_id=spec.run_id, seed=seed, status='ok', top1=acc,
                     train_loss=1.2, wall_time_s=900, git_rev='abc1234'))
    assert main(['tables', '--regime', 'cpu', '--root', str(tmp_path)]) == 0
    md = (tmp_path / 'tables' / 'cpu' / 'table17.md').read_text()
    assert '| + LPE | 73.2 | 81.2 | 3.531 | 2.839 | 62.0 ± 1.4 | 1.200 ± 0.000 | 0,1 | 15.0 ± 0.0 | ok |' in md
    assert {p.name for p in (tmp_path / 'tables' / 'cpu').glob('*.md')} == {f'{t}.md' for t in TABLES} | {'claims.md'}
    claims = (tmp_path / 'tables' / 'cpu' / 'claims.md').read_text()   # one row with two seeds: sigma = sd(61, 63)
    assert 'σ = 1.41 points (1 df)' in claims
    assert '| 10 | RoPE + LPE beats RoPE alone | +0.6 | ? | 2 / 0 | not run |' in claims
    assert (tmp_path / 'tables' / 'cpu' / 'claims_forest.png').exists() is False     # no claim has an interval yet

def test_committed_tables_rebuild_byte_for_byte(tmp_path):
    "`illama-repro tables` on a copy of the committed results writes exactly the committed tables."
    import shutil
    exp = ROOT / 'experiments'
    shutil.copytree(exp / 'results', tmp_path / 'results')
    assert main(['tables', '--regime', 'cpu', '--root', str(tmp_path)]) == 0
    for p in sorted((exp / 'tables' / 'cpu').glob('*.md')):
        assert (tmp_path / 'tables' / 'cpu' / p.name).read_text() == p.read_text(), p.name
    assert (tmp_path / 'tables' / 'cpu' / 'claims_forest.png').stat().st_size > 0
