"""Mutation testing of the math: apply one small change at a time to the formulas, run the fast
tests (``pytest -m fast``), and report which mutants survive.

    python scripts/mutants.py            # every mutant, 2 at a time
    python scripts/mutants.py --list     # what would be changed
    python scripts/mutants.py -k boot    # only mutants whose file or description matches
    python scripts/mutants.py -k solver --tests tests/test_solver.py   # killed by these tests alone

Each mutant runs in a private copy of a snapshot of the tracked files taken at the start (the
working tree is never touched, and edits made meanwhile do not leak in), so an interrupted run
leaves nothing behind. A mutant is *killed* when the fast tests fail, and
*survives* when they pass: every survivor must either get a test that kills it or be listed in
EQUIVALENT with the reason it cannot change a result. Exit status 1 if an unlisted mutant survives.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    path: str
    old: str  # must occur exactly once in the file
    new: str
    what: str


M = Mutant
C = "methods/consistency.py"
DM, SD, MA, TR = "methods/dmd2.py", "methods/sid.py", "bench/matching.py", "bench/train.py"
ST = "bench/streams.py"
P = "bench/portable.py"  # what ships inside student models; methods/consistency.py imports from it
MUTANTS = [
    # BOOT (methods/boot.py)
    M("methods/boot.py", "one_minus_r.flatten().cpu() ** -2", "one_minus_r.flatten().cpu() ** -1", "BOOT weight 1/(1-r) not 1/(1-r)^2"),
    M("methods/boot.py", "one_minus_r.flatten().cpu() ** -2", "one_minus_r.flatten().cpu() ** 0", "BOOT weight dropped"),
    M("methods/boot.py", "(t - cfg.delta).clamp(min=-1)", "(t - cfg.delta + 1).clamp(min=-1)", "BOOT s = t - delta + 1"),
    M("methods/boot.py", "(t - cfg.delta).clamp(min=-1)", "(t - cfg.delta).clamp(min=0)", "BOOT s stops at 0, not -1"),
    M("methods/boot.py", "(1 - self.ratio(t, s))", "(1 - self.ratio(s, t))", "BOOT r with s and t swapped"),
    M("methods/boot.py", "sch.sigma(s) / (sch.sigma(t) * sch.alpha(s))", "sch.sigma(s) / (sch.sigma(t) * sch.alpha(t))", "BOOT r with alpha_t for alpha_s"),
    M("methods/boot.py", "(g + one_minus_r.to(g.dtype) * (f - g))", "(g - one_minus_r.to(g.dtype) * (f - g))", "BOOT target: sign of the DDIM step"),
    M("methods/boot.py", "self.guided_x0(a * g + sig * eps, t, cond)", "self.guided_x0(a * g - sig * eps, t, cond)", "BOOT x_t = alpha g - sigma eps"),
    M("methods/boot.py", "self.guided_x0(a * g + sig * eps, t, cond)", "self.guided_x0(eps, t, cond)", "BOOT teacher queried at eps, not x_t"),
    M("methods/boot.py", "        with torch.no_grad():\n            g = self.student(eps, t, cond)", "        if True:\n            g = self.student(eps, t, cond)", "BOOT t-branch with gradients"),
    M("methods/boot.py", "torch.full((nb,), cfg.boundary_weight, dtype=torch.float64)", "torch.full((nb,), 1.0, dtype=torch.float64)", "BOOT boundary weight dropped"),
    M("methods/boot.py", "return a * eps / (1 + s)", "return a * eps / (1 - s)", "BOOT boundary y_{t_max} with 1 - sigma"),
    M("methods/boot.py", "torch.full((len(noise),), -1.0, device=noise.device)", "torch.full((len(noise),), 0.0, device=noise.device)", "BOOT one-step sampler read at t = 0"),
    M("methods/boot.py", "return f_u + w * (f_c - f_u)", "return f_c + w * (f_c - f_u)", "BOOT guidance from the conditional side"),
    M("methods/boot.py", "per_row = 2.0 if", "per_row = 1.0 if", "BOOT guided rows counted as one forward"),
    M("methods/boot.py", "teacher_rows = B if self.boundary_mode", "teacher_rows = B - nb if self.boundary_mode", "BOOT teacher boundary rows not counted"),
    M("methods/boot.py", "t = torch.where(t > self.t_max - cfg.delta, torch.full_like(t, float(self.t_max)), t)", "pass", "BOOT trunc: first-window rows read at their own t"),
    M("methods/boot.py", "share = d / self.t_max", "share = 2 * d / self.t_max", "BOOT trunc: first window gets two delta-steps' share"),
    M("methods/boot.py", "below = (self.t_max - d - k).clamp(0, 1)", "below = (self.t_max - k).clamp(0, 1)", "BOOT trunc: log-SNR range up to t_max (logsnr again)"),
    M("methods/boot.py", "w = (lam[:-1] - lam[1:]).clamp(min=0) * below", "w = torch.ones_like(lam[1:]) * below", "BOOT trunc: uniform in t below the window"),
    M("bench/student.py", "if teacher.prediction_type in (\"v_prediction\", \"epsilon\"):", "if teacher.prediction_type == \"v_prediction\":", "eps-student head read as y (old start)"),
    M("methods/boot.py", "< 0.5 else \"definition\"", "> 0.5 else \"definition\"", "BOOT boundary auto inverted"),
    # students (bench/student.py)
    M("bench/student.py", "self.c_skip = float(teacher.schedule.alpha(t_max))", "self.c_skip = float(teacher.schedule.sigma(t_max))", "v-student c_skip sigma"),
    M("bench/student.py", "self.c_out = -float(teacher.schedule.sigma(t_max))", "self.c_out = float(teacher.schedule.sigma(t_max))", "v-student c_out sign"),
    M("bench/student.py", "        new.weight.zero_()\n", "", "x head starts as a copy of the conv, not zero"),
    M("bench/student.py", "new.weight[c:].copy_(old.weight)", "new.weight[:c].copy_(old.weight)", "x head gets the eps weights"),
    # progressive distillation (methods/progressive.py)
    M("methods/progressive.py", "snr.clamp(min=1.0) * ", "snr * ", "PD weight SNR, not max(SNR, 1)"),
    M("methods/progressive.py", "snr.clamp(min=1.0) * ", "", "PD weight dropped"),
    M("methods/progressive.py", "t_mid = torch.tensor(fine[1::2]", "t_mid = torch.tensor(fine[0::2]", "PD wrong midpoint"),
    M("methods/progressive.py", "grid[1:] + [-1]", "grid[1:] + [0]", "PD last step ends at 0, not -1"),
    M("methods/progressive.py", "ratio = s_n / s_t", "ratio = s_t / s_n", "PD target ratio inverted"),
    M("methods/progressive.py", "(a_n - ratio * a_t)", "(a_n + ratio * a_t)", "PD target denominator sign"),
    M("methods/progressive.py", "            return self._weighted(student.predict(x_t, t)[0], target, a, s), 2.0",
      "            return self._weighted(student.predict(x_t, t)[0], target, a, s), 1.0", "PD teacher forwards per row"),
    M("methods/progressive.py", "target = self.teacher.x0(x_t, t)", "target = self.teacher.eps(x_t, t)", "PD fit to eps, not x0"),
    M("methods/progressive.py", "net=net.requires_grad_(False).eval(), clip_x0", "net=net.requires_grad_(False), clip_x0", "PD round teachers left in train mode"),
    M("methods/progressive.py", "if self.teacher.prediction_type == \"epsilon\" else", "if self.teacher.prediction_type == \"sample\" else", "PD x_and_epsilon for the wrong teachers"),
    # distribution matching (bench/matching.py, methods/dmd2.py, methods/sid.py)
    M(DM, "(f_fake - f_real) / weight)", "(f_real - f_fake) / weight)", "DMD2 gradient sign flipped"),
    M(DM, "(f_fake - f_real) / weight)", "(f_fake - f_real))", "DMD2 without eq. 8's normalisation"),
    M(DM, "weight = (x.float() - f_real).abs()", "weight = (x.float() - f_fake).abs()", "DMD2 normalised by the fake score"),
    M(DM, "return 0.5 * per_sample_mean(", "return per_sample_mean(", "DMD2 loss without its 1/2"),
    M(DM, "lo, hi = int(self.config.t_lo * T), min(int(self.config.t_hi * T), T - 1)", "lo, hi = int(self.config.t_lo * T), T - 1", "DMD2 t up to T-1, not 0.98 T"),
    M(SD, "- self.config.alpha * diff", "- diff", "SiD without alpha"),
    M(SD, "diff = f_real - f_fake", "diff = f_fake - f_real", "SiD score difference flipped"),
    M(SD, "((f_real - x) - self", "((f_fake - x) - self", "SiD second factor from the fake score"),
    M(SD, "weight = (x - f_real).abs()", "weight = (x - f_fake).abs()", "SiD normalised by the fake score"),
    M(SD, "karras_sigma(1 - u)", "karras_sigma(u)", "SiD noise levels from the wrong end of EDM's grid"),
    M(SD, "generator=gen, dtype=torch.float64) * self.config.t_max", "generator=gen, dtype=torch.float64)", "SiD t_max ignored"),
    M(SD, "* self.config.fake_p_std + self.config.fake_p_mean", "* self.config.fake_p_std - self.config.fake_p_mean", "SiD's edm fake noise law centred at +1.2"),
    M(SD, "* self.config.fake_p_std + self.config.fake_p_mean", "+ self.config.fake_p_mean", "SiD's edm fake noise law without its spread"),
    M(SD, 'if self.config.fake_noise == "uniform":', 'if self.config.fake_noise != "uniform":', "SiD's fake noise laws swapped"),
    M(MA, "        t = self.fake_times(len(x), gen)\n", "        t = torch.randint(0, self.fake.T, (len(x),), generator=gen).to(x.device)\n", "fake step ignores the method's fake_times"),
    M(MA, "x_in = self.in_scale * z", "x_in = z", "generator input not scaled to sigma_init"),
    M(MA, "return cls(net, t_init, s, 1 / a, -s / a)", "return cls(net, t_init, s, a, -s)", "generator reads an eps head as v at any alpha"),
    M(MA, "return a * eps - s * x0  # v", "return a * eps + s * x0  # v", "fake-score v target sign"),
    M(MA, "lam = -2 * torch.log(", "lam = -torch.log(", "sigma_VE to t without the square"),
    M(MA, "if step < self.warmup:", "if step < 0:", "fake-score warm-up ignored"),
    M(MA, "cfg.fake_lr or cfg.lr", "cfg.lr", "fake_lr ignored"),
    M(TR, "            for _ in range(part.updates):", "            for _ in range(1):", "loop ignores a part's updates per step"),
    # a step's batch as streams (bench/streams.py, bench/train.py): micro-batches and workers
    M(TR, "loss = losses.float().mean() / self.streams.count", "loss = losses.float().mean()", "a stream's loss counted whole, not as 1/S of the batch"),
    M(TR, "forwards + teacher_forwards * len(losses)", "forwards + teacher_forwards", "teacher forwards counted per stream, not per row"),
    M(ST, "        return int(seed)\n", "        return int(seed) + 1\n", "stream 0 is not the run's seed"),
    M(ST, "first = self.rank * self.micro_batches", "first = self.rank", "ranks' streams overlap"),
    M(ST, "self.rows = self.batch_size // total", "self.rows = self.batch_size // self.micro_batches", "workers each draw a whole micro-batch of the global batch"),
    # consistency distillation (methods/consistency.py; P: bench/portable.py, shared with the shipped student)
    M(P, "c_skip = sigma_data ** 2 / (u ** 2 + sigma_data ** 2)", "c_skip = sigma_data / (u ** 2 + sigma_data ** 2)", "CD c_skip with sigma_data not squared"),
    M(P, "if cond is None else torch.as_tensor(cond).long()", "if True else torch.as_tensor(cond).long()", "the MLP student ignores the class (issue #19's review case)"),
    M(P, "c_skip = sigma_data ** 2 / (u ** 2 + sigma_data ** 2)", "c_skip = sigma_data ** 2 / (u + sigma_data ** 2)", "CD c_skip with u not squared"),
    M(P, "c_out = u / (u ** 2 + sigma_data ** 2).sqrt()", "c_out = sigma_data * u / (u ** 2 + sigma_data ** 2).sqrt()", "CD c_out with CD's sigma_data factor (F is x0 here)"),
    M(P, "c_out = u / (u ** 2 + sigma_data ** 2).sqrt()", "c_out = u / (u ** 2 + sigma_data ** 2)", "CD c_out without the square root"),
    M(P, "u = scaling * (torch.as_tensor(t, dtype=torch.float64) - T_MIN)", "u = scaling * (torch.as_tensor(t, dtype=torch.float64) - T_MIN - 1)", "CD boundary at step 0 (LCM's), not t_min = -1"),
    M(P, "u = scaling * (torch.as_tensor(t, dtype=torch.float64) - T_MIN)", "u = (torch.as_tensor(t, dtype=torch.float64) - T_MIN)", "CD timestep scaling dropped"),
    M(C, "return c_skip * x_t + c_out * F", "return c_out * x_t + c_skip * F", "CD c_skip and c_out swapped"),
    M(C, "return list(range(T - 1, -1, -skip)) + [T_MIN]", "return list(range(T - 1, -1, -skip - 1)) + [T_MIN]", "CD grid step skip + 1"),
    M(C, "return list(range(T - 1, -1, -skip)) + [T_MIN]", "return list(range(T - 1, 0, -skip)) + [T_MIN]", "CD grid drops step 0"),
    M(C, "return grid[i], grid[i + 1]", "return grid[i], grid[i]", "CD target at the same time"),
    M(C, "return grid[i], grid[i + 1]", "return grid[i], grid[(i + 2).clamp(max=len(grid) - 1)]", "CD target two grid steps down"),
    M(C, "i = torch.randint(0, len(grid) - 1, (n,), generator=gen)", "i = torch.randint(0, len(grid) - 2, (n,), generator=gen)", "CD never trains the last pair (to t_min)"),
    M(C, "x_s, rows = teacher_step(self.teacher, x_t, t, s, self.config.solver)", "x_s, rows = teacher_step(self.teacher, x_t, t, t, self.config.solver)", "CD teacher step to t, not s"),
    M(C, "return self.model(x_s, s, target=True), rows", "return self.model(x_s, s), rows", "CD target from the online weights"),
    M(C, "        with torch.no_grad():\n            x_s, rows", "        if True:\n            x_s, rows", "CD target with gradients"),
    M(C, "online = self.model(x_t, t)  #", "online = self.model(x_t, s)  #", "CD online branch read at t_n"),
    M(C, "x_t = a * x + sig * eps", "x_t = x + sig * eps", "CD x_t without alpha"),
    M(C, "p_target.lerp_(p, 1 - self.mu)", "p_target.lerp_(p, self.mu)", "CD EMA target decay inverted"),
    M(C, "if self.target is None or step <= int(self.target_step):", "if self.target is None:", "CD EMA target updated twice per step"),
    M(C, "            self.model.update_target(step)\n", "", "CD EMA target never updated"),
    M(C, "c = self.config.huber_c * math.sqrt(sq.shape[1])", "c = self.config.huber_c", "CD huber c without sqrt(dim)"),
    M(C, "return (sq.sum(1) + c ** 2).sqrt() - c", "return (sq.mean(1) + c ** 2).sqrt() - c", "CD huber on the mean, not the sum"),
    M(C, "return (sq.sum(1) + c ** 2).sqrt() - c", "return (sq.sum(1) + c ** 2).sqrt()", "CD huber without - c"),
    M(C, "            return sq.mean(1)\n", "            return sq.sum(1)\n", "CD l2 as sum"),
    M(C, "return times[::max(1, len(times) // nfe)][:nfe]", "return times[::max(1, len(times) // (nfe + 1))][:nfe]", "CD sampling times not LCM's"),
    M(C, "x_tau = a * x + s * fresh_noise(noise, j)", "x_tau = a * x + s * noise", "CD re-noises with the initial noise"),
    M(C, "x_tau = a * x + s * fresh_noise(noise, j)", "x_tau = x + s * fresh_noise(noise, j)", "CD re-noise without alpha"),
    M(P, "row.tobytes() + j.to_bytes(4, \"little\")", "row.tobytes()", "CD fresh noise the same at every step"),
    M(C, "                if clip:\n", "                if False:\n", "CD samples not clipped"),
    M(P, "x_tau = a * x + s * fresh_noise(eps, j)", "x_tau = a * x + s * eps", "CD shipped rule re-noises with the initial noise"),
    M(P, "F = _x0_eps(rule, call(net, x_tau, t, cond), x_tau, tau)[0]", "F = call(net, x_tau, t, cond)", "CD shipped rule reads the raw output as x0"),
    M(P, "x = c_skip.to(x_tau.device, F.dtype).view(view) * x_tau + c_out.to(x_tau.device, F.dtype).view(view) * F",
      "x = c_out.to(x_tau.device, F.dtype).view(view) * x_tau + c_skip.to(x_tau.device, F.dtype).view(view) * F",
      "CD shipped rule with c_skip and c_out swapped"),
    M(P, "        if rule[\"clip\"]:\n", "        if False:\n", "CD shipped rule not clipped"),
    M(C, "x_s[idx] = a_s * (x_t[idx] / a_t + (s_s / a_s - s_t / a_t) * (e1 + e2) / 2)", "x_s[idx] = a_s * (x_t[idx] / a_t + (s_s / a_s - s_t / a_t) * (e1 + e2))", "CD Heun without the 1/2"),
    M(C, "e2 = teacher.eps(x_s[idx], s[idx],", "e2 = teacher.eps(x_t[idx], t[idx],", "CD Heun's second slope at the start"),
    M(C, "idx = (s > T_MIN).nonzero().flatten()", "idx = (s >= T_MIN).nonzero().flatten()", "CD Heun corrects the step to sigma = 0"),
    M(C, "return x_s, len(x_t) + len(idx)", "return x_s, 2 * len(x_t)", "CD Heun forwards: 2 on every row"),
    M(C, "return self.distance(online, target), rows / B", "return self.distance(online, target), 1.0", "CD forwards per row fixed at 1"),
    # the teacher adapter (bench/teachers/base.py)
    M("bench/teachers/base.py", "x0 = (x_t - s * eps) / a", "x0 = (x_t + s * eps) / a", "eps-teacher x0 sign"),
    M("bench/teachers/base.py", "x0 = a * x_t - s * out", "x0 = s * x_t - a * out", "v-teacher x0 with alpha, sigma swapped"),
    M("bench/teachers/base.py", "x0 = s ** 2 * x_head + a * (x_t - s * eps_head)", "x0 = a ** 2 * x_head + a * (x_t - s * eps_head)", "x_and_epsilon merge weight"),
    M("bench/teachers/base.py", "x0_clipped = x0.clamp(lo, hi)", "x0_clipped = x0", "x0 clipping dropped"),
    M("bench/teachers/base.py", "with torch.autocast(x_t.device.type, enabled=False):", "with torch.autocast(x_t.device.type, enabled=True):", "frozen teacher under autocast"),
    # training-free solvers (methods/solver.py) and the NFE count (bench/nfe.py, bench/run.py)
    M("methods/solver.py", "return a * eps - s * x0", "return a * eps + s * x0", "solver v = alpha eps + sigma x0"),
    M("methods/solver.py", "x = noise * sched.init_noise_sigma", "x = noise", "solver start not scaled by init_noise_sigma"),
    M("methods/solver.py", "x_in = sched.scale_model_input(x, t)", "x_in = x", "solver model input not scaled"),
    M("methods/solver.py", "teacher if config.clip == \"teacher\" else", "teacher.replace(clip_x0=False) if True else", "solver ignores the teacher's clip"),
    M("methods/solver.py", "knobs = {k: getattr(self.config, k) for k in self.spec.knobs if k != \"solver_order\"}", "knobs = {}", "solver knobs not passed (teacher's spacing)"),
    M("methods/solver.py", "(3 / 2, -1 / 2)", "(1 / 2, 1 / 2)", "iPNDM order-2 weights"),
    M("methods/solver.py", "(55 / 24, -59 / 24, 37 / 24, -9 / 24)", "(55 / 24, -59 / 24, 37 / 24, -8 / 24)", "iPNDM order-4 last weight"),
    M("methods/solver.py", "self.timesteps.tolist()[1:] + [-1]", "self.timesteps.tolist()[1:] + [0]", "iPNDM ends at 0, not -1"),
    M("methods/solver.py", "(bar_s - bar_t) * slope", "(bar_t - bar_s) * slope", "iPNDM step direction"),
    M("methods/solver.py", "self.history = [eps] + self.history[: self.order - 1]", "self.history = [eps]", "iPNDM without history (DDIM)"),
    M("bench/nfe.py", "        if self.depth == 0:\n", "        if True:\n", "NFE counts nested module calls"),
    M("bench/run.py", "    if calls != nfe:", "    if False:", "run accepts a miscounted NFE"),
    # DDIM (bench/sampling.py)
    M("bench/sampling.py", "return alpha_s * x0 + sigma_s * eps", "return alpha_s * x0 - sigma_s * eps", "DDIM step sign"),
    M("bench/sampling.py", "steps = list(timesteps) + [-1]", "steps = list(timesteps) + [0]", "DDIM ends at 0, not -1"),
    # the schedule (bench/schedule.py)
    M("bench/schedule.py", "return self.alpha_bar(t).sqrt()", "return self.alpha_bar(t)", "alpha = alpha_bar"),
    M("bench/schedule.py", "return torch.log(ab) - torch.log1p(-ab)", "return torch.log(ab) + torch.log1p(-ab)", "log-SNR sign"),
    M("bench/schedule.py", "torch.arange(self.T, 0, -self.T / K, dtype=torch.float64)) - 1", "torch.arange(self.T, 0, -self.T / K, dtype=torch.float64))", "trailing grid shifted by one"),
    M("bench/schedule.py", "s: float = 0.008", "s: float = 0.0", "cosine offset s"),
    M("bench/schedule.py", "padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])", "padded = torch.cat([self.alphas_cumprod[:1], self.alphas_cumprod])", "t = -1 is not alpha = 1"),
    # the evaluator's formulas (bench/evaluator.py)
    M("bench/evaluator.py", "/ (self.n - 1)).numpy()", "/ self.n).numpy()", "biased covariance"),
    M("bench/evaluator.py", "(data_range[1] - data_range[0]) ** 2 / max(mse", "(data_range[1] - data_range[0]) / max(mse", "PSNR peak not squared"),
    M("bench/evaluator.py", "(int(seed) * 2654435761 + int(i)) % 2**32", "(int(seed) + int(i)) % 2**32", "seeds of runs overlap"),
    M("bench/evaluator.py", "sq_err[0] += float(diff.pow(2).sum())", "sq_err[0] += float(diff.abs().sum())", "teacher MSE as mean absolute error"),
    M("bench/evaluator.py", "self.s2 += f.T @ f", "self.s2 += f.T @ f.abs()", "second moment"),
]

EQUIVALENT: dict[str, str] = {
    # "description": "why it cannot change a result",
}


def snapshot(dest: Path) -> Path:
    """Copy the tracked (and untracked, not ignored) files of the working tree to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def fast_files(tree: Path) -> list[str]:
    """The test files holding fast tests, tests/test_math.py first (collecting only these keeps
    a mutant's run short)."""
    found = sorted(str(p.relative_to(tree)) for p in (tree / "tests").glob("test_*.py")
                   if "pytest.mark.fast" in p.read_text())
    return sorted(found, key=lambda f: not f.endswith("test_math.py"))


def run_mutant(m: Mutant, base: Path, timeout: float, tests: tuple[str, ...] = ()) -> tuple[Mutant, str, float, str]:
    """(mutant, 'killed' | 'survived' | 'timeout' | 'error', seconds, the failing test or note).
    The exact unit tests (tests/test_math.py) run first: most mutants die there within seconds."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(base, tree)
        text = (tree / m.path).read_text()
        if text.count(m.old) != 1:
            return m, "error", 0.0, f"the original text occurs {text.count(m.old)} times in {m.path}"
        (tree / m.path).write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "fast", "-x", "-q", "-p", "no:cacheprovider",
                                   "-o", "addopts=", *(tests or fast_files(tree))], cwd=tree, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return m, "timeout", time.perf_counter() - start, ""
        seconds = time.perf_counter() - start
        failed = next((line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
        if proc.returncode == 0:
            return m, "survived", seconds, ""
        return m, "killed" if proc.returncode == 1 else "error", seconds, failed or proc.stdout[-300:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only mutants whose file or description contains this")
    p.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--tests", nargs="+", default=(), help="run only these test files (their fast tests): a "
                                                          "mutant they kill is killed by the fast tier too")
    args = p.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.path or args.k in m.what]
    if args.list:
        for m in chosen:
            print(f"{m.path}: {m.what}")
        return 0
    start, counts, bad = time.perf_counter(), {}, []
    with tempfile.TemporaryDirectory(prefix="mutants-base-") as tmp, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        base = snapshot(Path(tmp))
        for m, status, seconds, note in pool.map(lambda m: run_mutant(m, base, args.timeout, tuple(args.tests)), chosen):
            if status == "survived" and m.what in EQUIVALENT:
                status, note = "equivalent", EQUIVALENT[m.what]
            counts[status] = counts.get(status, 0) + 1
            if status in ("survived", "error", "timeout"):
                bad.append(m)
            print(f"{status:<10} {seconds:6.1f} s  {m.path}: {m.what}  {note}", flush=True)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"{len(chosen)} mutants: {summary}; {time.perf_counter() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
