"""Say the result: the end-of-run summary from a run record, and `p2p predict` into a log
(stdout a pipe): plain progress lines, then the output, its size and each scene's fate."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import threading
import time
from pathlib import Path

import pytest

from p2p.app import console
from p2p.app.summary import summary_lines
from p2p.core.cache import StageRecord
from p2p.core.config import PipelineConfig
from p2p.stages.pipeline import TRAINING, pipeline_record
from tests.faultkit import P2P, PREDICT_OPTS, ROOT, cli, write_scene, write_tiny_bundle


def _record(stage: str, path: str, cached: bool, **summary: object) -> StageRecord:
    return StageRecord(
        stage=stage, key="0" * 16, path=path, cached=cached, seconds=2.5, summary=summary
    )


def test_a_training_summary_names_the_bundle_the_skill_and_the_report(tmp_path: Path) -> None:
    metrics = {
        "overall": {"mae": 10.0},
        "baselines": {"linear": {"mae": 20.0}, "mean": {"mae": 40.0}},
        "skill": 0.5,
    }
    model = str(tmp_path / "train" / "k" / "model")
    record = pipeline_record(
        TRAINING,
        PipelineConfig(workspace=str(tmp_path)),
        {
            "tile:a": _record("tile", str(tmp_path / "tile" / "k"), True),
            "train": _record("train", str(tmp_path / "train" / "k"), False, model=model),
            "evaluate": _record("evaluate", str(tmp_path / "ev"), False, metrics=metrics),
        },
        seconds=7.5,
    )
    lines = summary_lines(record)
    assert lines[0].startswith("done in 7.5 s: 2 stage(s) ran, 1 cached")
    assert f"  train     ran 2.5 s     {tmp_path / 'train' / 'k'}" in lines
    assert f"model:  {model}" in lines
    skill = next(line for line in lines if line.startswith("skill:"))
    assert "model 10" in skill and "linear regression 20" in skill and "constant mean 40" in skill
    assert "beats the linear baseline" in skill
    assert lines[-1].startswith(f"report: {tmp_path / 'ev' / 'metrics.json'}")


def test_predict_into_a_log_prints_progress_lines_and_the_result(tmp_path: Path) -> None:
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
    first, again = cli(args), cli(args)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    lines = first.stdout.splitlines()
    assert any(line.startswith("predict:scene: ") and "(100%)" in line for line in lines)
    size = out.stat().st_size / 1e3
    assert lines[-2].startswith(f"wrote {out} ({size:.1f} kB) in ")
    assert lines[-2].endswith("1 scene(s) predicted, 0 cached")
    assert lines[-1].startswith("  scene: predicted in ")
    assert again.stdout.splitlines()[-2:] == [
        again.stdout.splitlines()[-2],
        "  scene: cached",
    ] and again.stdout.splitlines()[-2].endswith("0 scene(s) predicted, 1 cached")


def test_plain_progress_prints_each_tenth_and_keeps_a_long_stage_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.05)
    out = io.StringIO()
    sink = console.plain_progress(out)
    for done in range(101):
        sink("train", done, 100)
        if done == 33:
            time.sleep(0.1)  # a slow step inside one tenth: a line anyway
    counts = [line.split(" ")[1] for line in out.getvalue().splitlines()]
    assert counts == [f"{n}/100" for n in (0, 10, 20, 30, 34, 40, 50, 60, 70, 80, 90, 100)]


def test_predict_with_bars_on_a_terminal_still_logs_lines_to_a_file(tmp_path: Path) -> None:
    # `p2p predict ... > log`: the bars go to the terminal (stderr), the log gets plain lines
    model = write_tiny_bundle(tmp_path / "model")
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out.tif"
    args = ["predict", "--model", model, "--input", scene, "--output", out, *PREDICT_OPTS]
    terminal, stderr = pty.openpty()
    drain = threading.Thread(target=_drain, args=(terminal,), daemon=True)  # as a terminal reads
    drain.start()
    try:
        done = subprocess.run(
            [str(P2P), *map(str, args)], stdout=subprocess.PIPE, stderr=stderr, text=True,
            timeout=300, cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(stderr)
        drain.join(timeout=10)
        os.close(terminal)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert any(line.startswith("predict:scene: ") and "(100%)" in line for line in lines)
    assert lines[-2].endswith("1 scene(s) predicted, 0 cached")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the other side closed
        pass


def test_a_demo_summary_gives_the_held_out_mae_and_the_training_skill() -> None:
    validation = {
        "overall": {"mae": 10.0},
        "baselines": {"linear": {"mae": 8.0}, "mean": {"mae": 40.0}},
        "skill": 1.25,
    }
    record = {
        "pipeline": "demo", "workspace": "/w", "model": "/w/train/k/model", "output": None,
        "scenes": [], "stages": {}, "seconds": 3.0, "report": "/w/report.png",
        "metrics": {"overall": {"mae": 12.5}, "validation": validation},
    }  # fmt: skip
    lines = summary_lines(record)
    assert "held-out mosaic: MAE 12.5 against its map" in lines
    assert any(line.startswith("skill:") and "NO BETTER THAN LINEAR" in line for line in lines)
    assert lines[-1] == "report: /w/report.png"
