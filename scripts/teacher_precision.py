"""Teacher x0 error under bf16 autocast against fp32, by t (CPU; bf16 autocast works there).

For x from the digits training split and fixed eps, x_t = alpha_t x + sigma_t eps; the teacher's
x0-prediction f = teacher.x0(x_t, t) is computed once with the network in fp32 and once under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (what bench.train.Trainer does to the whole
BOOT / progressive step on CUDA). The conversion to x0 then runs in fp32 on a bf16 output:
    eps-teacher: f = (x_t - sigma_t e) / alpha_t,  so  df = -(sigma_t / alpha_t) de
    v-teacher:   f = alpha_t x_t - sigma_t v,     so  df = -sigma_t dv
Columns (RMSE over all rows and pixels): net = raw network output bf16 vs fp32 (beside it the
floor from rounding the fp32 output to bf16 alone); x0 = unclipped
f bf16 vs fp32 (teacher.clip_x0 = False); x0 clip = the same after the teacher's clipping to
[-1, 1]; x0-x and x0c-x = fp32 f (unclipped / clipped) against the true x, for scale;
s/a = sigma_t / alpha_t.

    python scripts/teacher_precision.py            # both embedded teachers, n = 512
"""
from __future__ import annotations

import argparse

import torch

from bench.data import digits_split
from bench.teachers import load_teacher

TIMES = (0, 100, 250, 500, 750, 900, 950, 990, 999)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@torch.no_grad()
def measure(teacher, x: torch.Tensor, eps: torch.Tensor, times=TIMES) -> list[dict]:
    # autocast=True: the teacher follows the surrounding autocast (teacher_precision=autocast);
    # the default, fp32 inside autocast, would measure zero
    unclipped = teacher.replace(clip_x0=False, autocast=True)
    clipped = teacher.replace(clip_x0=True, autocast=True)
    rows = []
    for t in times:
        a, s = teacher.coefficients(torch.tensor(float(t)), x)
        x_t = a * x + s * eps
        tt = torch.full((len(x),), float(t))
        out32 = teacher.net(x_t, tt)
        f32, f32c = unclipped.x0(x_t, t), clipped.x0(x_t, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = teacher.net(x_t, tt)
            f16, f16c = unclipped.x0(x_t, t), clipped.x0(x_t, t)
        rows.append(dict(t=t, alpha=float(a.flatten()[0]), s_over_a=float((s / a).flatten()[0]),
                         out_dtype=str(out16.dtype).replace("torch.", ""),
                         net=rmse(out16, out32), net_round=rmse(out32.bfloat16(), out32), x0=rmse(f16, f32), x0_clip=rmse(f16c, f32c),
                         x0_vs_x=rmse(f32, x), x0c_vs_x=rmse(f32c, x)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    x_all, _ = digits_split("train")
    gen = torch.Generator().manual_seed(args.seed)
    x = x_all[torch.randperm(len(x_all), generator=gen)[: args.rows]].float()
    eps = torch.randn(x.shape, generator=gen)
    teachers = {"v / cosine (shipped digits)": load_teacher("digits"),
                "eps / linear (digits_eps)": load_teacher("digits_eps")}
    for name, teacher in teachers.items():
        teacher.eval()
        print(f"\n## {name}: {teacher.prediction_type}, {teacher.schedule.name}, n = {len(x)} rows, "
              f"seed {args.seed}, RMSE")
        print("| t | alpha_t | sigma/alpha | net bf16-fp32 | (fp32 net rounded to bf16) | x0 bf16-fp32 "
              "| x0 clip bf16-fp32 | fp32 x0 - x | fp32 x0 clip - x |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in measure(teacher, x, eps):
            print(f"| {r['t']} | {r['alpha']:.4g} | {r['s_over_a']:.4g} | {r['net']:.3e} | {r['net_round']:.3e} | {r['x0']:.3e} "
                  f"| {r['x0_clip']:.3e} | {r['x0_vs_x']:.3e} | {r['x0c_vs_x']:.3e} |")
        print(f"(network output dtype under autocast: {r['out_dtype']})")


if __name__ == "__main__":
    main()
