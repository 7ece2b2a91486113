"""Sampling throughput of a one-step student against the teacher's DDIM-K, in one process.

    python -m reports.speed --teacher digits --method boot --ddim-steps 50

Both samplers run interleaved on the same noise batch (warm-up first, device synchronised,
median of repeats), so machine noise hits both alike; the ratio is what the report gives.
Weights do not change the cost, so the student here is the method's freshly built one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, noise, device) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn(noise)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(teacher_name: str = "digits", method: str = "boot", ddim_steps: int = 50,
            batch_size: int = 250, repeats: int = 7, device: str = "auto") -> dict:
    import methods  # noqa: F401
    from bench.registry import METHODS
    from bench.run import resolve_device
    from bench.teachers import load_teacher

    dev = resolve_device(device)
    teacher = load_teacher(teacher_name, device=str(dev)).to(dev)
    student_cls, ddim_cls = METHODS.get(method), METHODS.get("ddim")
    one_step = student_cls(teacher, student_cls.Config(), dev).sampler(1)
    ddim = ddim_cls(teacher, ddim_cls.Config(), dev).sampler(ddim_steps)
    noise = torch.randn((batch_size,) + teacher.sample_shape, generator=torch.Generator().manual_seed(0)).to(dev)
    _time(one_step, noise, dev), _time(ddim, noise, dev)  # warm-up
    t1, tk = [], []
    for _ in range(repeats):
        t1.append(_time(one_step, noise, dev))
        tk.append(_time(ddim, noise, dev))
    s1, sk = statistics.median(t1), statistics.median(tk)
    return {"teacher": teacher_name, "device": str(dev), "batch_size": batch_size,
            f"{method}_1step_img_per_s": batch_size / s1, f"ddim{ddim_steps}_img_per_s": batch_size / sk,
            "ratio": sk / s1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="digits")
    p.add_argument("--method", default="boot")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    for k, v in measure(a.teacher, a.method, a.ddim_steps, a.batch_size, a.repeats, a.device).items():
        print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
