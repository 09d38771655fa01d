"""The demo as an engine beside the others: a procedural world (`p2p.demo.world`), paired
sample scenes cut from it and the configs that train and predict them on two CPU cores
(`p2p.demo.scenes`). No Prefect and no command line here: `flows/demo.py` composes these with
the flows, `p2p demo` starts that flow."""

from p2p.demo.scenes import (
    DEMO_EPOCHS,
    DEMO_SEED,
    DemoScenes,
    demo_batch_config,
    demo_config,
    write_demo_scenes,
)

__all__ = [
    "DEMO_EPOCHS",
    "DEMO_SEED",
    "DemoScenes",
    "demo_batch_config",
    "demo_config",
    "write_demo_scenes",
]
