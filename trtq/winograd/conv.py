"""Float Winograd 3x3 convolution (stride 1, dilation 1, groups 1) over F(m, 3) tiles.

Layout used throughout trtq.winograd (and by the INT8 op): the Winograd domain is [n, n, C, P] with n = m + 2
the tile side, C the channels and P = batch x tiles; the n*n positions are independent GEMMs over C.
Edge tiles are completed with zeros (the extra outputs are cropped), so any H x W and padding work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trtq.errors import TrtqError
from trtq.winograd.transforms import R, winograd_matrices

TILES = (2, 4, 6)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles came from, to put the outputs back."""

    batch: int
    tiles_h: int
    tiles_w: int
    out_h: int
    out_w: int


def conv_padding(padding) -> tuple[int, int]:
    """nn.Conv2d's padding (int, pair, 'same', 'valid') as (ph, pw) for a 3x3 kernel."""
    if padding == "same":
        return (1, 1)
    if padding == "valid":
        return (0, 0)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if ph < 0 or pw < 0:
        raise TrtqError(f"padding must be non-negative, got {padding!r}")
    return int(ph), int(pw)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a conv cannot run as Winograd F(m, 3), or None if it can."""
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not a Conv2d"
    checks = [
        (tuple(module.kernel_size) == (R, R), f"kernel {tuple(module.kernel_size)} is not 3x3"),
        (tuple(module.stride) == (1, 1), f"stride {tuple(module.stride)} is not 1"),
        (tuple(module.dilation) == (1, 1), f"dilation {tuple(module.dilation)} is not 1"),
        (module.groups == 1, f"groups={module.groups} (grouped/depthwise) is not supported"),
        (module.padding_mode == "zeros", f"padding_mode {module.padding_mode!r} is not 'zeros'"),
    ]
    return next((why for ok, why in checks if not ok), None)


def extract_tiles(x: torch.Tensor, m: int, padding: tuple[int, int]) -> tuple[torch.Tensor, TileGrid]:
    """x [N, C, H, W] -> overlapping input tiles [N, C, th, tw, n, n] (stride m) and their grid."""
    n = m + R - 1
    ph, pw = padding
    N, _, H, W = x.shape
    out_h, out_w = H + 2 * ph - R + 1, W + 2 * pw - R + 1
    if out_h < 1 or out_w < 1:
        raise TrtqError(f"input {H}x{W} with padding {padding} is smaller than the 3x3 kernel")
    th, tw = -(-out_h // m), -(-out_w // m)
    # Zero-extend bottom/right so the last (partial) tile is complete; its extra outputs are cropped.
    x = F.pad(x, (pw, pw + tw * m - out_w, ph, ph + th * m - out_h))
    tiles = x.unfold(2, n, m).unfold(3, n, m)
    return tiles, TileGrid(N, th, tw, out_h, out_w)


def transform_input(x: torch.Tensor, bt: torch.Tensor, m: int, padding) -> tuple[torch.Tensor, TileGrid]:
    """B^T d B for every tile: [N, C, H, W] -> Winograd domain [n, n, C, P]."""
    tiles, grid = extract_tiles(x, m, padding)
    v = torch.einsum("ij,bctwjk,lk->ilctbw", bt, tiles, bt)  # P ordered as (tile row, batch, tile col)
    n = bt.shape[0]
    return v.reshape(n, n, x.shape[1], -1), grid


def transform_weight(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """G w G^T: [Cout, Cin, 3, 3] -> [n, n, Cout, Cin]."""
    return torch.einsum("ij,ocjk,lk->iloc", g, w, g)


def transform_output(mm: torch.Tensor, at: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """A^T M A for every tile: [n, n, Cout, P] -> [N, Cout, out_h, out_w]."""
    n, m = at.shape[1], at.shape[0]
    mm = mm.reshape(n, n, mm.shape[2], grid.tiles_h, grid.batch, grid.tiles_w)
    y = torch.einsum("ai,ilotbw,cl->botawc", at, mm, at)
    y = y.reshape(grid.batch, mm.shape[2], grid.tiles_h * m, grid.tiles_w * m)
    return y[:, :, : grid.out_h, : grid.out_w]


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding=0,
                    tile: int = 4, stride=1, dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, 1, padding) computed in float as Winograd F(tile, 3)."""
    if tile not in TILES:
        raise TrtqError(f"Winograd tile must be one of {TILES}, got {tile!r}")
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    if tuple(weight.shape[2:]) != (R, R) or pair(stride) != (1, 1) or pair(dilation) != (1, 1) or groups != 1:
        raise TrtqError("Winograd conv computes only 3x3 kernels with stride 1, dilation 1, groups 1; got "
                        f"kernel {tuple(weight.shape[2:])}, stride {stride}, dilation {dilation}, groups {groups}")
    at, g, bt = winograd_matrices(tile, x.dtype, x.device)
    v, grid = transform_input(x, bt, tile, conv_padding(padding))
    y = transform_output(transform_weight(weight, g) @ v, at, grid)
    return y if bias is None else y + bias[None, :, None, None]
