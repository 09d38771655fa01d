"""Ctrl-C during `p2p run` training (issue 19 item 10): the installed command stops within a
few seconds, says in one line where it stopped and how to go on, exits 130, keeps the
finished epochs, and the same command resumes from them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from p2p.demo import demo_config, write_demo_scenes

P2P = str(Path(sys.executable).parent / "p2p")
LINE = re.compile(r"^interrupted in train \(epoch (\d+) of 40\); rerun the same command to resume$")


def _start(config: Path, home: Path) -> subprocess.Popen[str]:
    """`p2p run` on its own temporary Prefect server, in a process group of its own (as a
    terminal's foreground job: Ctrl-C reaches the server too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.Popen(
        [P2P, "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env
        | {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"},
        start_new_session=True,
    )


def _epochs(workspace: Path) -> list[int]:
    """The epochs in the metrics.jsonl of the (one) train folder, in order."""
    found = list(workspace.glob("train/*/metrics.jsonl"))
    if not found:
        return []
    return [json.loads(line)["epoch"] for line in found[0].read_text().splitlines()]


def _interrupt_after(
    proc: subprocess.Popen[str], workspace: Path, epochs: int
) -> tuple[str, float]:
    """Ctrl-C to the process group once `epochs` epochs are in metrics.jsonl; → (stderr,
    seconds from the signal to the exit)."""
    deadline = time.monotonic() + 400
    while len(_epochs(workspace)) < epochs and proc.poll() is None:
        assert time.monotonic() < deadline, "training did not reach the epoch in time"
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # leave nothing running behind a failed test
        _, stderr = proc.communicate()
        raise AssertionError(f"still running 60 s after Ctrl-C: {stderr[-3000:]}") from None
    return stderr, time.monotonic() - sent


@pytest.mark.slow
def test_ctrl_c_stops_training_in_seconds_and_the_same_command_resumes(tmp_path: Path) -> None:
    data = write_demo_scenes(tmp_path / "scenes", scene_size=128)
    cfg = demo_config(tmp_path / "ws", data.train, quick=True)
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"epochs": 40, "epochs_decay": 0})}
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    ws = tmp_path / "ws"

    proc = _start(path, tmp_path / "prefect")
    stderr, seconds = _interrupt_after(proc, ws, 2)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, stderr[-3000:]
    assert seconds < 15, stderr[-3000:]
    assert "Traceback" not in stderr and "ConnectError" not in stderr, stderr[-3000:]
    assert lines and LINE.match(lines[-1]), stderr[-3000:]
    assert len(lines) <= 3, stderr[-3000:]  # the line, and at most a warning or two
    done = _epochs(ws)
    assert int(LINE.match(lines[-1]).group(1)) == len(done) + 1  # type: ignore[union-attr]
    folder = next(ws.glob("train/*"))
    assert not (folder / "manifest.json").exists()  # unfinished: the next run resumes it

    again = _start(path, tmp_path / "prefect")
    stderr, _ = _interrupt_after(again, ws, len(done) + 1)
    assert again.returncode == 130, stderr[-3000:]
    resumed = _epochs(ws)
    assert resumed[: len(done)] == done and resumed == list(range(1, len(resumed) + 1))
    assert next(ws.glob("train/*")) == folder  # the same stage folder, resumed, not redone
