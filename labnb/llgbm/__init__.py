"""LLGBM: `lora` (functional LoRA), `deltas` (delta activations), `core` (teachers, the hypernetwork, training, evaluation), `cli`. Their public names are also names of `labnb.llgbm`."""
from ..compat import lazy_namespace
__getattr__, __dir__ = lazy_namespace(__name__, ["core", "lora", "deltas", "cli"])
