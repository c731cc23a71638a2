"""Function vectors: `core` (indirect effects, top-k heads, the vector, zero-shot injection), `qwise` (the per-q_id pipeline with status and resume). Their public names are also names of `labnb.fv`."""
from ..compat import lazy_package
lazy_package(__name__, ["core", "qwise"], legacy="core")
