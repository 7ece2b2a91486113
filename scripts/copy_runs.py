"""Copy finished `bench run` runs from one MLflow store into another's experiment, so runs made on
different machines (a GPU machine's store brought back, a colleague's sqlite file) are read by
one `bench report`. Params, tags, every metric's full history (values, steps, timestamps) and
the run's status and times are copied; artifacts are not (the report reads none).

    python scripts/copy_runs.py --from sqlite:///gpu.db --to sqlite:///results.db \
        --experiment results-digits [--filter "params.method = 'consistency'"]

A run is copied once: the copy carries the tag ``bench.copied_from`` = source run id, and a
source run whose id is already there is skipped.
"""
from __future__ import annotations

import argparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient


def copy_runs(source: str, dest: str, experiment: str, filter_string: str = "") -> list[str]:
    """Ids (in ``dest``) of the runs copied from ``source``'s experiment of the same name."""
    src, dst = MlflowClient(source), MlflowClient(dest)
    src_exp = src.get_experiment_by_name(experiment)
    if src_exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {source}")
    dst_exp = dst.get_experiment_by_name(experiment)
    exp_id = dst_exp.experiment_id if dst_exp else dst.create_experiment(experiment)
    there = {r.data.tags.get("bench.copied_from") for r in dst.search_runs([exp_id], max_results=5000)}
    copied = []
    for run in src.search_runs([src_exp.experiment_id], filter_string=filter_string, max_results=5000):
        if run.info.status != "FINISHED" or run.info.run_id in there:
            continue
        new = dst.create_run(exp_id, start_time=run.info.start_time, run_name=run.info.run_name,
                             tags={**run.data.tags, "bench.copied_from": run.info.run_id,
                                   "bench.copied_from_store": source})
        history = [Metric(key, m.value, m.timestamp, m.step) for key in run.data.metrics
                   for m in src.get_metric_history(run.info.run_id, key)]
        params = [Param(k, v) for k, v in run.data.params.items()]
        for i in range(0, len(params), 90):  # log_batch takes at most 100 params, 1000 metrics
            dst.log_batch(new.info.run_id, params=params[i:i + 90])
        for i in range(0, len(history), 900):
            dst.log_batch(new.info.run_id, metrics=history[i:i + 900])
        dst.set_terminated(new.info.run_id, "FINISHED", end_time=run.info.end_time)
        copied.append(new.info.run_id)
    return copied


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", required=True, help="source tracking URI")
    p.add_argument("--to", dest="dest", required=True, help="destination tracking URI")
    p.add_argument("--experiment", required=True, help="experiment name (the same in both stores)")
    p.add_argument("--filter", default="", help="MLflow filter string on the source runs")
    args = p.parse_args()
    ids = copy_runs(args.source, args.dest, args.experiment, args.filter)
    print(f"copied {len(ids)} runs into {args.dest} ({args.experiment})")


if __name__ == "__main__":
    main()
