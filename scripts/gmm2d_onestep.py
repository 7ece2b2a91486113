"""Issue #18's picture: one-step DMD2 and SiD on gmm2d (8 modes, MLP generator and fake score)
beside the teacher's DDIM-10 and DDIM-50, at the settings of tests/test_matching_quality.py.

Each panel scatters 2,000 samples from the same noise, coloured by the angle of the noise, and
its title gives the share within 3 std (0.15) of a mode and on the ring (|r - 0.8| < 0.15).
About 2 minutes on one core.

    .venv/bin/python scripts/gmm2d_onestep.py docs/figures/gmm2d_onestep.png
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import config as cfgs  # noqa: E402
from bench.method import DistillContext  # noqa: E402
from bench.sampling import ddim_sample  # noqa: E402
from bench.teachers import load_teacher  # noqa: E402
from bench.teachers.analytic import gmm2d_params  # noqa: E402
from methods.dmd2 import DMD2  # noqa: E402
from methods.sid import SiD  # noqa: E402

CPU = torch.device("cpu")
RUNS = {"DMD2, t <= 0.1 T": (DMD2, {"lr": 1e-3, "t_hi": 0.1}),  # the settings of the test
        "SiD (defaults, 5 fake steps)": (SiD, {"lr": 1e-4, "fake_updates": 5})}


def shares(x: torch.Tensor) -> tuple[float, float]:
    """(within 3 std of a mode, on the ring)."""
    d = torch.cdist(x.float(), gmm2d_params()[0].float()).min(1).values
    return float((d < 0.15).float().mean()), float(((x.float().norm(dim=1) - 0.8).abs() < 0.15).float().mean())


def one_step(cls, overrides: dict, eps: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    config = cfgs.replace(cls.Config(), {"checkpoint_every": 0, "eval_every": 0, "iterations": 1000,
                                         "batch_size": 64, **overrides})
    m = cls(load_teacher("gmm2d"), config, CPU)
    with tempfile.TemporaryDirectory() as tmp:
        m.distill(DistillContext(log=lambda *_: None, device=CPU, seed=0, workdir=Path(tmp), progress=False))
    with torch.no_grad():
        return m.sampler(1)(eps).float()


def main(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = load_teacher("gmm2d")
    eps = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    panels = {f"DDIM-{n}": ddim_sample(teacher, eps, teacher.schedule.timesteps(n)).float() for n in (10, 50)}
    panels.update({name: one_step(cls, ov, eps) for name, (cls, ov) in RUNS.items()})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3))
    for ax, (name, x) in zip(axes, panels.items()):
        on_mode, ring = shares(x)
        ax.scatter(x[:, 0], x[:, 1], s=2, c=torch.atan2(eps[:, 1], eps[:, 0]), cmap="hsv")
        ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal",
               title=f"{name}\non a mode {on_mode:.2f}, ring {ring:.2f}")
        print(f"{name}: on a mode {on_mode:.3f}, on the ring {ring:.3f}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures/gmm2d_onestep.png"))
