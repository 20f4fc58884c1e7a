"""Work folders: one per params hash, resumed while the inputs are unchanged."""

import os

from ragtrain.core.seeds import stable_seed
from ragtrain.core.workdir import finish, params_hash, work_dir

PARAMS = {"n": 2, "generation": {"seed": 3, "temperature": 1.0}}


def make_input(tmp_path, text="one\n"):
    path = tmp_path / "input.jsonl"
    path.write_text(text)
    return path


def test_work_dir_is_named_by_params_hash(tmp_path):
    inp = make_input(tmp_path)
    path = work_dir(tmp_path / "work", PARAMS, [inp])
    assert path == tmp_path / "work" / params_hash(PARAMS)
    assert path.is_dir()
    assert (path / "manifest.json").exists()


def test_same_params_same_folder_different_params_other_folder(tmp_path):
    inp = make_input(tmp_path)
    first = work_dir(tmp_path / "work", PARAMS, [inp])
    reordered = {"generation": {"temperature": 1.0, "seed": 3}, "n": 2}
    assert work_dir(tmp_path / "work", reordered, [inp]) == first
    other = work_dir(tmp_path / "work", {**PARAMS, "n": 3}, [inp])
    assert other != first
    assert first.is_dir() and other.is_dir()


def test_state_survives_unchanged_inputs(tmp_path):
    inp = make_input(tmp_path)
    path = work_dir(tmp_path / "work", PARAMS, [inp])
    (path / "shard-00000.jsonl").write_text("{}\n")
    again = work_dir(tmp_path / "work", PARAMS, [inp])
    assert again == path
    assert (again / "shard-00000.jsonl").read_text() == "{}\n"


def test_state_cleared_when_input_size_changes(tmp_path):
    inp = make_input(tmp_path)
    path = work_dir(tmp_path / "work", PARAMS, [inp])
    (path / "shard-00000.jsonl").write_text("{}\n")
    inp.write_text("one\ntwo\n")
    again = work_dir(tmp_path / "work", PARAMS, [inp])
    assert again == path
    assert not (again / "shard-00000.jsonl").exists()
    assert (again / "manifest.json").exists()


def test_state_cleared_when_input_mtime_changes(tmp_path):
    inp = make_input(tmp_path)
    path = work_dir(tmp_path / "work", PARAMS, [inp])
    (path / "shard-00000.jsonl").write_text("{}\n")
    st = inp.stat()
    os.utime(inp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not (work_dir(tmp_path / "work", PARAMS, [inp]) / "shard-00000.jsonl").exists()


def test_input_folder_fingerprints_its_files(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "a.bin").write_text("a")
    path = work_dir(tmp_path / "work", PARAMS, [folder])
    (path / "state").write_text("x")
    assert (work_dir(tmp_path / "work", PARAMS, [folder]) / "state").exists()
    (folder / "b.bin").write_text("b")
    assert not (work_dir(tmp_path / "work", PARAMS, [folder]) / "state").exists()


def test_folder_without_manifest_is_cleared(tmp_path):
    inp = make_input(tmp_path)
    stale = tmp_path / "work" / params_hash(PARAMS)
    stale.mkdir(parents=True)
    (stale / "shard-00000.jsonl").write_text("{}\n")
    path = work_dir(tmp_path / "work", PARAMS, [inp])
    assert not (path / "shard-00000.jsonl").exists()


def test_finish_removes_the_folder(tmp_path):
    path = work_dir(tmp_path / "work", PARAMS, [make_input(tmp_path)])
    (path / "shard-00000.jsonl").write_text("{}\n")
    finish(path)
    assert not path.exists()
    finish(path)  # already gone: no error


def test_stable_seed():
    assert stable_seed(3, "q1") == stable_seed(3, "q1")
    assert stable_seed(3, "q1") != stable_seed(3, "q2")
    assert stable_seed(3, "q1") != stable_seed(4, "q1")
    assert stable_seed("a", "bc") != stable_seed("ab", "c")
    seeds = [stable_seed(0, i) for i in range(100)]
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) == 100
