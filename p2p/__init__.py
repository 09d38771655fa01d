"""p2p: Pix2Pix for large geospatial rasters.

The Python API (docs/python-api.md) is imported on first use, so ``import p2p`` stays cheap::

    import p2p

    cfg = p2p.load_config("config.yaml", ["train.epochs=5"])
    print(p2p.plan(cfg))
    result = p2p.run(cfg)            # shown in Jupyter as its validation picture
    pred = p2p.predict(result.model, "scene.tif", "out.tif")   # shown as a quicklook
    p2p.evaluate(pred.output, "map.tif", model=result.model, source="scene.tif")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# OpenMP threads (torch's intra-op pool) that wait at a barrier sleep instead of spinning. GNU
# OpenMP reads this once, when torch loads, so it is set here, before any p2p module can load
# torch. On cores shared with other busy processes a spinning thread burns the time slice the
# thread it waits for needs: a U-Net forward beside two busy processes on 2 cores took 21 s
# with 2 spinning threads, 1.1 s with 2 passive ones and 3.0 s with one (p2p.core.threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = [
    "Picture",
    "Prediction",
    "RunResult",
    "__version__",
    "build_config",
    "evaluate",
    "load_config",
    "open_bundle",
    "plan",
    "predict",
    "quicklook",
    "run",
]

if TYPE_CHECKING:
    from p2p.app.api import (
        Picture,
        Prediction,
        RunResult,
        build_config,
        evaluate,
        load_config,
        open_bundle,
        plan,
        predict,
        quicklook,
        run,
    )


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (PEP 562)."""
    if name in __all__:
        from p2p.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'p2p' has no attribute {name!r}")
