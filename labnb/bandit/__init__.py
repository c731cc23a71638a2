"""Layer-time bandit: `metrics` (representation metrics, the LinUCB features), `checkpoints` (the time axis), `rewards` (MTEB rewards z-scored against a baseline), `core` (policies, grid, replay), `run` (the budgeted run and its CLI). Their public names are also names of `labnb.bandit`."""
from ..compat import lazy_package
lazy_package(__name__, ["core", "metrics", "rewards", "run", "checkpoints"], legacy="core")
