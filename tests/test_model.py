"The model against the paper: Algorithm 1, Table 11, causality, round trips and error messages."
import io, json, math
from pathlib import Path
import pytest, torch, timm
import illama
from illama import IllamaConfig, Illama, create_roadmap_model, checkpoint_filter_fn, get_step, ROADMAP
from reference_alg1 import AuthorsIllama

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
TABLES = Path(__file__).resolve().parents[2] / 'shared' / 'papers' / 'illama_tables.json'

@pytest.mark.parametrize('alpha', [0.0, 0.37, 1.0])
def test_same_function_as_algorithm_1(alpha):
    "Given the authors' weights (their key layout), iLLaMA computes what Algorithm 1 computes, at every soft-mask alpha."
    torch.manual_seed(0)
    ref = AuthorsIllama().eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.2)   # non-trivial weights everywhere
    ref.soft_mask_rate = alpha
    m = timm.create_model('illama_tiny', **SMALL).eval()
    m.load_state_dict(checkpoint_filter_fn({'model': ref.state_dict()}, m))   # strict: every key maps
    m.set_soft_mask_alpha(alpha)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)

def test_authors_layout_loads_strictly():
    m = create_roadmap_model('+ soft mask', **SMALL)
    ref_keys = set(AuthorsIllama().state_dict())
    assert set(m.state_dict()) == ref_keys

@pytest.mark.parametrize('kind', ['additive', 'post_softmax'])
def test_causality_at_alpha_0(kind):
    "alpha = 0: under the additive mask the output at token i ignores every later token; under the post-softmax mask later tokens only rescale it."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', mask_kind=kind, **SMALL).eval()
    x = m.tokens(torch.randn(1, 3, 32, 32)); y = x.clone(); i = 7
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
    soft = create_roadmap_model('+ soft mask', **SMALL).eval(); soft.set_soft_mask_alpha(1.0)
    bid = create_roadmap_model('+ soft mask', attn='bidirectional', **SMALL).eval(); bid.load_state_dict(soft.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(soft(x), bid(x), atol=1e-5, rtol=1e-5)

def test_attention_collapse_and_ps_cls():
    from illama import patch_sensitivity
    torch.manual_seed(0)
    img = torch.randn(3, 32, 32)
    collapsed = create_roadmap_model('+ LLaMA S.A. (causal)', mask_kind='additive', **SMALL).eval()
    assert patch_sensitivity(collapsed, img).max() < 1e-6
    ps = create_roadmap_model('+ PS [cls]', **SMALL).eval()
    assert (patch_sensitivity(ps, img) > 1e-4).all()

def test_rope_scores_depend_on_offset_only():
    r = illama.Rope1D(8, (3, 3)); q, k = torch.randn(8), torch.randn(8)
    qr, kr = r(q.expand(1, 1, 10, 8), k.expand(1, 1, 10, 8))
    s = (qr @ kr.transpose(-2, -1))[0, 0]
    torch.testing.assert_close(s[:-1, :-1], s[1:, 1:], atol=1e-5, rtol=1e-5)

def test_swiglu_and_rmsnorm():
    assert [illama.llama_hidden_dim(d) for d in (192, 384, 768, 1024)] == [512, 1024, 2048, 2816]
    n = illama.RMSNorm(6); x = torch.randn(4, 6)
    torch.testing.assert_close(n(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

@pytest.mark.parametrize('size', ['tiny', 'small', 'base', 'large'])
def test_table_11(size):
    with torch.device('meta'): m = timm.create_model(f'illama_{size}')
    params, macs = illama.count_params(m) / 1e6, illama.count_macs(m) / 1e9
    p = illama.SIZES[size]
    assert abs(params / p['params_m'] - 1) <= 0.01, params
    tol = 0.05 if size == 'tiny' else 0.03 * p['macs_g']   # tiny: the paper's 1.3 G is rounded (we count 1.25 G)
    assert abs(macs - p['macs_g']) <= tol, macs

def test_timm_registry_default_is_illama_tiny():
    m = timm.create_model('illama_tiny')
    assert abs(illama.count_params(m) - 5.7e6) / 5.7e6 < 0.01
    assert m.cfg.to_dict() == illama.roadmap_config('+ soft mask', 'tiny').to_dict()
    with pytest.raises(RuntimeError): timm.create_model('illama_tiny', pretrained=True)   # no weights are downloaded

@pytest.mark.parametrize('fmt', ['torch', 'safetensors'])
def test_state_dict_round_trip(fmt, tmp_path):
    torch.manual_seed(0)
    a = create_roadmap_model('+ soft mask', **SMALL).eval(); b = create_roadmap_model('+ soft mask', **SMALL).eval()
    if fmt == 'torch':
        buf = io.BytesIO(); torch.save(a.state_dict(), buf); buf.seek(0); sd = torch.load(buf)
    else:
        from safetensors.torch import save_file, load_file
        save_file(a.state_dict(), tmp_path / 'm.safetensors'); sd = load_file(tmp_path / 'm.safetensors')
    b.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(a(x), b(x))

def test_interpolation_224_to_384_from_file(tmp_path):
    torch.manual_seed(0)
    kw = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10)
    a = timm.create_model('illama_tiny', **kw)
    torch.save({'model': a.state_dict()}, tmp_path / 'ck.pth')
    b = timm.create_model('illama_tiny', img_size=384, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'ck.pth'), num_classes=10), **kw)
    assert b.pos_embed.shape == (1, 577, 32) and b.rope.cos.shape[0] == 577
    torch.testing.assert_close(b.pos_embed[:, -1], a.pos_embed[:, -1])   # class-token row kept
    a.set_input_size(384)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad(): torch.testing.assert_close(a.eval()(x), b.eval()(x))

@pytest.mark.parametrize('make, msg', [
    (lambda: create_roadmap_model('ViT', **SMALL)(torch.randn(1, 3, 48, 48)), 'does not match img_size=(32, 32)'),
    (lambda: create_roadmap_model('ViT', **SMALL)(torch.randn(1, 4, 32, 32)), 'images have 4 channels but the model has in_chans=3'),
    (lambda: IllamaConfig(embed_dim=100, num_heads=3), 'embed_dim=100 is not divisible by num_heads=3'),
    (lambda: create_roadmap_model('+ LPE', embed_dim=30, num_heads=2), "rope='1d' needs a head dim divisible by 2, but embed_dim=30 / num_heads=2 = 15"),
    (lambda: create_roadmap_model('+ LPE', rope='2d', embed_dim=36, num_heads=2), "rope='2d' needs a head dim divisible by 4"),
    (lambda: IllamaConfig(soft_mask_alpha=1.5), 'soft_mask_alpha=1.5 is not allowed; it must be a number in [0, 1]'),
    (lambda: create_roadmap_model('ViT').set_soft_mask_alpha(-1), 'soft_mask_alpha=-1'),
    (lambda: create_roadmap_model('+ Mamba'), "step='+ Mamba' is not a roadmap step; choose one of ['ViT', "),
    (lambda: create_roadmap_model('ViT', 'huge'), "size='huge' is not allowed; choose one of ['tiny', 'small', 'base', 'large']"),
    (lambda: IllamaConfig(attn='sparse'), "attn='sparse' is not allowed; choose one of ['bidirectional', 'causal', 'modified_causal']"),
    (lambda: IllamaConfig(rope='3d'), "rope='3d' is not allowed"),
    (lambda: IllamaConfig(mask_kind='mul'), "mask_kind='mul' is not allowed; choose one of ['post_softmax', 'additive']"),
    (lambda: timm.create_model('illama_tiny', depth_multiplier=2), "unknown option(s) ['depth_multiplier']"),
    (lambda: illama.SoftMaskSchedule('cosine'), "schedule='cosine' is not allowed"),
])
def test_errors_name_the_parameter(make, msg):
    with pytest.raises(ValueError) as e: make()
    assert msg in str(e.value), str(e.value)

def test_presets_cover_tables_17_and_1():
    t17 = [s.name for s in ROADMAP.values() if 'table17' in s.tables]
    assert len(t17) == 9 and t17[0] == 'ViT' and t17[-1] == '+ soft mask'
    assert [get_step(n).name for n in ('causal (cls first)', 'causal + PS [cls]', 'modified causal mask')] == \
           ['+ LLaMA S.A. (causal)', '+ PS [cls]', 'modified causal mask']

@pytest.mark.skipif(not TABLES.exists(), reason='../shared/papers/illama_tables.json not beside the checkout')
def test_paper_numbers_match_the_transcribed_tables():
    rows = {r['row']: r for r in json.loads(TABLES.read_text())['table17_roadmap']['rows']}
    names = {'ViT': 'ViT', '+ LLaMA FFN': '+ LLaMA FFN', '+ LLaMA Norm': '+ LLaMA Norm', '+ LLaMA S.A. (causal)': '+ LLaMA S.A. (causal)',
             '+ PS [cls]': '+ LLaMA S.A. + PS [cls]', '+ LLaMA P.E. (RoPE)': '+ LLaMA P.E. (RoPE)', '+ LPE': '+ LPE',
             '+ data aug.': '+ data aug.', '+ soft mask': '+ soft mask'}
    for ours, theirs in names.items():
        p, r = get_step(ours).paper, rows[theirs]
        assert (p['tiny'], p['base'], p['tiny_train_loss'], p['base_train_loss']) == (r['tiny'], r['base'], r['tiny_train_loss'], r['base_train_loss']), ours
