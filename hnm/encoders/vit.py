"""A Vision Transformer in plain torch whose parameters carry timm's names.

timm cannot be a dependency here (it imports torchvision, which does not import beside the pinned
torch on the project's machines), yet the published pathology foundation models are timm
VisionTransformer state dicts. So this module builds the same network with the same module
names, and their files load key for key: patch_embed.proj, cls_token, reg_token, pos_embed,
blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm. The
layout follows timm's VisionTransformer as of timm 1.0 (checked against 1.0.29.dev0): LayerNorm
with eps 1e-6, fused qkv with bias, pre-norm blocks, LayerScale as `gamma`, the packed SwiGLU MLP
(one fc1 of twice the hidden width: SiLU of its first half times its second half), and the
position embedding either over prefix and patch tokens, or over patch tokens only
(`no_embed_class`, where class and register tokens are concatenated after adding it).

The forward pass returns the pooled embedding MIL consumes: the CLS token after the final norm, or
CLS concatenated with the mean of the patch tokens (registers left out), as Virchow2's card says.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hnm.encoders.presets import MLPS, OUTPUTS

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: one strided convolution (timm's `patch_embed.proj`)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D), the grid kept for the position embedding."""
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as timm
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (`gelu`), or the packed SwiGLU (`swiglu_packed`): fc1 gives 2h values,
    SiLU(first half) * second half goes into fc2 (timm's GluMlp with gate_last=False)."""

    def __init__(self, dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        if kind not in MLPS:
            raise ValueError(f"unknown MLP '{kind}'; use one of {', '.join(MLPS)}")
        if kind == "swiglu_packed" and hidden % 2:
            raise ValueError(f"a packed SwiGLU needs an even hidden size, not {hidden}")
        self.packed = kind == "swiglu_packed"
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if self.packed else hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.packed:
            gate, value = x.chunk(2, dim=-1)
            x = F.silu(gate) * value
        else:
            x = F.gelu(x)
        return self.fc2(x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, mlp: str, init_values: float | None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_hidden, mlp)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """The backbone: (B, 3, H, W) normalised pixels -> (B, feature_dim) embeddings.

    `dynamic_img_size` interpolates the position embedding (bicubic, antialiased, as timm) for
    inputs of another size; without it the input must be `img_size` square.
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_hidden: int,
        mlp: str = "gelu",
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        init_values: float | None = None,
        dynamic_img_size: bool = False,
        output: str = "cls",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"unknown output '{output}'; use one of {', '.join(OUTPUTS)}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_prefix_tokens = 1 + reg_tokens
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.output = output
        self.feature_dim = embed_dim * (2 if output == "cls_mean_patch" else 1)
        self.gradient_checkpointing = False
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        positions = self.grid**2 + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim))
        self.blocks = nn.Sequential(
            *(Block(embed_dim, num_heads, mlp_hidden, mlp, init_values) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default initialisation (truncated normal 0.02 for weights and the position
        embedding, tiny normal for the prefix tokens), for seeded random encoders in tests."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
                nn.init.zeros_(module.bias)

    def _positions(self, height: int, width: int) -> torch.Tensor:
        """The position embedding for a (height x width) grid of patch tokens."""
        if (height, width) == (self.grid, self.grid):
            return self.pos_embed
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        head, grid = self.pos_embed[:, :prefix], self.pos_embed[:, prefix:]
        dim = grid.shape[-1]
        grid = grid.float().reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(head.dtype)
        return torch.cat([head, grid], dim=1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm: (B, 1 + registers + patches, D)."""
        patches = self.patch_embed(x)
        batch, height, width, dim = patches.shape
        if (height, width) != (self.grid, self.grid) and not self.dynamic_img_size:
            raise ValueError(
                f"this ViT takes {self.img_size} px inputs, not {x.shape[-2]} x {x.shape[-1]}"
            )
        patches = patches.reshape(batch, height * width, dim)
        prefix = [self.cls_token.expand(batch, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        positions = self._positions(height, width)
        if self.no_embed_class:
            x = torch.cat([*prefix, patches + positions], dim=1)
        else:
            x = torch.cat([*prefix, patches], dim=1) + positions
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        cls = tokens[:, 0]
        if self.output == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)
