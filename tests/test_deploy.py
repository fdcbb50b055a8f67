"""Chapter 13c: torch.export of every size and roadmap step (dynamic batch, with and without autograd, eager's logits
within 1e-5), ONNX Runtime within 1e-4, int8 from `quantize`, and `illama-export`'s bad input. Small models: quick."""
import os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn as nn
import timm
from illama.vit import ROADMAP, create_roadmap_model, use_kernels
from illama.deploy import (check_program, export_onnx, export_program, graph_ops, int8_linears, load_model, main,
                           onnx_session, quantize, run_onnx)

BIN = Path(sys.executable).parent

def _plain(ep) -> bool:
    "No `out=` product and no `illama::` operator in the exported graph: autograd-safe, ONNX-translatable."
    return not [o for o in graph_ops(ep) if o.endswith('.out') or o.startswith('illama')]

@pytest.mark.parametrize('name', ['illama_tiny', 'illama_small'])
def test_registered_size_exports_with_dynamic_batch(name):
    "The timm names a user calls, at 32²: exported once at batch 2, run at batch 5, with and without no_grad."
    torch.manual_seed(0)
    m = timm.create_model(name, img_size=32).eval()
    ep = export_program(m)
    diff = check_program(ep, m, torch.randn(5, 3, 32, 32))
    assert max(diff.values()) <= 1e-5, diff
    assert _plain(ep)

@pytest.mark.skipif(not os.environ.get('ILLAMA_SLOW'), reason='B and L take minutes on two cores: set ILLAMA_SLOW=1')
@pytest.mark.parametrize('name', ['illama_base', 'illama_large'])
def test_big_sizes_export(name):
    "The same for B and L (slow on two cores: run with ILLAMA_SLOW=1)."
    test_registered_size_exports_with_dynamic_batch(name)

def test_user_export_without_no_grad_at_default_size():
    "The issue's own steps: torch.export.export(timm.create_model('illama_tiny').eval(), (x,)); ep.module()(x)."
    m = timm.create_model('illama_tiny').eval()
    x = torch.randn(1, 3, 224, 224)
    ep = torch.export.export(m, (x,))
    with torch.no_grad(): ref = m(x)
    assert (ep.module()(x) - ref).abs().max() <= 1e-5

def test_jit_trace_passes_its_own_check_with_autograd_on():
    "torch.jit.trace re-traces under no_grad to check the graph: the inference fast paths must not change what it records."
    import warnings
    m = timm.create_model('illama_tiny', img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')           # the API's deprecation, and its note on shape checks as constants
        t = torch.jit.trace(m, x)                 # check_trace=True: raises when the two graphs differ
    y = t(torch.randn(5, 3, 32, 32))              # another batch size, autograd on
    assert y.shape == (5, 1000) and y.requires_grad
    with torch.no_grad(): assert (t(x) - m(x)).abs().max() <= 1e-5

@pytest.mark.parametrize('step', list(ROADMAP))
def test_every_roadmap_step_exports(step):
    "Every step at 32², two blocks; the soft mask at α = 0, 0.5 and 1."
    for alpha in ((0.0, 0.5, 1.0) if step == '+ soft mask' else (0.0,)):
        torch.manual_seed(0)
        m = create_roadmap_model(step, img_size=32, depth=2, num_classes=10).eval()
        m.set_soft_mask_alpha(alpha)
        ep = export_program(m)
        diff = check_program(ep, m, torch.randn(3, 3, 32, 32))
        assert max(diff.values()) <= 1e-5, (step, alpha, diff)
        assert _plain(ep), (step, alpha)

def test_flash_kernels_export_through_the_fake_operator():
    "Under 'flash' the graph keeps Eq. 2's custom operator (traced by its fake kernel) and still gives eager's logits."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', img_size=32, depth=2, num_classes=10).eval()   # block 1: the whole mask
    m.set_soft_mask_alpha(0.3)
    x = torch.randn(2, 3, 32, 32)
    with use_kernels('flash'): ep = export_program(m, x, dynamic_batch=False)
    assert 'illama.post_softmax_attention.default' in graph_ops(ep)
    assert max(check_program(ep, m, x).values()) <= 1e-5

def test_eager_fast_paths_unchanged():
    "Outside tracing, CPU inference still takes chapter 7's chunked Eq. 2 (no autograd): export changed nothing."
    from illama import kernels
    q = torch.randn(1, 3, 65, 16)
    with torch.no_grad(): assert kernels.chunk_inference(q) and not kernels.traced()

@pytest.mark.parametrize('build', [lambda: load_model('illama_tiny', img_size=64),
                                   lambda: create_roadmap_model('+ PS [cls]', 'tiny', img_size=64).eval()],
                         ids=['T', 'PS-cls-causal'])
def test_onnx_runtime_matches_eager(build, tmp_path):
    torch.manual_seed(0)
    m = build()
    s = onnx_session(export_onnx(m, tmp_path / 'm.onnx'))
    x = torch.randn(3, 3, 64, 64)                                     # exported at batch 2: the batch is dynamic
    with torch.no_grad(): assert (run_onnx(s, x) - m(x)).abs().max() <= 1e-4

def test_quantize_gives_int8_linears_and_close_logits():
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', img_size=32, depth=2, num_classes=10).eval()
    q = quantize(m)
    assert int8_linears(q) == sum(isinstance(l, nn.Linear) for l in m.modules()) > 0
    assert not int8_linears(m)                                        # a copy: the float model is untouched
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode(): y, yq = m(x), q(x)
    assert torch.nn.functional.cosine_similarity(yq, y).min() > 0.99

@pytest.mark.parametrize('argv', [['illama_tinyy', '--out', 'x.onnx'], ['illama_tiny', '--out', 'x.txt'],
                                  ['illama_tiny'], ['illama_tiny', '--out', 'x.onnx', '--img-size', 'big'],
                                  ['nope.safetensors', '--out', 'x.onnx']])
def test_cli_bad_input_is_one_line_and_exit_2(argv, tmp_path):
    r = subprocess.run([str(BIN / 'illama-export'), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and r.stdout == '', r
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith('illama-export: error:'), r.stderr
    assert not list(tmp_path.iterdir())

def test_cli_writes_onnx(tmp_path, capsys):
    assert main(['illama_tiny', '--img-size', '32', '--out', str(tmp_path / 't.onnx'), '--check']) == 0
    assert (tmp_path / 't.onnx').stat().st_size > 0 and 'max |ONNX Runtime - eager|' in capsys.readouterr().out
