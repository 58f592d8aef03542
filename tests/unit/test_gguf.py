"""GGUF files as --model: found in a path or a folder, hashed once, refused clearly.

The conversion itself needs a real GGUF model: the SmolLM2 end-to-end test covers it
(tests/e2e/test_real_model.py). Here the files are tiny GGUFs written with the `gguf` package.
"""

from __future__ import annotations

import pytest

from sftchat import files
from sftchat.models.gguf import GGUFError, content_hash, find_gguf
from sftchat.models.loader import ModelLoadError, load_model


def write_gguf(path, architecture: str) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("weight", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_or_a_folder_holding_one_is_found(tmp_path):
    file = tmp_path / "model.Q4_0.gguf"
    write_gguf(file, "llama")
    assert find_gguf(str(file)) == file.resolve()
    assert find_gguf(str(tmp_path)) == file.resolve()
    # A Hugging Face folder (config.json) is not read as GGUF even with a .gguf beside it.
    (tmp_path / "config.json").write_text("{}")
    assert find_gguf(str(tmp_path)) is None
    assert find_gguf("Qwen/Qwen2.5-0.5B") is None


def test_a_folder_with_several_gguf_files_asks_which(tmp_path):
    write_gguf(tmp_path / "a.gguf", "llama")
    write_gguf(tmp_path / "b.gguf", "llama")
    with pytest.raises(GGUFError, match="several GGUF files.*a.gguf, b.gguf"):
        find_gguf(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nothing.gguf"), "cpu")


def test_an_architecture_transformers_cannot_read_is_one_clear_error(tmp_path,
                                                                     builtin_cache):
    file = tmp_path / "odd.gguf"
    write_gguf(file, "notanarch")
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(file), "cpu")
    message = str(caught.value)
    assert "'notanarch' model, which this transformers cannot read from GGUF" in message
    assert "llama" in message  # it names what can be read
    assert "\n" not in message


def test_a_file_that_is_not_gguf(tmp_path, builtin_cache):
    file = tmp_path / "broken.gguf"
    file.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        load_model(str(file), "cpu")


def test_the_content_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    file = tmp_path / "m.gguf"
    write_gguf(file, "llama")
    calls = []
    real = files.file_sha256  # the model cache's one hash index (sftchat.files)
    monkeypatch.setattr(files, "file_sha256", lambda path: calls.append(path) or real(path))
    first = content_hash(file, tmp_path)
    assert content_hash(file, tmp_path) == first and len(calls) == 1
    write_gguf(file, "qwen2")  # a changed file is hashed again
    import os

    os.utime(file, ns=(1, 1))
    assert content_hash(file, tmp_path) != first and len(calls) == 2
