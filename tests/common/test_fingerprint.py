"""Code fingerprints follow the project's imports; the file-hash cache answers from size and mtime until a file changes."""

from __future__ import annotations

import os

from common.fingerprint import HashCache, code_fingerprint


def test_a_fingerprint_covers_what_the_entry_module_imports_and_nothing_else():
    export = code_fingerprint(["pipeline.export"])
    # imported at the top, lazily inside functions, relatively, and the packages' __init__ files
    for path in (
        "pipeline/export.py",
        "models/layers.py",
        "calibration/dataset.py",
        "engines/ort.py",
        "pipeline/__init__.py",
    ):
        assert path in export, path
    assert "pipeline/benchmark.py" not in export and "deployment/serve.py" not in export
    assert all(len(digest) == 64 for digest in export.values())


def test_the_hash_cache_rehashes_a_file_only_when_it_changes(tmp_path, monkeypatch):
    import common.fingerprint

    image = tmp_path / "a.png"
    image.write_bytes(b"one")
    cache = HashCache(tmp_path / "hashes.json")
    first = cache.sha256(image)
    cache.save()
    calls = []
    monkeypatch.setattr(common.fingerprint, "sha256_file", lambda p: calls.append(p) or "fresh")
    again = HashCache(tmp_path / "hashes.json")
    assert again.sha256(image) == first and calls == []  # answered from the saved cache
    image.write_bytes(b"two")
    os.utime(image, ns=(1, 1))  # a new mtime, as any edit gives
    assert again.sha256(image) == "fresh" and calls == [image]
