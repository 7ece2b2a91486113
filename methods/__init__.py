"""Built-in distillation methods; importing this package registers them in METHODS."""
from methods import boot, consistency, ddim, progressive, solver  # noqa: F401
