import pytest

from harness.errors import UserError
from harness.registry import DATASETS, MODELS, STRATEGIES, STUDIES, Registry, UnknownNameError


def test_duplicate_name_raises():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 2)


def test_decorator_registers_and_returns_the_object():
    reg = Registry("widget")

    @reg.register("f")
    def f():
        return 42

    assert reg.get("f") is f and f() == 42


def test_unknown_name_suggests_the_closest_and_lists_all():
    reg = Registry("strategy")
    for name in ("linear_probe", "full_finetune", "lp_ft"):
        reg.add(name, object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("linear_prob")
    msg = str(e.value)
    assert msg == ("unknown strategy 'linear_prob'; did you mean 'linear_probe'? "
                   "available: full_finetune, linear_probe, lp_ft")
    assert isinstance(e.value, UserError) and isinstance(e.value, KeyError)


def test_unknown_name_prefix_is_suggested():
    reg = Registry("strategy")
    reg.add("linear_probe", object())
    with pytest.raises(UnknownNameError, match="did you mean 'linear_probe'"):
        reg.get("linear")


def test_unknown_name_without_close_match_has_no_guess():
    reg = Registry("model")
    reg.add("small_cnn", object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("zzz")
    assert "did you mean" not in str(e.value) and "available: small_cnn" in str(e.value)


@pytest.mark.parametrize("registry, expected", [
    (STRATEGIES, {"linear_probe", "full_finetune"}),
    (STUDIES, {"finetune_vs_probe"}),
    (DATASETS, {"mnist5k", "digits"}),
    (MODELS, {"small_cnn"}),
])
def test_packages_are_discovered_on_first_use(registry, expected):
    assert expected <= set(registry.names())
