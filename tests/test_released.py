"The authors' released weights, offline: their file format through the timm tags, illama-eval, and fine-tuning."
import argparse, json, subprocess, sys
from pathlib import Path
import pytest, torch, timm
import illama
from illama.data import fake_imagenet
from illama.recipes import step_recipe, step_model_config
from reference_alg1 import AuthorsIllama

BIN = Path(sys.executable).parent
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)

def _authors_file(path, state_dict):
    "A checkpoint as the authors' training code writes it: the model beside the optimiser, the epoch and the args."
    torch.save(dict(model=state_dict, optimizer={'state': {}, 'param_groups': []}, epoch=299,
                    args=argparse.Namespace(model='illama_tiny', lr=4e-3, input_size=224)), path)
    return path

@pytest.mark.parametrize('tag', ['illama_tiny.in1k', 'illama_base.in21k_ft_in1k_384'])
def test_authors_file_through_the_tag_gives_their_logits(tmp_path, tag):
    torch.manual_seed(0)
    ref = AuthorsIllama(num_classes=1000).eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.2)
    f = _authors_file(tmp_path / 'w.pth', ref.state_dict())
    m = timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(f)), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)

def test_every_released_tag_and_its_transform():
    tags = timm.list_pretrained('illama_*')
    assert len(tags) == 8 and all(timm.get_pretrained_cfg(t).hf_hub_id == 'techmonsterwang/iLLaMA' for t in tags)
    for t in tags:
        cfg = timm.get_pretrained_cfg(t)
        big = t.endswith('_384')
        assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == ((3, 384, 384) if big else (3, 224, 224),
                                                                     1.0 if big else 0.875, 'bicubic')
        assert cfg.hf_hub_filename.endswith('.pth') and (('-384-' in cfg.hf_hub_filename) == big)
    from timm.data import resolve_model_data_config, create_transform
    tf = create_transform(**resolve_model_data_config(timm.create_model('illama_base.in1k_384', depth=1)))
    assert 'Resize(size=(384, 384)' in str(tf)                        # 384: the whole image squashed, nothing cut
    tf224 = create_transform(**resolve_model_data_config(timm.create_model('illama_tiny.in1k', depth=1)))
    assert 'Resize(size=256' in str(tf224) and 'CenterCrop(size=(224, 224))' in str(tf224)   # 224: crop_pct 0.875

def test_a_foreign_file_names_itself_and_the_keys(tmp_path):
    f = tmp_path / 'deit.pth'
    torch.save({'model': timm.create_model('vit_tiny_patch16_224', **SMALL).state_dict()}, f)
    with pytest.raises(ValueError, match=rf"weights '{f}': the checkpoint does not fit this model: missing \["):
        timm.create_model('illama_tiny.in1k', pretrained=True, pretrained_cfg_overlay=dict(file=str(f)), **SMALL)

def test_illama_eval_on_a_small_folder(tmp_path):
    ds = fake_imagenet(tmp_path / 'ds', n_classes=2, n_train=1, n_val=3)
    for i, wnid in enumerate(['n01440764', 'n02102040']): (ds / 'val' / f'n{i:08d}').rename(ds / 'val' / wnid)
    f = _authors_file(tmp_path / 'illama-tiny-in1k-75.0.pth', timm.create_model('illama_tiny').state_dict())
    out = tmp_path / 'res' / 'tiny.json'
    r = subprocess.run([str(BIN / 'illama-eval'), '--model', 'illama_tiny.in1k', '--checkpoint', str(f), '--data', str(ds),
                        '--workers', '0', '--batch-size', '4', '--out', str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res['n_images'] == 6 and res['n_classes'] == 2 and 0 <= res['top1'] <= res['top5'] <= 100
    assert 0 <= res['ece'] <= 1 and res['images_per_s'] > 0 and set(res['restricted']) == {'top1', 'top5', 'ece'}
    assert 'Traceback' not in r.stderr

def test_fine_tuning_smoke_run_from_an_authors_file(tmp_path):
    "illama-train --init FILE: a new head, one frozen epoch, then all layers; exit 0 and a result."
    ds = fake_imagenet(tmp_path / 'ds', n_classes=3, n_train=4, n_val=2)
    rec = step_recipe('+ soft mask', 'tiny', 'smoke')
    src = illama.Illama(step_model_config('+ soft mask', 'tiny', rec, 1000))
    f = _authors_file(tmp_path / 'authors.pth', src.state_dict())
    r = subprocess.run([str(BIN / 'illama-train'), '--step', '+ soft mask', '--regime', 'smoke', '--epochs', '2',
                        '--batch-size', '4', '--data', str(ds), '--init', str(f), '--out', str(tmp_path / 'ft'),
                        '--cache', str(tmp_path / 'c')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'ft' / 'results.json').read_text())
    assert res['epochs'] == 2 and res['config']['model']['num_classes'] == 3
