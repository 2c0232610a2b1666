"""The command line as a user meets it: exit codes, one-line errors, listings.

Most cases run in-process through the CLI's own ``main`` (what ``python -m harness`` runs): a
subprocess would pay the interpreter and torch start-up (3-4 s) for each. One test checks that
a real process gives the same one line and exit code.
"""

from types import SimpleNamespace

import pytest


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``harness ARGS`` in this process: ``.returncode``, ``.stdout``, ``.stderr``."""
    from harness.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's --help and its own errors, as in a process
            code = e.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.mark.parametrize("args, needle", [
    (["study", "finetune_vs_prob"], "error: unknown study 'finetune_vs_prob'; did you mean 'finetune_vs_probe'?"),
    (["study", "finetune_vs_probe", "--trials", "0"], "argument --trials: must be a positive integer, but got 0"),
    (["study", "finetune_vs_probe", "--seeds", "three"], "argument --seeds: must be a positive integer, but got 'three'"),
    (["study", "finetune_vs_probe", "--device", "tpu"], "error: unknown device 'tpu'"),
    (["study", "missing.toml"], "error: study file 'missing.toml' does not exist."),
    (["list", "widgets"], "invalid choice: 'widgets'"),
    (["study", "finetune_vs_probe", "--objectives", "throughput"],
     "objectives must be ('accuracy',) or ('accuracy', 'throughput')"),
    (["study", "finetune_vs_probe", "--resume", "nowhere"], "--resume 'nowhere' is not a run folder"),
    (["study", "finetune_vs_probe", "--resume", "x", "--trials", "3"],
     "--resume finishes a run as it was planned; drop --trials."),
    (["worker", "finetune_vs_probe", "--storage", "journal:/nonexistent-dir/x.log"],
     "the storage 'journal:/nonexistent-dir/x.log' does not exist"),
])
def test_user_mistakes_exit_2_with_one_line(args, needle, tmp_path, capsys):
    from harness.cli import main

    argv = [*args, "--out", str(tmp_path)] if args[0] == "study" else list(args)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors leave through exit(2), as in a process
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_mistake_in_a_real_process_is_one_line_and_exit_2(run_cli, tmp_path):
    res = run_cli("study", "finetune_vs_prob", "--out", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        res.stderr.strip()] and "did you mean 'finetune_vs_probe'?" in res.stderr


def test_unknown_strategy_in_a_study_file_exits_2(cli, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('dataset = "digits"\nstrategies = ["linear_prob"]\n')
    res = cli("study", str(f), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: unknown strategy 'linear_prob'; did you mean "
                                  "'linear_probe'? available: full_finetune, linear_probe") or \
        res.stderr.strip().startswith("error: unknown strategy 'linear_prob'; did you mean 'linear_probe'?")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, needle", [
    ("classes = 5", "study field 'classes' must be a list of integers, but got 5."),
    ("pretrain = 3", "must be a [pretrain] table, but got 3."),
    ("sampler_seed = \"x\"", "study field 'sampler_seed' must be an integer, but got 'x'."),
    ("trials = true", "study field 'trials' must be a positive integer, but got True."),
    ("budgets = [400]", "shots must be between 1 and 104"),
    ("classes = [5, 11]", "classes must be at least two distinct labels of 'digits'"),
    ("executions = [\"eager+fp16\"]", "fp16 autocast needs a CUDA device"),
    ("executions = [\"compile:fast\"]", "unknown compile mode 'fast'"),
    ("[pretrain]\nepochs = \"x\"", "pretrain field 'epochs' must be a positive integer, but got 'x'."),
    ("sampler = \"grid\"", "the grid sampler needs a grid for every strategy, but ['linear_probe'] have none"),
    ("sampler = \"cmaes\"", "sampler must be one of ('tpe', 'random', 'grid'), but got 'cmaes'."),
    ("pruner = \"asha\"", "pruner must be one of ('median', 'percentile', 'sha', 'hyperband', 'none'), but got 'asha'."),
    ("ood = [\"rotate\"]", "OOD set 'rotate' needs a finite number"),
    ("loader = \"stream\"", "loader must be one of ('resident', 'dataloader')"),
    ("model = \"resnet18\"\nweights = \"/no/such/weights.pt\"", "weights file not found: /no/such/weights.pt"),
    ("dataset = \"cifar10:/no/cifar\"", "dataset 'cifar10' not found: missing data_batch_1"),
    ("devices = [\"cuda:3\"]", "device 'cuda:3' is not available"),
])
def test_bad_values_in_a_study_file_exit_2_before_anything_is_written(tmp_path, capsys, line, needle):
    """In-process through the CLI's own ``main`` (what ``python -m harness`` runs): 17 cases
    as subprocesses would pay the interpreter and torch start-up 17 times."""
    from harness.cli import main

    f = tmp_path / "s.toml"
    dataset = "" if line.startswith("dataset") else 'dataset = "digits"\n'
    f.write_text(f'{dataset}strategies = ["linear_probe"]\n{line}\n')
    code = main(["study", str(f), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_bad_storage_and_out_exit_2_and_write_nothing(cli, tmp_path):
    res = cli("study", "finetune_vs_probe", "--storage", "notadb://u:secret@h/x",
              "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "cannot open Optuna storage 'notadb://u:***@h/x'" in res.stderr
    assert "secret" not in res.stderr and not (tmp_path / "out").exists()
    (tmp_path / "afile").write_text("")
    res = cli("study", "finetune_vs_probe", "--out", str(tmp_path / "afile"))
    assert res.returncode == 2 and "is a file; pass a folder" in res.stderr


def test_unknown_key_in_a_study_file_exits_2(cli, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('dataset = "digits"\nstrategies = ["linear_probe"]\nepoch = 3\n')
    res = cli("study", str(f), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "unknown key(s) ['epoch']" in res.stderr


@pytest.mark.parametrize("kind, expected", [
    ("strategies", "linear_probe"), ("studies", "finetune_vs_probe"),
    ("datasets", "mnist5k"), ("models", "small_cnn"),
])
def test_list_shows_registered_entries_with_descriptions(cli, kind, expected):
    res = cli("list", kind)
    assert res.returncode == 0
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith(expected))
    assert len(line.split(None, 1)) == 2  # a name and a description


def test_help_explains_every_study_option(cli):
    res = cli("study", "--help")
    for opt in ("--trials", "--seeds", "--storage", "--out", "--device"):
        assert opt in res.stdout


def test_a_worker_with_no_run_to_join_exits_2(cli, tmp_path):
    (tmp_path / "j.log").write_text("")  # a journal with no run in it
    res = cli("worker", "finetune_vs_probe", "--storage", f"journal:{tmp_path / 'j.log'}")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no unfinished run of study 'finetune_vs_probe'" in res.stderr


@pytest.mark.parametrize("how", ["file", "env"])
def test_the_storage_url_can_come_from_a_file_or_a_variable_out_of_ps(tmp_path, monkeypatch,
                                                                       capsys, how):
    from harness.cli import main

    url = "postgresql://me:secret@db.lab/harness"
    if how == "file":
        (tmp_path / "storage").write_text(url + "\n")
        arg = f"file:{tmp_path / 'storage'}"
    else:
        monkeypatch.setenv("HARNESS_TEST_STORAGE", url)
        arg = "env:HARNESS_TEST_STORAGE"
    got = {}

    def worker(study, storage, **kwargs):  # what the worker would open
        got["storage"] = storage
        return 0

    monkeypatch.setattr("harness.run.sweep.run_worker", worker)
    assert main(["worker", "s", "--storage", arg]) == 0
    assert got == {"storage": url}
    assert "secret" not in capsys.readouterr().out


def test_a_study_reads_its_storage_from_a_file_and_still_masks_the_password(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "storage").write_text("notadb://u:secret@h/x")
    code = main(["study", "finetune_vs_probe", "--storage", f"file:{tmp_path / 'storage'}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot open Optuna storage 'notadb://u:***@h/x'" in err, err
    assert "secret" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, storage, needle", [
    ("worker", "file:{tmp}/missing", "--storage 'file:{tmp}/missing': cannot read '{tmp}/missing'"),
    ("study", "file:{tmp}/missing", "cannot read '{tmp}/missing' (No such file or directory)"),
    ("worker", "file:{tmp}/empty", "the file '{tmp}/empty' is empty; write the storage URL"),
    ("worker", "env:HARNESS_TEST_UNSET", "variable HARNESS_TEST_UNSET is not set or empty; export"),
    ("study", "env:HARNESS_TEST_UNSET", "the environment variable HARNESS_TEST_UNSET is not set"),
    ("worker", "env:", "--storage 'env:' names no variable; write env:VAR or file:PATH"),
])
def test_a_missing_storage_file_or_variable_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys,
                                                                  command, storage, needle):
    from harness.cli import main

    monkeypatch.delenv("HARNESS_TEST_UNSET", raising=False)
    (tmp_path / "empty").write_text("\n")
    extra = ["--out", str(tmp_path / "out")] if command == "study" else []
    code = main([command, "finetune_vs_probe", "--storage", storage.format(tmp=tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and needle.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["journal:{tmp}/typo.log", "sqlite:///{tmp}/typo.db",
                                 "sqlite:///{tmp}/no-such-dir/typo.db"])
@pytest.mark.parametrize("wait", [[], ["--wait", "1"]])
def test_a_worker_never_creates_a_storage(tmp_path, capsys, url, wait):
    """A mistyped path is one line and exit 2, and leaves no empty journal or fresh database."""
    from harness.cli import main

    url = url.format(tmp=tmp_path)
    code = main(["worker", "finetune_vs_probe", "--storage", url, *wait])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and f"the storage {url!r} does not exist" in err
    assert "a worker joins a run and never creates one" in err
    assert list(tmp_path.iterdir()) == []


def test_a_resume_with_a_mistyped_storage_creates_none(tmp_path, capsys):
    from harness.cli import main

    run_dir = tmp_path / "runs" / "s" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text("{}")
    (run_dir / "env.json").write_text("{}")
    code = main(["study", "s", "--resume", str(run_dir), "--storage", f"journal:{tmp_path / 'typo.log'}"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
