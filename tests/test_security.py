"""Security: no pickled code is ever run, flow paths stay under the allowed roots, and the
code base has no shell, eval/exec or unsafe deserialization."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH

from p2p.core.config import BatchPredictConfig, ModelConfig, PipelineConfig, SceneConfig
from p2p.core.errors import BundleError, CheckpointError, PathNotAllowedError
from p2p.core.roots import checked_batch_config, checked_pipeline_config
from p2p.model.bundle import META, WEIGHTS, load_bundle
from p2p.model.checkpoint import load_generator, load_newest
from tests.faultkit import (
    PREDICT_OPTS,
    ROOT,
    TINY_MODEL,
    assert_failed_cleanly,
    cli,
    write_scene,
    write_tiny_bundle,
)


class _Payload:
    """Unpickling this creates `marker`: stands in for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch.save file whose loading without `weights_only` would create `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "generator": _Payload(marker)}, path)
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    # proves the fixture is dangerous, so the refusals below mean something
    path = _malicious_pickle(tmp_path / "evil.pt", tmp_path / "pwned")
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_malicious_checkpoint_is_refused_by_the_loader(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_pickle(tmp_path / "checkpoints" / "epoch_0001.safetensors", marker)
    model = ModelConfig(**TINY_MODEL)
    with pytest.raises(CheckpointError, match="cannot load the generator") as err:
        load_generator(path, model, 2, 1)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_malicious_checkpoint_is_skipped_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_pickle(tmp_path / "checkpoints" / "epoch_0001.safetensors", marker)
    with caplog.at_level(logging.WARNING, logger="p2p.model.checkpoint"):
        assert load_newest(tmp_path / "checkpoints") is None
    assert not marker.exists()
    assert any(
        str(path) in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records
    )


def _pickled_bundle(tmp_path: Path, marker: Path) -> Path:
    """A bundle whose weights file is a pickle, with a checksum that matches it."""
    model_dir = write_tiny_bundle(tmp_path / "model")
    weights = model_dir / WEIGHTS
    state = {"down.0.weight": _Payload(marker)}
    torch.save(state, weights)
    meta = json.loads((model_dir / META).read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model_dir / META).write_text(json.dumps(meta))
    return model_dir


def test_bundle_with_a_pickle_instead_of_safetensors_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model_dir = _pickled_bundle(tmp_path, marker)
    with pytest.raises(BundleError, match="cannot be read"):
        load_bundle(model_dir)
    assert not marker.exists()


def test_cli_refuses_a_pickled_bundle_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model_dir = _pickled_bundle(tmp_path, marker)
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "out" / "pred.tif"
    args = ["predict", "--model", model_dir, "--input", scene, "--output", out, *PREDICT_OPTS]
    assert_failed_cleanly(cli(args), model_dir / WEIGHTS)
    assert not marker.exists() and not out.exists()


# --- allowed roots at the flow entry points -------------------------------------------------


@pytest.fixture
def rooted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/data is the only allowed root; tmp/secret.tif lies outside it."""
    data = tmp_path / "data"
    data.mkdir()
    write_scene(data / "a.tif")
    write_scene(tmp_path / "secret.tif")
    monkeypatch.setenv("P2P_ALLOWED_ROOTS", str(data))
    return data


def _pipeline(data: Path, source: str, workspace: str | None = None) -> PipelineConfig:
    return PipelineConfig(
        workspace=workspace or str(data / "ws"),
        scenes=[SceneConfig(source=source, target=str(data / "a.tif"))],
    )


def test_training_config_with_dotdot_escape_is_refused(rooted: Path) -> None:
    assert checked_pipeline_config(_pipeline(rooted, str(rooted / "a.tif"))).scenes
    escape = str(rooted / "sub" / ".." / ".." / "secret.tif")
    with pytest.raises(PathNotAllowedError, match="outside the allowed roots"):
        checked_pipeline_config(_pipeline(rooted, escape))


def test_workspace_symlinked_outside_is_refused(rooted: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (rooted / "ws").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathNotAllowedError) as err:
        checked_pipeline_config(_pipeline(rooted, str(rooted / "a.tif"), str(rooted / "ws")))
    assert str(tmp_path / "elsewhere") in str(err.value)


def test_glob_match_through_a_symlink_outside_is_refused(rooted: Path, tmp_path: Path) -> None:
    (rooted / "b.tif").symlink_to(tmp_path / "secret.tif")  # the pattern is inside the root
    config = BatchPredictConfig(
        workspace=str(rooted / "ws"),
        model=str(rooted / "model"),
        scenes=[str(rooted / "*.tif")],
        output=str(rooted / "out.tif"),
    )
    with pytest.raises(PathNotAllowedError, match=r"b\.tif"):
        checked_batch_config(config)


# --- the code base --------------------------------------------------------------------------


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call with its dotted callee name (``subprocess.run``, ``eval``, ``x.load``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts = []
            f: ast.expr = node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "?")  # `g.to(x).eval()` → ?.eval
            found.append((".".join(reversed(parts)), node))
    return found


def _kwarg(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else "?"
    return None


def unsafe_calls(source: str) -> list[str]:
    """Calls that could run code from data: shell=True, eval/exec, pickle loads, torch.load
    without weights_only=True, yaml.load, numpy loads with allow_pickle=True."""
    bad = []
    for name, call in _calls(ast.parse(source)):
        last = name.rsplit(".", 1)[-1]
        if _kwarg(call, "shell") not in (None, False):
            bad.append(f"{name}(shell=...)")
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            bad.append(name)
        if name.startswith(("pickle.", "cPickle.", "dill.", "joblib.")) and "load" in last:
            bad.append(name)
        if name == "torch.load" and _kwarg(call, "weights_only") is not True:
            bad.append("torch.load without weights_only=True")
        if name == "yaml.load" or name == "yaml.unsafe_load":
            bad.append(name)
        if last == "load" and _kwarg(call, "allow_pickle") is True:
            bad.append(f"{name}(allow_pickle=True)")
    return bad


def test_the_scanner_finds_what_it_looks_for() -> None:
    found = unsafe_calls(
        "import subprocess, pickle, torch, yaml\n"
        "subprocess.run('ls', shell=True)\neval('1')\nexec('x=1')\npickle.loads(b'')\n"
        "torch.load('f')\ntorch.load('f', weights_only=False)\nyaml.load('a')\n"
        "np.load('a.npy', allow_pickle=True)\n"
        "torch.load('f', weights_only=True)\nyaml.safe_load('a')\nmodel.eval()\nm.to(0).eval()\n"
    )
    assert len(found) == 8, found


def test_code_base_has_no_shell_eval_or_unsafe_loading() -> None:
    files = [p for d in ("p2p", "flows", "tasks", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    problems = {
        str(p.relative_to(ROOT)): bad for p in files if (bad := unsafe_calls(p.read_text()))
    }
    assert problems == {}


def test_config_values_are_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "config.yaml"
    # yaml.safe_load refuses python tags; an expression in a number field is just a bad value
    config.write_text(f"workspace: !!python/object/apply:os.system ['touch {marker}']\n")
    line = assert_failed_cleanly(cli(["run", config]), config)
    assert "not valid YAML" in line
    config.write_text(f"train:\n  epochs: __import__('os').system('touch {marker}')\n")
    assert_failed_cleanly(cli(["run", config]), "train.epochs")
    assert not marker.exists()


# --- what Prefect, Dask and zarr write on our behalf -------------------------------------


#: A tensor's raw bytes inside a torch archive: read as bytes, never unpickled; random weights
#: can begin with the two bytes of a pickle header.
TORCH_STORAGE = re.compile(r"[^/]+/data/\d+")


def _is_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ begins with PROTO (0x80) and the protocol number (2..5)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _pickles_in(path: Path) -> list[str]:
    """`path` itself when it is a pickle, or the pickles inside it when it is a zip archive."""
    with open(path, "rb") as fh:
        if _is_pickle(fh.read(2)):
            return [""]
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return [
            f":{n}"
            for n in archive.namelist()
            if not TORCH_STORAGE.fullmatch(n) and _is_pickle(archive.read(n)[:2])
        ]


def _pickles_under(root: Path) -> list[str]:
    """Pickle files (by content, not name) under `root`, and pickles inside zip archives."""
    return [
        f"{path.relative_to(root)}{member}"
        for path in sorted(p for p in root.rglob("*") if p.is_file())
        for member in _pickles_in(path)
    ]


def test_the_pickle_scanner_finds_pickles_by_content(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "no-extension").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.bin")
    (tmp_path / "plain.json").write_text("{}")
    found = _pickles_under(tmp_path)
    assert "results/no-extension" in found
    assert any(f.startswith("weights.bin:") and f.endswith("data.pkl") for f in found)
    assert not any(f.startswith("plain") for f in found)


def test_a_training_checkpoint_is_no_pickle_and_loads_back_exactly(tmp_path: Path) -> None:
    from synthetic import SyntheticPairs

    from p2p.core.config import TrainConfig
    from p2p.model.checkpoint import load_checkpoint, save_checkpoint
    from p2p.model.training import train

    data = SyntheticPairs(4, size=16, in_bands=2, out_bands=1)
    model = ModelConfig(**TINY_MODEL)
    cfg = TrainConfig(epochs=1, batch_size=2, device="cpu", preview_chips=0, ema_epochs=1.0)
    path = train(data, data, model, cfg, tmp_path, SyntheticPairs.stats(1)).checkpoint
    assert _pickles_in(path) == [] and not zipfile.is_zipfile(path)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and set(state["opt_g"]["state"]) == set(
        range(len(state["opt_g"]["param_groups"][0]["params"]))
    )  # the optimizer's per-parameter state keeps its integer keys
    assert all(isinstance(v, torch.Tensor) for v in state["generator"].values())
    assert isinstance(state["rng"]["torch"], torch.Tensor) and state["best"]["epoch"] == 1
    # what was saved comes back: a reload of the reload is the same state
    again = load_checkpoint(save_checkpoint(tmp_path / "again", 1, state))
    assert again["opt_g"]["param_groups"] == state["opt_g"]["param_groups"]
    for key, moments in state["opt_g"]["state"].items():
        assert all(torch.equal(again["opt_g"]["state"][key][k], v) for k, v in moments.items())
    assert again["rng"]["python"] == state["rng"]["python"]


def test_a_finished_demo_workspace_holds_no_pickle(demo_run: dict[str, Any]) -> None:
    # Prefect persists no result, zarr writes JSON and codec bytes, Dask spills nowhere near
    # the workspace, and training checkpoints are safetensors + JSON: no exception.
    ws = Path(demo_run["workspace"])
    assert list(ws.glob("train/*/checkpoints/epoch_*.safetensors"))  # the scan reaches them
    assert _pickles_under(ws) == []
    assert not (ws / ".prefect").exists()
    storage = Path(str(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value())).expanduser()
    created = ws.stat().st_mtime
    if storage.is_dir():  # nothing Prefect wrote there during the run is a pickle
        recent = [p for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime >= created]
        assert [str(p) for p in recent if _pickles_in(p)] == []


def _planted_record(path: Path, marker: Path) -> Path:
    """A Prefect result record whose metadata names the pickle serializer: Prefect unpickles
    it whatever serializer the task asked for, which would create `marker`."""
    payload = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    record = {
        "metadata": {
            "storage_key": str(path),
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "pickle"},
            "prefect_version": "3.9.1",
            "storage_block_id": None,
        },
        "result": payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_planted_result_pickles_are_never_read(demo_run: dict[str, Any], tmp_path: Path) -> None:
    from flows.train_pipeline import train_pipeline
    from p2p.demo import demo_config, write_demo_scenes

    ws = Path(demo_run["workspace"])
    marker = tmp_path / "pwned"
    storage = Path(str(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value())).expanduser()
    planted = []
    for name, stage in demo_run["stages"].items():
        key = f"p2p-{name.split(':')[0]}-{stage['key']}"  # the cache keys Prefect once used
        for folder in (ws / ".prefect" / "results", storage):
            planted.append(_planted_record(folder / key, marker))
    try:
        data = write_demo_scenes(ws / "data", scene_size=96)
        record = train_pipeline(demo_config(ws, data.train, quick=True))
        assert record["stages"] and all(s["cached"] for s in record["stages"].values())
        assert not marker.exists()
        from prefect._internal.result_records import ResultRecord

        ResultRecord.deserialize(planted[0].read_bytes())  # the plant is live: it runs code
        assert marker.exists()
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
