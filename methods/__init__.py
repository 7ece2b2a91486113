"""Built-in distillation methods; importing this package registers them in METHODS."""
from methods import ddim  # noqa: F401
