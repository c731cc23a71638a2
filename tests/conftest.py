import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "LABNB_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["LABNB_DATA"] = str(ROOT.parent / "shared" / "data")
# one torch thread in every test (and in the kernels and subprocesses they start): results must not depend on how
# busy the machine is, and two threads on a loaded 2-core machine are several times slower than one
os.environ.setdefault("LABNB_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
