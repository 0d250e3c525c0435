"""The ``training`` section: samples/s of training steps for every registered model, and peak RSS."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from melgenre.bench.measure import stat
from melgenre.bench.memory import malloc_trim, peak_rss_mb, reset_peak_rss, status_kb
from melgenre.bench.settings import BIG_MODEL_PARAMS, BenchSettings


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def training_configs(settings: BenchSettings) -> list[tuple[str, dict[str, Any], tuple[int, int, int]]]:
    """(model, options, input shape) of every model to train: image models at each report size."""
    from melgenre.models import count_params_of, list_models

    configs = []
    for spec in list_models():
        if settings.models and spec.name not in settings.models:
            continue
        c, h, _ = spec.default_input
        if h < min(settings.image_sizes):  # a model for natural-size chunks (melcnn): its own input
            configs.append((spec.name, {}, spec.default_input))
            continue
        big = settings.quick and count_params_of(spec.name) > BIG_MODEL_PARAMS
        for size in sorted(settings.image_sizes)[: 1 if big else None]:
            opts = {"input_size": size} if spec.options.get("input_size") is not None else {}
            configs.append((spec.name, opts, (c, size, size)))
    return configs


def _train_one(name: str, opts: dict[str, Any], shape: tuple[int, int, int], settings: BenchSettings) -> dict:
    """Time training steps of one model on random data; its peak RSS."""
    import torch
    import torch.nn.functional as F

    from melgenre.models import build, channels_last

    model = channels_last(build(name, num_classes=10, **opts)).train()  # as melgenre train runs it
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = settings.train_batch
    x, y = torch.rand(b, *shape), torch.randint(0, 10, (b,))
    gc.collect()
    malloc_trim()
    reset_peak_rss()
    rss_before = (status_kb("self", "VmRSS") or 0) / 1024

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    warm = _timed(step)
    if settings.quick and warm > settings.train_budget_s:  # a huge model in quick mode: one step only
        times, includes_warmup = [warm], True
    else:
        n = max(1, min(settings.train_steps, int(settings.train_budget_s // max(warm, 1e-6))))
        times, includes_warmup = [_timed(step) for _ in range(n)], False
    return {"model": name, "options": opts, "input": list(shape), "batch": b, "params": params,
            "steps": len(times), "includes_warmup": includes_warmup,
            "step_s": stat(times, "s"), "samples_per_s": stat([b / t for t in times], "samples/s"),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(rss_before, 1)}


def bench_training(settings: BenchSettings, log: Callable[[str], None]) -> list[dict]:
    """Samples/s of forward + backward + Adam step (random data, batch ``train_batch``) and peak RSS."""
    import torch

    torch.manual_seed(0)
    out = []
    for name, opts, shape in training_configs(settings):
        row = _train_one(name, opts, shape, settings)
        log(f"training {name} {'x'.join(map(str, shape))}: {row['samples_per_s']['median']:.2f} samples/s "
            f"({row['step_s']['median']:.2f} s/step, {row['steps']} step(s)), peak RSS {row['peak_rss_mb']:.0f} MB")
        out.append(row)
        gc.collect()
        malloc_trim()
    return out
