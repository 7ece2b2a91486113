"""Ray Tune sweeps over ``bench.run.run``: a YAML spec, the Tune driver with one MLflow parent run, the trial."""
