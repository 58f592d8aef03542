"""`sftchat export` on the built-in model: every format's files, read back with the libraries
that will read them (transformers for the merged folder, the `gguf` package's reader for the
GGUF files), and the failures a user can cause. llama.cpp itself runs them in
tests/e2e/test_export_llama_cpp.py; Ollama's template in tests/unit/test_export_ollama.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import sftchat
from conftest import CURATED
from export_runners import transformers_answers
from sftchat.config import load_settings
from sftchat.export.architectures import ExportError, architecture_for, permute_rows
from sftchat.export.exporter import export_adapter


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_workspace) -> dict[str, Path]:
    """Adapter `first` of the shared trained workspace, exported once in each format."""
    root = tmp_path_factory.mktemp("exports")
    settings = load_settings(workspace=str(trained_workspace))
    folders = {}
    for fmt in ("merged", "gguf", "gguf-lora", "ollama"):
        folders[fmt] = root / fmt
        export_adapter(settings, "first", folders[fmt], fmt)
    folders["original"] = root / "original"
    export_adapter(settings, "first", folders["original"], "gguf-lora", base="original")
    folders["q8_0"] = root / "q8_0"
    export_adapter(settings, "first", folders["q8_0"], "gguf", outtype="q8_0")
    return folders


def test_the_merged_folder_answers_alone_in_plain_transformers(exported):
    folder = exported["merged"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    # The umask's permissions, as files meant to be shared have (transformers' own: 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    answers = transformers_answers(folder, [question for question, _ in CURATED])
    assert answers == [answer for _, answer in CURATED]


def test_the_merged_folder_prompts_as_sftchat_does(exported, trained_workspace):
    """Its chat template renders the prompt ids sftchat trains on, earlier turns included."""
    from transformers import AutoTokenizer

    from sftchat.prompts import Turn, encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    meta = json.loads((trained_workspace / "adapters/first/sftchat.json").read_text())
    (q1, a1), (q2, _) = CURATED[:2]
    ids = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q1},
         {"role": "assistant", "content": a1}, {"role": "user", "content": q2}],
        add_generation_prompt=True, return_dict=True)["input_ids"]
    expected = encode_prompt(tokenizer, meta["template"], q2, history=[Turn(q1, a1)],
                             system="Be brief.").ids
    assert list(ids) == expected


def test_the_merged_weights_are_the_dequantized_base_plus_the_lora(exported, trained_workspace):
    """W' = dequant(W_nf4) + (alpha / r)·B·A, checked on one projection against the 4-bit
    base the adapter was trained on."""
    import bitsandbytes.functional as bnb
    import torch
    from safetensors.torch import load_file

    from sftchat.models.loader import load_model

    base = load_model("builtin", "cpu", quantize=True, for_training=True).model
    layer = base.model.layers[1].self_attn.q_proj
    dequantized = bnb.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    lora = load_file(str(trained_workspace / "adapters/first/adapter_model.safetensors"))
    config = json.loads((trained_workspace / "adapters/first/adapter_config.json").read_text())
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    expected = dequantized + config["lora_alpha"] / config["r"] * delta
    merged = load_file(str(exported["merged"] / "model.safetensors"))
    got = merged["model.layers.1.self_attn.q_proj.weight"].float()
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, dequantized, atol=1e-4)  # the LoRA is in there


def _reader(path: Path):
    from gguf import GGUFReader

    return GGUFReader(str(path))


def _field(reader, key):
    return reader.fields[key].contents()


def test_the_gguf_file_is_a_llama_model_with_tokenizer_and_chat_template(exported):
    from gguf import GGMLQuantizationType

    f16 = _reader(exported["gguf"] / "first-f16.gguf")
    assert _field(f16, "general.architecture") == "llama"
    assert _field(f16, "general.type") == "model"
    assert _field(f16, "tokenizer.ggml.model") == "gpt2"
    assert _field(f16, "tokenizer.ggml.pre") == "gpt-2"
    assert "### Instruction" in _field(f16, "tokenizer.chat_template")
    assert len(_field(f16, "tokenizer.ggml.tokens")) == _field(f16, "llama.vocab_size")
    types = {t.name: t.tensor_type for t in f16.tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    q8 = {t.name: t.tensor_type for t in _reader(exported["q8_0"] / "first-q8_0.gguf").tensors}
    assert q8["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0
    assert set(q8) == set(types)


def test_query_rows_are_in_llama_cpp_order(exported):
    """The GGUF's attn_q is the merged q_proj with each head's rotary halves interleaved."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(exported["merged"])
    merged = load_file(str(exported["merged"] / "model.safetensors"))
    hf = merged["model.layers.0.self_attn.k_proj.weight"].float().numpy()
    tensor = next(t for t in _reader(exported["gguf"] / "first-f16.gguf").tensors
                  if t.name == "blk.0.attn_k.weight")
    got = np.asarray(tensor.data, dtype=np.float32).reshape(hf.shape)
    want = permute_rows(hf, config.num_attention_heads, config.num_key_value_heads)
    assert np.allclose(got, want, atol=2e-3)
    assert not np.allclose(got, hf, atol=2e-3)


def test_the_lora_gguf_is_an_adapter_for_the_base_it_was_trained_on(exported,
                                                                   trained_workspace):
    folder = exported["gguf-lora"]
    lora = _reader(folder / "first-lora.gguf")
    assert _field(lora, "general.type") == "adapter"
    assert _field(lora, "adapter.type") == "lora"
    config = json.loads((trained_workspace / "adapters/first/adapter_config.json").read_text())
    assert _field(lora, "adapter.lora.alpha") == pytest.approx(config["lora_alpha"])
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in lora.tensors}
    base = {t.name: tuple(int(n) for n in t.shape)
            for t in _reader(folder / "base-as-trained-f16.gguf").tensors}
    # ggml shapes: lora_a (in, r), lora_b (r, out); the base weight (in, out).
    a_names = [name for name in shapes if name.endswith(".lora_a")]
    assert len(a_names) == len(shapes) // 2 > 0
    for a_name in a_names:
        name = a_name.removesuffix(".lora_a")
        (inputs, rank), (rank_b, outputs) = shapes[a_name], shapes[name + ".lora_b"]
        assert rank == rank_b == config["r"]
        assert base[name] == (inputs, outputs)
    manifest = json.loads((folder / "sftchat-export.json").read_text())
    assert manifest["base_gguf"] == str(folder / "base-as-trained-f16.gguf")
    assert manifest["trained_in_4bit"] is True and "--lora" in manifest["next_step"]


def test_the_as_trained_base_is_the_4bit_base_and_the_original_its_own_weights(exported):
    """The as-trained base GGUF holds the dequantized NF4 weights (the merged model minus the
    LoRA); `--base original` the base checkpoint's own."""
    from safetensors.torch import load_file

    from sftchat.models.builtin import ensure_builtin_model

    def attn_v(path):
        tensor = next(t for t in _reader(path).tensors if t.name == "blk.2.attn_v.weight")
        return np.asarray(tensor.data, dtype=np.float32)

    original = load_file(str(ensure_builtin_model() / "model.safetensors"))
    weights = original["model.layers.2.self_attn.v_proj.weight"].float().numpy()
    as_trained = attn_v(exported["gguf-lora"] / "base-as-trained-f16.gguf").reshape(weights.shape)
    on_original = attn_v(exported["original"] / "base-f16.gguf").reshape(weights.shape)
    assert np.allclose(on_original, weights, atol=1e-3)
    assert not np.allclose(as_trained, weights, atol=1e-3)   # NF4's rounding
    assert np.abs(as_trained - weights).max() < np.abs(weights).max() / 4


def test_the_ollama_folder_names_both_files(exported):
    folder = exported["ollama"]
    text = (folder / "Modelfile").read_text()
    assert "FROM ./base-as-trained-f16.gguf" in text and "ADAPTER ./first-lora.gguf" in text
    assert (folder / "base-as-trained-f16.gguf").is_file()
    assert (folder / "first-lora.gguf").is_file()
    assert 'PARAMETER stop "</s>"' in text and "TEMPLATE" in text
    manifest = json.loads((folder / "sftchat-export.json").read_text())
    assert manifest["next_step"] == f"ollama create first -f {folder / 'Modelfile'}"


def test_an_existing_folder_is_kept_unless_forced(trained_workspace, tmp_path):
    settings = load_settings(workspace=str(trained_workspace))
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_adapter(settings, "first", target, "gguf-lora")
    assert (target / "notes.txt").read_text() == "mine"
    export_adapter(settings, "first", target, "gguf-lora", force=True)
    assert not (target / "notes.txt").exists() and (target / "first-lora.gguf").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left


def test_a_damaged_adapter_fails_in_one_sentence_and_leaves_nothing(trained_workspace,
                                                                   tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(trained_workspace, workspace)
    weights = workspace / "adapters/first/adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "out"
    result = sftchat(workspace, "export", "first", "--to", str(out), "--format", "gguf")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("sftchat: error: adapter 'first' cannot be read")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ws"]


def test_the_command_line_reports_progress_and_files_as_json(trained_workspace, tmp_path):
    out = tmp_path / "out"
    result = sftchat(trained_workspace, "export", "latest", "--to", str(out), "--format",
                     "gguf", "--outtype", "q8_0", "--json", check=True)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["event"] == "progress" and events[-1]["event"] == "finished"
    assert events[-1]["files"] == ["first-q8_0.gguf"]
    assert (out / "first-q8_0.gguf").is_file()
    unknown = sftchat(trained_workspace, "export", "nope", "--to", str(tmp_path / "x"),
                      "--format", "gguf")
    assert unknown.returncode == 1 and "no adapter named 'nope'" in unknown.stderr


def test_architectures_it_cannot_write_are_refused_with_the_list():
    from transformers import GemmaConfig

    with pytest.raises(ExportError, match="'gemma'.*llama.*mistral.*qwen2"):
        architecture_for(GemmaConfig())


def test_the_export_is_the_same_on_every_cpu_path(cpu_path, trained_workspace, tmp_path,
                                                  exported):
    """The base is dequantized from bitsandbytes' plain layout on every CPU (its packed
    layout, taken on CPUs with AVX512-BF16, is never created for an export)."""
    from safetensors.torch import load_file

    settings = load_settings(workspace=str(trained_workspace))
    export_adapter(settings, "first", tmp_path / "m", "merged")
    here = load_file(str(tmp_path / "m" / "model.safetensors"))
    reference = load_file(str(exported["merged"] / "model.safetensors"))
    assert here.keys() == reference.keys()
    assert all(np.array_equal(here[k].numpy(), reference[k].numpy()) for k in here)


def test_a_gpu_trained_adapter_exports_from_the_cpu_when_there_is_no_gpu(trained_workspace,
                                                                         tmp_path, exported):
    """Where the adapter trained on CUDA and no GPU is here, the base is quantized on the CPU
    (close to CUDA's NF4, not identical: RESULTS §17) and the manifest says so. On a GPU
    machine benchmarks/export_gpu_check.py checks the other branch."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the export would quantize there")
    workspace = tmp_path / "ws"
    shutil.copytree(trained_workspace, workspace)
    meta_path = workspace / "adapters/first/sftchat.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "device": "cuda"}))
    export_adapter(load_settings(workspace=str(workspace)), "first", tmp_path / "m", "merged")
    manifest = json.loads((tmp_path / "m" / "sftchat-export.json").read_text())
    assert (manifest["trained_on"], manifest["dequantized_on"]) == ("cuda", "cpu")
    reference = json.loads((exported["merged"] / "sftchat-export.json").read_text())
    assert (reference["trained_on"], reference["dequantized_on"]) == ("cpu", "cpu")
