"""A damaged kv.sqlite, a truncated manifest.json or a malformed input row: one line naming the file (line, field),
what is wrong and what to do; CLI exit status 2; nothing half-written."""
import json
from pathlib import Path

import pytest
import yaml

from labnb.kv.cli import main


def write_exp(tmp_path, name="bad", tasks=None) -> Path:
    cfg = {"group": name, "out_dir": str(tmp_path / name), "engine": {"model": "tiny-llama", "max_new_tokens": 2, "threads": 1},
           "prepare": {"tasks": tasks or [{"name": "synthetic_kv", "n_examples": 6, "params": {"n_keys": [4, 8]}}],
                       "n_bins": 2, "per_bin": 1},
           "run": {"presses": ["knorm"], "budgets": [1.0, 0.5]}, "analyze": {"n_boot": 200}}
    f = tmp_path / f"{name}.yaml"; f.write_text(yaml.safe_dump(cfg)); return f


def one_error_line(capsys, *must):
    err = capsys.readouterr().err.strip()
    lines = [l for l in err.splitlines() if l.startswith("labnb kv")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for m in must: assert m in lines[0], (m, lines[0])
    return lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_sqlite_names_the_file(tmp_path, capsys, damage):
    exp = write_exp(tmp_path)
    assert main(["prepare", str(exp), "-q"]) == 0 and main(["run", str(exp), "-q"]) == 0
    db = tmp_path / "bad" / "kv.sqlite"
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(b"not a database at all\n" * 200 if damage == "garbage" else data[:100] + b"\0" * 10 + data[len(data) // 2:])
    capsys.readouterr()
    for cmd in ("run", "score", "report"):
        assert main([cmd, str(exp), "-q"]) == 2, cmd
        one_error_line(capsys, str(db), "move it aside")


def test_truncated_manifest_names_the_file_and_line(tmp_path, capsys):
    exp = write_exp(tmp_path)
    assert main(["prepare", str(exp), "-q"]) == 0
    mf = tmp_path / "bad" / "manifest.json"
    text = mf.read_text(); mf.write_text(text[:len(text) // 3])
    capsys.readouterr()
    assert main(["run", str(exp), "-q"]) == 2
    one_error_line(capsys, str(mf), "line", "not valid JSON", "prepare")
    mf.write_text(json.dumps({"group": "x"}))
    assert main(["run", str(exp), "-q"]) == 2
    one_error_line(capsys, str(mf), "field")


def test_malformed_input_rows_name_file_line_and_field(tmp_path, capsys):
    good = {"input": "q?", "context": "some context " * 5, "answers": ["a"], "_id": "x1", "length": 10, "dataset": "d",
            "language": "en", "all_classes": None}
    src = tmp_path / "lb.jsonl"
    src.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "context"} | {"_id": "x2"}) + "\n")
    exp = write_exp(tmp_path, tasks=[{"name": "longbench", "n_examples": 5, "path": str(src)}])
    assert main(["prepare", str(exp), "-q"]) == 2
    one_error_line(capsys, str(src), "line 2", "context")
    src.write_text(json.dumps(good) + "\n{not json\n")
    assert main(["prepare", str(exp), "-q"]) == 2
    one_error_line(capsys, str(src), "line 2")
    src.write_text(json.dumps(good) + "\n" + json.dumps(good | {"_id": "x3", "answers": []}) + "\n")
    assert main(["prepare", str(exp), "-q"]) == 2
    one_error_line(capsys, str(src), "answers")
    assert not (tmp_path / "bad" / "manifest.json").exists()                 # nothing half-written
