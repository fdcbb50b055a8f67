"""The analyses of chapters 16-19 end to end, on made-up images and smoke-sized runs: `illama-repro analyses` trains
what is missing through the rows' run ids, writes one result file per analysis, redraws from it, records failures
without losing a result, and feeds the claims."""
import json, subprocess, sys
import pytest, torch
from illama.data import fake_imagenet
from illama.results import read_result, write_result
from illama.checkpoints import read_checkpoint
from illama.workshop.layout import analysis_path, checkpoint_dir, result_path
from illama.workshop.claims import render_claims
from illama.workshop.analyses import model_spec, trained_checkpoint, load_model, checkpoint_done
from illama.workshop.repro import run_analysis, run_analyses
from illama.workshop.runner import ALLOW_DIRTY

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return fake_imagenet(tmp_path_factory.mktemp('data') / 'ds', n_classes=3, n_train=11, n_val=4)

@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv('ILLAMA_CACHE', str(tmp_path / 'cache'))   # decoded images of the made-up data stay here
    monkeypatch.setenv(ALLOW_DIRTY, '1')      # results go to temporary folders, from whatever tree runs the tests

def test_a_dirty_tree_refuses_an_analysis_and_marks_one_allowed(tmp_path, monkeypatch):
    from illama.workshop import runner
    monkeypatch.delenv(ALLOW_DIRTY)
    monkeypatch.setattr(runner, 'git_revision', lambda: 'abc1234-dirty')
    _records(tmp_path)
    with pytest.raises(runner.DirtyTree, match='--allow-dirty'): run_analysis('table4', 'smoke', root=tmp_path)
    assert not analysis_path(tmp_path, 'smoke', 'table4').exists()
    out = run_analysis('table4', 'smoke', root=tmp_path, allow_dirty=True, log=lambda s: None)
    assert out['status'] == 'ok'
    a = json.loads(analysis_path(tmp_path, 'smoke', 'table4').read_text())   # its revision is the real tree's
    analysis_path(tmp_path, 'smoke', 'table4').write_text(json.dumps(dict(a, git_rev='abc1234-dirty')))
    claims = render_claims('smoke', tmp_path)
    line = next(l for l in claims.splitlines() if l.startswith('| Table 4: the soft mask lowers the training loss'))
    assert ']†' in line, line

def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'illama.workshop.repro', *args], capture_output=True, text=True)

def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, says in ((['analyses', '--only', 'shape_bias'], "analysis='shape_bias' is not allowed"),
                       (['analyses', '--llama', str(tmp_path / 'none')], 'does not exist'),
                       (['table17', '--only', 'rank'], "--only and --llama go with the 'analyses' target")):
        r = _cli(*args, '--root', str(tmp_path / 'exp'))
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'exp').exists()

def _records(root, regime='smoke'):
    for label, losses in (('iLLaMA', (1.30, 0.90)), ('iLLaMA, no soft mask', (1.40, 1.00))):
        s = model_spec(label)
        for seed in (0, 1):
            write_result(result_path(root, regime, s, seed), dict(run_id=s.run_id, seed=seed, status='ok', top1=60.0,
                         train_loss=losses[0] + seed / 100, val_loss=losses[1], history=[]))

def test_table4_from_records_then_redrawn_without_computing(tmp_path):
    _records(tmp_path)
    r = _cli('analyses', '--only', 'table4', '--regime', 'smoke', '--root', str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = analysis_path(tmp_path, 'smoke', 'table4')
    a = json.loads(res.read_text())
    assert a['status'] == 'ok' and a['metrics']['train_loss']['iLLaMA'] == {'0': 1.3, '1': 1.31}
    assert (tmp_path / 'runs' / 'smoke' / 'analyses' / 'table4.ipynb').exists()          # ran through its chapter
    for f in ('table4.md', 'table4_curves.png'): assert (tmp_path / 'tables' / 'smoke' / f).exists()
    claims = (tmp_path / 'tables' / 'smoke' / 'claims.md').read_text()
    assert '| Table 4: the soft mask lowers the training loss | `train_loss`: iLLaMA − iLLaMA, no soft mask | -0.035 | ' \
           '-0.100 [' in claims
    mtime = res.stat().st_mtime_ns
    (tmp_path / 'tables' / 'smoke' / 'table4.md').unlink()
    r = _cli('analyses', '--only', 'table4', '--regime', 'smoke', '--root', str(tmp_path))
    assert r.returncode == 0 and 'skip analysis table4: done; redrawn from its result' in r.stdout
    assert res.stat().st_mtime_ns == mtime and (tmp_path / 'tables' / 'smoke' / 'table4.md').exists()

def test_a_failure_is_recorded_and_never_replaces_a_result(tmp_path):
    said = []
    assert run_analyses(['calibration'], 'smoke', seeds=[0], root=tmp_path, data=tmp_path / 'no-data',
                        log=said.append) == 1
    failed = json.loads(analysis_path(tmp_path, 'smoke', 'calibration').read_text())
    assert failed['status'] == 'failed' and 'no-data' in failed['error'] and said[-1].startswith('FAILED')
    assert '| failed: ' in render_claims('smoke', tmp_path)                             # the claims say so
    good = dict(analysis='calibration', regime='smoke', status='ok', seeds=[0], n_bins=15, n_images=1,
                metrics=dict(ece={}, top1={}, overconfidence={}), bins={})
    analysis_path(tmp_path, 'smoke', 'calibration').write_text(json.dumps(good))
    assert run_analyses(['calibration'], 'smoke', seeds=[0], root=tmp_path, data=tmp_path / 'no-data',
                        force=True, log=said.append) == 1
    assert json.loads(analysis_path(tmp_path, 'smoke', 'calibration').read_text()) == good   # kept

def test_rank_trains_what_is_missing_and_retrains_lost_weights_identically(ds, tmp_path):
    out = run_analysis('rank', 'smoke', seeds=[0], data=ds, root=tmp_path, n_images=4)
    assert out['status'] == 'ok' and set(out['metrics']['rank_l1h1']) == {'ViT', 'iLLaMA'}
    assert out['tokens'] == 17 and len(out['per_model']['iLLaMA']['0']['rank']) == 2      # smoke: 16 patches + cls
    for f in ('fig4_rank.md', 'fig4_rank.png', 'fig4_rank_layers.png'): assert (tmp_path / 'tables' / 'smoke' / f).exists()
    spec = model_spec('iLLaMA')
    rec = result_path(tmp_path, 'smoke', spec, 0)
    assert read_result(rec)['status'] == 'ok'                                            # trained by its row (run_row)
    ck = checkpoint_dir(tmp_path, 'smoke', spec, 0) / 'checkpoint.safetensors'
    before, record = read_checkpoint(ck)[0], rec.read_text()
    ck.unlink()                                                                           # the weights are lost
    said = []
    assert trained_checkpoint('iLLaMA', 'smoke', 0, tmp_path, ds, log=said.append) == ck and checkpoint_done(ck)
    assert said[0].startswith('retrain + soft mask (seed 0): its record is in results/')
    after = read_checkpoint(ck)[0]
    for k in (k for k in before if k.startswith('model.')): assert torch.equal(before[k], after[k]), k   # deterministic
    assert rec.read_text() == record                                                      # the record is untouched
    assert load_model(ck).cfg.cls_pos == 'last'

def test_weight_selection_trains_from_the_selected_weights(ds, tmp_path):
    from safetensors.torch import save_file, load_file
    g, w, h = torch.Generator().manual_seed(0), 128, 384
    def t(*s): return torch.randn(*s, generator=g).half()
    llama = {'model.norm.weight': t(w), 'model.embed_tokens.weight': t(32, w)}
    for j in range(3):
        L = f'model.layers.{j}.'
        llama.update({L + 'input_layernorm.weight': t(w), L + 'post_attention_layernorm.weight': t(w),
                      **{f'{L}self_attn.{n}_proj.weight': t(w, w) for n in 'qkvo'}, L + 'mlp.gate_proj.weight': t(h, w),
                      L + 'mlp.up_proj.weight': t(h, w), L + 'mlp.down_proj.weight': t(w, h)})
    save_file(llama, str(tmp_path / 'llama.safetensors'))
    out = run_analysis('weight_selection', 'smoke', seeds=[0], data=ds, root=tmp_path, llama=tmp_path / 'llama.safetensors')
    top = out['metrics']['top1']
    assert set(top) == {'iLLaMA + weight selection', 'iLLaMA'} and 0 <= top['iLLaMA + weight selection']['0'] <= 100
    assert out['selection']['layers'] == [0, 1] and out['selection']['llama_layers'] == 3
    folder = tmp_path / 'checkpoints' / 'smoke' / 'analyses' / 'weight-selection__seed0'
    init = load_file(str(folder / 'init.safetensors'))
    e = torch.arange(0, w, 2)
    assert torch.equal(init['blocks.1.attn.proj.weight'], llama['model.layers.1.self_attn.o_proj.weight'][e][:, e].float())
    assert read_checkpoint(folder / 'checkpoint.safetensors')[1]['epoch'] == 6           # trained from it
    md = (tmp_path / 'tables' / 'smoke' / 'table18.md').read_text()
    assert '| with weight selection | 74.5 | 79.9 | 81.4 |' in md and 'llama.safetensors' in md

def test_without_a_checkpoint_weight_selection_says_not_run(tmp_path):
    assert run_analyses(['weight_selection'], 'smoke', root=tmp_path, log=lambda s: None) == 0
    a = json.loads(analysis_path(tmp_path, 'smoke', 'weight_selection').read_text())
    assert a['status'] == 'not run' and 'no model hub' in a['note']
    assert 'not run: needs a LLaMA checkpoint' in render_claims('smoke', tmp_path)
