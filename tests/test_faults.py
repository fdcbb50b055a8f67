"""Bad input and faults, as a user meets them: every case exits 2 (or returns a clear error) with one message naming the
parameter or file, shows no traceback, and leaves every earlier result exactly as it was."""
import configparser, hashlib, json, shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from illama.data import fake_imagenet
from illama.results import read_result, write_result, load_results
from illama.recipes import step_recipe
from illama.checkpoints import load_init, read_checkpoint, CKPT
from illama.train import main as train_main
from illama.workshop.repro import main as repro_main
from illama.workshop.rows import get_rows
from illama.workshop.tables import render_table
from illama.workshop.layout import result_path, results_dir

SMOKE = ['--regime', 'smoke', '--epochs', '1', '--batch-size', '8']
_ini = configparser.ConfigParser()
_ini.read(Path(__file__).parents[1] / 'settings.ini')
ENTRY_POINTS = dict(e.split('=')[0:2] for e in _ini['DEFAULT']['console_scripts'].split())   # command -> module:main
ENTRY_POINTS = {k: v.split(':')[0] for k, v in ENTRY_POINTS.items()}

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Datasets good and bad, a finished run (its checkpoint and result are the 'earlier results'), odd files."
    t = tmp_path_factory.mktemp('faults')
    w = dict(t=t, ds=fake_imagenet(t / 'ds', n_classes=3, n_train=4, n_val=2),
             one=fake_imagenet(t / 'one', n_classes=1, n_train=12, n_val=2),
             small=fake_imagenet(t / 'small', n_classes=3, n_train=1, n_val=1),
             noval=fake_imagenet(t / 'noval', n_classes=2, n_train=4, n_val=1),
             broken=fake_imagenet(t / 'broken', n_classes=3, n_train=4, n_val=2),
             big=fake_imagenet(t / 'big', n_classes=3, n_train=11, n_val=2))    # one smoke batch (32) for illama-repro
    shutil.rmtree(w['noval'] / 'val')
    img = w['broken'] / 'train' / 'n00000001' / 'img2.png'
    img.write_bytes(img.read_bytes()[:70])
    (t / 'notes.txt').write_text('not weights')
    (t / 'afile').write_text('x')
    w['run'] = t / 'run'
    assert train_main(['--step', 'ViT', *SMOKE, '--data', str(w['ds']), '--out', str(w['run']), '--cache', str(t / 'c')]) == 0
    w['ffn'] = t / 'ffn'
    assert train_main(['--step', '+ LLaMA FFN', *SMOKE, '--data', str(w['ds']), '--out', str(w['ffn']),
                       '--cache', str(t / 'c')]) == 0
    trunc = t / 'trunc'
    trunc.mkdir()
    (trunc / CKPT).write_bytes((w['run'] / CKPT).read_bytes()[:5000])
    _odd_checkpoints(t, w['run'] / CKPT)
    return w

def _odd_checkpoints(t: Path, good: Path):
    "Weights that are NaN (a state dict, and a checkpoint in --out), and a checkpoint whose metadata is null."
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(good), 'pt') as f: md = f.metadata()
    tensors = load_file(str(good))
    nan = {k: torch.full_like(v, float('nan')) if k.startswith('model.') and v.is_floating_point() else v
           for k, v in tensors.items()}
    torch.save({k[6:]: v for k, v in nan.items() if k.startswith('model.')}, t / 'nan.pth')
    for name, ts, meta in (('nometa', tensors, dict(md, meta='null')), ('nanckpt', nan, md)):
        (t / name).mkdir()
        save_file(ts, t / name / CKPT, metadata=meta)

def _snapshot(folder: Path) -> dict:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}

def _run_main(main, args, capsys) -> tuple[int, str]:
    try: code = main(args)
    except SystemExit as e: code = e.code            # argparse's own errors (a value of the wrong type)
    err = capsys.readouterr().err
    return code, err

TRAIN_CASES = [   # (arguments, what the message must say)
    (['--step', 'nope'], "step='nope' is not a roadmap step"),
    (['--size', 'huge'], "size='huge' is not allowed"),
    (['--regime', 'gpu'], "regime='gpu' is not allowed"),
    (['--epochs', '0'], '--epochs=0 is not allowed'),
    (['--epochs', '-1'], '--epochs=-1 is not allowed'),
    (['--epochs', '100000000000'], '--epochs=100000000000 is not allowed'),
    (['--epochs', 'ten'], "argument --epochs: invalid int value: 'ten'"),
    (['--batch-size', '0'], '--batch-size=0 is not allowed'),
    (['--batch-size', '-4'], '--batch-size=-4 is not allowed'),
    (['--nproc', '0'], '--nproc=0 is not allowed'),
    (['--seed', '-1'], '--seed=-1 is not allowed'),
    (['--batch-size', '30', '--nproc', '4'], 'batch_size=30 is not divisible by nproc=4'),
    (['--batch-size', '6', '--nproc', '2'], 'odd batch per process; mixup needs it even'),
    (['--precision', 'half'], "precision='half' is not allowed"),
    (['--pipeline', 'disk'], "pipeline='disk' is not allowed"),
    (['--recipe', 'nope'], "recipe='nope' is not allowed"),
    (['--data', '{t}/missing'], "data='{t}/missing' is not a folder"),
    (['--data', '{t}/afile'], "data='{t}/afile' is not a folder"),
    (['--data', '{noval}'], "has no val/ folder"),
    (['--data', '{one}'], 'data has 1 class'),
    (['--data', '{small}'], 'the train split has 3 images, fewer than one batch'),
    (['--data', '{broken}'], "image '{broken}/train/n00000001/img2.png' cannot be decoded"),
    (['--init', '{t}/none.pt'], "init='{t}/none.pt' is not a file"),
    (['--init', '{t}/notes.txt'], "init='{t}/notes.txt' is not a checkpoint"),
    (['--init', '{ffn}/checkpoint.safetensors'], "init='{ffn}/checkpoint.safetensors'"),
    (['--cache', '{t}/afile'], "cache='{t}/afile' is a file"),
    (['--out', '{t}/afile/sub'], "out='{t}/afile/sub' cannot be written: '{t}/afile' is a file, not a folder"),
    (['--resume', '--out', '{t}/nothing'], '--resume but'),
    (['--out', '{run}', '--seed', '7'], "holds a checkpoint of another run (seed: 0 (checkpoint) vs 7 (asked))"),
    (['--out', '{run}', '--step', '+ LLaMA FFN'], "step: 'ViT' (checkpoint) vs '+ LLaMA FFN' (asked)"),
    (['--out', '{run}', '--init', '{ffn}/../run/checkpoint.safetensors'], "init: None (checkpoint) vs '{run}/checkpoint"),
    (['--out', '{run}', '--freeze-epochs', '1'], "freeze_epochs: 0 (checkpoint) vs 1 (asked)"),
    (['--freeze-epochs', '5'], "--freeze-epochs=5 is not allowed: it must be at most the run's epochs (1)"),
    (['--out', '{t}/trunc'], "checkpoint '{t}/trunc/checkpoint.safetensors' cannot be read"),
    (['--resume', '--fresh', '--out', '{run}'], '--resume and --fresh contradict each other'),
    (['--cache', '{t}/afile/sub'], "cache='{t}/afile/sub' cannot be made"),
    (['--data', '{broken}', '--pipeline', 'stream'], "image '{broken}/train/n00000001/img2.png' cannot be decoded"),
    (['--init', '{t}/nan.pth'], "init='{t}/nan.pth': tensor"),
    (['--out', '{t}/nometa'], 'holds no run metadata (meta=None'),
    (['--out', '{t}/nanckpt'], "checkpoint.safetensors': tensor 'model."),
    (['--out', ''], "--out='' is not allowed"),
]

@pytest.mark.parametrize('args,msg', TRAIN_CASES, ids=[' '.join(a)[:40] for a, _ in TRAIN_CASES])
def test_illama_train_refuses(world, capsys, args, msg):
    before = {k: _snapshot(world[k]) for k in ('run', 'ffn')}
    f = {k: str(v) for k, v in world.items()}
    args = [a.format(**f) for a in args]
    if '--data' not in args: args += ['--data', f['ds']]
    if '--out' not in args: args += ['--out', f"{f['t']}/out-{abs(hash(tuple(args)))}"]
    args = [*SMOKE, *args] if '--epochs' not in args and '--batch-size' not in args else ['--regime', 'smoke', *args]
    code, err = _run_main(train_main, args, capsys)
    assert code == 2, err
    assert msg.format(**f) in err and 'Traceback' not in err, err
    assert err.startswith('illama-train: error: ') and err.count('\n') == 1, err   # one line, argparse's own too
    assert before == {k: _snapshot(world[k]) for k in ('run', 'ffn')}  # earlier results untouched
    assert not err.startswith('illama-train: error: ValueError'), err    # a loader worker's error, without its type
    out = Path(args[args.index('--out') + 1])
    assert not (out / '.train.lock').exists()                          # a refused run leaves no lock behind
    if out.name.startswith('out-'): assert not out.exists()           # nor the folder it made for --out

REPRO_CASES = [
    (['table4'], "table='table4' is not allowed"),
    (['table17', '--rows', 'ViT-22B'], "row 'ViT-22B' is not in table17"),
    (['table17', 'table1', '--rows', 'ViT'], '--rows needs exactly one table'),
    (['table17', '--regime', 'gpu'], "regime='gpu' is not allowed"),
    (['table17', '--epochs', '-1'], '--epochs=-1 is not allowed'),
    (['table17', '--epochs', '0'], '--epochs=0 is not allowed'),
    (['table17', '--nproc', '0'], '--nproc=0 is not allowed'),
    (['table17', '--seeds', '-3'], '--seeds -3 is not allowed'),
    (['table17', '--timeout', '0'], '--timeout=0 is not allowed'),
    (['table17', '--data', '{t}/missing'], "--data='{t}/missing' is not a folder"),
    (['table17', '--root', '{t}/afile'], "--root='{t}/afile' is a file"),
    (['tables', '--root', '{t}/afile/sub'], "--root='{t}/afile/sub' cannot be made: '{t}/afile' is a file"),
    (['tables', '--root', ''], "--root='' is not allowed"),
    (['tables', '--root', '/proc/illama'], "--root='/proc/illama' cannot be written"),
    (['table17', '--rows', 'ViT', '--regime', 'smoke', '--seeds', '5', '--allow-dirty', '--data', '{noval}'],
     'has no val/ folder'),                                                                  # before any run starts
    (['analyses', '--only', 'rank', '--llama', '{t}/notes.txt'],
     "--llama is used only by ['weight_selection'], and --only rank runs none of them"),
    (['table17', '--llama', '{t}/notes.txt'], "--only and --llama go with the 'analyses' target"),
    (['table17', '--epochs', 'ten'], "argument --epochs: invalid int value: 'ten' (see illama-repro --help)"),
    (['table17', '--bogus'], 'unrecognized arguments: --bogus (see illama-repro --help)'),
    ([], 'the following arguments are required: tables'),
]

@pytest.mark.parametrize('args,msg', REPRO_CASES, ids=[' '.join(a)[:40] for a, _ in REPRO_CASES])
def test_illama_repro_refuses(world, tmp_path, capsys, args, msg):
    spec = get_rows('table17', ['ViT'])[0]
    earlier = write_result(result_path(tmp_path, 'smoke', spec, 0), dict(run_id=spec.run_id, seed=0, status='ok', top1=50.0))
    before = _snapshot(tmp_path)
    f = {k: str(v) for k, v in world.items()}
    args = [a.format(**f) for a in args] + ([] if '--root' in args else ['--root', str(tmp_path)])
    code, err = _run_main(repro_main, args, capsys)
    assert code == 2 and msg.format(**f) in err and 'Traceback' not in err, err
    assert err.startswith('illama-repro: error: ') and err.count('\n') == 1, err
    assert _snapshot(tmp_path) == before and read_result(earlier)['top1'] == 50.0

@pytest.mark.parametrize('content,why', [('{"status": "ok", "to', 'not a readable JSON file'),
                                         ('[]', 'expected a JSON object, got list'),
                                         ('{"status": "ok", "top1": null}', 'top1=None'),
                                         ('{"status": "finished", "top1": 3}', "status='finished'")])
def test_corrupt_results_are_named_in_the_tables(tmp_path, capsys, content, why):
    "A corrupt result file is shown as corrupt (named, with the reason), the table still builds, and exit is 0."
    spec = get_rows('table17', ['+ LPE'])[0]
    for seed in (0, 1):
        write_result(result_path(tmp_path, 'cpu', spec, seed), dict(run_id=spec.run_id, seed=seed, status='ok', top1=60. + seed))
    bad = result_path(tmp_path, 'cpu', spec, 2)
    bad.write_text(content)
    assert repro_main(['tables', '--regime', 'cpu', '--root', str(tmp_path)]) == 0
    md = (tmp_path / 'tables' / 'cpu' / 'table17.md').read_text()
    assert f'**corrupt**: {bad}: {why}' in md and '| + LPE | 73.2 | 81.2 | 3.531 | 2.839 | 60.5 ± 0.7 |' in md
    assert '1 corrupt result file(s) left out' in (tmp_path / 'tables' / 'cpu' / 'claims.md').read_text()
    assert bad.read_text() == content                                  # the evidence stays as it was

def test_the_installed_commands_exit_2_without_a_traceback(world, tmp_path):
    "The console scripts themselves (not just `main`): exit code 2, one line, no Python warning or traceback."
    bin_ = Path(sys.executable).parent
    for cmd in ([bin_ / 'illama-train', '--epochs', '-1'], [bin_ / 'illama-repro', 'table17', '--epochs', '-1'],
                [sys.executable, '-m', 'illama.train', '--batch-size', '0']):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 2 and 'is not allowed' in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr and 'Warning' not in r.stderr and r.stderr.count('\n') == 1, r.stderr
    r = subprocess.run([str(bin_ / 'illama-train'), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == '' and 'usage: illama-train' in r.stdout

WRONG_TYPE = {'illama-train': ['--epochs', 'ten'], 'illama-eval': ['--limit', 'ten'], 'illama-export': ['--img-size', 'ten'],
              'illama-bench': ['--repeats', 'ten'], 'illama-repro': ['--epochs', 'ten'], 'illama-docs': ['--renderer', 'ten']}

@pytest.mark.parametrize('cli', WRONG_TYPE)
def test_argument_errors_are_one_line_in_every_command(cli):
    "argparse's own errors (an unknown option, a value it cannot read) are one line too, with exit code 2."
    assert set(WRONG_TYPE) == set(ENTRY_POINTS)                       # every console script is tried
    needs = {'illama-eval': ['--model', 'm', '--data', 'd'], 'illama-export': ['m', '--out', 'm.onnx'],
             'illama-repro': ['tables']}.get(cli, [])                 # its required arguments, so the error is ours
    for args, says in (([*needs, '--bogus'], 'unrecognized arguments: --bogus'),
                       (WRONG_TYPE[cli], f"argument {WRONG_TYPE[cli][0]}: invalid")):
        r = subprocess.run([sys.executable, '-c', f'import sys; from {ENTRY_POINTS[cli]} import main; sys.exit(main())',
                            *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith(f'{cli}: error: ') and says in r.stderr, r.stderr
        assert r.stderr.count('\n') == 1 and r.stderr.endswith(f'(see {cli} --help)\n') and r.stdout == '', r.stderr

def test_a_commands_warning_is_one_line(tmp_path):
    "A cache file cut short: the command warns in one line, `illama-train: warning: ...`, and decodes again."
    bad = tmp_path / 'cut.pt'
    bad.write_bytes(b'PK\x03\x04 cut short')
    code = ("import sys; from pathlib import Path; from illama.data import CliParser, _read_cache\n"
            "CliParser(prog='illama-train').parse_args([]); sys.exit(_read_cache(Path(sys.argv[1]), 3) is not None)")
    r = subprocess.run([sys.executable, '-c', code, str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"illama-train: warning: the image cache {str(bad)!r} cannot be used ("), r.stderr
    assert r.stderr.endswith('decoding the images again\n') and r.stderr.count('\n') == 1, r.stderr

def test_python_api_refuses_clearly(world):
    with pytest.raises(ValueError, match="regime='gpu' is not allowed"): step_recipe('ViT', regime='gpu')
    with pytest.raises(ValueError, match="size='huge' is not allowed"): step_recipe('ViT', 'huge')
    from illama.vit import create_roadmap_model
    m = create_roadmap_model('ViT', **dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3))
    with pytest.raises(ValueError, match='is not a checkpoint'): load_init(m, world['t'] / 'notes.txt')
    with pytest.raises(ValueError, match='cannot be read'): read_checkpoint(world['t'] / 'trunc' / CKPT)


# ---------------------------------------------------------------------------------------------------------------------
# illama-docs: --out is replaced by the build, so anything that is not absent, an empty folder, or a site illama-docs
# built (it has the marker file) is refused before building: exit 2, one message naming --out, nothing touched.
from illama.workshop.docs import main as docs_main, SITE_MARKER

DOCS_ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def docs_places(tmp_path):
    "A user's folder with a file in it, a plain file, and a folder inside /proc, where nothing can be written."
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'thesis.tex').write_text('years of work')
    (tmp_path / 'afile').write_text('keep me')
    return dict(t=str(tmp_path), root=str(DOCS_ROOT))

DOCS_CASES = [   # (--out, what the message must say after "--out='<path>' is not allowed: ")
    ('{t}/mine', 'illama-docs did not build'),
    ('{t}/afile', 'it is a file'),
    ('{root}/experiments', 'illama-docs did not build'),
    ('{root}/nbs', 'illama-docs did not build'),
    ('{root}', 'it holds the project'),
    ('/proc/x', 'cannot write in'),
]

@pytest.mark.parametrize('out,why', DOCS_CASES, ids=[o for o, _ in DOCS_CASES])
def test_illama_docs_refuses_out(docs_places, capsys, out, why):
    out = out.format(**docs_places)
    before = {k: _snapshot(p) for k, p in (('t', docs_places['t']), ('experiments', DOCS_ROOT / 'experiments'))}
    code, err = _run_main(docs_main, ['--root', str(DOCS_ROOT), '--out', out, '--no-readme'], capsys)
    assert code == 2, err
    assert f"--out={str(Path(out).resolve())!r} is not allowed: " in err and why in err, err
    assert 'Traceback' not in err and err.count('\n') == 1 and err.startswith('illama-docs: error: '), err
    assert before == {k: _snapshot(p) for k, p in (('t', docs_places['t']), ('experiments', DOCS_ROOT / 'experiments'))}
    assert (Path(docs_places['t']) / 'mine' / 'thesis.tex').read_text() == 'years of work'

def test_illama_docs_refuses_a_root_that_is_not_a_project(docs_places, capsys):
    code, err = _run_main(docs_main, ['--root', docs_places['t'], '--out', f"{docs_places['t']}/site"], capsys)
    assert code == 2 and f"--root={docs_places['t']!r} is not allowed: it has no _quarto.yml" in err, err
    assert not (Path(docs_places['t']) / 'site').exists() and 'Traceback' not in err

def test_illama_docs_accepts_only_its_own_sites(docs_places):
    "An empty folder and a folder with the marker pass the check (the build itself is tested by tests/test_docs.py)."
    from illama.workshop.docs import check_out
    site = Path(docs_places['t']) / 'old-site'
    site.mkdir()
    (site / 'index.html').write_text('old')
    with pytest.raises(ValueError, match='did not build'): check_out(site, DOCS_ROOT, '--out')
    (site / SITE_MARKER).write_text('')
    assert check_out(site, DOCS_ROOT, '--out') == site.resolve()
    (Path(docs_places['t']) / 'empty').mkdir()
    assert check_out(Path(docs_places['t']) / 'empty', DOCS_ROOT, '--out').is_dir()

def test_illama_docs_commands_exit_2_without_a_traceback(docs_places):
    "The console script and `python -m illama.workshop.docs`: exit 2, one line naming --out, the file untouched."
    bin_ = Path(sys.executable).parent
    for cmd in ([str(bin_ / 'illama-docs')], [sys.executable, '-m', 'illama.workshop.docs']):
        r = subprocess.run(cmd + ['--root', str(DOCS_ROOT), '--out', f"{docs_places['t']}/afile"], capture_output=True,
                           text=True, timeout=300, cwd=docs_places['t'])
        assert r.returncode == 2 and "--out=" in r.stderr and 'it is a file' in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr and r.stderr.count('\n') == 1 and r.stdout == '', r.stderr
    assert (Path(docs_places['t']) / 'afile').read_text() == 'keep me'


def test_illama_docs_builds_from_any_folder(docs_places):
    "Run from a folder outside the project (nbdev reads settings.ini from the working directory): the site is built."
    site = Path(docs_places['t']) / 'site'
    r = subprocess.run([str(Path(sys.executable).parent / 'illama-docs'), '--root', str(DOCS_ROOT), '--out', str(site),
                        '--no-exec', '--no-readme'], capture_output=True, text=True, timeout=600, cwd=docs_places['t'])
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert (site / 'index.html').is_file() and 'github.io' not in (site / '00_vit.html').read_text()   # local links

@pytest.mark.skipif(shutil.which('quarto') is not None, reason='quarto is installed here')
def test_illama_docs_without_its_renderer_leaves_nothing(docs_places, capsys):
    "--renderer quarto where Quarto is not installed: one line, exit 2, and no folder made for the site."
    out = Path(docs_places['t']) / 'new' / 'site'
    code, err = _run_main(docs_main, ['--root', str(DOCS_ROOT), '--out', str(out), '--renderer', 'quarto'], capsys)
    assert code == 2 and 'quarto is not installed' in err and err.count('\n') == 1, err
    assert not (Path(docs_places['t']) / 'new').exists()

# ---------------------------------------------------------------------------------------------------------------------
# Non-finite numbers and records of the wrong type: never a result (issue 38, classes 2 and 4)

def test_records_are_strict_json_and_typed(tmp_path):
    "A NaN anywhere in a record is refused on writing, and read back as an error naming the file; so is a wrong type."
    from illama.results import ResultError
    p = tmp_path / 'vit__seed0.json'
    with pytest.raises(ResultError, match='cannot be written as strict JSON'):
        write_result(p, dict(status='ok', top1=50.0, history=[dict(epoch=1, train_loss=float('nan'))]))
    assert not p.exists()
    p.write_text('{"status": "ok", "top1": 50.0, "train_loss": NaN}')
    with pytest.raises(ResultError, match=f'{p}: not a readable JSON file.*NaN is not a number in strict JSON'):
        read_result(p)
    for field, value in (('train_loss', '"1.5"'), ('history', '{}'), ('config', '[]'), ('git_rev', '1234567')):
        p.write_text(f'{{"status": "ok", "top1": 50.0, "{field}": {value}}}')
        with pytest.raises(ResultError, match=f'{p}: {field}='): read_result(p)

@pytest.mark.parametrize('name,record,why', [
    ('lpe__seed0.json', dict(run_id='vit', seed=0), 'disagree with the file'),           # counted in another row
    ('vit__seed1.json', dict(run_id='vit', seed=0), 'disagree with the file'),           # a seed counted twice
    ('vit__seed0 (copy).json', dict(run_id='vit', seed=0), 'the name is not'),
    ('vit__seed2.json', dict(run_id='vit', seed=2, train_loss='0.9'), "train_loss='0.9' is not a finite number"),
])
def test_a_record_that_disagrees_with_its_file_counts_nowhere(tmp_path, name, record, why):
    spec = get_rows('table17', ['ViT'])[0]
    write_result(result_path(tmp_path, 'cpu', spec, 0), dict(run_id='vit', seed=0, status='ok', top1=60.0))
    bad = results_dir(tmp_path, 'cpu') / name
    bad.write_text(json.dumps(dict(record, status='ok', top1=99.0)))
    res = load_results(results_dir(tmp_path, 'cpu'))
    assert [r['seed'] for r in res['vit']] == [0] and 'lpe' not in res, res
    assert any(why in w and str(bad) in w for ws in res.corrupt.values() for w in ws), res.corrupt
    md = render_table('table17', 'cpu', tmp_path)
    assert '| ViT | 73.8 | 81.5 | 3.451 | 2.828 | 60.0 |' in md and '**corrupt**' in md

@pytest.mark.parametrize('bad,msg', [(dict(epochs=0), 'epochs=0 is not allowed'), (dict(epochs=-5), 'epochs=-5'),
                                     (dict(epochs=2.5), 'epochs=2.5 is not allowed; it must be an integer'),
                                     (dict(epochs=float('nan')), 'epochs=nan'), (dict(batch_size=0), 'batch_size=0'),
                                     (dict(label_smoothing=2.0), 'label_smoothing=2.0 is not allowed')])
def test_recipes_refuse_numbers_out_of_range(bad, msg):
    "`Recipe`, `step_recipe` and `plan_run` refuse them; `epochs=0` is an error, never 'the regime's epochs'."
    from illama.train import TrainConfig, plan_run
    rec = step_recipe('ViT', 'tiny', 'smoke')
    with pytest.raises(ValueError, match=msg): rec.replace(**bad)
    if 'epochs' in bad:
        with pytest.raises(ValueError, match=msg): step_recipe('ViT', 'tiny', 'smoke', epochs=bad['epochs'])
        with pytest.raises(ValueError, match=msg): plan_run(TrainConfig('ViT', regime='smoke', epochs=bad['epochs']))

def test_illama_eval_refuses_unusable_weights(world, tmp_path, capsys):
    "NaN weights, zero-byte and cut-short files: one line naming the file, exit 2, never a 'perfectly calibrated' NaN."
    import timm
    from illama.evaluate import main as eval_main
    full = timm.create_model('illama_tiny')
    torch.save({k: torch.full_like(v, float('nan')) if v.is_floating_point() else v
                for k, v in full.state_dict().items()}, tmp_path / 'nan.pth')
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'empty.safetensors').write_bytes(b'')
    for name, says in (('nan.pth', 'holds NaN or infinite values'), ('empty.pth', 'cannot be loaded'),
                       ('empty.safetensors', 'cannot be loaded')):
        code, err = _run_main(eval_main, ['--model', 'illama_tiny.in1k', '--checkpoint', str(tmp_path / name),
                                          '--data', str(world['ds']), '--workers', '0'], capsys)
        assert code == 2 and says in err and name in err and 'Traceback' not in err, err
        assert err.count('\n') == 1, err

def test_illama_train_logs_plain_lines_when_not_a_terminal(world, tmp_path):
    "Redirected to a file, illama-train writes one line per epoch and no carriage-return progress bar."
    r = subprocess.run([str(Path(sys.executable).parent / 'illama-train'), '--step', 'ViT', *SMOKE, '--epochs', '2',
                        '--data', str(world['ds']), '--out', str(tmp_path / 'run'), '--cache', str(world['t'] / 'c')],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '\r' not in r.stdout and '\r' not in r.stderr
    epochs = [l for l in r.stdout.splitlines() if l.startswith('epoch ')]
    assert len(epochs) == 2 and 'train_loss' in epochs[0], r.stdout

def test_illama_eval_names_an_image_that_fails_in_a_loader_worker(tmp_path, capsys):
    "A broken validation image decoded by a worker process: one line naming it, exit 2 (not the worker's traceback)."
    from illama.evaluate import main as eval_main
    ds = fake_imagenet(tmp_path / 'ds', n_classes=2, n_train=1, n_val=4)
    for split in ('train', 'val'):                       # ImageNet-1K's WordNet ids, as the released models' classes
        for old, new in (('n00000000', 'n01440764'), ('n00000001', 'n02102040')): (ds / split / old).rename(ds / split / new)
    bad = ds / 'val' / 'n02102040' / 'img1.png'
    bad.write_bytes(bad.read_bytes()[:60])
    import timm
    torch.save(dict(model=timm.create_model('illama_tiny').state_dict()), tmp_path / 'tiny.pth')
    code, err = _run_main(eval_main, ['--model', 'illama_tiny.in1k', '--checkpoint', str(tmp_path / 'tiny.pth'),
                                      '--data', str(ds), '--workers', '2', '--batch-size', '2'], capsys)
    assert code == 2 and f"image {str(bad)!r} cannot be decoded" in err and 'Traceback' not in err, err
    assert err.count('\n') == 1 and 'ValueError' not in err, err

def test_a_second_illama_train_into_a_live_run_stops(world, tmp_path, capsys):
    "While another process trains into --out (it holds the folder's lock), illama-train stops at once, naming it."
    out = tmp_path / 'live'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); print('held', flush=True); "
                               "sys.stdin.read()", str(out / '.train.lock')], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        code, err = _run_main(train_main, ['--step', 'ViT', *SMOKE, '--data', str(world['ds']), '--out', str(out)], capsys)
    finally: holder.communicate('')
    assert code == 2 and f'is being trained by process {holder.pid}' in err and 'Traceback' not in err, err
    assert not (out / CKPT).exists()

def test_rerunning_a_finished_run_leaves_its_record_as_it_was(world, tmp_path, capsys):
    "The same command again finds the run finished: nothing is trained and results.json is not rewritten."
    out = tmp_path / 'again'
    args = ['--step', 'ViT', *SMOKE, '--data', str(world['ds']), '--out', str(out), '--cache', str(world['t'] / 'c')]
    assert _run_main(train_main, args, capsys)[0] == 0
    before = (out / 'results.json').read_bytes()
    assert _run_main(train_main, args, capsys)[0] == 0
    assert (out / 'results.json').read_bytes() == before

def test_ctrl_c_in_illama_repro_is_one_line(world, tmp_path, capsys, monkeypatch):
    "An interrupt during a run: one line saying how to go on, exit 130, no traceback."
    import illama.workshop.repro as repro
    def interrupted(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(repro, 'run_row', interrupted)
    code, err = _run_main(repro_main, ['table17', '--rows', 'ViT', '--regime', 'smoke', '--root', str(tmp_path),
                                       '--data', str(world['big']), '--allow-dirty'], capsys)
    assert code == 130 and 'interrupted; run the same command' in err and 'Traceback' not in err, err
    assert err.count('\n') == 1, err

@pytest.mark.parametrize('dtype', [torch.uint8, torch.float64, torch.float16])
def test_images_of_another_dtype_are_a_clear_error(dtype):
    "uint8, float64 or float16 images into a float32 model: a ValueError that says what to pass, not torch's bias message."
    from illama.vit import create_roadmap_model
    m = create_roadmap_model('+ soft mask', 'tiny', img_size=32, patch_size=8, depth=1, num_classes=3).eval()
    with pytest.raises(ValueError, match=f'x has dtype {dtype} and the model.s weights torch.float32: pass x.to'):
        m(torch.zeros(2, 3, 32, 32, dtype=dtype))


def test_outputs_are_checked_before_the_work(tmp_path, capsys):
    "illama-export, illama-eval and illama-bench refuse an output they could not write, before exporting or measuring."
    from illama.deploy import main as export_main
    from illama.workshop.bench import main as bench_main
    (tmp_path / 'afile').write_text('x')
    for main, args, says in [
            (export_main, ['illama_tiny', '--out', '/proc/illama/m.onnx'], "--out='/proc/illama/m.onnx' cannot be written"),
            (export_main, ['illama_tiny', '--out', f'{tmp_path}/afile/m.onnx'], f"'{tmp_path}/afile' is a file, not a"),
            (bench_main, ['--out', f'{tmp_path}/bench.json'], 'expected a .md file name')]:
        code, err = _run_main(main, args, capsys)
        assert code == 2 and says in err and 'Traceback' not in err and err.count('\n') == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['afile']

def test_export_interrupted_keeps_the_file(tmp_path, capsys, monkeypatch):
    "Ctrl-C during an export: one line, exit 130, and an earlier .onnx at that path untouched."
    import illama.deploy as deploy
    def interrupted(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(deploy, 'export_onnx', interrupted)
    (tmp_path / 'm.onnx').write_bytes(b'earlier')
    code, err = _run_main(deploy.main, ['illama_tiny', '--out', str(tmp_path / 'm.onnx'), '--img-size', '32'], capsys)
    assert code == 130 and 'interrupted' in err and err.count('\n') == 1, err
    assert (tmp_path / 'm.onnx').read_bytes() == b'earlier'

def test_bench_and_docs_interrupted_say_one_line(tmp_path, capsys, monkeypatch):
    "Ctrl-C while illama-bench measures or illama-docs renders: one line, exit 130, nothing written."
    import illama.workshop.bench as bench, illama.workshop.docs as docs
    def interrupted(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(bench, 'run_benchmark', interrupted)
    monkeypatch.setattr(docs, 'build_docs', interrupted)
    for main, args in ((bench.main, ['--device', 'cpu', '--out', str(tmp_path / 'b' / 'x.md')]),
                       (docs.main, ['--root', str(DOCS_ROOT), '--out', str(tmp_path / 'site'), '--no-exec'])):
        code, err = _run_main(main, args, capsys)
        assert code == 130 and 'interrupted' in err and err.count('\n') == 1 and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []

def test_sizes_past_any_memory_are_refused_up_front(tmp_path, capsys):
    "--img-size 100000 (30 GB for one image) and --workers 100000: one line, exit 2, before anything is allocated."
    from illama.deploy import main as export_main
    from illama.evaluate import main as eval_main
    import illama.workshop.bench as bench
    ds = fake_imagenet(tmp_path / 'ds', n_classes=2, n_train=1, n_val=2)
    for main, args, says in (
            (export_main, ['illama_tiny', '--out', str(tmp_path / 'm.onnx'), '--img-size', '100000'], 'up to 4096'),
            (bench.main, ['--device', 'cpu', '--img-size', '100000', '--out', str(tmp_path / 'b.md')], 'up to 4096'),
            (eval_main, ['--model', 'illama_tiny', '--data', str(ds), '--workers', '100000'], 'four per core')):
        code, err = _run_main(main, args, capsys)
        assert code == 2 and says in err and err.count('\n') == 1 and 'Traceback' not in err, err

LONG = 'x' * 300    # longer than a file name may be (255 bytes on ext4 and most file systems)
LONG_NAMES = [(train_main, ['--regime', 'smoke', '--data', '{ds}', '--out', '{d}/' + LONG]),
              (repro_main, ['tables', '--root', '{d}/' + LONG]),
              (docs_main, ['--root', str(DOCS_ROOT), '--out', '{d}/' + LONG, '--no-exec'])]

@pytest.mark.parametrize('main,args', LONG_NAMES, ids=['train', 'repro', 'docs'])
def test_a_name_too_long_is_one_line(world, tmp_path, capsys, main, args):
    "An output name longer than the file system allows, in a folder that exists: one line, exit 2 (was OSError's)."
    code, err = _run_main(main, [a.format(d=tmp_path, ds=world['ds']) for a in args], capsys)
    assert code == 2 and 'File name too long' in err and err.count('\n') == 1 and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []

def _wnid_data(t: Path) -> Path:
    "Two classes named by ImageNet-1K WordNet ids (tench, English springer), so a 1000-class model can be scored."
    ds = fake_imagenet(t / 'wnid', n_classes=2, n_train=1, n_val=2)
    for i, wnid in enumerate(['n01440764', 'n02102040']): (ds / 'val' / f'n{i:08d}').rename(ds / 'val' / wnid)
    return ds

def _overflowing(path: Path) -> Path:
    "The state dict of an illama_tiny whose weights are finite but whose logits are not."
    import timm
    sd = timm.create_model('illama_tiny').state_dict()
    sd['head.weight'] = torch.full_like(sd['head.weight'], 3e38)
    torch.save(sd, path)
    return path

def test_illama_eval_records_no_result_from_overflowing_outputs(tmp_path, capsys):
    "Finite weights whose logits overflow: exit 2, one line, and the --out file of an earlier evaluation untouched."
    from illama.evaluate import main as eval_main
    out = tmp_path / 'eval.json'
    out.write_text('{"top1": 71.2}')
    code, err = _run_main(eval_main, ['--model', 'illama_tiny', '--checkpoint', str(_overflowing(tmp_path / 'h.pth')),
                                      '--data', str(_wnid_data(tmp_path)), '--workers', '0', '--out', str(out)], capsys)
    assert code == 2 and "outputs hold NaN or infinite values for 4 of 4 images" in err and err.count('\n') == 1, err
    assert out.read_text() == '{"top1": 71.2}'

def test_illama_export_refuses_a_model_whose_logits_overflow(world, tmp_path, capsys):
    "A checkpoint whose finite weights give non-finite logits is not exported (nothing written), exit 2."
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    from illama.deploy import main as export_main
    (tmp_path / 'huge').mkdir()
    with safe_open(str(world['run'] / CKPT), 'pt') as f: md = f.metadata()
    t = {k: v * 1e30 if k.startswith('model.') and v.is_floating_point() else v
         for k, v in load_file(str(world['run'] / CKPT)).items()}
    save_file(t, tmp_path / 'huge' / CKPT, metadata=md)
    code, err = _run_main(export_main, [str(tmp_path / 'huge'), '--out', str(tmp_path / 'm.onnx'), '--check'], capsys)
    assert code == 2 and "logits are not finite" in err and err.count('\n') == 1, err
    assert not (tmp_path / 'm.onnx').exists()

def test_a_failed_forced_rerun_keeps_the_finished_weights(world, tmp_path, capsys):
    "`illama-repro --force` on data it cannot train from: refused before it starts; weights and result as they were."
    args = ['table17', '--rows', 'ViT', '--regime', 'smoke', '--epochs', '1', '--root', str(tmp_path), '--allow-dirty']
    assert repro_main([*args, '--data', str(world['big'])]) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path / 'checkpoints'), _snapshot(tmp_path / 'results')
    text = shutil.copytree(world['big'], tmp_path / 'text')              # found only when the run decodes it
    (next((text / 'train').rglob('*.png'))).write_text('not an image')
    for data, says in ((world['one'], 'data has 1 class'), (world['small'], 'fewer than one batch'),
                       (text, 'cannot be decoded')):
        code, err = _run_main(repro_main, [*args, '--force', '--data', str(data)], capsys)
        assert code == 2 and says in err and err.count('\n') == 1, err
    assert before == (_snapshot(tmp_path / 'checkpoints'), _snapshot(tmp_path / 'results'))
    assert not [*tmp_path.rglob('*.force'), *tmp_path.rglob('*.unfinished.ipynb')]    # nothing of the refused runs
    code, err = _run_main(repro_main, [*args, '--root', str(tmp_path / 'new'), '--data', str(text)], capsys)
    assert code == 2 and 'cannot be decoded' in err and not (tmp_path / 'new').exists(), err

def test_illama_repro_refuses_a_result_of_another_length(world, tmp_path, capsys):
    "A finished 1-epoch result is not the 2-epoch run asked for: exit 2 naming --force, never a silent skip."
    spec = get_rows('table17', ['ViT'])[0]
    write_result(result_path(tmp_path, 'smoke', spec, 0), dict(run_id=spec.run_id, seed=0, status='ok', top1=50.0,
                                                                epochs=1))
    code, err = _run_main(repro_main, ['table17', '--rows', 'ViT', '--regime', 'smoke', '--epochs', '2', '--root',
                                       str(tmp_path), '--data', str(world['ds'])], capsys)
    assert code == 2 and 'holds a 1-epoch run of' in err and 'not the 2 epochs asked for; pass --force' in err, err

def test_illama_repro_refuses_weights_that_are_not_llama(world, tmp_path, capsys):
    (tmp_path / 't.sh').write_text('#!/bin/sh\necho hi\n')
    code, err = _run_main(repro_main, ['analyses', '--only', 'weight_selection', '--llama', str(tmp_path / 't.sh'),
                                       '--regime', 'smoke', '--root', str(tmp_path / 'r'), '--data', str(world['ds'])],
                          capsys)
    assert code == 2 and "t.sh' cannot be read as LLaMA weights" in err and err.count('\n') == 1, err
    assert not (tmp_path / 'r' / 'results').exists()

@pytest.mark.parametrize('args,says', [
    (['--init', 'illama_tiny.foo'], "init='illama_tiny.foo' is not a file or released weights"),
    (['--init', 'illama_tiny.pth'], "init='illama_tiny.pth' is not a file or released weights"),
    (['--init', ''], "--init='' is not allowed: give a value"),
    (['--data', ''], "--data='' is not allowed"),
    (['--cache', ''], "--cache='' is not allowed")])
def test_illama_train_refuses_names_that_are_not_weights_and_empty_values(world, tmp_path, capsys, args, says):
    code, err = _run_main(train_main, [*SMOKE, '--data', str(world['ds']), '--out', str(tmp_path / 'o'), *args], capsys)
    assert code == 2 and says in err and err.count('\n') == 1 and 'Traceback' not in err, err

def test_a_lock_path_that_is_a_folder_is_one_line(world, tmp_path, capsys):
    (tmp_path / 'o' / '.train.lock').mkdir(parents=True)
    code, err = _run_main(train_main, [*SMOKE, '--data', str(world['ds']), '--out', str(tmp_path / 'o')], capsys)
    assert code == 2 and ".train.lock' cannot be opened (Is a directory)" in err and err.count('\n') == 1, err

def test_a_rebuilt_record_keeps_the_runs_own_numbers(world, tmp_path, capsys):
    "results.json of a finished run lost: the same command writes it again from the checkpoint, with the run's times."
    shutil.copytree(world['run'], tmp_path / 'run')
    good = read_result(tmp_path / 'run' / 'results.json')
    (tmp_path / 'run' / 'results.json').write_text('{garbage')
    args = ['--step', 'ViT', *SMOKE, '--data', str(world['ds']), '--out', str(tmp_path / 'run'), '--cache',
            str(world['t'] / 'c')]
    assert _run_main(train_main, args, capsys)[0] == 0
    again = read_result(tmp_path / 'run' / 'results.json')
    last = good['history'][-1]
    assert again['model_step_share'] == last['model_step_share'] > 0 and again['wall_time_s'] == last['wall_s']
    keys = ('top1', 'top5', 'train_loss', 'epochs')
    assert {k: again[k] for k in keys} == {k: good[k] for k in keys}

def test_illama_bench_int8_top1_checks_its_data_first(tmp_path, capsys):
    from illama.workshop.bench import main as bench_main
    for args, says in ((['--int8-top1', '--data', str(tmp_path / 'nope')], 'is not a folder'),
                       (['--int8-top1', '--deploy'], '--int8-top1 and --deploy are two runs of their own')):
        code, err = _run_main(bench_main, [*args, '--root', str(tmp_path / 'r'), '--out', str(tmp_path / 'b.md')],
                              capsys)
        assert code == 2 and says in err and err.count('\n') == 1, err
    assert not (tmp_path / 'r' / 'results').exists()

def test_an_interrupted_fresh_run_leaves_the_finished_run_as_it_was(world, tmp_path, capsys, monkeypatch):
    "--fresh over a finished run, Ctrl-C after epoch 1: exit 130, that run unchanged; uninterrupted, it replaces it."
    import illama.train as tr
    out = tmp_path / 'done'
    shutil.copytree(world['run'], out)
    before = _snapshot(out)
    args = ['--step', 'ViT', *SMOKE, '--epochs', '2', '--data', str(world['ds']), '--out', str(out), '--fresh',
            '--cache', str(world['t'] / 'c')]
    fit = tr.fit_run
    def stopped_after_one(learn, run, stop_after=None, quiet=False):
        fit(learn, run, 1, quiet)
        assert (run.out / CKPT).exists() and run.out == out / tr.FRESH     # epoch 1 is written, aside
        raise KeyboardInterrupt
    monkeypatch.setattr(tr, 'fit_run', stopped_after_one)
    code, err = _run_main(train_main, args, capsys)
    assert code == 130 and 'still holds the run it held' in err and err.count('\n') == 1, err
    assert _snapshot(out) == before and not (out / tr.FRESH).exists()
    monkeypatch.setattr(tr, 'fit_run', fit)
    assert _run_main(train_main, args, capsys)[0] == 0
    res, meta = read_result(out / 'results.json'), read_checkpoint(out / CKPT)[1]
    assert res['epochs'] == meta['epoch'] == 2 and res['history'] == meta['history']
    assert sorted(p.name for p in out.iterdir()) == [CKPT, 'results.json', 'results.png']

def test_a_download_that_fails_is_one_line(tmp_path, capsys, monkeypatch):
    "--download offline (no network is reached here: the download raises as offline): exit 2, one line, no folder left."
    import urllib.error, torchvision
    def offline(self): raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(torchvision.datasets.CIFAR10, 'download', offline)
    code, err = _run_main(train_main, ['--recipe', 'table16_cifar10', '--regime', 'smoke', '--download', '--data',
                                       str(tmp_path / 'c10'), '--out', str(tmp_path / 'out')], capsys)
    assert code == 2 and 'cifar10 cannot be downloaded into' in err and 'Name or service' in err, err
    assert err.count('\n') == 1 and list(tmp_path.iterdir()) == [], err

def test_illama_train_nproc_2_says_bad_data_and_ctrl_c_in_one_line(world, tmp_path):
    "--nproc 2: an image that cannot be decoded, and Ctrl-C after epoch 1: one line each, exit 2 and 130 (no launcher's)."
    import os, signal, time
    cmd = [str(Path(sys.executable).with_name('illama-train')), '--nproc', '2', '--regime', 'smoke', '--batch-size', '8',
           '--cache', str(world['t'] / 'c')]
    r = subprocess.run([*cmd, '--epochs', '1', '--data', str(world['broken']), '--out', str(tmp_path / 'bad')],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'img2.png' in r.stderr and 'cannot be decoded' in r.stderr, \
        r.stderr[-3000:]
    out = tmp_path / 'long'
    p = subprocess.Popen([*cmd, '--epochs', '500', '--data', str(world['ds']), '--out', str(out)], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    while not (out / CKPT).exists() and p.poll() is None: time.sleep(0.1)    # its first epoch has been written
    os.killpg(p.pid, signal.SIGINT)                                           # Ctrl-C: the terminal's whole group
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and err.count('\n') == 1 and f"resume from '{out / CKPT}'" in err, err[-3000:]
    assert read_checkpoint(out / CKPT)[1]['epoch'] >= 1

def test_an_input_name_too_long_is_one_line(world, tmp_path, capsys):
    "A name over 255 bytes in an input (--data, --checkpoint, --init, --root, a positional source): one line, exit 2."
    from illama.deploy import main as export_main
    from illama.evaluate import main as eval_main
    from illama.workshop.docs import main as docs_main
    long = str(tmp_path / ('x' * 300))
    for main, args in ((eval_main, ['--checkpoint', long + '.pth', '--model', 'illama_tiny', '--data', str(world['ds'])]),
                       (eval_main, ['--model', 'illama_tiny', '--data', long]),
                       (train_main, ['--regime', 'smoke', '--data', str(world['ds']), '--init', long + '.pth']),
                       (train_main, ['--regime', 'smoke', f'--data={long}']),
                       (export_main, [long + '.safetensors', '--out', str(tmp_path / 'x.onnx')]),
                       (repro_main, ['table17', '--regime', 'smoke', '--data', long, '--root', str(tmp_path / 'r')]),
                       (docs_main, ['--root', long, '--out', str(tmp_path / 'site')])):
        code, err = _run_main(main, args, capsys)
        assert code == 2 and 'File name too long' in err and err.count('\n') == 1 and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize('args,says', [(['--batch', '100000'], '--batch=100000 is not allowed'),
                                       (['--threads', '9999'], 'four per core'),
                                       (['--batch', '2048', '--img-size', '1024'], 'would take 24 GiB'),
                                       (['--data', '.'], '--data is read only by --int8-top1')])
def test_illama_bench_refuses_what_it_could_not_run(tmp_path, capsys, args, says):
    "A batch past any memory, more threads than makes sense, or an option it would ignore: one line, exit 2, at once."
    from illama.workshop.bench import main as bench_main
    code, err = _run_main(bench_main, [*args, '--out', str(tmp_path / 'b.md')], capsys)
    assert code == 2 and says in err and err.count('\n') == 1 and 'Traceback' not in err, err
    assert list(tmp_path.iterdir()) == []

def test_illama_export_of_a_released_tag_says_why_not(tmp_path, capsys, monkeypatch):
    "A released tag where the hub cannot be reached: one line that names it as released weights, not 'no model name'."
    import illama.evaluate as ev
    from illama.deploy import main as export_main
    monkeypatch.setattr(ev, 'hub_reachable', lambda *a, **k: False)
    code, err = _run_main(export_main, ['illama_tiny.in1k', '--out', str(tmp_path / 'x.onnx')], capsys)
    assert code == 2 and "'illama_tiny.in1k' names released weights" in err and err.count('\n') == 1, err

@pytest.mark.parametrize('kw,says', [(dict(opset=1), 'opset=1 is not allowed'), (dict(batch=0), 'batch=0 is not allowed'),
                                     (dict(path='m.txt'), 'expected a .onnx file name'),
                                     (dict(path=None), r"path=None is not allowed: expected a \.onnx file name")])
def test_export_onnx_refuses_what_it_would_not_write(tmp_path, kw, says):
    "The Python API: an opset the exporter does not write (it wrote 18 instead), a batch of 0, a name that is not .onnx."
    pytest.importorskip('onnxscript')
    from illama.deploy import export_onnx
    name = kw.pop('path', 'm.onnx')
    path = name if name is None else tmp_path / name
    with pytest.raises(ValueError, match=says): export_onnx('illama_tiny', path, img_size=32, **kw)
    assert list(tmp_path.iterdir()) == []

def test_a_finished_run_is_not_reported_for_other_classes(world, tmp_path, capsys):
    "The same command on data whose class folders differ from the checkpoint's: refused, naming the classes."
    other = shutil.copytree(world['ds'], tmp_path / 'other')
    for split in ('train', 'val'): (other / split / 'n00000002').rename(other / split / 'zzz')
    out = shutil.copytree(world['run'], tmp_path / 'run')
    before = _snapshot(out)
    code, err = _run_main(train_main, ['--step', 'ViT', *SMOKE, '--data', str(other), '--out', str(out)], capsys)
    assert code == 2 and "holds a checkpoint of another run (classes:" in err and "'zzz']" in err, err
    assert err.count('\n') == 1 and _snapshot(out) == before
