"""StudySpec.validate checks fields only; building what they name is the run stage's preflight."""

import pytest

from harness.config.spec import StudySpec
from harness.errors import UserError
from harness.run.preflight import check_runnable


def _spec(**kw):
    base = {"name": "pf", "description": "preflight", "dataset": "mnist5k", "classes": (5, 6),
            "budgets": (10,), "strategies": ("linear_probe",), "epochs": 1, "trials": 1, "seeds": 1}
    return StudySpec(**{**base, **kw})


def test_validate_checks_fields_without_building_data():
    spec = _spec(classes=(5, 11))  # digit 11 does not exist: only building the task can tell
    assert spec.validate() is spec
    with pytest.raises(UserError, match="11"):
        check_runnable(spec)


def test_a_bad_field_is_caught_by_validate_before_any_data_is_read():
    with pytest.raises(UserError, match="unknown strategy 'linear_prob'; did you mean 'linear_probe'"):
        _spec(strategies=("linear_prob",)).validate()


def test_no_runnable_device_is_preflight_not_a_field_error():
    spec = _spec(devices=("cuda:7",))
    spec.validate()
    with pytest.raises(UserError, match="cuda"):
        check_runnable(spec)


def test_bad_ood_names_are_refused_by_preflight():
    with pytest.raises(UserError, match="unknown OOD set 'bogus'"):
        check_runnable(_spec(ood=("bogus",)))


def test_every_plugin_kind_uses_the_one_registry_idiom():
    from harness import registry
    from harness.analysis.claims import CLAIMS
    from harness.report.plots import FIGURES

    kinds = [registry.STRATEGIES, registry.STUDIES, registry.DATASETS, registry.MODELS,
             registry.SHIFTS, FIGURES, CLAIMS]
    assert all(isinstance(r, registry.Registry) for r in kinds)
    assert all(len(r) > 0 for r in kinds)
