"""Layer-time bandit: `metrics` (representation metrics, the LinUCB features), `checkpoints` (the time axis), `rewards` (MTEB rewards z-scored against a baseline), `core` (policies, grid, replay), `run` (the budgeted run and its CLI). Their public names are also names of `labnb.bandit`."""
from ..compat import lazy_namespace
__getattr__, __dir__ = lazy_namespace(__name__, ["core", "metrics", "rewards", "run", "checkpoints"])
