"""Function vectors: `core` (indirect effects, top-k heads, the vector, zero-shot injection), `qwise` (the per-q_id pipeline with status and resume). Their public names are also names of `labnb.fv`."""
from ..compat import lazy_namespace
__getattr__, __dir__ = lazy_namespace(__name__, ["core", "qwise"])
