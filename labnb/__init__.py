__version__ = "0.1.0"

from .compat import install_moved as _install_moved
_install_moved()    # old flat paths (labnb.kv_store, ...) import for one more release, with a DeprecationWarning
