"""MetricWriter: JSONL, resume truncation, TensorBoard, report, plots, progress."""

import glob
import json
import os

import pytest

from ssl_jax import console, plots
from ssl_jax.writer import MetricWriter, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _writer(tmp_path, **kw):
    args = dict(total_steps=100, steps_per_epoch=10, images_per_step=32)
    args.update(kw)
    return MetricWriter(str(tmp_path), **args)


def test_jsonl_written_and_readable(tmp_path):
    w = _writer(tmp_path)
    w.write(1, {"loss": 2.5, "lr": 0.1})
    w.write(2, {"loss": 2.0})
    w.close()
    assert read_metrics(str(tmp_path)) == [
        {"step": 1, "loss": 2.5, "lr": 0.1},
        {"step": 2, "loss": 2.0},
    ]
    with open(tmp_path / "metrics.jsonl") as f:
        assert json.loads(f.readline()) == {"step": 1, "loss": 2.5, "lr": 0.1}


def test_truncate_after_matches_uninterrupted_log(tmp_path):
    w = _writer(tmp_path)
    for s in range(1, 6):
        w.write(s, {"loss": float(s)})
    w.truncate_after(3)  # resumed from the step-3 checkpoint
    for s in range(4, 6):
        w.write(s, {"loss": float(s)})
    w.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5]


def test_a_rerun_final_evaluation_replaces_the_earlier_final_values(tmp_path):
    w = _writer(tmp_path)
    w.write(4, {"loss": 1.0})
    w.write(4, {"final_knn_top1": 10.0, "final_linear_top1": 20.0})
    w.write(4, {"final_knn_top1": 11.0, "final_linear_top1": 21.0})  # the rerun's
    w.write(6, {"loss": 0.5})  # an extended run: its final evaluation is the run's
    w.write(6, {"final_knn_top1": 12.0})
    w.close()
    assert read_metrics(str(tmp_path)) == [
        {"step": 4, "loss": 1.0},
        {"step": 6, "loss": 0.5},
        {"step": 6, "final_knn_top1": 12.0},
    ]


def test_disabled_writer_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    w = _writer(workdir, enabled=False)
    w.write(1, {"loss": 1.0})
    w.progress(1, {"loss": 1.0})
    w.report("t", [("a", "1")], ("k", "v"))
    assert w.plots() == []
    w.close()
    assert not workdir.exists()
    assert capsys.readouterr().out == ""


def test_tensorboard_event_file_exists(tmp_path):
    w = _writer(tmp_path)
    w.write(1, {"loss": 1.0})
    w.close()
    events = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0


def test_report_table_is_aligned_and_saved(tmp_path, capsys):
    w = _writer(tmp_path)
    text = w.report(
        "Final report",
        [("kNN top-1", "91.2", "80.1"), ("linear top-1", "92.0", "35.5")],
        ("metric", "SSL", "random init"),
    )
    w.close()
    lines = text.splitlines()
    assert lines[0] == "Final report"
    assert lines[1] == "metric       | SSL  | random init"
    assert lines[3] == "kNN top-1    | 91.2 | 80.1"
    assert lines[4] == "linear top-1 | 92.0 | 35.5"
    assert "kNN top-1" in capsys.readouterr().out
    assert (tmp_path / "report.txt").read_text() == text


def test_plots_are_png(tmp_path):
    w = _writer(tmp_path)
    for s in range(1, 4):
        w.write(s, {"loss": 1.0 / s, "lr": 0.1, "knn_top1": 10.0 * s, "other": 1.0})
    w.write(4, {"collapse/std": 0.5, "linear_top1": 50.0})
    paths = w.plots()
    w.close()
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "summary.png"  # the report names it first
    assert sorted(names[1:]) == [
        "collapse_std.png",
        "knn_top1.png",
        "linear_top1.png",
        "loss.png",
        "lr.png",
    ]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE


def test_progress_plain_lines_when_not_a_tty(tmp_path, capsys):
    w = _writer(tmp_path)
    w.progress(10, {"loss": 3.14159, "lr": 0.03})
    w.progress(20, {"loss": 2.5, "lr": 0.03})
    w.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines)
    assert lines[0].startswith("step 10/100 | epoch 1.00 | loss 3.142 | lr 0.03")
    assert "step 20/100 | epoch 2.00" in lines[1]
    assert "img/s" in lines[1] and "ETA 0:" in lines[1]


def test_progress_rewrites_one_line_on_a_tty(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    w = _writer(tmp_path)
    w.progress(1, {"loss": 1.0})
    w.progress(2, {"loss": 0.9})
    w.close()
    out = capsys.readouterr().out
    assert out.count("\r") == 2 and out.count("\n") == 1 and out.endswith("\n")


@pytest.mark.parametrize("tty", [False, True], ids=["log_file", "terminal"])
def test_a_phase_says_what_and_how_long(capsys, monkeypatch, tty):
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty)
    now = [10.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    with console.phase("Compiling the train step"):
        now[0] += 2.5
    with console.phase("Quiet", enabled=False):
        pass
    out = capsys.readouterr().out
    if tty:
        assert out == "Compiling the train step... 2.5 s\n"
    else:
        assert out == "Compiling the train step...\nCompiling the train step: 2.5 s\n"


def test_the_speed_line_leaves_out_the_time_of_an_evaluation(tmp_path, capsys, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("ssl_jax.writer.time.monotonic", lambda: now[0])
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    w = _writer(tmp_path)  # 32 images per step
    w.progress(10, {"loss": 1.0})
    now[0] += 1.0  # 10 steps of training...
    with w.phase("step 10: kNN monitor"):
        now[0] += 60.0  # ...and a minute of evaluation
    now[0] += 1.0
    w.progress(20, {"loss": 1.0})
    w.close()
    last = capsys.readouterr().out.splitlines()[-1]
    assert "| 160.0 img/s | ETA 0:00:16" in last, last  # 10 steps in 2 s, 80 steps left


def _axes():
    fig = plots._figure((4, 3))
    return fig, fig.add_subplot()


def test_a_plot_has_integer_steps_its_unit_the_final_point_and_reference_lines():
    rows = [
        {"step": 1, "knn_top1": 20.0, "collapse_std": 0.05, "effective_rank": 5.0},
        {"step": 3, "knn_top1": 40.0, "collapse_std": 0.08, "effective_rank": 9.0},
        {"step": 3, "final_knn_top1": 45.0},
    ]
    fig, ax = _axes()
    plots.draw(ax, rows, "knn_top1")
    fig.canvas.draw()
    assert ax.get_ylabel() == "top-1 accuracy (%)" and ax.get_xlabel() == "step"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    final = [line for line in ax.get_lines() if line.get_label() == "final knn_top1"]
    assert len(final) == 1 and list(final[0].get_ydata()) == [45.0]

    fig, ax = _axes()
    plots.draw(ax, rows, "collapse_std", embedding_dim=64)
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines()[1:])
    assert levels == [0.0, 1 / 8]  # collapsed, and healthy 1/sqrt(64)
    assert plots.references("collapse_std", None) == [(0.0, "collapsed, 0")]  # d unknown
    fig, ax = _axes()
    plots.draw(ax, rows, "effective_rank")
    assert [line.get_ydata()[0] for line in ax.get_lines()[1:]] == [1.0]


def test_the_summary_has_a_panel_per_logged_kind():
    rows = [
        {"step": 1, "loss": 2.0, "lr": 0.1, "knn_top1": 30.0, "online_linear_top1": 20.0},
        {"step": 1, "final_linear_top1": 40.0},  # the final linear probe: a series too
    ]
    assert plots.summary_panels(rows) == [
        ["loss"],
        ["lr"],
        ["knn_top1", "linear_top1", "online_linear_top1"],
    ]
