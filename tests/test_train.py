"Training: soft-mask callback, resume, DDP equivalence (one machine and two c10d nodes), data layout errors, the CLI."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from fastai.callback.schedule import ParamScheduler
from illama.data import fake_imagenet, scan_folder, find_data
from illama.recipes import step_recipe, lr_scheds
from illama.callbacks import _AlphaProbe
from illama.checkpoints import CKPT, read_checkpoint
from illama.train import TrainConfig, load_tensors, make_learner, train, main

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return fake_imagenet(tmp_path_factory.mktemp('data') / 'ds', n_classes=3, n_train=8, n_val=3)   # 24 images

def _recipe(**kw): return step_recipe('+ soft mask', 'tiny', 'smoke', **{'epochs': 2, 'batch_size': 8, **kw})

def test_callback_drives_alpha_along_schedule(ds, tmp_path):
    rec = _recipe(epochs=3, soft_mask='linear', cutoff_epochs=2)
    t, c = load_tensors(rec, ds, cache=tmp_path)
    learn = make_learner('+ soft mask', 'tiny', rec, t, c)
    probe = _AlphaProbe(); learn.fit(rec.epochs, cbs=[ParamScheduler(lr_scheds(rec)), probe])
    n = len(learn.dls.train)
    assert probe.train_alphas == rec.schedule().curve(3, n)
    assert probe.train_alphas[0] == 1.0 and 0 < probe.train_alphas[n] < 1 and probe.train_alphas[2 * n:] == [0.0] * n
    assert set(probe.valid_alphas) == {0.0}
    assert learn.model.soft_mask_alpha == 0.0

def test_bf16_recipe_trains_under_autocast_on_cpu(ds, tmp_path):
    "bf16 recipes (the cpu and smoke regimes) run the model in bf16 during fit on the CPU, where fastai's own callback"
    " would not autocast; fp32 recipes stay fp32. Predictions reach the loss in fp32."
    for prec, want in (('bf16', torch.bfloat16), ('fp32', torch.float32)):
        rec = _recipe(epochs=1, precision=prec)
        t, c = load_tensors(rec, ds, cache=tmp_path)
        learn = make_learner('+ soft mask', 'tiny', rec, t, c)
        seen, preds = set(), set()
        learn.model.head.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        from fastai.callback.core import Callback
        class Probe(Callback):
            order = 50
            def after_loss(self): preds.add(self.pred.dtype)
        learn.fit(1, cbs=[Probe()])
        assert seen == {want} and preds == {torch.float32}

def test_bf16_products_run_in_float32_where_the_cpu_lacks_bf16_kernels(ds, tmp_path, monkeypatch):
    "Without fast bf16 kernels (an AVX2 CPU), a bf16 fit runs its products as float32 kernels rounded to bf16"
    " (chapter 7): the same run as torch's own bf16 kernels, to bf16's rounding; the record says which ran."
    import illama.kernels as K
    runs = {}
    for native in (True, False):
        monkeypatch.setattr(K, 'native_bf16', lambda: native)
        learn = train(TrainConfig('+ soft mask', data=ds, out=tmp_path / f'native{native}', cache=tmp_path / 'c',
                                  quiet=True, recipe=_recipe(epochs=2, precision='bf16')))
        runs[native] = learn.result, learn.device_mixed_precision.fp32_products
        assert torch._C._len_torch_dispatch_stack() == 0              # left when its batch ended
    (theirs, none), (ours, mode) = runs[True], runs[False]
    assert none is None and mode.products > 0
    assert 'bf16_products' not in theirs and ours['bf16_products'] == 'float32'
    for k in ('train_loss', 'val_loss'): assert abs(ours[k] - theirs[k]) < 0.02 * theirs[k], (k, ours[k], theirs[k])

def test_streaming_pipeline_trains(ds, tmp_path):
    "pipeline='stream' (the paper regime's: decode on the fly, crop the full image) trains and writes its results."
    rec = _recipe(epochs=2, pipeline='stream')
    learn = train(TrainConfig('ViT', data=ds, out=tmp_path / 'run', cache=tmp_path / 'c', quiet=True, recipe=rec))
    r = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert r['config']['recipe']['pipeline'] == 'stream' and r['epochs'] == 2 and r['train_loss'] > 0
    from illama.data import FolderImages
    assert isinstance(learn.dls.train.dataset, FolderImages) and not (tmp_path / 'c').exists()
    from illama.callbacks import RecipeCallback   # fastai's attribute for it; the recipe itself is `train_recipe`
    assert learn.train_recipe is rec and isinstance(learn.recipe, RecipeCallback)
    assert step_recipe('ViT', 'tiny', 'paper').pipeline == 'stream' and step_recipe('ViT', 'tiny', 'cpu').pipeline == 'cache'

def test_resume_continues_identically(ds, tmp_path):
    kw = dict(data=ds, cache=tmp_path / 'c', quiet=True, recipe=_recipe(epochs=3, soft_mask='linear', cutoff_epochs=2.5))
    full = train(TrainConfig('+ soft mask', out=tmp_path / 'full', **kw))
    train(TrainConfig('+ soft mask', out=tmp_path / 'cut', stop_after=2, **kw))
    assert not (tmp_path / 'cut' / 'results.json').exists()
    _, meta, _ = read_checkpoint(tmp_path / 'cut' / CKPT); assert meta['epoch'] == 2
    res = train(TrainConfig('+ soft mask', out=tmp_path / 'cut', **kw))
    assert res.result['resumed_from_epoch'] == 2
    before = meta['history'][-1]['wall_s']   # the two epochs trained before the stop count in the run's wall time
    assert res.result['wall_time_s'] > before > 0 and res.result['history'][-1]['wall_s'] > before
    for k, v in full.model.state_dict().items(): torch.testing.assert_close(v, res.model.state_dict()[k], rtol=0, atol=1e-6)
    for a, b in zip(full.result['history'], res.result['history']):
        assert a['lr'] == pytest.approx(b['lr']) and a['alpha'] == b['alpha'] and a['top1'] == b['top1']
    assert (tmp_path / 'cut' / 'results.json').exists() and (tmp_path / 'cut' / 'results.png').exists()

DDP_SCRIPT = textwrap.dedent('''
    import atexit, json, sys, torch
    import torch.distributed as dist
    from pathlib import Path
    from fastai.torch_core import rank_distrib
    from illama.recipes import step_recipe
    from illama.train import TrainConfig, train
    ds, out, bs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rec = step_recipe('+ soft mask', 'tiny', 'smoke', epochs=1, batch_size=bs, mixup=0, cutmix=0, warmup_epochs=0, precision='fp32')
    learn = train(TrainConfig('+ soft mask', data=ds, out=out, cache=out / 'cache', quiet=True, recipe=rec, augment=False))
    if rank_distrib() == 0:
        torch.save(learn.model.state_dict(), out / 'weights.pt')
        (out / 'metrics.json').write_text(json.dumps({k: learn.result[k] for k in ('top1', 'top5', 'val_loss', 'nproc')}))
    if dist.is_initialized() != (int(sys.argv[4]) > 1): sys.exit('a process group only when there are several')
    atexit._run_exitfuncs()   # what Python runs at exit: a gloo group alive in its teardown can abort the process
    if dist.is_initialized(): sys.exit('the process group outlived the exit handlers')
''')

def test_two_gloo_processes_equal_one(tmp_path):
    """One step: 2 processes × 6 samples (DDP, gloo) end with the same parameters as 1 process × 12 samples; at exit
    the two destroy their process group (a gloo group alive in Python's teardown aborted a CI run)."""
    ds = fake_imagenet(tmp_path / 'ds', n_classes=3, n_train=4, n_val=3)     # 12 train images = one global batch; 9 val
    script = tmp_path / 'ddp.py'; script.write_text(DDP_SCRIPT)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    for n in (1, 2):
        out = tmp_path / f'np{n}'; out.mkdir()
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}', str(script), str(ds), str(out), '12', str(n)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w1, w2 = torch.load(tmp_path / 'np1' / 'weights.pt'), torch.load(tmp_path / 'np2' / 'weights.pt')
    # AdamW's first step moves every weight by about lr = 7.5e-4 whatever its gradient's size, so a rank that did not
    # average its gradients differs by that much. Where a gradient is near Adam's eps (1e-8), g / (|g| + eps) turns the
    # summation order of 6 + 6 vs 12 samples into a visible change: allow 1e-5 (1 % of a step) there, 1e-6 elsewhere.
    diffs = torch.cat([(w1[k].float() - w2[k].float()).abs().flatten() for k in w1 if w1[k].is_floating_point()])
    assert diffs.max() <= 1e-5 and (diffs <= 1e-6).float().mean() >= 0.999, (diffs.max(), (diffs > 1e-6).sum())
    m1, m2 = (json.loads((tmp_path / f'np{n}' / 'metrics.json').read_text()) for n in (1, 2))
    assert m2['nproc'] == 2 and m1['top1'] == pytest.approx(m2['top1']) and m1['top5'] == pytest.approx(m2['top5'])
    assert m1['val_loss'] == pytest.approx(m2['val_loss'], rel=1e-4)   # exact over ranks despite the padded duplicate
    assert sorted(p.name for p in (tmp_path / 'np2').iterdir() if p.suffix != '.pt' and p.name != 'cache') == \
        ['checkpoint.safetensors', 'metrics.json', 'results.json', 'results.png']   # rank 0's lock has gone with it

def test_data_layout_errors(tmp_path):
    with pytest.raises(ValueError, match='is not a folder'): scan_folder(tmp_path / 'missing')
    (tmp_path / 'a' / 'train').mkdir(parents=True)
    with pytest.raises(ValueError, match='has no class folders'): scan_folder(tmp_path / 'a')
    (tmp_path / 'a' / 'train' / 'c1').mkdir()
    with pytest.raises(ValueError, match='has no images'): scan_folder(tmp_path / 'a')
    a = fake_imagenet(tmp_path / 'v', n_classes=1, n_train=1, n_val=1)
    import shutil; shutil.rmtree(a / 'val')
    with pytest.raises(ValueError, match='has no val/ folder'): scan_folder(a)
    ds = fake_imagenet(tmp_path / 'b', n_classes=2, n_train=1, n_val=1)
    (ds / 'val' / 'extra').mkdir()
    with pytest.raises(ValueError, match='same classes as train'): scan_folder(ds)
    with pytest.raises(ValueError, match='ILLAMA_DATA'):
        os.environ['ILLAMA_DATA'] = str(tmp_path / 'nope')
        try: find_data()
        finally: del os.environ['ILLAMA_DATA']

@pytest.mark.parametrize('args,msg', [
    (['--step', 'nope'], 'not a roadmap step'),
    (['--regime', 'gpu'], 'regime'),
    (['--data', '{tmp}/missing'], 'is not a folder'),
    (['--data', '{tmp}'], 'has no train/ folder'),
    (['--batch-size', '30', '--nproc', '4'], 'not divisible by nproc=4'),
    (['--out', '{tmp}/file/sub'], 'cannot be written'),
    (['--resume', '--out', '{tmp}/fresh'], 'does not exist'),
    (['--recipe', 'table16_cifar10', '--data', '{tmp}'], 'pass --download'),
    (['--recipe', 'nope'], 'recipe'),
    (['--precision', 'half'], "precision='half' is not allowed"),
] + ([] if torch.cuda.is_available() else [(['--precision', 'fp16'], "precision='fp16' needs a CUDA device")]))
def test_cli_bad_input_exits_2(ds, tmp_path, capsys, args, msg):
    (tmp_path / 'file').write_text('x')
    args = [a.format(tmp=tmp_path) for a in args]
    if '--data' not in args: args += ['--data', str(ds)]
    if '--out' not in args: args += ['--out', str(tmp_path / 'out')]
    assert main(['--regime', 'smoke', *args] if '--regime' not in args else args) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'fresh').exists()

def test_cli_smoke_run_loss_falls_and_exits_0(ds, tmp_path):
    "The installed command: exit 0, a one-line summary on stdout, nothing on stderr but progress, results.json."
    cmd = [str(Path(sys.executable).with_name('illama-train')), '--step', 'ViT', '--regime', 'smoke', '--data', str(ds),
           '--out', str(tmp_path / 'run'), '--cache', str(tmp_path / 'c'), '--batch-size', '8', '--epochs', '6']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-2])['epochs'] == 6 and r.stdout.splitlines()[-1].startswith('results: ')
    assert 'Warning' not in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    h = res['history']
    assert len(h) == 6 and h[-1]['train_loss'] < h[0]['train_loss'] and h[-1]['valid_loss'] < h[0]['valid_loss']
    assert {'top1', 'top5', 'train_loss', 'val_loss', 'epochs', 'wall_time_s', 'images_per_s', 'seed', 'config',
            'git_rev', 'status'} <= set(res)
    assert res['config']['model']['depth'] == 2 and res['config']['recipe']['epochs'] == 6 and res['images_per_s'] > 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)     # a finished run: nothing to train
    assert again.returncode == 0 and json.loads((tmp_path / 'run' / 'results.json').read_text())['images_per_s'] == \
        pytest.approx(res['images_per_s'])

NODE_SCRIPT_ARGS = ['--step', '+ soft mask', '--regime', 'smoke', '--epochs', '1', '--batch-size', '12']

def test_two_c10d_nodes_train_like_one_process(tmp_path):
    "The multi-node launch a user runs: two torchrun 'nodes' of one process each meet through c10d (gloo) and train."
    import socket
    ds = fake_imagenet(tmp_path / 'ds', n_classes=3, n_train=4, n_val=3)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    base = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc_per_node', '1', '--rdzv-backend',
            'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}', '--rdzv-id', 'illama-test', '-m', 'illama.train',
            *NODE_SCRIPT_ARGS, '--data', str(ds), '--out', str(tmp_path / 'run'), '--cache', str(tmp_path / 'c')]
    nodes = [subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), '\n'.join(o[1][-2000:] for o in outs)
    res = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert res['nproc'] == 2 and res['epochs'] == 1 and sum('results: ' in o[0] for o in outs) == 1   # rank 0 reports

def test_illama_train_nproc_2_trains_one_run(ds, tmp_path):
    "`illama-train --nproc 2`, as a user runs it: two processes, one summary, a record of nproc 2, no launcher notice."
    cmd = [str(Path(sys.executable).with_name('illama-train')), '--nproc', '2', '--step', 'ViT', '--regime', 'smoke',
           '--epochs', '1', '--batch-size', '8', '--data', str(ds), '--out', str(tmp_path / 'run'),
           '--cache', str(tmp_path / 'c')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count('results: ') == 1, r.stderr[-3000:]
    assert 'OMP_NUM_THREADS' not in r.stderr and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert r.stdout.count('epoch 1 ') == 1, r.stdout[-3000:]                      # one epoch line: rank 0's
    assert json.loads((tmp_path / 'run' / 'results.json').read_text())['nproc'] == 2
