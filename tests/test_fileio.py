"""prvr.fileio: crash-safe text/JSON writes and the exclusive lock file."""

from __future__ import annotations

import json
import threading
import time

import pytest

from prvr.fileio import exclusive_lock, write_json_atomic, write_text_atomic


def test_write_text_atomic_round_trip_keeps_line_endings(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "one\r\ntwo\nünï\n")
    assert path.read_bytes() == "one\r\ntwo\nünï\n".encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_write_json_atomic_sorted_with_final_newline(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    write_json_atomic(path, {"b": 1, "a": 2}, indent=None, sort_keys=False)
    assert path.read_text(encoding="utf-8") == '{"b": 1, "a": 2}\n'


def test_a_failed_json_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"kept": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_exclusive_lock_refuses_a_second_holder_with_the_given_message(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive_lock(lock):
        with pytest.raises(RuntimeError, match="another build holds it"):
            with exclusive_lock(lock, busy_message="another build holds it"):
                pass
        with pytest.raises(RuntimeError, match="held by another process"):
            with exclusive_lock(lock):
                pass
    with exclusive_lock(lock):  # released: free again
        pass


def test_exclusive_lock_wait_blocks_until_the_holder_releases(tmp_path):
    lock = tmp_path / ".lock"
    held, order = threading.Event(), []

    def holder() -> None:
        with exclusive_lock(lock):
            held.set()
            time.sleep(0.2)
            order.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with exclusive_lock(lock, wait=True):
        order.append("acquired")
    thread.join()
    assert order == ["released", "acquired"]
