"""distill-bench: a benchmark harness for diffusion distillation methods."""
__version__ = "0.1.0"
