"""An independent transcription of the paper's Algorithm 1 and the authors' released model layout, used only as a
reference in the tests: complex-number RoPE over the N+1 tokens, softmax then multiplication by the mask (no
renormalisation), class token appended last, LPE added after it, head on the last token."""
import torch, torch.nn as nn, torch.nn.functional as F

def precompute_freqs_cis(dim, end, theta=10000.0):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end).float()
    return torch.polar(torch.ones(end, dim // 2), torch.outer(t, freqs))

def apply_rotary_emb(xq, xk, freqs_cis):   # x: [B, N, H, hd]
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    f = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
    return torch.view_as_real(xq_ * f).flatten(3).type_as(xq), torch.view_as_real(xk_ * f).flatten(3).type_as(xk)

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6): super().__init__(); self.eps = eps; self.weight = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight

class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        hidden = int(2 * hidden / 3); hidden = 256 * ((hidden + 255) // 256)
        self.fc1, self.fc2, self.fc3 = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False), nn.Linear(dim, hidden, bias=False)
    def forward(self, x): return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))

class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__(); self.num_heads = num_heads; self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True); self.proj = nn.Linear(dim, dim)
    def forward(self, x, freqs_cis, mask):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 1, 3, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = apply_rotary_emb(q, k, freqs_cis)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        if mask is not None: attn = attn * mask
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = RMSNorm(dim), Attention(dim, num_heads), RMSNorm(dim), Mlp(dim, 4 * dim)
    def forward(self, x, freqs_cis, mask):
        x = x + self.attn(self.norm1(x), freqs_cis, mask)
        return x + self.mlp(self.norm2(x))

class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim): super().__init__(); self.proj = nn.Conv2d(in_chans, dim, patch, patch)
    def forward(self, x): return self.proj(x).flatten(2).transpose(1, 2)

class AuthorsIllama(nn.Module):
    def __init__(self, img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=2):
        super().__init__()
        n = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * .02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * .02)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = RMSNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.freqs_cis = precompute_freqs_cis(embed_dim // num_heads, n + 1)
        self.soft_mask_rate = 0.0
    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((x, self.cls_token.expand(x.shape[0], -1, -1)), dim=1) + self.pos_embed
        N = x.shape[1]
        causal = torch.tril(torch.ones(N, N)).view(1, 1, N, N)
        mask = self.soft_mask_rate * torch.ones(1, 1, N, N) + (1 - self.soft_mask_rate) * causal
        for blk in self.blocks: x = blk(x, self.freqs_cis, mask)
        return self.head(self.norm(x)[:, -1])
