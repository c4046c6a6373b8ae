"""Train and eval speed of the paper's models: our jitted steps against their PyTorch twins.

    python -m benchmarks.run [--models net14,model_a,model_b,model_c] [--batch 32]
        [--width 1.0] [--image-size 224] [--dtype float32|bfloat16] [--compare-torch]
        [--rounds 3] [--steps 5] [--warmup 1] [--matmul-size N] [--json OUT]

Every model is built with the paper's channel-wise PReLU and timed on a fixed random batch.
Each model's runners share one process and are interleaved round by round, so that drift on a
shared machine hits them alike; each runner's best round (seconds per step) is kept, and its
best CPU time per step (all threads), whose ratio is steadier when other jobs share the cores.

  train   images/s of our jitted, donated train step (`train.make_train_step` with
          `optim.momentum_sgd`: momentum 0.9, weight decay 5e-4), and with --compare-torch of the
          PyTorch twin (`benchmarks.torch_models`, same spec and initial weights) in NCHW and in
          channels_last; `torch_images_per_sec` is the faster layout, ratio = ours / that.
  eval    the same for the forward pass in eval mode and its softmax, jitted, against the
          twin's under `torch.inference_mode`.
  compile_s          lowering + XLA compilation of the train step, seconds (`lower_s` of it the
                     lowering); a persistent compilation cache, if configured, shortens it.
  flops_per_step     XLA's cost analysis of the compiled train step, summed over devices.
  utilisation        achieved FLOP/s over the FLOP/s of a square matmul in the compute dtype
                     (`matmul_flops_per_sec`, one per device, timed in the same rounds): a model
                     FLOP utilisation against what XLA reaches on this machine, not a datasheet.
  peak_memory_bytes  the devices' `peak_bytes_in_use` where reported (GPU/TPU), else the
                     process's peak RSS (CPU: includes PyTorch, never falls, so it is the peak
                     up to this model); `train_temp_bytes` is XLA's scratch for one train step.
  prelu_vs_relu      our train step time with PReLU over the same model's with ReLU.

With `--dtype bfloat16` the JAX models compute in bfloat16 (parameters stay float32), PyTorch
runs under autocast, and the matmul reference is a bfloat16 matmul. Without --compare-torch
PyTorch is not imported and its fields are null. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rectifiers_jax import models, optim, parallel, train

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LAYOUTS = ("nchw", "channels_last")
LEARNING_RATE = 0.01


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: host, CPU, cores (those this process may use, e.g. under taskset) and devices."""
    devices = jax.devices()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.node()}: {_cpu_name()}, {usable} of {os.cpu_count()} cores; "
        f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})"
    )


class Matmul:
    """The machine reference: `size`^3 matmuls in `dtype`, one per device at once."""

    def __init__(self, mesh, size: int, dtype: Any):
        devices = mesh.devices.size
        sharding = parallel.batch_sharded(mesh)
        self.a = jax.device_put(jnp.ones((devices, size, size), dtype), sharding)
        self.step = jax.jit(lambda x, y: jnp.einsum("dij,djk->dik", x, y), out_shardings=sharding)
        self.flops = 2.0 * size**3 * devices

    def run(self, steps: int) -> None:
        for _ in range(steps):
            out = self.step(self.a, self.a)
        out.block_until_ready()


def peak_memory() -> tuple[int, str]:
    """(bytes, source): the devices' peak_bytes_in_use if reported, else the process peak RSS."""
    peaks = [
        (device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()
    ]
    if all(peak is not None for peak in peaks):
        return int(sum(peaks)), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per partition
        analysis = analysis[0]
    return float((analysis or {}).get("flops", math.nan))


class JaxTrain:
    """Our jitted, donated train step on a fixed batch; compiled ahead of time and timed."""

    def __init__(self, model: models.SPPNet, mesh, batch: dict[str, jax.Array], image_size: int):
        tx = optim.momentum_sgd(LEARNING_RATE, weight_decay=5e-4)
        # Ready before the compile is timed: the init runs asynchronously and would share the CPU.
        self.state = jax.block_until_ready(train.create_train_state(model, tx, 0, image_size, mesh))
        self.batch = batch
        jitted = train.jit_train_step(model, tx, 0, mesh)
        start = time.perf_counter()
        lowered = jitted.lower(self.state, batch)
        self.lower_s = time.perf_counter() - start
        self.step = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.flops = _flops(self.step) * mesh.devices.size
        memory = self.step.memory_analysis()
        self.temp_bytes = int(memory.temp_size_in_bytes) if memory is not None else None

    def run(self, steps: int) -> None:
        """`steps` steps dispatched back to back, one sync at the end."""
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))


class JaxEval:
    """The model's forward pass in eval mode and its softmax, jitted, on a fixed batch."""

    def __init__(self, model: models.SPPNet, mesh, images: jax.Array, params):
        self.params = params
        self.images = images
        self.step = jax.jit(
            lambda params, images: jax.nn.softmax(model.apply({"params": params}, images)),
            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
            out_shardings=parallel.batch_sharded(mesh),
            compiler_options=parallel.compiler_options(),
        )

    def run(self, steps: int) -> None:
        for _ in range(steps):
            probs = self.step(self.params, self.images)
        jax.block_until_ready(probs)


class TorchRunner:
    """The PyTorch twin's train or eval step in one memory layout, on the same batch."""

    def __init__(
        self,
        model: models.SPPNet,
        params,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        layout: str,
        mode: str,
        dtype: str,
    ):
        import torch

        from benchmarks import torch_models

        device = torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = torch_models.twin(model)
        torch_models.load_flax_params(net, params)
        net = net.to(device=device, memory_format=fmt)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        self.images = self.images.to(device)
        self.labels = torch.from_numpy(labels).long().to(device)
        torch_dtype = getattr(torch, dtype)
        if mode == "train":
            step = torch_models.make_train_step(
                net, torch_models.make_optimizer(net, LEARNING_RATE), torch_dtype
            )
            self.call = lambda: step(self.images, self.labels)
        else:
            predict = torch_models.make_eval_step(net, torch_dtype)
            self.call = lambda: predict(self.images)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.call()
        self.sync()


def timed(runner: Any, steps: int) -> tuple[float, float]:
    """(wall-clock, CPU) seconds per step of `runner.run(steps)`; CPU time sums all threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    runner.run(steps)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def random_batch(batch: int, image_size: int, num_classes: int) -> dict[str, np.ndarray]:
    """Images ~ N(0, 60^2) (the scale of mean-subtracted pixels) and random labels."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(0, 60, (batch, image_size, image_size, 3)).astype(np.float32),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
    }


def _speed(
    batch: int, seconds: dict[str, float], cpu: dict[str, float], mode: str, compare_torch: bool
) -> dict[str, float | None]:
    """Images/s of ours and of each PyTorch layout for one mode, and our ratio to the faster;
    `ratio_per_cpu_second` compares images per CPU-second instead (steadier on a busy machine)."""
    ours = batch / seconds[f"jax_{mode}"]
    result: dict[str, float | None] = {"jax_images_per_sec": ours}
    keys = [f"torch_{layout}_{mode}" for layout in LAYOUTS]
    layouts = {key: batch / seconds[key] if compare_torch else None for key in keys}
    fastest = max(layouts.values()) if compare_torch else None
    result["torch_images_per_sec"] = fastest
    result.update({f"{key[: -len(mode) - 1]}_images_per_sec": v for key, v in layouts.items()})
    result["ratio"] = ours / fastest if fastest else None
    result["ratio_per_cpu_second"] = (
        min(cpu[key] for key in keys) / cpu[f"jax_{mode}"] if compare_torch else None
    )
    return result


def bench_model(name: str, args: argparse.Namespace, mesh) -> dict[str, Any]:
    """Every runner of one model, interleaved over `args.rounds` rounds; its JSON record."""
    dtype = DTYPES[args.dtype]
    build = dict(width=args.width, dtype=dtype)
    model = models.build(name, activation="prelu", **build)
    relu = models.build(name, activation="relu", **build)
    host = random_batch(args.batch, args.image_size, model.num_classes)
    batch = parallel.global_batch(host, mesh)

    runners: dict[str, Any] = {"matmul": Matmul(mesh, args.matmul_size, dtype)}
    runners["jax_train"] = prelu_train = JaxTrain(model, mesh, batch, args.image_size)
    # The eval runner and the twins start from the initial parameters (the train step donates).
    params = jax.tree.map(jnp.copy, prelu_train.state.params)
    runners["jax_relu_train"] = JaxTrain(relu, mesh, batch, args.image_size)
    runners["jax_eval"] = JaxEval(model, mesh, batch["image"], params)
    if args.compare_torch:
        host_params = jax.device_get(params)
        for mode in ("train", "eval"):
            for layout in LAYOUTS:
                runners[f"torch_{layout}_{mode}"] = TorchRunner(
                    model,
                    host_params,
                    host["image"],
                    host["label"],
                    layout=layout,
                    mode=mode,
                    dtype=args.dtype,
                )
    for runner in runners.values():
        runner.run(args.warmup)
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in runners}
    for _ in range(args.rounds):
        for key, runner in runners.items():
            times[key].append(timed(runner, args.steps))
    seconds = {key: min(wall for wall, _ in values) for key, values in times.items()}
    cpu = {key: min(cpu for _, cpu in values) for key, values in times.items()}

    achieved = prelu_train.flops / seconds["jax_train"]
    matmul = runners["matmul"].flops / seconds["matmul"]
    memory, memory_source = peak_memory()
    return {
        "train": _speed(args.batch, seconds, cpu, "train", args.compare_torch),
        "eval": _speed(args.batch, seconds, cpu, "eval", args.compare_torch),
        "compile_s": prelu_train.compile_s,
        "lower_s": prelu_train.lower_s,
        "flops_per_step": prelu_train.flops,
        "achieved_flops_per_sec": achieved,
        "matmul_flops_per_sec": matmul,
        "utilisation": achieved / matmul,
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "train_temp_bytes": prelu_train.temp_bytes,
        "prelu_vs_relu": seconds["jax_train"] / seconds["jax_relu_train"],
        "seconds_per_step": seconds,
        "cpu_seconds_per_step": cpu,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    """The readable summary of a `main` result."""
    config = result["config"]
    print(
        f"batch {config['batch']}, width {config['width']}, {config['image_size']}px, "
        f"{config['dtype']}, PReLU; best of {config['rounds']} rounds x {config['steps']} steps"
    )
    print(f"on {result['machine']}")
    header = f"{'model':<8} {'mode':<6} {'jax img/s':>10} {'torch img/s':>12} "
    print(header + f"{'nchw':>8} {'ch_last':>8} {'ratio':>7} {'per CPU-s':>9}")
    for name in config["models"]:
        record = result[name]
        for mode in ("train", "eval"):
            r = record[mode]
            print(
                f"{name:<8} {mode:<6} {_fmt(r['jax_images_per_sec']):>10} "
                f"{_fmt(r['torch_images_per_sec']):>12} "
                f"{_fmt(r['torch_nchw_images_per_sec']):>8} "
                f"{_fmt(r['torch_channels_last_images_per_sec']):>8} {_fmt(r['ratio'], '.3f'):>7} "
                f"{_fmt(r['ratio_per_cpu_second'], '.3f'):>9}"
            )
    print(
        f"{'model':<8} {'compile s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8} {'matmul':>8} "
        f"{'util':>6} {'peak GiB':>8} {'prelu/relu':>10}"
    )
    for name in config["models"]:
        r = result[name]
        print(
            f"{name:<8} {r['compile_s']:>9.1f} {r['flops_per_step'] / 1e9:>10.1f} "
            f"{r['achieved_flops_per_sec'] / 1e9:>8.1f} {r['matmul_flops_per_sec'] / 1e9:>8.1f} "
            f"{r['utilisation']:>6.1%} {r['peak_memory_bytes'] / 2**30:>8.2f} "
            f"{r['prelu_vs_relu']:>10.3f}"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="net14", help="comma-separated names from rectifiers_jax.models.NAMES"
    )
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--image-size", type=int, default=224, help="square input side, pixels")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--compare-torch", action="store_true", help="time the PyTorch twins too")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per runner per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per runner")
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=0,
        help="side of the reference matmul (0: 2048 on CPU, 8192 on accelerators)",
    )
    parser.add_argument("--json", default="benchmark.json", help="output path")
    args = parser.parse_args(argv)
    names = [name for name in args.models.split(",") if name]
    unknown = sorted(set(names) - set(models.NAMES))
    if unknown or not names:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(models.NAMES)}")
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1 and --warmup >= 0")
    parallel.check_batch_size(args.batch, "--batch")

    mesh = parallel.create_mesh()
    if not args.matmul_size:
        args.matmul_size = 2048 if jax.default_backend() == "cpu" else 8192
    versions = {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib")}
    if args.compare_torch:
        import torch

        versions |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    command = ["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
    result: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join(command),
        "versions": versions,
        "config": {
            "models": names,
            "batch": args.batch,
            "width": args.width,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "matmul_size": args.matmul_size,
        },
    }
    for name in names:
        result[name] = bench_model(name, args, mesh)
        gc.collect()
    print_table(result)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
