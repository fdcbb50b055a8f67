"""The model against the paper: Algorithm 1, Table 11, causality, round trips, the roadmap as data, timm's feature
API and error messages."""
import io, json, math, subprocess, sys
from pathlib import Path
import pytest, torch, timm
import illama
from illama import IllamaConfig, create_roadmap_model, checkpoint_filter_fn, get_step, ROADMAP, use_kernels
from illama.paper import TABLE1, TABLE11, TABLE17
from reference_alg1 import AuthorsIllama

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
TABLES = Path(__file__).resolve().parents[2] / 'shared' / 'papers' / 'illama_tables.json'
PAPER_ORDER = ['ViT', '+ LLaMA FFN', '+ LLaMA Norm', '+ LLaMA S.A. (causal)', '+ PS [cls]', 'modified causal mask',
               '+ LLaMA P.E. (RoPE)', '+ LPE', '+ data aug.', '+ soft mask']

@pytest.mark.parametrize('kernels', ['auto', 'reference'])
@pytest.mark.parametrize('alpha', [0.0, 0.37, 1.0])
def test_same_function_as_algorithm_1(alpha, kernels):
    "Given the authors' weights (their key layout), iLLaMA computes what Algorithm 1 does, at every soft-mask alpha."
    torch.manual_seed(0)
    ref = AuthorsIllama().eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.2)   # non-trivial weights everywhere
    ref.soft_mask_rate = alpha
    m = timm.create_model('illama_tiny', **SMALL).eval()
    m.load_state_dict(checkpoint_filter_fn({'model': ref.state_dict()}, m))   # strict: every key maps
    m.set_soft_mask_alpha(alpha)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), use_kernels(kernels): torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)

def test_authors_layout_loads_strictly():
    m = create_roadmap_model('+ soft mask', **SMALL)
    ref_keys = set(AuthorsIllama().state_dict())
    assert set(m.state_dict()) == ref_keys

@pytest.mark.parametrize('kind', ['additive', 'post_softmax'])
def test_causality_at_alpha_0(kind):
    "alpha = 0: under the additive mask token i ignores every later token; under the post-softmax mask they rescale it."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', mask_kind=kind, **SMALL).eval()
    x = m.tokens(torch.randn(1, 3, 32, 32))
    y, i = x.clone(), 7
    y[:, i + 1:] += torch.randn_like(y[:, i + 1:])
    mask = m.attention_mask(x.shape[1])
    with torch.no_grad():
        ox, oy = x, y
        for blk in m.blocks[:1]: ox, oy = blk(ox, mask, m.rope), blk(oy, mask, m.rope)
    if kind == 'additive':
        torch.testing.assert_close(ox[:, :i + 1], oy[:, :i + 1], atol=1e-6, rtol=0)
    else:
        assert not torch.allclose(ox[:, :i + 1], oy[:, :i + 1], atol=1e-5)

def test_alpha_1_is_bidirectional():
    torch.manual_seed(0)
    soft = create_roadmap_model('+ soft mask', **SMALL).eval()
    soft.set_soft_mask_alpha(1.0)
    bid = create_roadmap_model('+ soft mask', attn='bidirectional', **SMALL).eval()
    bid.load_state_dict(soft.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(soft(x), bid(x), atol=1e-5, rtol=1e-5)

def test_alpha_is_stored_once():
    "alpha lives on the model (set, shown live, used); the config does not hold a copy that could go stale."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', **SMALL).eval()
    assert m.soft_mask_alpha == 0.0 and 'soft_mask_alpha' not in m.cfg.to_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y0 = m(x)
        m.set_soft_mask_alpha(0.6)
        assert not torch.allclose(m(x), y0, atol=1e-4)
    assert 'soft_mask_alpha=0.6' in repr(m)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['soft_mask_alpha'\]"):
        create_roadmap_model('+ soft mask', soft_mask_alpha=0.5)

def test_attention_collapse_and_ps_cls():
    from illama import patch_sensitivity
    torch.manual_seed(0)
    img = torch.randn(3, 32, 32)
    collapsed = create_roadmap_model('+ LLaMA S.A. (causal)', mask_kind='additive', **SMALL).eval()
    assert patch_sensitivity(collapsed, img).max() < 1e-6
    ps = create_roadmap_model('+ PS [cls]', **SMALL).eval()
    assert (patch_sensitivity(ps, img) > 1e-4).all()

def test_rope_scores_depend_on_offset_only():
    r = illama.Rope1D(8, (3, 3))
    q, k = torch.randn(8), torch.randn(8)
    qr, kr = r.rotate(q.expand(1, 1, 10, 8)), r.rotate(k.expand(1, 1, 10, 8))
    s = (qr @ kr.transpose(-2, -1))[0, 0]
    torch.testing.assert_close(s[:-1, :-1], s[1:, 1:], atol=1e-5, rtol=1e-5)

def test_swiglu_and_rmsnorm():
    assert [illama.llama_hidden_dim(d) for d in (192, 384, 768, 1024)] == [512, 1024, 2048, 2816]
    n = illama.RMSNorm(6)
    x = torch.randn(4, 6)
    torch.testing.assert_close(n(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large'])
def test_table_11(size):
    with torch.device('meta'): m = timm.create_model(f'illama_{size}')
    params, macs = illama.count_params(m) / 1e6, illama.count_macs(m) / 1e9
    p = TABLE11[size]
    assert {k: p[k] for k in ('depth', 'embed_dim', 'num_heads')} == illama.SIZES[size]
    assert abs(params / p['params_m'] - 1) <= 0.01, params
    tol = 0.05 if size == 'tiny' else 0.03 * p['macs_g']   # tiny: the paper's 1.3 G is rounded (we count 1.25 G)
    assert abs(macs - p['macs_g']) <= tol, macs

def test_count_macs_counts_the_cpu_flash_kernel():
    "timm's DeiT-Ti runs torch's CPU flash kernel: counted (1.25 G, like iLLaMA-T), not dropped (1.07 G)."
    deit = illama.count_macs(timm.create_model('vit_tiny_patch16_224'))
    with torch.device('meta'): ours = illama.count_macs(timm.create_model('illama_tiny'))
    assert deit == ours == 1_253_683_200

def test_timm_registry_default_is_illama_tiny():
    m = timm.create_model('illama_tiny')
    assert abs(illama.count_params(m) - 5.7e6) / 5.7e6 < 0.01
    assert m.cfg.to_dict() == illama.roadmap_config('+ soft mask', 'tiny').to_dict()
    assert m.pretrained_cfg['tag'] == 'in1k' and m.pretrained_cfg['hf_hub_filename'] == 'illama-tiny-in1k-75.0.pth'
    with pytest.raises(ValueError, match='none released'): timm.create_model('illama_tiny.untrained', pretrained=True)

@pytest.mark.parametrize('cls_pos', ['first', 'last'])
def test_features_only_through_timm(cls_pos):
    """timm.create_model(..., features_only=True): one (B, C, H, W) map of patch tokens per chosen block, the class
    token left out wherever it is; the same numbers as the model's own blocks."""
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, cls_pos=cls_pos)
    f = timm.create_model('illama_tiny', features_only=True, out_indices=(0, 2), **kw).eval()
    assert len(f.model.blocks) == 3 and f.feature_info.channels() == [32, 32] and f.feature_info.reduction() == [8, 8]
    m = create_roadmap_model('+ soft mask', **kw).eval()
    m.load_state_dict(f.model.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, t = f(x), m.tokens(x)
        mask, outs = m.attention_mask(t.shape[1]), []
        for blk in m.blocks[:3]:
            t = blk(t, mask, m.rope)
            outs.append(t)
    c = 0 if cls_pos == 'first' else 16
    for got, seq in zip(feats, (outs[0], outs[2])):
        patches = torch.cat([seq[:, :c], seq[:, c + 1:]], 1)
        torch.testing.assert_close(got, patches.transpose(1, 2).reshape(2, 32, 4, 4), atol=1e-6, rtol=0)
    final, inter = m.forward_intermediates(x, indices=2, return_prefix_tokens=True, output_fmt='NLC')
    assert [(p.shape, q.shape) for p, q in inter] == [((2, 16, 32), (2, 1, 32))] * 2
    torch.testing.assert_close(final, m.forward_features(x))

@pytest.mark.parametrize('fmt', ['torch', 'safetensors'])
def test_state_dict_round_trip(fmt, tmp_path):
    torch.manual_seed(0)
    a = create_roadmap_model('+ soft mask', **SMALL).eval()
    b = create_roadmap_model('+ soft mask', **SMALL).eval()
    if fmt == 'torch':
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf)
    else:
        from safetensors.torch import save_file, load_file
        save_file(a.state_dict(), tmp_path / 'm.safetensors')
        sd = load_file(tmp_path / 'm.safetensors')
    b.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(a(x), b(x))

def test_interpolation_224_to_384_from_file(tmp_path):
    torch.manual_seed(0)
    kw = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10)
    a = timm.create_model('illama_tiny', **kw)
    torch.save({'model': a.state_dict()}, tmp_path / 'ck.pth')
    overlay = dict(file=str(tmp_path / 'ck.pth'), num_classes=10)
    b = timm.create_model('illama_tiny', img_size=384, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    assert b.pos_embed.shape == (1, 577, 32) and b.rope.cos.shape[0] == 577
    torch.testing.assert_close(b.pos_embed[:, -1], a.pos_embed[:, -1])   # class-token row kept
    assert a.set_input_size(384) is a and a.cfg.img_size == (384, 384)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad(): torch.testing.assert_close(a.eval()(x), b.eval()(x))

NAN = math.nan

@pytest.mark.parametrize('make, msg', [
    (lambda: create_roadmap_model('ViT', **SMALL)(torch.randn(1, 3, 48, 48)),
     'does not match img_size=(32, 32); resize the images or call model.set_input_size(img_size=(48, 48))'),
    (lambda: create_roadmap_model('ViT', **SMALL)(torch.randn(1, 3, 70, 70)),
     'resize the images (to img_size, or to a multiple of patch_size=8 and call model.set_input_size(img_size=...))'),
    (lambda: create_roadmap_model('ViT', **SMALL)(torch.randn(1, 4, 32, 32)),
     'images have 4 channels but the model has in_chans=3'),
    (lambda: IllamaConfig(embed_dim=100, num_heads=3), 'embed_dim=100 is not divisible by num_heads=3'),
    (lambda: create_roadmap_model('+ LPE', embed_dim=30, num_heads=2),
     "rope='1d' needs a head dim divisible by 2, but embed_dim=30 / num_heads=2 = 15"),
    (lambda: create_roadmap_model('+ LPE', rope='2d', embed_dim=36, num_heads=2),
     "rope='2d' needs a head dim divisible by 4"),
    (lambda: create_roadmap_model('ViT').set_soft_mask_alpha(1.5),
     'soft_mask_alpha=1.5 is not allowed; it must be a number in [0, 1]'),
    (lambda: create_roadmap_model('ViT').set_soft_mask_alpha(-1), 'soft_mask_alpha=-1'),
    (lambda: create_roadmap_model('ViT').set_soft_mask_alpha(NAN), 'soft_mask_alpha=nan is not allowed'),
    (lambda: IllamaConfig(drop_path_rate=NAN), 'drop_path_rate=nan is not allowed; it must be a number in [0, 1]'),
    (lambda: IllamaConfig(norm_eps=NAN), 'norm_eps=nan is not allowed'),
    (lambda: IllamaConfig(mlp_ratio=-1), 'mlp_ratio=-1 is not allowed; it must be a number > 0'),
    (lambda: IllamaConfig(mlp_ratio=0), 'mlp_ratio=0 is not allowed; it must be a number > 0'),
    (lambda: IllamaConfig(mlp_ratio=NAN), 'mlp_ratio=nan is not allowed; it must be a number > 0'),
    (lambda: create_roadmap_model('+ LPE', rope_theta=0), 'rope_theta=0 is not allowed; it must be a number > 0'),
    (lambda: create_roadmap_model('+ LPE', rope_theta=NAN), 'rope_theta=nan is not allowed; it must be a number > 0'),
    (lambda: IllamaConfig(qkv_bias='no'), "qkv_bias='no' is not allowed; it must be True or False"),
    (lambda: IllamaConfig(lpe='no'), "lpe='no' is not allowed; it must be True or False"),
    (lambda: create_roadmap_model('+ Mamba'), "step='+ Mamba' is not a roadmap step; choose one of ['ViT', "),
    (lambda: create_roadmap_model('ViT', 'huge'),
     "size='huge' is not allowed; choose one of ['tiny', 'small', 'base', 'large']"),
    (lambda: IllamaConfig(attn='sparse'),
     "attn='sparse' is not allowed; choose one of ['bidirectional', 'causal', 'modified_causal']"),
    (lambda: IllamaConfig(rope='3d'), "rope='3d' is not allowed"),
    (lambda: IllamaConfig(mask_kind='mul'),
     "mask_kind='mul' is not allowed; choose one of ['post_softmax', 'additive']"),
    (lambda: timm.create_model('illama_tiny', depth_multiplier=2), "unknown option(s) ['depth_multiplier']"),
    (lambda: illama.SoftMaskSchedule('cosine'), "schedule='cosine' is not allowed"),
    (lambda: use_kernels('fast').__enter__(),
     "kernels='fast' is not allowed; choose one of ['auto', 'flash', 'reference']"),
    (lambda: illama.add_step('+ Mamba', '+ Transformer'), "parent='+ Transformer' is not a registered step"),
])
def test_errors_name_the_parameter(make, msg):
    with pytest.raises(ValueError) as e: make()
    assert msg in str(e.value), str(e.value)

def test_size_hint_is_only_given_when_it_works():
    "The hint to call set_input_size names a size the model accepts; for 70 px it is not given."
    m = create_roadmap_model('ViT', **SMALL)
    with pytest.raises(ValueError) as e: m(torch.randn(1, 3, 70, 70))
    assert 'set_input_size(img_size=(70, 70))' not in str(e.value)
    with pytest.raises(ValueError, match='img_size=\\(70, 70\\) is not allowed'): m.set_input_size(70)
    m.set_input_size((48, 40))                                # what the hint for 48 x 40 px proposes works
    assert m(torch.randn(1, 3, 48, 40)).shape == (1, 10)

def test_presets_cover_tables_17_and_1():
    assert list(ROADMAP) == PAPER_ORDER
    t17 = [s.name for s in ROADMAP.values() if 'table17' in s.tables]
    assert len(t17) == 9 and t17[0] == 'ViT' and t17[-1] == '+ soft mask'
    assert [get_step(n).name for n in ('causal (cls first)', 'causal + PS [cls]', 'modified causal mask')] == \
           ['+ LLaMA S.A. (causal)', '+ PS [cls]', 'modified causal mask']

def test_paper_numbers_come_from_chapter_9():
    "Each step's `paper` is read from illama.paper (Table 17, or Table 1 for the modified mask), as a copy."
    for name, step in ROADMAP.items():
        row = TABLE17.get(name) or TABLE1[name]
        assert step.paper == {k: row.get(k) for k in ('tiny', 'tiny_train_loss', 'base', 'base_train_loss')}, name
    get_step('ViT').paper['tiny'] = -1
    assert get_step('ViT').paper['tiny'] == TABLE17['ViT']['tiny'] == 73.8
    with pytest.raises(AttributeError): get_step('ViT').paper = {}

CHAIN = {'vit': 1, 'swiglu': 2, 'rmsnorm': 3, 'masks': 6, 'rope': 8, 'soft_mask': 10, 'models': 10}
BARE = ("import importlib.util, sys, types\npkg = types.ModuleType('illama')\n"   # the package without its __init__
        "pkg.__path__ = list(importlib.util.find_spec('illama').submodule_search_locations)\n"
        "sys.modules['illama'] = pkg\n")

def _roadmap_after_importing(module: str, bare: bool) -> dict:
    "The roadmap (step: arch) after importing `illama.<module>` first in a fresh interpreter."
    code = (BARE if bare else '') + f"import json, illama.{module}\nfrom illama.vit import ROADMAP\n" + \
           "print(json.dumps({k: s.arch for k, s in ROADMAP.items()}))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)

def test_importing_a_chapter_first_gives_the_whole_roadmap():
    "`python -c 'import illama.soft_mask'`: the package's __init__ runs first, every step is there in order."
    assert _roadmap_after_importing('soft_mask', bare=False) == {k: s.arch for k, s in ROADMAP.items()}

@pytest.mark.parametrize('module', list(CHAIN))
def test_each_chapter_imports_the_steps_it_builds_on(module):
    "A chapter's own imports (no package __init__) register the chain of steps it builds on, in the paper's order."
    got, n = _roadmap_after_importing(module, bare=True), CHAIN[module]
    assert list(got) == PAPER_ORDER[:n] and got == {k: ROADMAP[k].arch for k in PAPER_ORDER[:n]}, module

@pytest.mark.skipif(not TABLES.exists(), reason='../shared/papers/illama_tables.json not beside the checkout')
def test_paper_numbers_match_the_transcribed_tables():
    rows = {r['row']: r for r in json.loads(TABLES.read_text())['table17_roadmap']['rows']}
    names = {s: s for s in PAPER_ORDER if s != 'modified causal mask'}
    names['+ PS [cls]'] = '+ LLaMA S.A. + PS [cls]'
    keys = ('tiny', 'base', 'tiny_train_loss', 'base_train_loss')
    for ours, theirs in names.items():
        p, r = get_step(ours).paper, rows[theirs]
        assert tuple(p[k] for k in keys) == tuple(r[k] for k in keys), ours
