import argparse
import re
import shutil
import subprocess
import warnings

import pytest

from harness.analysis.results import load
from harness.config.spec import StudySpec
from harness.pipeline import run_study
from harness.report import markdown as report
from harness.report import plots
from harness.report.markdown import write_reports
from harness.report.plots import FIGURES, draw_all


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny real run: LP-FT (two phases) and a linear probe x two executions, one device
    missing (skipped cells), and the probe's only search trial invalid (failed cells)."""
    spec = StudySpec(name="t", description="a tiny run for the report", dataset="digits",
                     classes=(0, 1, 2), budgets=(20,), strategies=("lp_ft", "linear_probe"),
                     devices=("cpu", "cuda:7"), executions=("eager", "eager+channels_last"),
                     epochs=2, batch_size=8, trials=1, seeds=2, pruner="none",
                     enqueue={"linear_probe": {"lr": 0.1, "weight_decay": 0.0}})  # 0: log scale
    run = run_study(spec, out_root=tmp_path_factory.mktemp("runs"), progress=False, figures=True)
    return run.run_dir


@pytest.fixture(autouse=True)
def _figures(figures_on):
    """Every report of this file draws its figures (the session's default is none)."""


def _drawn(run_dir):
    """draw_all, answered from the figures the fixture drew (for tests about the text)."""
    done = [plots.Plot(f.name, f.title, f.caption, run_dir / "plots" / f"{f.name}.png",
                       run_dir / "plots" / f"{f.name}.svg") for f in plots.in_order()]
    return lambda *args: done


def test_every_figure_is_drawn_as_png_and_svg_and_shown_in_both_reports(run_dir):
    md = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    assert len(FIGURES) == 8  # six, and the PEFT Pareto plots of memory and stored bytes
    for name in FIGURES:
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 5000
        assert (run_dir / "plots" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        assert f"](plots/{name}.png)" in md
        assert FIGURES[name].title in html
    assert "Omitted" not in md and "Omitted" not in html
    assert html.count('src="data:image/svg+xml;base64,') == len(FIGURES)


def test_the_reports_hold_the_axes_summary_with_reasons_executions_and_environment(run_dir):
    run = load(run_dir)
    for text in ((run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()):
        assert "`cpu`, `cuda:7`" in text or "<code>cpu</code>, <code>cuda:7</code>" in text
        assert "eager+channels_last" in text and "lp_ft" in text
        assert text.count("skipped: ") == 4  # the reason, in each skipped cell's summary row
        assert text.count("failed: no search trial of the cell completed") == 2
        assert "ValueError in search_space" in text  # the failed trials' own errors
        assert "Pareto" in text and "yes" in text
        assert "speedup vs eager" in text  # two executions: the executions table
        assert run.env["versions"]["torch"] in text and run.env["git_commit"] in text
        assert run.env["run_id"] in text and "a tiny run for the report" in text


def test_the_html_report_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html and "url(" not in html
    assert '<tr class="skipped">' in html and '<td class="pareto">yes</td>' in html


def test_write_reports_is_rerunnable_and_leaves_no_temporary_files(run_dir, monkeypatch):
    figures = sorted((run_dir / "plots").iterdir())
    before = {p: p.read_bytes() for p in figures}
    md, html = write_reports(run_dir)
    assert (md, html) == (run_dir / "report.md", run_dir / "report.html")
    assert {p: p.read_bytes() for p in figures} == before  # seeded jitter and bootstrap, no dates
    reports = md.read_text(), html.read_text()
    monkeypatch.setattr(plots, "draw_all", _drawn(run_dir))  # the same figures, drawn once
    write_reports(run_dir)
    assert (md.read_text(), html.read_text()) == reports
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_failing_render_leaves_the_previous_reports_intact(run_dir, monkeypatch):
    old = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()

    def broken(*args):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr("harness.report.html.render", broken)
    monkeypatch.setattr(plots, "draw_all", _drawn(run_dir))
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_reports(run_dir)
    assert ((run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()) == old


def test_html_in_names_descriptions_and_errors_is_escaped_in_report_md_as_in_report_html(
        run_dir, tmp_path, monkeypatch):
    """The run's files are data, not markup: report.md shows a tag, it does not run it."""
    import json

    import pandas as pd

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    spec = json.loads((copy / "spec.json").read_text())
    spec.update(name="t<i>", description="<script>alert(1)</script> R&D")
    (copy / "spec.json").write_text(json.dumps(spec))
    for table, column, value in (("summary", "strategy", "lin<b>ear</b>"),
                                 ("trials", "error", "<img src=x onerror=alert(2)>")):
        df = pd.read_csv(copy / f"{table}.csv")
        df[column] = df[column].where(df[column].isna(), value)
        df.to_csv(copy / f"{table}.csv", index=False)
    monkeypatch.setattr(plots, "draw_all", _drawn(copy))
    md_path, html_path = write_reports(copy)
    md = md_path.read_text()
    outside_json = re.sub(r"```json\n.*?\n```", "", md, flags=re.DOTALL)  # shown as it is
    for tag in ("<script", "<b>", "<img", "<i>"):
        assert tag not in outside_json, tag
    assert "# t&lt;i>: run " in md and "&lt;script>alert(1)&lt;/script> R&amp;D" in md
    assert "| lin&lt;b>ear&lt;/b> |" in md and "&lt;img src=x onerror=alert(2)>" in md
    assert "<details><summary>json</summary>" in md  # the report's own HTML stays
    html = html_path.read_text()
    assert "&lt;script&gt;" in html and "<script" not in html and "&lt;b&gt;ear" in html


def test_figures_without_data_are_omitted_with_the_reason_and_their_old_files_removed(
        run_dir, tmp_path):
    one = tmp_path / "one_execution"
    shutil.copytree(run_dir, one)
    run = load(one)
    keep = run.measurements["execution"] == "eager"
    run.measurements[keep].to_csv(one / "measurements.csv", index=False)
    md, html = write_reports(one)
    assert not (one / "plots" / "execution_speedup.png").exists()
    assert not (one / "plots" / "execution_speedup.svg").exists()
    assert "*Omitted: the run has final runs of one execution (eager)" in md.read_text()
    assert "Omitted: the run has final runs of one execution" in html.read_text()


def test_every_figure_survives_a_run_with_no_successful_trial(run_dir, tmp_path):
    """All trials failed or skipped, NaN everywhere: every figure is omitted, none crashes."""
    run = load(run_dir)
    trials = run.trials.assign(status=run.trials["status"].where(
        run.trials["status"] == "skipped", "failed"), val_accuracy=float("nan"),
        test_accuracy=float("nan"))
    m = run.measurements.assign(status="failed")
    s = run.summary.assign(test_acc_mean=float("nan"), test_acc_ci95=float("nan"),
                           samples_per_s=float("nan"), pareto=False)
    broken = type(run)(m, trials, s, run.env, run.spec)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="figure .* failed")  # a figure's own crash
        result = {p.name: p for p in draw_all(tmp_path, broken)}
    assert set(result) == set(FIGURES)
    drawn = {n for n, p in result.items() if not p.omitted}
    assert drawn == {"optimisation_history"}  # failed trials, marked as such
    for p in result.values():
        assert p.omitted or p.png.is_file()


def test_a_figure_that_crashes_is_omitted_with_its_error_and_the_report_still_written(
        run_dir, tmp_path, monkeypatch):
    def crash(run):
        raise KeyError("no_such_column")

    monkeypatch.setattr(plots, "FIGURES", {
        "peak_memory": plots.Figure("peak_memory", "Peak", "c", crash),
        "accuracy_heatmap": FIGURES["accuracy_heatmap"]})
    with pytest.warns(UserWarning, match="peak_memory"):
        result = {p.name: p for p in draw_all(tmp_path, load(run_dir))}
    assert result["peak_memory"].omitted == "drawing it failed (KeyError: 'no_such_column')"
    assert not result["accuracy_heatmap"].omitted


def test_the_report_subcommand_rewrites_the_reports_and_rejects_a_folder_without_tables(
        run_dir, tmp_path, capsys, monkeypatch):
    from harness.errors import UserError

    monkeypatch.setattr(plots, "draw_all", _drawn(run_dir))
    parser = argparse.ArgumentParser()
    report.add_parser(parser.add_subparsers(dest="command"))
    (run_dir / "report.html").unlink()
    assert report.main(parser.parse_args(["report", str(run_dir)])) == 0
    assert (run_dir / "report.html").is_file() and "report.html" in capsys.readouterr().out
    with pytest.raises(UserError, match="lacks measurements.csv"):
        report.main(parser.parse_args(["report", str(tmp_path)]))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium) to render the page")
def test_chromium_renders_the_html_report(run_dir, tmp_path):
    shot = tmp_path / "report.png"
    res = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          f"--screenshot={shot}", "--window-size=1280,3000",
                          (run_dir / "report.html").as_uri()],
                         capture_output=True, text=True, check=False,
                         timeout=3600)  # a hung browser, never a slow machine
    assert res.returncode == 0, res.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 3000)
    assert len(set(image.resize((64, 150)).tobytes())) > 20  # text and figures, not a blank page


def test_a_run_without_figures_says_so_removes_old_ones_and_report_draws_them_later(
        run_dir, tmp_path, monkeypatch, run_cli):
    """``--no-figures`` / ``HARNESS_FIGURES=0``: tables and both reports, no figure files (old
    ones removed, so none shows earlier tables); ``harness report RUN_DIR`` draws them all."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert list((copy / "plots").glob("*.png"))
    md, html = write_reports(copy, figures=False)
    assert not [p for p in (copy / "plots").iterdir() if p.suffix in (".png", ".svg")]
    for text in (md.read_text(), html.read_text()):
        assert "Figures not drawn" in text and "harness report RUN_DIR" in text
        assert "plots/learning_curves.png" not in text
    monkeypatch.setenv("HARNESS_FIGURES", "0")  # the variable alone does the same
    write_reports(copy)
    assert not list((copy / "plots").glob("*.png"))
    res = run_cli("report", str(copy))  # the report command always draws
    assert res.returncode == 0, res.stderr
    assert (copy / "plots" / "learning_curves.svg").is_file()
    assert "](plots/learning_curves.png)" in (copy / "report.md").read_text()


def test_a_bad_harness_figures_value_is_one_line_before_any_run(tmp_path, run_cli):
    res = run_cli("study", "finetune_vs_probe", "--out", str(tmp_path), "--quiet",
                  env={"HARNESS_FIGURES": "yes"})
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "HARNESS_FIGURES='yes' is neither 1" in res.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing half-written
