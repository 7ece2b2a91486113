"""The README model card of an exported student: what it is, how good, from what, and the exact
sampling rule (in words and as code), from the run's MLflow record only."""
from __future__ import annotations

import json


def _head(rule: dict) -> str:
    return (" (first half of the channels x~, second half eps~, merged as x0 = sigma^2 x~ + alpha (x - sigma eps~),"
            " Salimans & Ho sec. 4)" if rule["prediction_type"] == "x_and_epsilon" else "")


def _one_step_x_in(rule: dict) -> str:
    return f"{rule['in_scale']!r} * eps" if "in_scale" in rule else "eps"


def _describe_one_step(rule: dict) -> str:
    x_in = _one_step_x_in(rule)
    return (f"One network evaluation: `x = {rule['c_skip']!r} * x_in + {rule['c_out']!r} * "
            f"unet(x_in, t={rule['t']!r}).sample` with `x_in = {x_in}`, `eps ~ N(0, I)` of the sample's shape.")


def _describe_consistency(rule: dict) -> str:
    lo, hi = rule["data_range"]
    return (f"Multistep consistency sampling, {len(rule['times'])} network evaluations at timesteps "
            f"{rule['times']}: at each, `x_t = eps ~ N(0, I)` at the first, else `alpha_t x + sigma_t z` with "
            f"fresh noise z (`portable.fresh_noise`: hashed from the sample's eps, so it depends on its seed "
            f"only); then `x = c_skip(t) x_t + c_out(t) F` with F the UNet's output read as x0 through "
            f"`{rule['prediction_type']}`{_head(rule)}, c_skip = sd^2 / (u^2 + sd^2), c_out = u / sqrt(u^2 + sd^2), "
            f"sd = {rule['sigma_data']!r}, u = {rule['timestep_scaling']!r} (t + 1)"
            + (f"; x clipped to [{lo}, {hi}] after each step" if rule["clip"] else "") + ".")


def _describe_ddim(rule: dict) -> str:
    lo, hi = rule["data_range"]
    clip = f"x0 clipped to [{lo}, {hi}] (eps re-derived from the clipped x0)" if rule["clip_x0"] else "x0 not clipped"
    return (f"Deterministic DDIM (eta = 0), {len(rule['timesteps'])} network evaluations at timesteps "
            f"{rule['timesteps']} (then to alpha_bar = 1), starting from `x = eps ~ N(0, I)`; the UNet's "
            f"output read as `{rule['prediction_type']}`{_head(rule)}; {clip}; alpha_bar per timestep from "
            f"`alphas_cumprod` in sampling.json.")


_DESCRIBE = {"one_step": _describe_one_step, "ddim": _describe_ddim, "consistency": _describe_consistency}


def describe_rule(rule: dict) -> str:
    """The sampling rule in one paragraph, by the rule's kind (bench.portable.RULES); ``sampling.json``
    holds it exactly."""
    return _DESCRIBE[rule["kind"]](rule)


def _code(spec: dict, nfe: int) -> str:
    shape = tuple(spec["sample_shape"])
    rule = spec["samplers"][str(nfe)]["rule"]
    lines = ["import torch", "from diffusers import UNet2DModel", "",
             'unet = UNet2DModel.from_pretrained("path/to/this/folder", subfolder="unet").eval()',
             "seeds = range(16)  # image i depends on its seed only",
             f"eps = torch.stack([torch.randn({shape}, generator=torch.Generator().manual_seed(s)) for s in seeds])"]
    if rule["kind"] == "one_step":
        lines += ["with torch.no_grad():", f"    x_in = {_one_step_x_in(rule)}",
                  f"    x = {rule['c_skip']!r} * x_in + {rule['c_out']!r} * unet(x_in, torch.full((len(eps),), "
                  f"{rule['t']!r})).sample"]
    else:
        lines += ["", f"# the {rule['kind']} rule above, exactly as the run evaluated it (portable.py: its reference)",
                  "from portable import StudentSampler", 'x = StudentSampler("path/to/this/folder").sample(list(seeds))']
    lo, hi = spec["data_range"]
    lines.append(f"# x: images in [{lo}, {hi}], shape (16, {', '.join(map(str, shape))})")
    return "\n".join(lines)


def model_card(run, spec: dict, nfe: int) -> str:
    p, tags = run.data.params, run.data.tags
    source = p.get("teacher.source", "")
    front = ["---", "library_name: diffusers", "tags:", "- diffusion-distillation", "- distill-bench",
             f"- {p['method']}"] + ([f"base_model: {source}"] if "/" in source and not source.startswith(("/", "bench/"))
                                    else []) + ["---", ""]
    table = tags.get("mlflow.note.content", "(no result table was logged with this run)")
    rule = spec["samplers"][str(nfe)]["rule"]
    body = [f"# {p.get('label', p['method'])} student of `{p.get('teacher')}`, {nfe} step(s)", "",
            f"Distilled by distill-bench, MLflow run `{run.info.run_id}` "
            f"(`{run.info.run_name}`, git commit `{tags.get('git_commit', 'unknown')}`).", "",
            "## Results (from the run)", "", table, "",
            "## Teacher", "", f"- name: `{p.get('teacher')}`", f"- source: `{source}`",
            f"- revision: `{p.get('teacher.revision', '')}`", f"- sha256 of its weights: `{p.get('teacher.sha256', '')}`",
            "", "## Sampling rule", "", describe_rule(rule), "",
            "`sampling.json` holds the rule exactly; `portable.py` (torch and diffusers only) runs it.", "",
            "```python", _code(spec, nfe), "```", "",
            "## Method configuration", "", "```json",
            json.dumps({k: v for k, v in sorted(p.items()) if k.startswith("method.")}, indent=1), "```", ""]
    return "\n".join(front + body)
