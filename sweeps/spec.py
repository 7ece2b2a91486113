"""The sweep spec: a YAML file, safe-loaded and validated; every error names the key and its line.

```yaml
name: digits-boot              # the Ray experiment folder and the MLflow parent run's name
method: boot
teacher: digits
run: {num_samples: 500}        # fixed RunConfig fields (bench run flags)
set: {iterations: 600}         # fixed method config fields (bench ls --method boot)
metric: fid                    # optimised: this evaluation metric ...
nfe: 1                         # ... at this NFE
mode: min
space:                         # method config fields searched over
  lr: {loguniform: [3.0e-5, 1.0e-3]}
  delta: {choice: [5, 10, 20, 40]}
search: optuna                 # optuna (TPE), random or grid
scheduler: {type: asha, grace_period: 100, reduction_factor: 2}   # or: none
num_samples: 8                 # trials (grid: repeats of the whole grid)
max_concurrent: 2
resources: {cpu: 1, gpu: 0}    # per trial; {workers: 4, gpus_per_worker: 1}: each trial a
                               # Ray Train run of 4 workers (bench run --workers)
time_budget_s: 540
max_failures: 1                # a failed trial is retried this many times
storage_path: sweep_results    # trial checkpoints and Ray's experiment state
```
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError

DISTRIBUTIONS = {"choice": "a non-empty list of values", "uniform": "[low, high]",
                 "loguniform": "[low, high] with 0 < low", "randint": "[low, high) integers"}
SEARCHERS = ("optuna", "random", "grid")
RESOURCES = ("cpu", "gpu", "workers", "gpus_per_worker", "cpus_per_worker")
TRIAL_CPU_WITH_WORKERS = 0.1  # a trial whose workers train only waits and relays their metrics
KEYS = {"name", "method", "teacher", "run", "set", "metric", "nfe", "mode", "space", "search",
        "scheduler", "num_samples", "max_concurrent", "resources", "time_budget_s", "max_failures",
        "storage_path", "seed"}


@dataclasses.dataclass(frozen=True)
class Scheduler:
    type: str = "asha"  # asha or none
    grace_period: int = 100  # training steps every trial gets before ASHA may stop it
    reduction_factor: int = 2


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    name: str
    method: str
    teacher: str
    space: dict[str, tuple[str, tuple]]  # field -> (distribution, arguments)
    run: dict[str, Any] = dataclasses.field(default_factory=dict)
    set: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "fid"
    nfe: int = 1
    mode: str = "min"
    search: str = "optuna"
    scheduler: Scheduler = Scheduler()
    num_samples: int = 8
    max_concurrent: int = 1
    # the trial's own cpu and gpu; workers and gpus_per_worker: each trial trains on Ray Train
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    time_budget_s: Optional[float] = None
    max_failures: int = 1
    storage_path: str = "sweep_results"
    seed: int = 0  # of the search algorithm (trials all use the run's seed)
    source: str = ""  # the file it came from

    @property
    def objective(self) -> str:
        """The metric Ray Tune sees, e.g. ``fid@1``."""
        return f"{self.metric}@{self.nfe}"

    def storage(self) -> Path:
        return Path(self.storage_path).expanduser().resolve()


class _Where:
    """Line numbers of a YAML mapping's keys, for errors a user can find."""

    def __init__(self, path: str, text: str):
        import yaml

        self.path, self.lines = path, {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None
        self._walk(node, ())

    def _walk(self, node, prefix: tuple) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                where = prefix + (str(key.value),)
                self.lines[where] = key.start_mark.line + 1
                self._walk(value, where)

    def error(self, keys: tuple, message: str) -> BenchError:
        line = self.lines.get(tuple(map(str, keys)))
        at = f" line {line}" if line else ""
        return BenchError(f"sweep spec {self.path}{at}: {'.'.join(map(str, keys))}: {message}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec (see the module docstring for its form)."""
    import yaml

    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BenchError(f"cannot read sweep spec {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)  # safe: a spec never constructs Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise BenchError(f"sweep spec {path}{at} is not valid YAML: "
                         f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchError(f"sweep spec {path} must be a mapping (name:, method:, space:, ...)")
    where = _Where(path, text)
    spec = _validate(data, where)
    _check_fields(spec, where)
    return spec


def _check_fields(spec: SweepSpec, where: _Where) -> None:
    """Fail before Ray starts: run: fields, set: fields and every space value must be valid."""
    from bench import config as cfgs
    from bench.run import RunConfig, build_method

    try:
        run_cfg = cfgs.replace(RunConfig(method=spec.method, teacher=spec.teacher), spec.run, what="run")
    except BenchError as exc:
        raise where.error(("run",), str(exc)) from None
    try:
        _, base = build_method(run_cfg, spec.set)
    except BenchError as exc:
        raise where.error(("set",) if spec.set else ("method",), str(exc)) from None
    for name, (kind, args) in spec.space.items():
        for value in (args if kind == "choice" else args[:1]):
            try:
                cfgs.replace(base, {name: value}, what=f"{spec.method} config")
            except BenchError as exc:
                raise where.error(("space", name), str(exc)) from None


def _validate(data: dict, where: _Where) -> SweepSpec:
    for key in data:
        if key not in KEYS:
            raise where.error((key,), f"unknown key; known: {', '.join(sorted(KEYS))}")
    for key in ("method", "teacher", "space"):
        if key not in data:
            raise BenchError(f"sweep spec {where.path}: missing required key {key!r}")
    space = _space(data["space"], where)
    values = {k: v for k, v in data.items() if k not in ("space", "scheduler")}
    values.setdefault("name", Path(where.path).stem)
    values["scheduler"] = _scheduler(data.get("scheduler", {}), where)
    for key, kind in (("run", dict), ("set", dict), ("resources", dict)):
        if key in values and not isinstance(values[key], kind):
            raise where.error((key,), f"must be a mapping, got {type(values[key]).__name__}")
    for key in ("num_samples", "max_concurrent", "nfe", "max_failures", "seed"):
        if key in values and (not isinstance(values[key], int) or values[key] < (0 if key in ("max_failures", "seed") else 1)):
            raise where.error((key,), f"must be a positive integer, got {values[key]!r}")
    if values.get("mode", "min") not in ("min", "max"):
        raise where.error(("mode",), f"must be min or max, got {values['mode']!r}")
    if values.get("search", "optuna") not in SEARCHERS:
        raise where.error(("search",), f"must be one of {', '.join(SEARCHERS)}, got {values['search']!r}")
    if values.get("search") == "grid" and any(d != "choice" for d, _ in space.values()):
        raise where.error(("search",), "grid search needs every space entry to be a choice list")
    _check_resources(values, where)
    clash = set(space) & set(values.get("set", {}))
    if clash:
        raise where.error(("space", sorted(clash)[0]), "is both searched and fixed in set:; keep one")
    budget = values.get("time_budget_s")
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise where.error(("time_budget_s",), f"must be a positive number of seconds, got {budget!r}")
    return SweepSpec(space=space, source=where.path, **values)


def _check_resources(values: dict, where: _Where) -> None:
    resources = values.get("resources", {})
    for key, value in resources.items():
        if key not in RESOURCES:
            raise where.error(("resources", key), f"unknown key; known: {', '.join(RESOURCES)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise where.error(("resources", key), f"must be a number >= 0, got {value!r}")
    if not isinstance(resources.get("workers", 1), int) or resources.get("workers", 1) < 1:
        raise where.error(("resources", "workers"), f"must be an integer >= 1, got {resources['workers']!r}")
    for key in ("workers", "gpus_per_worker", "cpus_per_worker"):
        if key in resources and key in values.get("run", {}):
            raise where.error(("resources", key), "is also set in run:; keep one")


def _space(raw: Any, where: _Where) -> dict[str, tuple[str, tuple]]:
    if not isinstance(raw, dict) or not raw:
        raise where.error(("space",), "the search space is empty; give at least one field, "
                                      "e.g. lr: {loguniform: [1.0e-5, 1.0e-3]}")
    out = {}
    for name, dist in raw.items():
        if not isinstance(dist, dict) or len(dist) != 1:
            raise where.error(("space", name), "give one distribution: " + ", ".join(
                f"{{{d}: {a}}}" for d, a in DISTRIBUTIONS.items()))
        (kind, args), = dist.items()
        if kind not in DISTRIBUTIONS:
            raise where.error(("space", name, kind), f"unknown distribution; use one of {', '.join(DISTRIBUTIONS)}")
        out[str(name)] = (kind, _arguments(kind, args, where, ("space", name, kind)))
    return out


def _arguments(kind: str, args: Any, where: _Where, keys: tuple) -> tuple:
    if not isinstance(args, list) or not args:
        raise where.error(keys, f"needs {DISTRIBUTIONS[kind]}, got {args!r}")
    if kind == "choice":
        return tuple(args)
    numeric = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if len(args) != 2 or not numeric or not args[0] < args[1]:
        raise where.error(keys, f"needs {DISTRIBUTIONS[kind]} with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise where.error(keys, f"needs 0 < low, got {args[0]!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise where.error(keys, f"needs integer bounds, got {args!r}")
    return tuple(args)


def _scheduler(raw: Any, where: _Where) -> Scheduler:
    if raw in ("none", None, "asha"):
        return Scheduler(type=raw or "none")
    if not isinstance(raw, dict):
        raise where.error(("scheduler",), f"must be none, asha or a mapping with type: asha, got {raw!r}")
    unknown = set(raw) - {f.name for f in dataclasses.fields(Scheduler)}
    if unknown:
        raise where.error(("scheduler", sorted(unknown)[0]), "unknown key; known: type, grace_period, reduction_factor")
    sched = Scheduler(**raw)
    if sched.type not in ("asha", "none"):
        raise where.error(("scheduler", "type"), f"must be asha or none, got {sched.type!r}")
    if not isinstance(sched.grace_period, int) or sched.grace_period < 1 or \
            not isinstance(sched.reduction_factor, int) or sched.reduction_factor < 2:
        raise where.error(("scheduler",), "grace_period must be >= 1 and reduction_factor >= 2 (integers)")
    return sched
