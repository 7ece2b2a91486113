import pytest

from bench.errors import BenchError
from bench.registry import Registry


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("a", "first")
    def a():
        return 1

    assert reg.get("a") is a
    assert "a" in reg and list(reg) == ["a"] and reg.summary("a") == "first"


def test_duplicate_rejected():
    reg = Registry("widget")
    reg.register("a")(object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(object())


def test_unknown_name_lists_known():
    reg = Registry("widget")
    reg.register("beta")(object())
    reg.register("alpha")(object())
    with pytest.raises(BenchError, match=r"unknown widget 'gamma'; known: alpha, beta"):
        reg.get("gamma")


def test_builtins_registered():
    import bench.features  # noqa: F401
    import bench.teachers  # noqa: F401
    import methods  # noqa: F401
    from bench.registry import FEATURES, METHODS, TEACHERS

    assert {"gaussian", "gmm2d", "digits", "cifar10", "lsun_bedroom", "lsun_church", "celebahq"} <= set(TEACHERS)
    assert "ddim" in METHODS
    assert {"digits-cnn", "points"} <= set(FEATURES)


def test_bench_ls_one_line_each(capsys):
    from bench.cli import main

    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    kinds = {line.split()[0] for line in lines}
    assert kinds == {"teacher", "method", "metric"}
    assert any(line.split()[:2] == ["method", "ddim"] for line in lines)


def test_bench_ls_method_fields(capsys):
    from bench.cli import main

    assert main(["ls", "--method", "ddim"]) == 0
    out = capsys.readouterr().out
    assert "--set spacing=<str>" in out and "default trailing" in out
