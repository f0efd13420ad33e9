"""Training iterations per second of each model, side by side: float32, channels-last memory,
bfloat16 autocast and ``torch.compile``, on this machine's CPU (or a GPU with --device cuda).

One iteration = forward, the role's loss (segmentation + WMSE), backward and an Adam step, on a
batch of the role's training patch filled with random values. The weights are random too, unless
``--weights`` gives trained ones: those make subnormal floats, which this CPU computes far more
slowly (mode ``float32+flush_denormal`` flushes them to zero, as ``kidneytumorseg-train train``
does on the CPU).

    python benchmarks/training_speed.py --roles T-vnet,T-unet,T2D-ax-bce --widths 8,8,4 --out speed.json
    python benchmarks/training_speed.py --roles T-vnet --widths 8 --batch-sizes 2 \
        --weights T-vnet=run/model.pt --modes float32,float32+flush_denormal --out denormal.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from KidneyTumorSegLib.networks.registry import ROLES
from training_tools.losses import total_loss

MODES = ("float32", "float32+flush_denormal", "channels_last", "bf16", "bf16+channels_last", "compile")


def _batch(role: str, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = ROLES[role]
    shape = (batch_size, 1, *spec.patch_size)
    regression = spec.network_params(1).get("regression_channels", 1)
    image = torch.rand(shape, device=device)
    return image, (torch.rand(shape, device=device) > 0.8).float(), torch.rand((batch_size, regression, *spec.patch_size), device=device)


def seconds_per_iteration(role: str, width: int, batch_size: int, mode: str, device: torch.device,
                          warmup: int, iterations: int, weights: Path | None = None) -> float:
    """Mean wall seconds of one training iteration of ``role`` at ``width`` in ``mode`` (from
    ``weights``, a state_dict file, when given)."""
    torch.manual_seed(0)
    torch.set_flush_denormal(mode.endswith("flush_denormal"))
    network = ROLES[role].build(width)
    if weights is not None:
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network = network.to(device)
    image, seg, reg = _batch(role, batch_size, device)
    if "channels_last" in mode:
        layout = torch.channels_last_3d if image.ndim == 5 else torch.channels_last
        network = network.to(memory_format=layout)
        image = image.contiguous(memory_format=layout)
    model = torch.compile(network) if mode == "compile" else network
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode.startswith("bf16") else contextlib.nullcontext()
    loss_name = ROLES[role].loss
    for step in range(warmup + iterations):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast:
            seg_logits, regression = model(image)
        loss, _ = total_loss(seg_logits, regression, seg, reg, loss_name)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iterations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", default="T-vnet,T-unet,T2D-ax-bce")
    parser.add_argument("--widths", default="8,8,4", help="base channels per role")
    parser.add_argument("--batch-sizes", default="2,2,8", help="batch size per role")
    parser.add_argument("--modes", default="float32,channels_last,bf16,bf16+channels_last")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--weights", action="append", default=[], metavar="ROLE=PT",
                        help="start that role from trained weights (repeat); default: random weights")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    roles = args.roles.split(",")
    widths = [int(w) for w in args.widths.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    if any("=" not in item for item in args.weights):
        parser.error("--weights takes ROLE=PT, e.g. T-vnet=run/model.pt")
    weights = dict(item.split("=", 1) for item in args.weights)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {MODES}")
    results = {"device": str(device), "threads": args.threads, "torch": torch.__version__,
               "processor": platform.processor() or platform.machine(), "warmup": args.warmup,
               "iterations": args.iterations, "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
               "weights": {role: Path(path).name for role, path in weights.items()} or "random",
               "roles": {}}
    for role, width, batch in zip(roles, widths, batches):
        timings = {}
        for mode in modes:
            seconds = seconds_per_iteration(role, width, batch, mode, device, args.warmup, args.iterations,
                                            Path(weights[role]) if role in weights else None)
            timings[mode] = {"seconds_per_iteration": round(seconds, 4), "iterations_per_second": round(1 / seconds, 3)}
            print(f"{role} width {width} batch {batch} {mode}: {seconds:.3f} s/iteration", flush=True)
        base = timings[modes[0]]["seconds_per_iteration"]
        for mode in modes:
            timings[mode]["speed_up"] = round(base / timings[mode]["seconds_per_iteration"], 3)
        results["roles"][role] = {"width": width, "batch_size": batch, "modes": timings}
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
