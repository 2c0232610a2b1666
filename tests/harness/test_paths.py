"""Names that become paths stay one folder: a study's name, a run's study name and run_id."""

import json

import pytest

from harness.config.spec import safe_component
from harness.errors import UserError

# a whole study, were the name let through: one cell, one trial, one epoch
TINY = ('dataset = "digits"\nclasses = [0, 1]\nstrategies = ["linear_probe"]\nbudgets = [5]\n'
        'epochs = 1\ntrials = 1\nseeds = 1\n')


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["finetune_vs_probe", "my.study", "a b", "20260101-000000-ab12",
                                  "...x"])
def test_a_single_folder_name_is_accepted_as_it_is(name):
    assert safe_component(name, "study name") == name


@pytest.mark.parametrize("name", ["../../../x", "/abs/x", "a/b", "a\\b", "..", ".", "", "a\nb",
                                  "nul\x00", 3])
def test_a_name_that_is_not_one_folder_is_a_one_line_user_error_naming_it(name):
    with pytest.raises(UserError) as e:
        safe_component(name, "study name")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("study name must be a single folder name, but got "
                                              f"{name!r}")
    assert "rename it" in msg


def test_a_study_file_whose_name_climbs_out_exits_2_and_writes_nothing(run_cli, tmp_path):
    """In a real process, as the issue found it: exit 0 and the run written outside --out."""
    f = tmp_path / "s.toml"
    f.write_text(f'name = "../../../x"\n{TINY}')
    out = tmp_path / "a" / "b" / "c" / "out"
    res = run_cli("study", str(f), "--out", str(out), "--quiet", timeout=None)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: study name must be a single folder name, but got '../../../x' (it may not be "
        + "empty, '.' or '..', nor hold '/', '\\' or control characters); rename it, e.g. 'x'."]
    assert _files(tmp_path) == ["s.toml"]


@pytest.mark.parametrize("name", ["/abs/x", "sub/x", "..", ""])
def test_a_study_name_that_is_a_path_exits_2_before_anything_is_written(tmp_path, capsys, name):
    from harness.cli import main

    if name.startswith("/"):
        name = str(tmp_path / "abs" / "x")  # an absolute path, but one this test may look at
    f = tmp_path / "s.toml"
    f.write_text(f"name = {json.dumps(name)}\n{TINY}")
    code = main(["study", str(f), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "must be a single folder name" in err
    assert _files(tmp_path) == ["s.toml"]


def test_a_registered_study_name_passes_validation():
    from harness.registry import STUDIES

    for name in STUDIES.names():
        assert STUDIES.get(name)().validate().name == name
