"""Model loading: unquantized mode and the clear errors for models that cannot load."""

from __future__ import annotations

import json

import pytest

from sftchat.models.loader import ModelLoadError, compute_dtype_for, load_model


def test_no_quantize_loads_plain_linear_layers(builtin_cache):
    import torch

    loaded = load_model("builtin", "cpu", quantize=False)
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert type(layer) is torch.nn.Linear
    assert not loaded.quantized and loaded.compute_dtype == compute_dtype_for("cpu")
    assert "builtin" in loaded.describe()


def test_missing_local_folder():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/model", "cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), "cpu")


def test_unknown_hub_id_offline(monkeypatch):
    # HF_HUB_OFFLINE is set for the whole suite (conftest): no network is attempted.
    with pytest.raises(ModelLoadError, match="cannot find model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model", "cpu")


def test_unsupported_architecture(tmp_path, builtin_cache):
    from sftchat.models.builtin import ensure_builtin_model

    source = ensure_builtin_model()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64}))
    with pytest.raises(ModelLoadError, match="architecture"):
        load_model(str(tmp_path), "cpu")


def test_cuda_requested_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error is for machines without one")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("builtin", "cuda")
