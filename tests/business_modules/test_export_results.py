"""Result files are written all-or-nothing."""

from __future__ import annotations

import os

import pytest

from business_modules.export import ResultStore

NAME = "0123456789abcdef0123456789abcdef.pdf"


def test_write_is_atomic_and_cleans_up_on_failure(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write(NAME, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write(NAME, b"new, never visible")
    monkeypatch.undo()
    assert (tmp_path / NAME).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_names_cannot_escape_the_folder(tmp_path):
    store = ResultStore(tmp_path)
    for bad in ("../etc/passwd", "x.pdf", f"{'a' * 32}.pdf/../../x"):
        with pytest.raises(ValueError):
            store.path(bad)


def test_sweep_removes_only_old_temp_files(tmp_path):
    store = ResultStore(tmp_path)
    old = tmp_path / ".tmp-dead-writer"
    old.write_bytes(b"partial")
    os.utime(old, (1, 1))
    fresh = tmp_path / ".tmp-live-writer"
    fresh.write_bytes(b"partial")
    store.write(NAME, b"done")
    assert store.sweep_temp(older_than_s=60) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-live-writer", NAME]
