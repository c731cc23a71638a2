"""LLGBM: `lora` (functional LoRA), `deltas` (delta activations), `core` (teachers, the hypernetwork, training, evaluation), `cli`. Their public names are also names of `labnb.llgbm`."""
from ..compat import lazy_package
lazy_package(__name__, ["core", "lora", "deltas", "cli"], legacy="core")
