"""Chapter 7's fused kernels against the equations as written (Eq. 1 / Eq. 2, RoPE, RMSNorm); the kernel switch really
switches; FLOPs (Table 2); torch.compile and bf16; the benchmark CLI."""
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from illama.masks import AttentionMask, attention_reference, soft_mask, causal_mask
from illama.kernels import (post_softmax_sdpa, rotate_qkv, table2_flops, causal_needed_macs,
                            counted_macs, pv_skipped_macs, sdpa_lse, materialise, MATERIALISE_MAX_N)
from illama.vit import Attention, create_roadmap_model, ROADMAP, use_kernels, kernel_choice, runs_materialised
from illama.rope import Rope1D, Rope2D

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)

def _grads(out, ins, g): return torch.autograd.grad(out, ins, g)

def _close(a, b, eps=1e-5): assert (a - b).abs().max().item() <= eps, (a - b).abs().max().item()

@pytest.mark.parametrize('n', [2, 17, 64, 197])
@pytest.mark.parametrize('kind', ['post_softmax', 'additive'])
@pytest.mark.parametrize('cls', ['none', 'first', 'last'])
def test_fast_equals_reference(n, kind, cls):
    "Every mode, class token first or last, alpha in {0, 0.3, 1}: values and gradients as Eq. 1 / Eq. 2 (fp32, 1e-5)."
    cls_row = {'none': None, 'first': 0, 'last': n - 1}[cls]
    torch.manual_seed(n)
    qkv = torch.randn(2, n, 3, 3, 16).permute(2, 0, 3, 1, 4)          # non-contiguous q, k, v as the model makes them
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
    for alpha in (0.0, 0.3, 1.0):
        m = AttentionMask(n, cls_row, kind, alpha)
        with use_kernels('flash'): out = m.attend(q, k, v)
        ref = attention_reference(q, k, v, soft_mask(n, alpha, cls_row), kind)
        _close(out, ref)
        g = torch.randn_like(out)
        for a, b in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)): _close(a, b)

class OpLog(TorchDispatchMode):
    "The names of the operators (aten's and ours) that run while active."
    def __init__(self):
        super().__init__()
        self.ops = set()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

def _ops_run(fn, kernels):
    with use_kernels(kernels), OpLog() as log, torch.no_grad(): fn()
    return log.ops

@pytest.mark.parametrize('kind', ['post_softmax', 'additive'])
def test_reference_switch_runs_the_equations(kind):
    "'reference' runs Eq. 1 / Eq. 2 as written, 'flash' the fused kernels: fails if the switch did nothing."
    torch.manual_seed(0)
    m = AttentionMask(9, 0, kind, 0.2)
    q, k, v = torch.randn(3, 1, 2, 9, 8).unbind(0)
    ref, flash = (_ops_run(lambda: m.attend(q, k, v), name) for name in ('reference', 'flash'))
    fused = {'illama.post_softmax_attention' if kind == 'post_softmax'
             else 'aten._scaled_dot_product_flash_attention_for_cpu'}
    assert 'aten._softmax' in ref and not ref & fused, ref
    assert fused <= flash and 'aten._softmax' not in flash, flash
    with use_kernels('reference'): r = m.attend(q, k, v)
    assert torch.equal(r, attention_reference(q, k, v, m.dense(), kind))
    with use_kernels('flash'): f = m.attend(q, k, v)
    assert not torch.equal(f, r) and (f - r).abs().max() < 1e-5          # another computation, the same numbers

def test_reference_switch_reaches_every_layer():
    "A whole model under 'reference': no fused attention, no complex RoPE, autograd RMSNorm; under 'flash' all three."
    m = create_roadmap_model('+ soft mask', **TINY)
    m.set_soft_mask_alpha(0.3)
    x = torch.randn(2, 3, 32, 32)
    ref, flash = (_ops_run(lambda: m(x), name) for name in ('reference', 'flash'))
    ours = {'illama.post_softmax_attention', 'aten.view_as_complex'}
    assert ours <= flash and 'aten._softmax' not in flash, flash
    assert not ours & ref and 'aten._softmax' in ref, ref
    t = torch.randn(2, 5, 32, requires_grad=True)
    nodes = dict(reference='MulBackward0', flash='RMSNormFunctionBackward', auto='RMSNormFunctionBackward')
    for name, node in nodes.items():
        with use_kernels(name): assert type(m.norm(t).grad_fn).__name__ == node, name

def test_kernel_choice_is_validated_and_restored():
    assert kernel_choice() == 'auto'
    msg = r"kernels='fast' is not allowed; choose one of \['auto', 'flash', 'reference'\]"
    with pytest.raises(ValueError, match=msg):
        with use_kernels('fast'): pass
    with pytest.raises(KeyError):
        with use_kernels('reference'): raise KeyError('inside')
    assert kernel_choice() == 'auto'

def _largest_alloc(fn):
    from torch.profiler import profile
    with profile(profile_memory=True) as p: fn()
    return max(e.self_cpu_memory_usage for e in p.events())

@pytest.mark.parametrize('kind', ['post_softmax', 'additive'])
def test_auto_materialises_only_cpu_training_at_small_n(kind):
    "'auto' = the n x n product for a CPU training step or bf16 at n <= MATERIALISE_MAX_N (same values and gradients as"
    " fused), the fused kernels for fp32 without autograd and at 577 tokens."
    n, h = 197, 3
    assert n <= MATERIALISE_MAX_N < 577
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, h, n, 16, requires_grad=True) for _ in range(3))
    m = AttentionMask(n, n - 1, kind, 0.3)
    nn_bytes = 2 * h * n * n * 4
    assert materialise(q) and _largest_alloc(lambda: m.attend(q, k, v)) >= nn_bytes
    with torch.no_grad(): assert not materialise(q)
    with use_kernels('flash'): assert not runs_materialised(q) and _largest_alloc(lambda: m.attend(q, k, v)) < nn_bytes
    assert not materialise(torch.randn(1, h, 577, 16, requires_grad=True))
    with torch.no_grad():
        assert materialise(q.bfloat16()) and not materialise(q.bfloat16()[..., :1, :].expand(2, h, 577, 16))
    out = m.attend(q, k, v)
    with use_kernels('flash'): fused = m.attend(q, k, v)
    _close(out, fused)
    g = torch.randn_like(out)
    for a, b in zip(_grads(out, (q, k, v), g), _grads(fused, (q, k, v), g)): _close(a, b)

def test_auto_and_fused_agree_under_bf16():
    "Under bf16 autocast the materialised and the fused paths agree to bf16 tolerance (values and gradients)."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', **TINY); m.set_soft_mask_alpha(0.3)
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(x); g = torch.autograd.grad(y.float().sum(), m.blocks[0].attn.qkv.weight)[0]
        with use_kernels('flash'):
            yf = m(x)
            gf = torch.autograd.grad(yf.float().sum(), m.blocks[0].attn.qkv.weight)[0]
    assert (y.float() - yf.float()).abs().max() < 0.05 * yf.float().abs().max()
    assert F.cosine_similarity(g.flatten().float(), gf.flatten().float(), dim=0) > 0.99

@pytest.mark.parametrize('alpha', [0.0, 0.5, 0.999])
def test_one_call_form_on_2n_keys(alpha):
    "The any-device form: one SDPA over keys [K; K], values [V; 0], mask [log S | log(1-S)] is Eq. 2."
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 13, 8, requires_grad=True) for _ in range(3))
    for c in (None, 0):
        s = soft_mask(13, alpha, c)
        out, ref = post_softmax_sdpa(q, k, v, s), attention_reference(q, k, v, s)
        _close(out, ref)
        g = torch.randn_like(out)
        for a, b in zip(_grads(out, (q, k, v), g), _grads(ref, (q, k, v), g)): _close(a, b)

def test_lse_is_the_log_sum_exp():
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    for causal in (False, True):
        a = (q @ k.transpose(-2, -1)) * 8 ** -0.5
        if causal: a = a.masked_fill(~causal_mask(7), float('-inf'))
        _close(sdpa_lse(q, k, v, causal)[1], a.logsumexp(-1))

def test_inference_memory_is_bounded_by_one_chunk():
    "The paper's inference mode (post-softmax causal, alpha 0): the fused kernels allocate nothing heads x N x N;"
    " 'auto' one chunk of images at a time, whatever the batch; the reference the whole batch's scores."
    from torch.profiler import profile
    from illama.kernels import CHUNK_BYTES
    n, h, B = 197, 3, 16
    q, k, v = torch.randn(3, B, h, n, 32).unbind(0)
    m = AttentionMask(n)
    def largest(fn):
        with torch.no_grad(), profile(profile_memory=True) as p: fn()
        return max(e.self_cpu_memory_usage for e in p.events())
    nn_bytes = h * n * n * 4
    with use_kernels('flash'): assert largest(lambda: m.attend(q, k, v)) <= 2 * B * h * n * 32 * 4   # O(B·n·d)
    assert largest(lambda: m.attend(q, k, v)) <= max(CHUNK_BYTES, nn_bytes) < B * nn_bytes
    assert largest(lambda: attention_reference(q, k, v, m.dense())) >= B * nn_bytes

@pytest.mark.parametrize('step', list(ROADMAP))
def test_inference_in_image_chunks_is_the_same_function(step, monkeypatch):
    "CPU inference a chunk of images at a time (chapter 7's rule) gives the logits of the whole batch at once, every"
    " step and alpha; it really runs chunk by chunk; the peak memory is one chunk's, not the batch's."
    import illama.kernels as K
    torch.manual_seed(0)
    m = create_roadmap_model(step, **TINY).eval()
    x = torch.randn(7, 3, 32, 32)
    calls = []
    m.patch_embed.register_forward_hook(lambda mod, i, o: calls.append(len(i[0])))
    for alpha in (0.0, 0.3):
        m.set_soft_mask_alpha(alpha)
        with torch.no_grad():
            monkeypatch.setattr(K, 'IMAGE_CHUNK_BYTES', 2 ** 40)       # the whole batch in one chunk
            whole = m(x)
            monkeypatch.setattr(K, 'IMAGE_CHUNK_BYTES', 2 * m.image_bytes)   # two images a chunk
            _close(m(x), whole, 1e-5)
            with use_kernels('reference'): _close(m(x), whole, 1e-5)   # the equations as written, unchunked
    assert calls == [7, 2, 2, 2, 1, 7] * 2, calls
    y = m(x)                                                           # with autograd: one chunk, the batch
    assert calls[-1] == 7 and y.requires_grad

def test_chunked_inference_memory_is_one_chunk():
    "A batch of 64 images at 224² with iLLaMA-T's width: the largest allocation is one chunk's, not the batch's."
    from torch.profiler import profile
    from illama.kernels import IMAGE_CHUNK_BYTES
    m = create_roadmap_model('+ soft mask', 'tiny', depth=2).eval()
    x = torch.randn(64, 3, 224, 224)
    with torch.no_grad(), profile(profile_memory=True) as p: m(x)
    largest = max(e.self_cpu_memory_usage for e in p.events())
    assert IMAGE_CHUNK_BYTES // 2 < largest <= IMAGE_CHUNK_BYTES < 64 * m.image_bytes, (largest, m.image_bytes)

@pytest.mark.parametrize('rope', [Rope1D(8, (4, 4)), Rope2D(8, (4, 4), cls_pos='first')])
def test_fused_rope_equals_chapter_4(rope):
    "Complex-product RoPE on the qkv slab = chapter 4's rotation (values, gradients; fp32, 1e-6); the layer runs each."
    qkv = torch.randn(2, 17, 3, 2, 8, requires_grad=True)
    q, k = rope.rotate(qkv[:, :, 0].transpose(1, 2)), rope.rotate(qkv[:, :, 1].transpose(1, 2))
    q2, k2, v2 = rotate_qkv(qkv, rope.cos, rope.sin)
    assert torch.equal(v2, qkv[:, :, 2].transpose(1, 2))
    _close(q, q2, 1e-6)
    _close(k, k2, 1e-6)
    g = torch.randn(2, *q.shape)
    grad = lambda a, b: torch.autograd.grad((a * g[0] + b * g[1]).sum(), qkv)[0]
    _close(grad(q, k), grad(q2, k2), 1e-6)
    for name, same in (('reference', (q, k)), ('flash', (q2, k2))):
        with use_kernels(name): q3, k3, v3 = rope(qkv)
        assert torch.equal(q3, same[0]) and torch.equal(k3, same[1]) and torch.equal(v3, qkv[:, :, 2].transpose(1, 2))

@pytest.mark.parametrize('step', list(ROADMAP))
def test_models_fast_equal_reference(step):
    "Every roadmap step: logits and parameter gradients with the fast path equal those with the plain reference."
    torch.manual_seed(0)
    m = create_roadmap_model(step, **TINY); m.set_soft_mask_alpha(0.3)
    x = torch.randn(2, 3, 32, 32)
    with use_kernels('flash'):
        y = m(x)
        g = torch.autograd.grad(y.square().sum(), list(m.parameters()))
    with use_kernels('reference'):
        yr = m(x)
        gr = torch.autograd.grad(yr.square().sum(), list(m.parameters()))
    _close(y, yr)
    for a, b in zip(g, gr): _close(a, b)

def test_rope_size_mismatch_still_raises():
    m = create_roadmap_model('+ soft mask', **TINY)
    x = m.tokens(torch.randn(1, 3, 32, 32))[:, :-1]
    with pytest.raises(ValueError, match='rope table has 17 positions but the sequence has 16 tokens'):
        m.blocks[0](x, m.attention_mask(16), m.rope)

def test_table2_against_flop_counter():
    "Bidirectional: Table 2 is what the counter counts. Causal: the counter counts fused SDPA as full, CPU inference's"
    " row blocks less; Table 2's is the post-softmax count with the triangle as floor(N^2/2)+1 entries (exact for"
    " N <= 2 only)."
    d = 64
    layer = Attention(d, 2)
    for n in (2, 5, 50):
        x = torch.randn(1, n, d)
        for mask in (None, AttentionMask(n, kind='additive'), AttentionMask(n, alpha=0.5)):
            assert counted_macs(layer, x, mask) == table2_flops(n, d)
        # causal Eq. 2 at CPU inference: PV in row blocks, the zeros right of a block's last key not read
        assert counted_macs(layer, x, AttentionMask(n)) == table2_flops(n, d) - pv_skipped_macs(n, d)
        assert pv_skipped_macs(n, d) == n * n // 4 * d
        with use_kernels('flash'): assert counted_macs(layer, x, AttentionMask(n)) == table2_flops(n, d)
        diff = causal_needed_macs(n, d) - table2_flops(n, d, 'causal')
        assert diff == (n * (n + 1) // 2 - n * n // 2 - 1) * d
        assert (diff == 0) == (n <= 2)
    # the count of the causal math, by explicit row-by-row products
    n = 9; q, k, v = torch.randn(3, 1, 2, n, d // 2).unbind(0)
    def rows(ps):
        for i in range(n):
            a = q[..., i:i + 1, :] @ (k if ps else k[..., :i + 1, :]).transpose(-2, -1)
            a.softmax(-1)[..., :i + 1] @ v[..., :i + 1, :]
    for ps in (True, False):
        assert counted_macs(rows, ps) == causal_needed_macs(n, d, ps) - 4 * n * d * d
    with pytest.raises(ValueError, match="mode='sparse' is not allowed"): table2_flops(4, 4, 'sparse')

def test_family_macs_do_not_depend_on_the_attention_path():
    from illama.models import count_macs
    with torch.device('meta'): m = create_roadmap_model('+ soft mask', 'tiny')
    fast = count_macs(m)
    with use_kernels('reference'): ref = count_macs(m)
    assert fast == ref and abs(fast / 1e9 - 1.3) <= 0.05

def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', **TINY)
    x = torch.randn(4, 3, 32, 32)
    for alpha in (0.0, 0.5):
        m.set_soft_mask_alpha(alpha)
        y32 = m(x); g32 = torch.autograd.grad(y32.sum(), m.blocks[0].attn.qkv.weight)[0]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y16 = m(x); g16 = torch.autograd.grad(y16.float().sum(), m.blocks[0].attn.qkv.weight)[0]
        assert y16.dtype == torch.bfloat16
        assert (y16.float() - y32).abs().max() < 0.05 * y32.abs().max()
        assert F.cosine_similarity(g16.flatten().float(), g32.flatten(), dim=0) > 0.99

def test_torch_compile_equals_eager():
    "Smallest model (one block): compiling takes tens of seconds on two cores."
    torch.manual_seed(0)
    m = create_roadmap_model('+ soft mask', img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                             num_classes=3)
    x = torch.randn(2, 3, 16, 16)
    cm = torch.compile(m)
    y, yc = m(x), cm(x)
    _close(yc, y)
    g = torch.autograd.grad(y.sum(), m.head.weight)[0]; gc = torch.autograd.grad(yc.sum(), m.head.weight)[0]
    _close(gc, g)

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_rmsnorm_closed_form_backward_equals_autograd(dtype):
    "Chapter 7's RMSNorm = chapter 2's, values and gradients (autograd): fp32 1e-6, bf16 input bf16 rounding."
    from illama.rmsnorm import RMSNorm
    torch.manual_seed(0)
    norm = RMSNorm(16); norm.weight.data.normal_()
    x = torch.randn(3, 7, 16, dtype=dtype, requires_grad=True); g = torch.randn(3, 7, 16)
    y = norm(x); d = torch.autograd.grad(y, (x, norm.weight), g)
    with use_kernels('reference'):
        yr = norm(x)
        dr = torch.autograd.grad(yr, (x, norm.weight), g)
    eps = 1e-6 if dtype == torch.float32 else 2e-2
    assert y.dtype == yr.dtype == torch.float32 and (y - yr).abs().max() <= eps * yr.abs().max()   # the same forward
    for a, b in zip(d, dr):
        assert a.dtype == b.dtype and (a.float() - b.float()).abs().max() <= eps * max(1.0, b.float().abs().max())
