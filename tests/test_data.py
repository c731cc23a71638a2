"End-to-end checks of labnb.data: malformed rows name file, line and field; LongBench files; loaders on the real mirror."
import json, os
from pathlib import Path

import pytest

from labnb.data import (DataError, ICLPair, LongContextQA, ProblemSolution, SentencePair, LabelledText, Fact,
                        load_dataset, load_longbench, list_datasets, available, label_names)

MIRROR = os.environ.get("LABNB_DATA")
needs_mirror = pytest.mark.skipif(not MIRROR or not Path(MIRROR).is_dir(),
                                  reason="LABNB_DATA is not set to the data mirror; real-data loaders not checked")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    "A temporary mirror: call it with {relative path: text}; downloads are disabled."
    monkeypatch.setenv("LABNB_DATA", str(tmp_path))
    monkeypatch.setenv("LABNB_OFFLINE", "1")
    def write(files: dict):
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        return tmp_path
    return write


def error_of(fn) -> DataError:
    with pytest.raises(DataError) as e: fn()
    return e.value


# ---- malformed rows: the error names file, line and field ----

@pytest.mark.parametrize("rel,text,name,split,line,field,msg", [
    ("embed_bench/stsbenchmark/sts-test.csv",
     "main-news\tMSRpar\t2012\t0001\t4.0\tA b.\tA c.\nmain-news\tMSRpar\t2012\t0002\tn/a\tA b.\tA c.\n",
     "stsb", "test", 2, "score", "not a number"),
    ("embed_bench/stsbenchmark/sts-train.csv", 'main-forum\tdeft\t2014\t0001\t0.8\t"Then the captain\n',
     "stsb", "train", 1, "s2", "row has 6"),
    ("embed_bench/sick2014/SICK_train.txt",
     "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n1\ta\tb\t3\tNEUTRAL\nx\ta\tb\t3\tNEUTRAL\n",
     "sick", "train", 3, "pair_ID", "not an integer"),
    ("gsm8k/grade_school_math/data/train.jsonl", '{"question": "q", "answer": "so 4"}\n',
     "gsm8k", "train", 1, "answer", "no final '#### N' line"),
    ("gsm8k/grade_school_math/data/train.jsonl", '{"question": 5, "answer": "#### 4"}\n',
     "gsm8k", "train", 1, "question", "expected str, got int"),
    ("function_vectors/dataset_files/extractive/choose_first_of_3.json", '[\n{"input": "a, b, c", "output": "a"},\n{"output": "b"}\n]',
     "fv/choose_first_of_3", None, 3, "input", "missing field"),
    ("embed_bench/sst2/glue_sst2_dev_872.tsv", "sentence\tlabel\ngood film \t1\nbad film \t2\n",
     "sst2", "dev", 3, "label", "out of range"),
    ("lost_in_the_middle/kv_retrieval_data/kv-retrieval-75_keys.jsonl.gz", None,
     "litm/kv75", None, 2, "key", "not among the records"),
])
def test_malformed_row_names_file_line_field(mirror, rel, text, name, split, line, field, msg):
    if rel.endswith(".gz"):
        import gzip
        ok = {"ordered_kv_records": [["k1", "v1"], ["k2", "v2"]], "key": "k2", "value": "v2"}
        root = mirror({})
        (root / rel).parent.mkdir(parents=True)
        with gzip.open(root / rel, "wt") as f: f.write(json.dumps(ok) + "\n" + json.dumps({**ok, "key": "k9"}) + "\n")
    else: mirror({rel: text})
    e = error_of(lambda: load_dataset(name, split))
    assert e.file.endswith(Path(rel).name) and e.line == line and e.field == field, str(e)
    assert msg in str(e) and f"line {line}" in str(e) and f"field '{field}'" in str(e)


def test_unknown_name_and_split(mirror):
    e = error_of(lambda: load_dataset("fv/contry-capital"))
    assert "fv/country-capital" in str(e) and "lre/<47 sets>" in str(e)
    assert "splits: test, train, socratic_test" in str(error_of(lambda: load_dataset("gsm8k", "dev")))


def test_missing_file_offline(mirror):
    mirror({})
    e = error_of(lambda: load_dataset("leval/tpo"))
    assert "tpo.jsonl is not in the mirror" in str(e) and "raw.githubusercontent.com/OpenLMLab/LEval" in str(e)
    assert not available("leval/tpo")


# ---- LongBench JSONL ----

LB = {"input": "Which river?", "context": "Passage 1: The Rhine flows north.", "answers": ["The Rhine"], "length": 6,
      "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "lb-0"}

def test_longbench_reads_all_fields(tmp_path):
    f = tmp_path / "hotpotqa.jsonl"
    f.write_text("\n".join(json.dumps({**LB, "_id": f"lb-{i}", "length": 6 + i}) for i in range(3)) + "\n")
    recs = load_longbench(f)
    assert [r.id for r in recs] == ["lb-0", "lb-1", "lb-2"] and isinstance(recs[0], LongContextQA)
    assert (recs[2].question, recs[2].context, recs[2].answers) == ("Which river?", LB["context"], ["The Rhine"])
    assert recs[2].meta == {"length": 8, "dataset": "hotpotqa", "language": "en", "all_classes": None}
    assert len(load_longbench(f, limit=2)) == 2


def test_longbench_registry_reads_mirror_layout(mirror):
    mirror({"longbench/data/hotpotqa.jsonl": json.dumps(LB) + "\n"})
    assert available("longbench/hotpotqa") and load_dataset("longbench/hotpotqa")[0].answers == ["The Rhine"]


@pytest.mark.parametrize("bad,field,msg", [({"answers": "The Rhine"}, "answers", "expected list"),
                                           ({"all_classes": ["a", 1]}, "all_classes[1]", "expected str"),
                                           ({"_id": None}, "_id", "expected str")])
def test_longbench_malformed(tmp_path, bad, field, msg):
    f = tmp_path / "lb.jsonl"
    f.write_text(json.dumps(LB) + "\n" + json.dumps({**LB, **bad}) + "\n")
    e = error_of(lambda: load_longbench(f))
    assert (e.line, e.field) == (2, field) and msg in str(e)


# ---- the real mirror ----

@needs_mirror
@pytest.mark.parametrize("name,split,kind,n", [("fv/country-capital", None, ICLPair, 197), ("lre/company_ceo", None, Fact, 298),
                                               ("gsm8k", "test", ProblemSolution, 1319), ("stsb", "test", SentencePair, 1379),
                                               ("sick", "train", SentencePair, 4500), ("banking77", "test", LabelledText, 3080),
                                               ("ag_news", "test", LabelledText, 7600), ("leval/coursera", None, LongContextQA, 172)])
def test_mirror_counts(name, split, kind, n):
    recs = load_dataset(name, split)
    assert len(recs) == n and all(isinstance(r, kind) for r in recs[:50])
    assert len({r.id for r in recs}) == n                              # ids are unique
    assert [r.id for r in load_dataset(name, split, limit=5)] == [r.id for r in recs[:5]]


@needs_mirror
def test_mirror_content():
    g = load_dataset("gsm8k", "train", limit=1)[0]
    assert g.answer == "72" and g.solution.endswith("altogether in April and May.")
    assert {r.label for r in load_dataset("sick", "trial")} == {"NEUTRAL", "ENTAILMENT", "CONTRADICTION"}
    assert min(r.score for r in load_dataset("stsb", "dev")) == 0.0 and max(r.score for r in load_dataset("stsb", "dev")) == 5.0
    assert len(label_names("banking77")) == 77 and len(list_datasets("lre/")) == 47
    kv = load_dataset("litm/kv140", limit=1, gold_index=70)[0]
    assert kv.meta["kv_records"][70] == [kv.question, kv.answers[0]]


# ---- public-source fallback (no network: a local file:// source and a stand-in hub) ----

def test_fallback_fetches_public_file_into_cache(tmp_path, monkeypatch):
    import labnb.data as D
    pub = tmp_path / "pub" / "data" / "factual"
    pub.mkdir(parents=True)
    (pub / "company_ceo.json").write_text(json.dumps({"name": "company CEO", "prompt_templates": ["{} is led by"],
        "prompt_templates_zs": [], "properties": {"relation_type": "factual"}, "samples": [{"subject": "Acme", "object": "Ann"}]}))
    monkeypatch.setenv("LABNB_HOME", str(tmp_path / "home")); monkeypatch.setenv("LABNB_DATA", str(tmp_path / "empty"))
    monkeypatch.setitem(D.SOURCE_URLS, "relations_lre/data/", f"file://{tmp_path}/pub/data/")
    facts = load_dataset("lre/company_ceo")
    assert [(f.subject, f.object, f.prompt) for f in facts] == [("Acme", "Ann", "Acme is led by")]
    assert (tmp_path / "home" / ".cache" / "data" / "relations_lre/data/factual/company_ceo.json").is_file()
    assert available("lre/company_ceo")


def test_fallback_exports_hub_split_in_mirror_format(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    def fake_load(repo, config=None, split=None):
        calls.append((repo, config, split))
        return [{"text": "Stocks rally, on, earnings", "label": 2}, {"text": 'He said "hi"', "label": 0}]
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setenv("LABNB_HOME", str(tmp_path)); monkeypatch.setenv("LABNB_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False); monkeypatch.delenv("LABNB_OFFLINE", raising=False)
    recs = load_dataset("ag_news")
    assert calls == [("fancyzhx/ag_news", None, "test")]
    assert [(r.text, r.label, r.label_name) for r in recs] == [("Stocks rally, on, earnings", 2, "Business"), ('He said "hi"', 0, "World")]


# ---- broken files: one line naming file, line and field ----

import gzip


@pytest.mark.parametrize("rel,name,write,line,field,msg", [
    ("gsm8k/grade_school_math/data/test.jsonl", "gsm8k", lambda p: p.write_text(""), None, None, "no records (empty dataset)"),
    ("gsm8k/grade_school_math/data/test.jsonl", "gsm8k", lambda p: p.write_text("\n\n"), None, None, "no records"),
    ("embed_bench/banking77/test.csv", "banking77", lambda p: p.write_text(""), 1, None, "empty file"),
    ("embed_bench/banking77/test.csv", "banking77", lambda p: p.write_text("text\nhello\n"), 1, "category", "column missing"),
    ("embed_bench/sst2/glue_sst2_dev_872.tsv", "sst2", lambda p: p.write_text("sentence\tlabl\ngood\t1\n"), 1, "label", "does not start with"),
    ("embed_bench/sst2/glue_sst2_dev_872.tsv", "sst2", lambda p: p.write_text(""), 1, None, "empty file"),
    ("function_vectors/dataset_files/abstractive/antonym.json", "fv/antonym",
     lambda p: p.write_text('[\n{"input": "hot", "output": "cold"},\n{"input": "up", "outp'), 3, None, "invalid JSON"),
    ("function_vectors/dataset_files/abstractive/antonym.json", "fv/antonym", lambda p: p.write_text(" \n"), 1, None, "empty file"),
    ("function_vectors/dataset_files/abstractive/antonym.json", "fv/antonym",
     lambda p: p.write_text('[{"input": "hot", "output": ["cold"]}]'), 1, "output", "expected str, got list"),
    ("relations_lre/data/factual/company_ceo.json", "lre/company_ceo", lambda p: p.write_text('{"name": "x", "samp'), 1, None, "invalid JSON"),
    ("relations_lre/data/factual/company_ceo.json", "lre/company_ceo", lambda p: p.write_text('[1, 2]'), 1, None, "expected a JSON object"),
    ("lost_in_the_middle/kv_retrieval_data/kv-retrieval-75_keys.jsonl.gz", "litm/kv75",
     lambda p: p.write_bytes(b"\x1f\x8b\x08\x00garbage"), 1, None, "corrupt or truncated gzip"),
    ("lost_in_the_middle/kv_retrieval_data/kv-retrieval-140_keys.jsonl.gz", "litm/kv140",
     lambda p: p.write_bytes((z := gzip.compress("".join(json.dumps({"ordered_kv_records": [[f"k{i}", "v"]], "key": f"k{i}",
                                                                      "value": "v"}) + "\n" for i in range(3000)).encode()))[:len(z) // 2]),
     None, None, "corrupt or truncated gzip"),
    ("embed_bench/sst2/glue_sst2_dev_872.tsv", "sst2", lambda p: p.write_bytes(b"sentence\tlabel\ngood\t1\n\xff bad\t0\n"), 3, None, "not UTF-8"),
])
def test_broken_file_is_one_line_error(mirror, rel, name, write, line, field, msg):
    root = mirror({})
    (root / rel).parent.mkdir(parents=True, exist_ok=True); write(root / rel)
    e = error_of(lambda: load_dataset(name))
    assert e.file.endswith(Path(rel).name) and msg in str(e) and "\n" not in str(e), str(e)
    if line is not None: assert e.line == line, str(e)
    if field is not None: assert e.field == field and f"field '{field}'" in str(e), str(e)


def test_empty_pair_dataset_is_named_not_a_later_crash(mirror):
    from labnb.rnd.core import pair_texts
    root = mirror({"gsm8k/grade_school_math/data/test.jsonl": ""})
    e = error_of(lambda: pair_texts("gsm8k", "test", 5))
    assert "test.jsonl" in str(e) and "no records" in str(e) and "kind None" not in str(e)
    mirror({"gsm8k/grade_school_math/data/test.jsonl": '{"question": "q", "answer": "#### 4"}\n'})
    e = error_of(lambda: pair_texts("gsm8k", "test", 5))
    assert "test.jsonl" in str(e) and "1 records, 5 requested" in str(e)


def test_near_group_reads_its_own_rows_and_refuses_items_shared_with_seen(mirror):
    import json
    from labnb.core import ConfigError
    from labnb.rnd.core import NoveltyExperiment, pair_texts
    row = lambda q, sol: json.dumps({"question": q, "answer": f"{sol}\n#### 1"}) + "\n"
    gsm = "gsm8k/grade_school_math/data/"
    mirror({gsm + "train.jsonl": "".join(row(f"train {i}", "s") for i in range(4)),
            gsm + "test.jsonl": "".join(row(f"test {i}", "s") for i in range(6)),
            gsm + "test_socratic.jsonl": "".join(row(f"test {i}", "Q? ** s") for i in range(6)),
            "embed_bench/stsbenchmark/sts-train.csv": "".join(f"g\tf\t2012\t{i}\t3.0\ta {i}\tb {i}\n" for i in range(3))})
    assert pair_texts("gsm8k", "test", 2, start=3)[0] == ["test 3", "test 4"]
    e = error_of(lambda: pair_texts("gsm8k", "test", 4, start=3))
    assert "3 records after record 3, 4 requested" in str(e) and "test.jsonl" in str(e)
    cfg = dict(n_train=4, n_heldout=3, n_unseen=3, near_dataset="gsm8k", near_split="socratic_test", n_near=3)
    with pytest.raises(ConfigError, match="near_start: 3 of the near group's problems are also in seen"):
        NoveltyExperiment(**cfg).texts()
    t = NoveltyExperiment(**cfg, near_start=3).texts()
    assert list(t) == ["train", "seen", "unseen", "near"]
    assert t["near"][0] == ["test 3", "test 4", "test 5"] and t["near"][1][0].startswith("Q? ** s")
    assert "near" not in NoveltyExperiment(n_train=4).groups()
    with pytest.raises(ConfigError, match="near_split: 'gsm8k' has no split 'socratic'"):
        NoveltyExperiment(near_dataset="gsm8k", near_split="socratic")


def test_bandit_cli_reports_broken_data_in_one_line(mirror, tmp_path, capsys):
    from labnb.bandit.run import main
    mirror({"embed_bench/sst2/glue_sst2_dev_872.tsv": "sentence\tlabel\ngood\t1\nbad\t7\n"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"grid: tiny\nreward: {{tasks: [SST2]}}\ncorpus_cache_path: {tmp_path}/corpus.json\noutput_dir: {tmp_path}/out\n")
    assert main(["run", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "glue_sst2_dev_872.tsv, line 3, field 'label'" in err, err


def test_empty_longbench_file_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"; f.write_text("\n")
    e = error_of(lambda: load_longbench(f))
    assert e.file == str(f) and "no records" in str(e)
