"""A workspace in a bucket of a real (local) S3 server: stage folders as objects, a lease lock
across processes, tiling from Dask worker processes that share nothing but the bucket, a kill
and resume, and the same bytes as a local workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream
from torch.utils.data import DataLoader

from p2p.core import transfer
from p2p.core.bucketlock import BucketLock, LeaseLost
from p2p.core.cache import KeyParts, read_manifest, run_stage
from p2p.core.config import PipelineConfig, TrainConfig
from p2p.core.errors import ConfigError
from p2p.core.roots import check_bucket_workspace
from p2p.data import chipstore
from p2p.data.dataset import ChipDataset
from p2p.stages import dataset, tile, train
from p2p.stages.pipeline import TRAINING, in_process, run_steps
from tests import bucket_worker
from tests.fault_pipeline import MODEL, TILING, TRAIN, write_data
from tests.faultkit import assert_failed_cleanly, cli, yaml_config
from tests.s3server import free_port
from tests.test_tiling import make_pair, store_arrays


def _worker(*args: str, wait: bool = True, **extra: str) -> Any:
    command = [sys.executable, "-m", "tests.bucket_worker", *args]
    # a killed worker's lock blocks its stage for this lease (60 s by default)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "P2P_LOCK_LEASE_S": "3", **extra}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_two_racing_processes_build_a_bucket_stage_once(s3: Any, tmp_path: Path) -> None:
    ws, barrier = s3.url("ws"), str(tmp_path / "barrier")
    # the holder stays inside the stage's lock until the rival has tried it
    racers = [_worker("race", ws, role, barrier, wait=False) for role in ("holder", "rival")]
    outs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in racers]
    assert all(p.returncode == 0 for p in racers)
    assert {p.name for p in (tmp_path / "barrier").iterdir()} >= {"holder-inside", "rival-tried"}
    # without the lock both would find no manifest and build
    assert len(s3.keys(s3.bucket, "ws/builds/")) == 1
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert [o["cached"] for o in outs] == [False, True]  # the holder built, the rival reused
    assert {o["builder"] for o in outs} == {next(o["pid"] for o in outs if not o["cached"])}
    assert s3.keys(s3.bucket, "ws/race/") == [
        f"ws/race/{bucket_worker.RACE_PARTS.key}/manifest.json"
    ]


def test_a_killed_holders_lock_is_taken_over_once_its_lease_runs_out(s3: Any) -> None:
    url = s3.url("ws/tile/.k.lock")
    holder = _worker("hold", url, "3", wait=False)
    assert holder.stdout.readline().strip() == "held"
    time.sleep(1.5)  # let it renew once (every lease / 3)
    holder.kill()
    holder.wait()
    began = time.monotonic()
    with BucketLock(url, lease_s=30) as lock:
        waited = time.monotonic() - began
        assert json.loads(s3.get(url))["owner"] == lock.owner
    assert 0.5 < waited < 10  # waited for the dead holder's lease, not for ever
    assert s3.keys(s3.bucket, "ws/tile/") == []  # released


def test_a_paused_holder_learns_that_its_lease_was_taken_over(s3: Any) -> None:
    url = s3.url("ws/x/.k.lock")
    holder = _worker("hold", url, "2", wait=False)
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGSTOP)  # paused (swapped out, debugger) past its lease
    try:
        with BucketLock(url, lease_s=30):
            os.kill(holder.pid, signal.SIGCONT)
            # its next renewal finds its ETag gone: it must not commit, nor delete our lock
            assert holder.stdout.readline().strip() == "lost"
            holder.wait(timeout=30)
            assert s3.keys(s3.bucket, "ws/x/") == ["ws/x/.k.lock"]
    finally:
        holder.kill()
    assert s3.keys(s3.bucket, "ws/x/") == []


def test_a_holder_paused_past_its_lease_before_its_commit_writes_nothing(
    s3: Any, tmp_path: Path
) -> None:
    ws, go = s3.url("ws"), tmp_path / "go"
    (tmp_path / "a").mkdir()  # its own staging folder, as on another machine
    holder = _worker("commit", ws, str(go), "A", wait=False, TMPDIR=str(tmp_path / "a"))
    assert holder.stdout.readline().strip() == "built"
    os.kill(holder.pid, signal.SIGSTOP)  # paused (swapped out, debugger) right before its commit
    try:
        go.touch()
        # B waits out A's lease (3 s), takes the lock over and commits its own build
        taken = run_stage(ws, bucket_worker.COMMIT_PARTS, bucket_worker.build_who("B"))
        prefix = f"ws/commit/{taken.key}/"
        committed = {k: s3.get(s3.url(k)) for k in s3.keys(s3.bucket, prefix)}
        os.kill(holder.pid, signal.SIGCONT)
        out, _ = holder.communicate(timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 3, out
    assert "lease (3 s) ran out before this run committed" in out.splitlines()[-1]
    assert {k: s3.get(s3.url(k)) for k in s3.keys(s3.bucket, prefix)} == committed
    assert committed[f"{prefix}who.txt"] == b"B"
    manifest = json.loads(committed[f"{prefix}manifest.json"])
    assert manifest["summary"] == {"who": "B"} and len(manifest["fence"]) >= 8


def test_a_holder_whose_renewals_failed_refuses_to_commit_after_its_lease(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3.url("ws/y/.k.lock")
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    with BucketLock(url, lease_s=1.5) as lock:
        assert lock.fence()  # a fencing token while the lease is good
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # cut off
        time.sleep(2.5)  # every renewal in the lease failed
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # back, and nobody took the lock yet
        with pytest.raises(LeaseLost, match=r"ran out before this run committed \(cannot reach"):
            lock.fence()


def test_stage_folders_in_a_bucket_are_objects_with_the_manifest_last(
    s3: Any, tmp_path: Path
) -> None:
    ws = s3.url("ws")
    parts = KeyParts("demo", 1, {"a": 1}, [])

    def build(folder: Path) -> dict[str, Any]:
        (folder / "sub").mkdir()
        (folder / "sub" / "x.json").write_text("{}")
        return {"file": str(folder / "sub" / "x.json")}

    record = run_stage(ws, parts, build)
    url = f"{ws}/demo/{parts.key}"
    assert record.path == url and record.summary == {"file": f"{url}/sub/x.json"}
    assert s3.keys(s3.bucket, "ws/") == [
        f"ws/demo/{parts.key}/{n}" for n in ("manifest.json", "sub/x.json")
    ]
    puts = [line for line in s3.log_lines() if f'"PUT /{s3.bucket}/ws/demo/{parts.key}' in line]
    assert "manifest.json" in puts[-1]
    assert read_manifest(url) == json.loads(s3.get(f"{url}/manifest.json"))
    again = run_stage(ws, parts, lambda folder: pytest.fail("rebuilt a finished stage"))
    assert again.cached and again.summary == record.summary
    assert not transfer.staging_dir(url).exists()  # the local staging folder is gone


def test_tiling_killed_in_a_bucket_resumes_to_the_chips_of_a_local_run(
    s3: Any, tmp_path: Path
) -> None:
    local = make_pair(tmp_path, h=64, w=64)
    src = s3.put(local.source[0], s3.url("in/src.tif"))
    tgt = s3.put(local.target[0], s3.url("in/tgt.tif"))  # type: ignore[index]
    ws = s3.url("ws")
    killed = _worker("tile", ws, src, tgt, "5")
    assert killed.returncode == -9, killed.stderr
    scene = local.model_copy(update={"source": [src], "target": [tgt]})
    folder = tile.key_parts(scene, bucket_worker.TILING).folder(ws)
    done_before = chipstore.done_blocks(folder)
    assert 5 <= len(done_before) < 16 and read_manifest(folder) is None
    calls: list[tuple[int, int]] = []
    dask = bucket_worker.DaskConfig(n_workers=1, threads_per_worker=1)
    resumed = tile.run(ws, scene, bucket_worker.TILING, dask, lambda d, t: calls.append((d, t)))
    assert calls[-1][1] == 16 - len(done_before)  # only the unfinished blocks ran again
    fresh = tile.run(tmp_path / "ws", local, bucket_worker.TILING, dask)
    a, b = store_arrays(resumed.path), store_arrays(fresh.path)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    pd.testing.assert_frame_equal(
        chipstore.read_index(resumed.path).drop(columns="scene"),
        chipstore.read_index(fresh.path).drop(columns="scene"),
    )
    # sharded: one object per array and block, not one per chip
    assert len(s3.keys(s3.bucket, f"ws/tile/{resumed.key}/chips.zarr/source/c/")) == 16


def _separate_worker_cluster(tmp_path: Path) -> SpecCluster:
    """Two worker processes, each with its own temporary folder and working directory."""
    workers = {}
    for name in ("a", "b"):
        home = tmp_path / f"worker-{name}"
        home.mkdir()
        env = {"TMPDIR": str(home), "OMP_NUM_THREADS": "1"}
        options = {"nthreads": 1, "env": env, "local_directory": str(home)}
        workers[name] = {"cls": Nanny, "options": options}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler)


@pytest.mark.slow
def test_pipeline_with_scenes_and_workspace_in_a_bucket_gives_the_local_bytes(
    s3: Any, tmp_path: Path
) -> None:
    data = write_data(tmp_path / "data")
    scene = {"source": [data["src"]], "target": [data["tgt"]], "nodata": 0}
    remote = {
        k: [s3.put(p, s3.url(f"in/{Path(p).name}")) for p in v] if k != "nodata" else v
        for k, v in scene.items()
    }
    settings = {"tiling": TILING, "model": MODEL, "train": TRAIN}
    local_cfg = PipelineConfig.model_validate(
        {"workspace": str(tmp_path / "ws"), "scenes": [scene], **settings}
    )
    with _separate_worker_cluster(tmp_path) as cluster, Client(cluster) as client:
        bucket_cfg = PipelineConfig.model_validate(
            {
                "workspace": s3.url("ws"),
                "scenes": [remote],
                "dask": {"address": cluster.scheduler_address},
                **settings,
            }
        )
        check_bucket_workspace(bucket_cfg)
        with get_task_stream(client) as tasks:
            in_bucket = run_steps(
                TRAINING, bucket_cfg, bucket_cfg.workspace, in_process(), until=train.NAME
            )
    # both workers tiled blocks, each from its own temporary folder, into the one bucket
    assert len({t["worker"] for t in tasks.data if "tile_block" in t["key"]}) == 2
    on_disk = run_steps(TRAINING, local_cfg, local_cfg.workspace, in_process(), until=train.NAME)
    a, b = store_arrays(in_bucket["tile:src"].path), store_arrays(on_disk["tile:src"].path)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    model = in_bucket[train.NAME].summary["model"]
    assert model == f"{in_bucket[train.NAME].path}/model"
    assert (
        s3.get(f"{model}/weights.safetensors")
        == (Path(on_disk[train.NAME].summary["model"]) / "weights.safetensors").read_bytes()
    )
    assert in_bucket[train.NAME].summary["metrics"] == on_disk[train.NAME].summary["metrics"]
    # every stage folder is in the bucket, and the workers' own folders hold no chip
    for record in in_bucket.values():
        assert read_manifest(record.path) is not None
    leftovers = [
        p
        for p in tmp_path.glob("worker-*/**/*")
        if p.suffix in (".json", ".zarr") or "chips" in p.name
    ]
    assert leftovers == []
    # DataLoader workers read the chips from the bucket too (spawned: obstore dies in a fork)
    chips = ChipDataset(in_bucket[dataset.NAME].path, "train")
    loader = DataLoader(
        chips, batch_size=2, num_workers=1, multiprocessing_context=chips.worker_start_method
    )
    loaded = torch.cat([x for x, _, _ in loader])
    torch.testing.assert_close(loaded, torch.stack([chips[i][0] for i in range(len(chips))]))
    # `p2p run` finds every stage in the bucket (and answers without Prefect); --force is
    # refused there in one line, before anything is deleted
    config = yaml_config(
        tmp_path / "p2p.yaml", {"workspace": s3.url("ws"), "scenes": [remote], **settings}
    )
    again = cli(["run", config, "--until", "train", "--json"])
    assert again.returncode == 0, again.stderr
    record = json.loads(again.stdout.splitlines()[-1])
    assert record["model"] == model and all(s["cached"] for s in record["stages"].values())
    forced = cli(["run", config, "--until", "train", "--force", "train"])
    assert assert_failed_cleanly(forced).startswith("error: --force: cannot remove stage folders")
    assert read_manifest(in_bucket[train.NAME].path) is not None


def test_training_on_several_machines_in_a_bucket_workspace_is_refused(s3: Any) -> None:
    config = PipelineConfig.model_validate(
        {"workspace": s3.url("ws"), "scenes": [{"source": ["a.tif"], "target": ["b.tif"]}]}
    ).model_copy(update={"train": TrainConfig(nodes=2, rendezvous="h:1")})
    with pytest.raises(ConfigError, match="2 machines cannot train in a workspace on object"):
        check_bucket_workspace(config)


def test_a_missing_workspace_bucket_is_named_before_any_work(s3: Any, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data")
    scene = {"source": [data["src"]], "target": [data["tgt"]], "nodata": 0}
    workspace = "s3://no-such-bucket-p2p/ws"
    settings = {"tiling": TILING, "model": MODEL, "train": TRAIN}
    config = yaml_config(
        tmp_path / "p2p.yaml", {"workspace": workspace, "scenes": [scene], **settings}
    )
    line = assert_failed_cleanly(cli(["plan", config]))
    assert line == f"error: {workspace}: no such bucket 'no-such-bucket-p2p'"
