"""Multi-node training: the other machines join the train stage that `p2p run` launches.

With ``train.nodes: N`` the machine running ``p2p run`` (or the Prefect flow) launches its
share of the ranks at the train stage; each of the N − 1 others runs ``p2p train-node`` with
the same config. That finds the same dataset (the tile and dataset stages are cached in the
shared workspace, or waited for under their locks), derives the same train stage key, waits
for the stage's ``ddp.json``, and starts this machine's ranks against the same c10d rendezvous
(`train.rendezvous`, run id = the stage key). Only the launching stage writes the bundle and
the manifest; a joining machine writes nothing but its own log, ``ddp-HOST.log``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from p2p.core.cache import read_manifest
from p2p.core.config import PipelineConfig
from p2p.core.errors import StageError
from p2p.core.roots import check_bucket_workspace
from p2p.model import distributed
from p2p.stages import dataset, train
from p2p.stages.pipeline import TRAINING, in_process, run_steps
from p2p.stages.train_worker import SPEC

POLL_S = 1.0


def join_training(config: PipelineConfig, wait_s: float = 3600.0) -> Path:
    """Start this machine's ranks of the train stage that `config`'s pipeline runs.

    Args:
        config: The pipeline config, the same as the launching machine's.
        wait_s: How long to wait for the launching machine to start the stage.

    Returns:
        The train stage folder (finished once the launching machine has written its bundle).

    Raises:
        StageError: No stage appeared within `wait_s`, or a rank failed.
    """
    check_bucket_workspace(config)  # several machines train in a shared folder only
    records = run_steps(TRAINING, config, config.workspace, in_process(), until=dataset.NAME)
    parts = train.key_parts(records[dataset.NAME], config.model, config.train)
    key, folder = parts.key, Path(parts.folder(config.workspace))
    deadline = time.monotonic() + wait_s
    while not (folder / SPEC).is_file():
        if read_manifest(folder) is not None:
            return folder  # trained already: nothing to join
        if time.monotonic() > deadline:
            problem = f"no train stage to join after {wait_s:.0f} s; start `p2p run` first"
            raise StageError(folder, problem)
        time.sleep(POLL_S)
    log = folder / f"ddp-{socket.gethostname()}.log"
    distributed.launch(config.train, key, "p2p.stages.train_worker", [str(folder / SPEC)], log)
    return folder
