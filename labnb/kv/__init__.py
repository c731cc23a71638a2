"""KV-transition harness: `store` (SQLite, the source of truth), `config`, `prepare`, `engines` (in-process kvpress and HTTP), `server`, `run`, `score`, `analyze`, `report`, `cli`. Their public names are also names of `labnb.kv`."""
from ..compat import lazy_namespace
__getattr__, __dir__ = lazy_namespace(__name__, ["config", "store", "prepare", "engines", "server", "run", "score", "analyze", "report", "cli"])
