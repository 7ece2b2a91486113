"""Built-in distillation methods; importing this package registers them in METHODS."""
from methods import boot, consistency, ddim, dmd2, progressive, sid, solver  # noqa: F401
