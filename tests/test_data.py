import pytest

from conftest import write_jsonl
from softprompt.data import DataSpec, load_split
from softprompt.errors import DataError


def test_folder_with_split_files(sentiment_dir):
    spec = DataSpec(str(sentiment_dir))
    sizes = {split: len(load_split(spec, split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 400, "dev": 100, "test": 100}
    example = load_split(spec, "dev")[0]
    assert example.label in ("positive", "negative")
    assert example.where.endswith("dev.jsonl:1")


def test_validation_and_its_kin_are_aliases_of_dev(sentiment_dir, tmp_path):
    spec = DataSpec(str(sentiment_dir))
    dev = load_split(spec, "dev")
    for alias in ("validation", "valid", "val"):
        assert load_split(spec, alias) == dev
    rows = [{"text": f"t{i}", "label": "a"} for i in range(10)]
    single = DataSpec(str(write_jsonl(tmp_path / "all.jsonl", rows)), dev_fraction=0.3)
    assert load_split(single, "validation") == load_split(single, "dev")
    with pytest.raises(DataError, match="unknown split 'holdout'; use one of train, dev, test"):
        load_split(spec, "holdout")


def test_sample_data_sets_are_balanced_and_distinct(sentiment_dir):
    from conftest import ROOT

    for name, labels, per_split in (
        ("sentiment", 2, {"train": 400, "dev": 100, "test": 100}),
        ("emotion", 6, {"train": 240, "dev": 60, "test": 60}),
    ):
        spec = DataSpec(str(ROOT / "examples" / "data" / name))
        texts = []
        for split, size in per_split.items():
            examples = load_split(spec, split)
            assert len(examples) == size
            counts = {}
            for e in examples:
                counts[e.label] = counts.get(e.label, 0) + 1
            assert len(counts) == labels and len(set(counts.values())) == 1
            texts += [e.text.lower() for e in examples]
        assert len(set(texts)) == len(texts)


def test_single_file_is_split_reproducibly_and_disjointly(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", [{"text": f"t{i}", "label": "a"} for i in range(50)])
    spec = DataSpec(str(path), dev_fraction=0.2, test_fraction=0.1, split_seed=3)
    parts = {s: [e.text for e in load_split(spec, s)] for s in ("train", "dev", "test")}
    assert [len(parts[s]) for s in ("train", "dev", "test")] == [35, 10, 5]
    assert set(parts["train"]) | set(parts["dev"]) | set(parts["test"]) == {
        f"t{i}" for i in range(50)
    }
    assert parts == {s: [e.text for e in load_split(spec, s)] for s in ("train", "dev", "test")}
    other = DataSpec(str(path), dev_fraction=0.2, test_fraction=0.1, split_seed=4)
    assert [e.text for e in load_split(other, "dev")] != parts["dev"]


def test_csv_and_txt(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"hello, world",a\nbye,b\n', encoding="utf-8")
    examples = load_split(DataSpec(str(csv_path), dev_fraction=0, test_fraction=0), "train")
    assert [(e.text, e.label) for e in examples] == [("hello, world", "a"), ("bye", "b")]
    txt = tmp_path / "corpus.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond\n", encoding="utf-8")
    spec = DataSpec(str(txt), label_field=None, dev_fraction=0, test_fraction=0)
    assert [e.text for e in load_split(spec, "train")] == ["first paragraph\nstill first", "second"]
    with pytest.raises(DataError, match="has no labels"):
        load_split(DataSpec(str(txt), dev_fraction=0, test_fraction=0), "train")


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid JSON"):
        load_split(DataSpec(str(tmp_path)), "train")


def test_csv_with_a_wrong_row_names_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\nok,a\ntoo,many,cells\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.csv:3: expected 2 columns"):
        load_split(DataSpec(str(tmp_path)), "train")


def test_missing_field_lists_the_available_ones(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": "x"}])
    with pytest.raises(DataError, match=r"field 'text' not found \(available: sentence, label\)"):
        load_split(DataSpec(str(tmp_path)), "train")


def test_empty_and_missing_splits(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="split 'train' .* is empty"):
        load_split(DataSpec(str(tmp_path)), "train")
    with pytest.raises(DataError, match="no dev file"):
        load_split(DataSpec(str(tmp_path)), "dev")
    with pytest.raises(DataError, match="data not found"):
        load_split(DataSpec(str(tmp_path / "nope")), "train")


def test_hf_dataset_saved_locally_with_class_labels(tmp_path):
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["a", "b"], "label": [0, 1]}, features=features
            ),
            "validation": datasets.Dataset.from_dict(
                {"text": ["c"], "label": [1]}, features=features
            ),
        }
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    spec = DataSpec(f"hf:{tmp_path / 'ds'}")
    assert [(e.text, e.label) for e in load_split(spec, "train")] == [("a", "neg"), ("b", "pos")]
    assert [e.label for e in load_split(spec, "dev")] == ["pos"]
    with pytest.raises(DataError, match="no split 'test'"):
        load_split(spec, "test")
