"""Fixed 2D sin-cos position embeddings and position-embedding resizing.

Layout as in the MAE / MoCo v3 code: the first half of the channels encodes the
column (x) coordinate, the second half the row (y); each half is [sin, cos] of
the coordinate times frequencies 1 / 10000^(k / (D/4)). Computed in float64 so
values match the authors' numpy version to float32 precision.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, embed_dim] as [sin(pos * w_k), cos(pos * w_k)]."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, cls_token: bool = False) -> torch.Tensor:
    """[(1 +) H*W, embed_dim] float32 table; the cls row, when asked for, is zero.

    grid_size: int (square) or (H, W). Rows are in raster order (y-major).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, xs), sincos_1d(embed_dim // 2, ys)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid,
    num_prefix_tokens: int = 1,
    old_grid=None,
) -> torch.Tensor:
    """Bicubically resize a [1, prefix + H*W, D] table to a new patch grid.

    Prefix rows (cls token) are kept as they are, as in the MAE fine-tuning code.
    """
    new_gh, new_gw = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ValueError(f"cannot infer a square grid from {grid.shape[1]} positions; pass old_grid")
        old_grid = (side, side)
    old_gh, old_gw = (old_grid, old_grid) if isinstance(old_grid, int) else old_grid
    if (old_gh, old_gw) == (new_gh, new_gw):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_gh, old_gw, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_gh, new_gw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_gh * new_gw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
