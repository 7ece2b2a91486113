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


def test_builtins_module_is_imported_once_on_first_use(tmp_path, monkeypatch):
    import sys
    import types

    target = types.SimpleNamespace(reg=Registry("widget", builtins="widgets_zz"), loads=[])
    monkeypatch.setitem(sys.modules, "widget_target_zz", target)
    (tmp_path / "widgets_zz.py").write_text("import widget_target_zz as t\n"
                                            "t.reg.register('w')(object())\nt.loads.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "w" in target.reg and list(target.reg) == ["w"] and len(target.reg) == 1
    assert target.loads == [1]  # imported on first use, once


def test_unknown_name_lists_known():
    reg = Registry("widget")
    reg.register("beta")(object())
    reg.register("alpha")(object())
    with pytest.raises(BenchError, match=r"unknown widget 'gamma'; known: alpha, beta"):
        reg.get("gamma")


def test_builtins_registered():
    """The registries load their built-in entries on first use: nothing else has to import them."""
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
    assert "--set spacing=<trailing|leading|linspace>" in out and "default trailing" in out
