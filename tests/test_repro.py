"illama-repro (issue 4): rows run through their chapters with papermill, results, skips, failures, tables, CLI errors."
import json, time
from pathlib import Path
import pytest
from illama.data import fake_imagenet
from illama.repro import main, run_row, get_rows, render_table, write_tables, result_path, run_notebook_path, TABLES

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return fake_imagenet(tmp_path_factory.mktemp('data') / 'ds', n_classes=3, n_train=8, n_val=3)

def test_a_row_runs_through_its_chapter_then_is_skipped(ds, tmp_path):
    spec = get_rows('table1', ['causal + PS [cls]'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1)
    assert r['status'] == 'ok', r.get('error')
    assert r['table'] == 'table1' and r['step'] == '+ PS [cls]' and r['epochs'] == 1 and 0 <= r['top1'] <= 100
    assert r['config']['model']['cls_pos'] == 'last' and r['config']['model']['attn'] == 'causal'
    nb = run_notebook_path(tmp_path, 'smoke', spec, 0)
    assert nb.exists() and nb.stat().st_size < 400_000                       # executed chapter kept, small
    mtime = result_path(tmp_path, 'smoke', spec, 0).stat().st_mtime
    t0 = time.time(); r2 = run_row(spec, 'smoke', 0, tmp_path, data=ds, epochs=1); assert time.time() - t0 < 2
    assert r2 == r and result_path(tmp_path, 'smoke', spec, 0).stat().st_mtime == mtime   # finished rows are skipped
    assert '| causal + PS [cls] | 71.9 | 80.6 |' in render_table('table1', 'smoke', tmp_path)

def test_row_overrides_reach_the_recipe():
    from illama.repro import row_recipe
    sm = row_recipe(get_rows('table3', ['linear 25'])[0], 'cpu')
    assert sm.soft_mask == 'linear' and sm.cutoff_epochs == pytest.approx(25 / 300 * sm.epochs)
    assert sm.warmup_epochs == pytest.approx(50 / 300 * sm.epochs)
    mix = [row_recipe(s, 'paper') for s in TABLES['table5']]
    assert [(r.mixup, r.cutmix) for r in mix] == [(0.8, 1.0), (0.5, 0.4), (0.3, 0.3), (0.2, 0.2), (0.1, 0.1)]
    # rows that train the same thing share one run: Table 5's tuned pair is Table 17's '+ data aug.', as is Table 3's baseline
    aug = get_rows('table17', ['+ data aug.'])[0].run_id
    assert [s.run_id == aug for s in TABLES['table5']] == [False, False, False, False, True]
    assert TABLES['table3'][0].run_id == aug and len({s.run_id for s in TABLES['table5']}) == 5
    assert row_recipe(TABLES['beyond'][0], 'cpu').model['mask_kind'] == 'additive'

def test_a_failed_row_is_recorded_and_shown(tmp_path):
    spec = get_rows('table17', ['ViT'])[0]
    r = run_row(spec, 'smoke', 0, tmp_path, data=tmp_path / 'no-such-data', epochs=1)
    assert r['status'] == 'failed' and 'no-such-data' in r['error']
    assert '**failed**' in render_table('table17', 'smoke', tmp_path)

def test_tables_rebuild_from_results_without_training(tmp_path, capsys):
    spec = get_rows('table17', ['+ LPE'])[0]
    for seed, acc in ((0, 61.0), (1, 63.0)):
        p = result_path(tmp_path, 'cpu', spec, seed); p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(dict(run_id=spec.run_id, seed=seed, status='ok', top1=acc, train_loss=1.2,
                                     wall_time_s=900, git_rev='abc1234')))
    t0 = time.time()
    assert main(['tables', '--regime', 'cpu', '--root', str(tmp_path)]) == 0
    assert time.time() - t0 < 10
    md = (tmp_path / 'tables' / 'cpu' / 'table17.md').read_text()
    assert '| + LPE | 73.2 | 81.2 | 3.531 | 2.839 | 62.0 ± 1.4 | 1.200 ± 0.000 | 0,1 | 15.0 ± 0.0 | ok |' in md
    assert {p.name for p in (tmp_path / 'tables' / 'cpu').glob('*.md')} == {f'{t}.md' for t in TABLES} | {'claims.md'}
    claims = (tmp_path / 'tables' / 'cpu' / 'claims.md').read_text()   # one row with two seeds: sigma = sd(61, 63)
    assert 'σ = 1.41 points' in claims and '| RoPE + LPE beats RoPE alone | `+ LPE` − `+ LLaMA P.E. (RoPE)` | +0.6 | ? | – | 2 / 0 | not run |' in claims

@pytest.mark.parametrize('args, msg', [
    (['table4'], "table='table4' is not allowed"),
    (['table17', '--rows', 'ViT-22B'], "row 'ViT-22B' is not in table17"),
    (['table17', '--regime', 'gpu'], "regime='gpu' is not allowed"),
    (['table17', '--nproc', '0'], '--nproc=0'),
    (['table17', '--data', '/no/such/folder'], "--data='/no/such/folder' is not a folder"),
    (['table17', 'table1', '--rows', 'ViT'], '--rows needs exactly one table'),
])
def test_cli_errors_exit_2(args, msg, capsys, tmp_path):
    assert main(args + ['--root', str(tmp_path)]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / 'results').exists()    # nothing half-written
