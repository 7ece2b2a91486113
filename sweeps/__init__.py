"""Ray Tune sweeps over ``bench.run.run`` (see the sweeps issue)."""
