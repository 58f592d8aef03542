"""A base model is known by its content, not its shape (issue 31, item 2).

Two folders with the same config and weight files of the same sizes but other bytes are two
models: an adapter trained on one is refused on the other, and the base's cached anchor
answers of one are never served to the other. A hub model is pinned by its commit as well:
an adapter trained on revision A refuses revision B. Each file is hashed once, not at every
start. The models are the real built-in model's files (one copy with other weight bytes); the
hub model is those files laid out as the Hugging Face cache lays out a download, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import sftchat
from sftchat import files
from sftchat.adapters.registry import AdapterError, AdapterInfo, check_base, resolve

CONTENT_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json")


def _other_weights(folder: Path) -> None:
    """The same tensors (names, shapes, dtypes: the same file size), other values."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(7)
    changed = {name: (tensor + torch.randn(tensor.shape, generator=generator) * 0.5)
               .to(tensor.dtype) if tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}
    size = path.stat().st_size
    save_file(changed, str(path), metadata=metadata)
    assert path.stat().st_size == size


@pytest.fixture(scope="module")
def twins(tmp_path_factory, builtin_cache):
    """(a byte-for-byte copy of the built-in model, a copy with other weight bytes)."""
    from sftchat.models.builtin import ensure_builtin_model

    root = tmp_path_factory.mktemp("twins")
    same, other = root / "same", root / "other"
    shutil.copytree(ensure_builtin_model(), same)
    shutil.copytree(ensure_builtin_model(), other)
    _other_weights(other)
    assert (same / "config.json").read_bytes() == (other / "config.json").read_bytes()
    return same, other


def _identity(spec: str, path: str | None = None) -> dict:
    """The identity `export` computes: from the config, without loading the weights."""
    from transformers import AutoConfig

    from sftchat.models.loader import model_identity

    path = path or spec
    return model_identity(spec, path, AutoConfig.from_pretrained(path))


def _adapter(identity: dict, name: str = "a1") -> AdapterInfo:
    return AdapterInfo(name, Path("/nowhere"), {"base_model": identity})


def test_same_config_and_sizes_but_other_weights_is_another_model(twins):
    from sftchat.models.builtin import ensure_builtin_model

    same, other = twins
    builtin = _identity("builtin", str(ensure_builtin_model()))
    assert _identity(str(same))["fingerprint"] == builtin["fingerprint"]
    assert _identity(str(other))["fingerprint"] != builtin["fingerprint"]


def test_an_adapter_trained_on_one_is_refused_on_the_other(twins, trained_workspace, ws):
    """`first` was trained on the built-in model (the real trainer): it answers on a
    byte-for-byte copy of it, and is refused on the copy with other weights, saying so."""
    same, other = twins
    shutil.copytree(trained_workspace / "adapters", ws / "adapters")
    ask = ("ask", "What is the capital of France?", "--adapter", "first",
           "--temperature", "0", "--max-new-tokens", "4")
    assert sftchat(ws, *ask, "--model", str(same), in_process=True).returncode == 0
    refused = sftchat(ws, *ask, "--model", str(other), in_process=True)
    assert refused.returncode == 1, refused.stdout
    error = refused.stderr.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert "'first'" in error and "'builtin'" in error and "--model builtin" in error


def test_the_anchor_answers_of_one_are_not_served_to_the_other(twins, tmp_path):
    """The base's answers to the anchor prompts are cached per base model: the second model
    gets its own answers, not the first one's."""
    from sftchat.models.loader import load_model
    from sftchat.training.anchors import DRIFT_PROMPTS, base_answers, greedy_batch

    same, other = twins
    prompts, tokens = DRIFT_PROMPTS[:3], 8
    first = load_model(str(same), "cpu", quantize=False)
    second = load_model(str(other), "cpu", quantize=False)
    own = [prompt + answer for prompt, answer, _ in
           greedy_batch(second.model, second.tokenizer, "alpaca", prompts, tokens)]
    theirs = [example.input_ids for example in
              base_answers(first, "alpaca", prompts, tmp_path, tokens)]
    assert own != theirs  # the two models do answer differently
    served = [example.input_ids for example in
              base_answers(second, "alpaca", prompts, tmp_path, tokens)]
    assert served == own


def test_each_file_is_hashed_once(tmp_path, monkeypatch, builtin_cache):
    """The weights are read once: later identities come from the hash index, until a file
    changes (size or modification time)."""
    from sftchat.models.builtin import ensure_builtin_model

    folder = tmp_path / "model"
    shutil.copytree(ensure_builtin_model(), folder)
    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda path: hashed.append(Path(path).name)
                        or real(path))
    first = _identity(str(folder))
    assert sorted(hashed) == sorted(name for name in CONTENT_FILES
                                    if (folder / name).is_file())
    assert "model.safetensors" in hashed
    hashed.clear()
    assert _identity(str(folder)) == first and hashed == []
    _other_weights(folder)
    os.utime(folder / "model.safetensors", ns=(1, 1))
    changed = _identity(str(folder))
    assert hashed == ["model.safetensors"]
    assert changed["fingerprint"] != first["fingerprint"]
    # The same folder with other weights: an adapter trained on it before is refused.
    with pytest.raises(AdapterError) as refused:
        check_base(_adapter(first), changed)
    assert "weights, tokenizer or config" in str(refused.value)
    assert "retrain" in str(refused.value) and "\n" not in str(refused.value)


def _git_blob_name(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_cache(root: Path, repo: str, commits: list[str], source: Path) -> Path:
    """`source`'s files as the Hugging Face cache holds a download of `repo` at each of
    `commits` (blobs named by their sha256 for LFS files, by their git hash for others;
    snapshots of links to them; refs/main at the first commit)."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    for commit in commits:
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            data = path.read_bytes()
            lfs = path.suffix == ".safetensors"
            blob = hashlib.sha256(data).hexdigest() if lfs else _git_blob_name(data)
            (repo_dir / "blobs" / blob).write_bytes(data)
            (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo_dir / "refs" / "main").write_text(commits[0])
    return repo_dir


def test_a_hub_model_is_pinned_by_its_commit_and_its_blobs(tmp_path, monkeypatch,
                                                           builtin_cache):
    """A hub id, loaded offline from the cache: its revision is the commit the cache
    resolves, its weights' hash is their blob's name (not read again), and an adapter
    trained on one commit refuses another."""
    from huggingface_hub import constants

    from sftchat.models.builtin import ensure_builtin_model
    from sftchat.models.loader import load_model

    repo, commit_a, commit_b = "sftchat-test/tiny", "a" * 40, "b" * 40
    repo_dir = _hub_cache(tmp_path / "hub", repo, [commit_a, commit_b],
                          ensure_builtin_model())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda path: hashed.append(Path(path).name)
                        or real(path))
    loaded = load_model(repo, "cpu", quantize=False)
    on_a = loaded.identity
    assert on_a["model"] == repo and on_a["revision"] == commit_a
    assert "model.safetensors" not in hashed  # its blob is named by its sha256
    assert _identity(repo) == on_a

    (repo_dir / "refs" / "main").write_text(commit_b)
    on_b = _identity(repo)
    assert on_b["revision"] == commit_b and on_b["fingerprint"] != on_a["fingerprint"]
    with pytest.raises(AdapterError) as refused:
        check_base(_adapter(on_a), on_b)
    message = str(refused.value)
    assert "revision" in message and commit_a[:12] in message and commit_b[:12] in message
    assert "\n" not in message
    check_base(_adapter(on_a), on_a)


def _published_before(identity_path: str) -> dict:
    """A base record as sftchat wrote it before content hashes (the published format of
    older adapters): config minus volatile fields, then weight file names and sizes."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(identity_path).to_dict()
    for volatile in ("transformers_version", "_name_or_path", "_commit_hash",
                     "quantization_config", "torch_dtype", "dtype", "use_cache"):
        config.pop(volatile, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for weight in sorted(Path(identity_path).glob("*.safetensors")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return {"model": "builtin", "revision": None, "fingerprint": digest.hexdigest()}


def test_an_adapter_published_before_is_checked_on_its_own_fields(tmp_path, builtin_cache):
    """Adapters published with the old fingerprint keep loading on the base they name, and
    are still refused on a base whose config differs."""
    from sftchat.models.builtin import ensure_builtin_model

    builtin = str(ensure_builtin_model())
    old = _adapter(_published_before(builtin), "old")
    check_base(old, _identity("builtin", builtin))
    changed = tmp_path / "changed"
    shutil.copytree(builtin, changed)
    config = json.loads((changed / "config.json").read_text())
    config["rope_theta"] = config.get("rope_theta", 10000.0) * 2
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="'old'"):
        check_base(old, _identity(str(changed)))


def test_the_trained_adapter_records_its_base_by_content(trained_workspace):
    info = resolve(trained_workspace / "adapters", "first")
    base = info.meta["base_model"]
    assert base["model"] == "builtin" and base["fingerprint_version"] == 2
    assert len(base["fingerprint"]) == 64
