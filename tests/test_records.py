import pytest

from ragtrain.core.records import RecordError, atomic_path, read_jsonl, require, write_jsonl


def test_round_trip_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"id": "1"}, {"id": "2", "text": "é"}])
    path.write_text(path.read_text() + "\n\n")
    assert read_jsonl(path) == [{"id": "1"}, {"id": "2", "text": "é"}]


def test_malformed_line_is_located(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1"}\n{"id": 2,\n')
    with pytest.raises(RecordError, match=rf"^{path}:2: invalid JSON"):
        read_jsonl(path)


def test_non_object_line_is_located(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1"}\n[1, 2]\n')
    with pytest.raises(RecordError, match=rf"^{path}:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.jsonl"

    def records():
        yield {"id": "1"}
        raise RuntimeError("stage crashed half-way")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text("new")
        raise ValueError
    assert path.read_text() == "old"
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_require_names_field_and_record(tmp_path):
    with pytest.raises(RecordError, match=r"f\.jsonl:7: record 'q1' has no field 'question'"):
        require({"id": "q1"}, "question", str, tmp_path / "f.jsonl", 7)
    with pytest.raises(RecordError, match=r"field 'answers' should be list, got str"):
        require({"id": "q1", "answers": "x"}, "answers", list, "f.jsonl", 1)


def test_atomic_dir_replaces_a_folder_only_on_success(tmp_path):
    from ragtrain.core.records import atomic_dir

    out = tmp_path / "index"
    out.mkdir()
    (out / "old").write_text("x")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new").write_text("y")
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    with atomic_dir(out) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in out.iterdir()] == ["new"]
