"""Data-free learning of the diagonal Winograd transform scales S_B, S_G (S_A follows from them).

Each step draws Gaussian inputs for a few randomly chosen layers, runs their real weights through the
differentiable fake-quant Winograd conv and through the exact conv, and lowers the mean of
||Y_q - Y||^2 / ||Y||^2 (1 / SQNR) with Adam on log-scales (log keeps the scales positive and makes a step
multiplicative, the natural unit for a range). Bias is left out: it is added exactly in both.
Static-input layers learn with dynamic scales of the same granularity (their calibration comes after).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trtq.winograd.layer import WinogradQuantConv2d
from trtq.winograd.quant import fake_quant_winograd_conv

INPUT_SIZE = 24  # divisible by every tile size: the Gaussian batches have no partial tiles
BATCH = 4


def relative_error(layer: WinogradQuantConv2d, x: torch.Tensor, s_b: torch.Tensor, s_g: torch.Tensor,
                   padding: tuple[int, int] | None = None, channels: torch.Tensor | None = None):
    """||Y_q - Y||^2 / ||Y||^2 of the layer's fake-quant Winograd conv on x (bias excluded), with the layer's
    padding unless `padding` is given, over the output channels `channels` (all when None)."""
    pad = layer.pad if padding is None else padding
    w = layer.weight.detach().float()
    w = w if channels is None else w[channels]
    y = F.conv2d(x, w, None, padding=pad)
    yq = fake_quant_winograd_conv(x, w, None, s_b, s_g, layer.tile, pad, layer.group_size, layer.granularity)
    return ((yq - y) ** 2).sum() / (y**2).sum().clamp_min(1e-30)


def sqnr_db(y_q: torch.Tensor, y: torch.Tensor) -> float:
    noise = ((y_q.double() - y.double()) ** 2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(((y.double() ** 2).sum().item()) / noise)


def sample_problem(layer: WinogradQuantConv2d, gen: torch.Generator, tile_sample: int | None,
                   channel_sample: int | None):
    """One step's Gaussian input for `layer`: (x, padding, output channels or None for all).

    tile_sample None: BATCH images of INPUT_SIZE^2 with the layer's padding (every tile, edge tiles included).
    tile_sample T: one strip image of T whole tiles side by side, no padding (T tiles of output; the strip's
    tiles overlap by 2 columns, as a conv's do). Input scales are per tile for the group granularities, so a
    tile is quantized as in any image; per tensor, the strip is one image. The cost of a step is linear in
    the tiles, hence the sample on real-size layers (a 1280-channel SD 1.5 conv has 144 tiles by default).
    channel_sample C: C random output channels (weight scales are per output channel for the group
    granularities, so those rows are quantized as in the whole layer); per-tensor weights keep all channels."""
    m = layer.tile
    if tile_sample is None:
        x = torch.randn(BATCH, layer.in_channels, INPUT_SIZE, INPUT_SIZE, generator=gen)
        padding = None
    else:
        x = torch.randn(1, layer.in_channels, m + 2, tile_sample * m + 2, generator=gen)
        padding = (0, 0)
    channels = None
    if channel_sample is not None and layer.granularity != "tensor" and channel_sample < layer.out_channels:
        channels = torch.randperm(layer.out_channels, generator=gen)[:channel_sample].sort().values
    return x, padding, channels


def learn_transform_scales(layers: dict[str, WinogradQuantConv2d], steps: int = 300, lr: float = 0.05,
                           layers_per_step: int = 2, shared: bool = True, seed: int = 0,
                           progress: bool = True, tile_sample: int | None = None,
                           channel_sample: int | None = None) -> dict:
    """Learn S_B, S_G for `layers` and write them into each layer's `s_b`/`s_g` buffers.

    shared: one pair per tile size for all layers (the method's default), else one pair per layer.
    tile_sample / channel_sample: learn each step on that many random tiles / output channels per layer
    (None: every tile of the Gaussian batch / every channel); see `sample_problem`.
    Returns {"seconds", "loss_first", "loss_last"} (mean loss of the first/last 10% of steps)."""
    if not layers:
        return {"seconds": 0.0, "loss_first": None, "loss_last": None}
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    names = sorted(layers)
    key = (lambda n: layers[n].tile) if shared else (lambda n: n)
    logs: dict = {}
    for n in names:
        if key(n) not in logs:  # start from the layer's current scales (ones = standard transforms)
            logs[key(n)] = [layers[n].s_b.detach().float().log().requires_grad_(),
                            layers[n].s_g.detach().float().log().requires_grad_()]
    opt = torch.optim.Adam([p for pair in logs.values() for p in pair], lr=lr)
    history = []
    bar = tqdm(range(steps), desc="winograd scales", disable=not progress, leave=False)
    for _ in bar:
        picked = torch.randperm(len(names), generator=gen)[: max(1, layers_per_step)].tolist()
        bar.set_postfix_str(", ".join(f"{names[i]} [{layers[names[i]].out_channels}x{layers[names[i]].in_channels}]"
                                      for i in picked))
        loss = 0.0
        for i in picked:
            layer = layers[names[i]]
            x, padding, channels = sample_problem(layer, gen, tile_sample, channel_sample)
            lb, lg = logs[key(names[i])]
            channels = None if channels is None else channels.to(lb.device)
            loss = loss + relative_error(layer, x.to(lb.device), lb.exp(), lg.exp(), padding, channels) / len(picked)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    with torch.no_grad():
        for n in names:
            lb, lg = logs[key(n)]
            layers[n].s_b.copy_(lb.exp())
            layers[n].s_g.copy_(lg.exp())
            layers[n].refresh_weight()  # the INT8 weight is G' W G'^T with the new S_G
    tail = max(1, steps // 10)
    return {"seconds": round(time.perf_counter() - start, 3), "loss_first": sum(history[:tail]) / tail,
            "loss_last": sum(history[-tail:]) / tail}
