import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "LABNB_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["LABNB_DATA"] = str(ROOT.parent / "shared" / "data")
