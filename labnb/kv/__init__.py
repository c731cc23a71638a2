"""KV-transition harness: `store` (SQLite, the source of truth), `config`, `prepare`, `engines` (in-process kvpress and HTTP), `server`, `run`, `score`, `analyze`, `report`, `cli`. Their public names are also names of `labnb.kv`."""
from ..compat import lazy_package
lazy_package(__name__, ["config", "store", "prepare", "engines", "server", "run", "score", "analyze", "report", "cli"])
