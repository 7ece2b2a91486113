"""Students: networks g_theta(eps, t) that map the noise itself to a point of the trajectory.

Where the teacher has a network (diffusers UNet) the student is a trainable copy of it, so it
starts from the teacher's weights. Its output is read as y through the teacher's own x0
conversion *frozen at t_max*: g = c_skip eps + c_out net(eps, t). Reading it at the current t
instead would be degenerate: at t = -1 (sigma = 0) a v- or eps-network's x0 is its input,
so g(eps, -1) = eps whatever the weights. Frozen at t_max, a v-teacher's student starts with
g(eps, t_max) = f_phi(eps, t_max), the first point of the trajectory. Only there: the network
still receives t, so at other t the initial g(eps, t) is the t_max conversion of the teacher's
output at (eps, t), not y_t; training moves it there. An eps-teacher's own x0 conversion at
t_max divides by alpha_{t_max} (x 157 on DDPM's linear schedule: a start ~160 away from y), so
its student reads the head *as if it were v* (c_skip = alpha, c_out = -sigma at t_max, the
v-teacher's coefficients). Measured on digits_eps (BOOT one-step FID, n = 1000, 1500
iterations, t_draw=logsnr, seeds 0/1): head read as y (c_skip 0, c_out 1) 3.98 (seed 0); as v 1.71/2.03 (3000
iterations: 1.37); x - sigma e 1.80/2.01 (1.58); x0 frozen at t_max 43.7. Analytic teachers
have no weights; their students are small MLPs predicting y.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from bench.errors import BenchError
from bench.portable import TimeMLP  # noqa: F401 (defined there: it ships inside exported students)
from bench.teachers.base import Teacher


class Student(nn.Module):
    """g_theta(eps, t) -> y_t = (x_t - sigma_t eps) / alpha_t of the teacher's DDIM trajectory."""

    def __init__(self, teacher: Teacher, width: int = 256, t_max: int | None = None):
        super().__init__()
        self.c_skip, self.c_out = 0.0, 1.0
        if any(True for _ in teacher.net.parameters()):
            self.net = copy.deepcopy(teacher.net).requires_grad_(True).train()
            if teacher.prediction_type in ("v_prediction", "epsilon"):  # x0 = alpha x_t - sigma v at t_max
                t_max = torch.tensor(float(t_max if t_max is not None else teacher.T - 1))
                self.c_skip = float(teacher.schedule.alpha(t_max))
                self.c_out = -float(teacher.schedule.sigma(t_max))
        else:
            dim = int(torch.tensor(teacher.sample_shape).prod())
            self.net = TimeMLP(dim, teacher.T, width, num_classes=teacher.num_classes or 0)

    def forward(self, eps: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.c_skip * eps + self.c_out * self.net(eps, t.float(), cond)


def add_x_head(net: nn.Module) -> nn.Module:
    """``net`` (a diffusers UNet behind our adapter) with its output layer doubled for Salimans &
    Ho's "both" parameterisation: the first C channels keep the eps head's weights, the new C
    channels (the x~ head) start at zero. The merged x0 = sigma^2 x~ + alpha (x_t - sigma eps~)
    then starts at alpha^2 times the teacher's own x0: the teacher where noise is low, 0 (not
    the unstable (x_t - sigma eps) / alpha) where alpha ~ 0. Changes ``net`` in place."""
    found = [(name, m) for name, m in net.named_modules() if name.endswith("conv_out")]
    if not found or not isinstance(found[-1][1], nn.Conv2d):
        raise BenchError(f"the x_and_epsilon output needs a diffusers UNet (a conv_out layer); "
                         f"{type(net).__name__} has none: use parameterization=teacher")
    name, old = found[-1]
    new = nn.Conv2d(old.in_channels, 2 * old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    c = old.out_channels
    with torch.no_grad():  # channels [0, C): the x~ head, zero; [C, 2C): the eps~ head, the teacher's
        new.weight.zero_()
        new.weight[c:].copy_(old.weight)
        if old.bias is not None:
            new.bias.zero_()
            new.bias[c:].copy_(old.bias)
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    setattr(parent, name.rsplit(".", 1)[-1], new)
    if hasattr(parent, "register_to_config"):  # a saved UNet's config must match its 2C outputs
        parent.register_to_config(out_channels=2 * c)
    return net
