"""Training loop: overfitting, exact resume after SIGKILL, artifacts, torch-only imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic import SyntheticPairs, target_function

from p2p.bands.augment import augment_pair
from p2p.bands.normalization import denormalize
from p2p.bands.symmetry import dihedral
from p2p.core.config import ModelConfig, TrainConfig
from p2p.core.errors import CheckpointError, InputError
from p2p.model.checkpoint import load_checkpoint, load_generator
from p2p.model.epoch import TrainProgress
from p2p.model.metrics import MetricAccumulator
from p2p.model.pix2pix import lr_factor
from p2p.model.training import train


def iter_metrics(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The records of `out_dir/metrics.jsonl`, one per finished epoch."""
    path = Path(out_dir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)


# The children import `synthetic` (test-only code in tests/).
TESTS_ON_PATH = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
TINY = ModelConfig(num_downs=4, ngf=8, ndf=8)

# Trains a tiny model in a fresh process; with KILL_AT="epoch:step" it SIGKILLs itself from
# the progress callback, i.e. in the middle of that epoch, like a crash or `kill -9`.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from p2p.core.config import ModelConfig, TrainConfig
    from synthetic import SyntheticPairs
    from p2p.model.training import train

    torch.set_num_threads(1)
    out, kill_at = Path(sys.argv[1]), sys.argv[2]
    def progress(p):
        if f"{p.epoch}:{p.step}" == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train_set = SyntheticPairs(16, size=32, in_bands=3, out_bands=2, seed=3, augment=True,
                               nodata_border=2)
    val_set = SyntheticPairs(4, size=32, in_bands=3, out_bands=2, seed=4, nodata_border=2)
    model = ModelConfig(num_downs=5, ngf=8, ndf=8, dropout=0.5)
    cfg = TrainConfig(epochs=3, epochs_decay=2, batch_size=4, seed=7, preview_chips=2)
    train(train_set, val_set, model, cfg, out, SyntheticPairs.stats(2), progress=progress)
    """
)


def _child(out: Path, kill_at: str = "never") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(out), kill_at],
        capture_output=True,
        text=True,
        timeout=300,
        env=TESTS_ON_PATH,
    )


def _weights(out: Path, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
    state = load_checkpoint(out / "checkpoints" / f"epoch_{epoch:04d}.safetensors")
    return {k: state[k] for k in ("generator", "discriminator", "opt_g", "opt_d")}


@pytest.mark.slow
def test_sigkill_and_resume_ends_bit_identical(tmp_path: Path) -> None:
    ref, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    assert _child(ref).returncode == 0
    killed = _child(run, kill_at="3:1")  # during epoch 3 of 5
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0001.safetensors",
        "epoch_0002.safetensors",
    ]
    # make it harder: the newest checkpoint got truncated, so the resume must fall back to
    # epoch 1 and drop epoch 2's metrics line
    newest = run / "checkpoints" / "epoch_0002.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = _child(run)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping unreadable checkpoint" in resumed.stderr
    got, want = _weights(run, 5), _weights(ref, 5)
    for net in ("generator", "discriminator"):
        assert got[net].keys() == want[net].keys()
        for name, tensor in want[net].items():
            assert torch.equal(got[net][name], tensor), f"{net}.{name} differs"
    assert got["opt_g"]["state"][0]["exp_avg"].equal(want["opt_g"]["state"][0]["exp_avg"])
    lines = list(iter_metrics(run))
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    ref_lines = list(iter_metrics(ref))
    assert [r["val_mae"] for r in lines] == [r["val_mae"] for r in ref_lines]
    assert [r["lr"] for r in lines] == pytest.approx([2e-4, 2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])


def test_tiny_model_overfits_a_synthetic_pair(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the suite shares 2 cores
    pair = SyntheticPairs(1, size=32, in_bands=3, out_bands=2, seed=1, nodata_border=2)
    repeated = SyntheticPairs(
        1, size=32, in_bands=3, out_bands=2, seed=1, nodata_border=2, repeat=25
    )
    stats = SyntheticPairs.stats(2)
    model = ModelConfig(num_downs=4, ngf=16, ndf=16)
    cfg = TrainConfig(epochs=12, batch_size=1, seed=0, preview_chips=1)
    untrained = train(
        repeated, pair, model, cfg.model_copy(update={"epochs": 0}), tmp_path / "u", stats
    )
    assert untrained.epochs_done == 0 and untrained.checkpoint.name == "epoch_0000.safetensors"
    acc = MetricAccumulator([10000.0, 10000.0])
    with torch.no_grad():
        x, y, valid = (t[None] for t in pair[0])
        fake = untrained.load_generator()(x)
    acc.update(denormalize(fake, stats), denormalize(y, stats), valid.bool())
    initial_mae = acc.compute()["overall"]["mae"]

    result = train(repeated, pair, model, cfg, tmp_path / "t", stats)  # 12 x 25 = 300 steps
    final_mae = result.metrics["overall"]["mae"]
    assert result.epochs_done == 12
    assert initial_mae / final_mae >= 5.0, (initial_mae, final_mae)
    assert result.metrics["bands"][0]["count"] == 28 * 28  # the nodata border is not scored
    assert (tmp_path / "t" / "previews" / "epoch_0012.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_artifacts_progress_and_rerun_of_a_finished_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train_set = SyntheticPairs(4, size=32, in_bands=1, out_bands=1, seed=0)
    val_set = SyntheticPairs(3, size=32, in_bands=1, out_bands=1, seed=1)
    cfg = TrainConfig(epochs=2, epochs_decay=1, batch_size=2, preview_chips=3)
    seen: list[TrainProgress] = []
    stats = SyntheticPairs.stats(1)
    result = train(train_set, val_set, TINY, cfg, tmp_path, stats, progress=seen.append)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_0002.safetensors",
        "epoch_0003.safetensors",
    ]
    assert {(p.epoch, p.step) for p in seen} >= {(1, 1), (1, 2), (3, 2)}
    assert all(p.steps_per_epoch == 2 and p.epochs == 3 for p in seen)
    assert set(seen[-1].losses) == {"loss_d", "loss_g", "loss_g_gan", "loss_g_l1"}
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[-1]["val_mae"] == result.metrics["overall"]["mae"]
    from PIL import Image

    with Image.open(tmp_path / "previews" / "epoch_0003.png") as im:
        assert im.size == (4 * 258, 3 * 258) and im.mode == "RGB"  # 3 chips x 4 panels at 256 px
    # a finished run reruns in no time and reports the same result
    again = train(train_set, val_set, TINY, cfg, tmp_path, SyntheticPairs.stats(1))
    assert again.checkpoint == result.checkpoint and again.metrics == result.metrics
    g = load_generator(result.checkpoint, TINY, 1, 1)
    assert not g.training
    other = ModelConfig(num_downs=4, ngf=16, ndf=8)
    with pytest.raises(CheckpointError, match="cannot load the generator"):
        load_generator(result.checkpoint, other, 1, 1)
    with pytest.raises(CheckpointError, match="does not fit this run"):
        train(train_set, val_set, other, cfg, tmp_path, SyntheticPairs.stats(1))


@pytest.mark.parametrize(
    ("size", "stats_bands", "message"),
    [
        (24, 1, r"24x24 pixels; with model.num_downs=4 .* multiple of 16"),
        (32, 2, "target has 1 bands, statistics 2"),
        (16, 1, "too small for a PatchGAN"),
    ],
)
def test_data_that_does_not_fit_the_model_fails_before_any_work(
    tmp_path: Path, size: int, stats_bands: int, message: str
) -> None:
    data = SyntheticPairs(2, size=size, in_bands=2, out_bands=1)
    with pytest.raises(InputError, match=message):
        train(
            data,
            None,
            TINY,
            TrainConfig(epochs=1),
            tmp_path / "out",
            SyntheticPairs.stats(stats_bands),
        )
    assert not (tmp_path / "out").exists()


def test_lr_is_constant_then_decays_linearly() -> None:
    f = lr_factor(epochs=2, epochs_decay=3)
    assert [f(e) for e in range(6)] == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0])


def test_augment_pair_moves_source_target_and_mask_together() -> None:
    data = SyntheticPairs(1, size=16, in_bands=3, out_bands=2, seed=5, nodata_border=0)
    source, target, _ = data[0]
    valid = torch.zeros(1, 16, 16)
    valid[0, 0, :5] = 1  # an asymmetric mark to follow
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(64):
        s, t, v = augment_pair(source, target, valid, gen)
        # the target is a per-pixel function of the source: it must still hold after the move
        assert torch.allclose(t, target_function(s, 2), atol=1e-6)
        k = next(k for k in range(8) if torch.equal(dihedral(valid, k), v))
        assert torch.equal(dihedral(source, k), s)
        seen.add(k)
    assert seen == set(range(8))


def test_training_code_imports_with_only_torch_and_numpy(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from types import SimpleNamespace as NS
        import importlib.machinery
        # (safetensors stays: checkpoints are safetensors files, no pickle)
        BLOCKED = {{"pydantic", "yaml", "rasterio", "xarray", "rioxarray", "prefect", "dask",
                   "zarr", "pandas", "PIL", "typer", "rich"}}
        class Block:  # importing a blocked package fails as if it were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    return importlib.machinery.ModuleSpec(name, self)
                return None
            def create_module(self, spec):
                raise ModuleNotFoundError(f"blocked: {{spec.name}}", name=spec.name)
            def exec_module(self, module):
                pass
        sys.meta_path.insert(0, Block())
        try:
            import pydantic
            raise SystemExit("the block does not work")
        except ModuleNotFoundError:
            pass
        import p2p.model.training, p2p.model.networks, p2p.model.losses, p2p.model.metrics
        import synthetic
        from pathlib import Path
        from synthetic import SyntheticPairs
        model = NS(num_downs=4, ngf=4, ndf=4, n_layers_d=2, norm="batch", dropout=0.0,
                   linear_anchor=False)
        cfg = NS(epochs=1, epochs_decay=0, batch_size=2, lr=2e-4, beta1=0.5, lambda_l1=100.0,
                 device="cpu", precision="auto", seed=0, num_workers=0, preview_chips=1,
                 warmup_epochs=0, keep="best", bn_stats="recompute", ema_epochs=0.0)
        data = SyntheticPairs(2, size=16, in_bands=2, out_bands=1)
        r = p2p.model.training.train(data, data, model, cfg, Path({str(tmp_path)!r}),
                               SyntheticPairs.stats(1))
        assert r.epochs_done == 1
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=TESTS_ON_PATH
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    # previews are Pillow's PNGs: without it training goes on, with a warning and no picture
    assert not (tmp_path / "previews" / "epoch_0001.png").exists()
    assert "no preview epoch_0001.png: PIL is not installed" in out.stderr
