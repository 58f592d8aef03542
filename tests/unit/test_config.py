"""Settings resolution: flag > environment > sftchat.toml > default, and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sftchat.config import (
    BUILTIN_MODEL,
    BUILTIN_TRAINING,
    CONFIG_FILE,
    ConfigError,
    GenerationSettings,
    TrainingSettings,
    load_settings,
)

ENV_VARS = ("SFTCHAT_MODEL", "SFTCHAT_HOME", "SFTCHAT_DEVICE", "SFTCHAT_NO_QUANTIZE",
            "SFTCHAT_TEMPLATE", "SFTCHAT_TRUST_REMOTE_CODE")
REAL_MODEL = "Qwen/Qwen2.5-0.5B"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # The default workspace is the current directory: make it an empty one.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def write_toml(folder: Path, text: str) -> None:
    (folder / CONFIG_FILE).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- defaults


def test_defaults_without_toml_env_or_flags(ws):
    settings = load_settings(workspace=str(ws))
    assert settings.workspace == ws.resolve()
    assert settings.model == BUILTIN_MODEL == "builtin"
    assert settings.is_builtin
    assert settings.device == "auto"
    assert settings.quantize is True
    assert settings.template == "auto"   # resolved per model: see test_prompts
    assert settings.trust_remote_code is False
    assert settings.generation == GenerationSettings()
    assert settings.data_dir == ws.resolve() / "data"
    assert settings.adapters_dir == ws.resolve() / "adapters"


def test_workspace_defaults_to_the_current_directory(tmp_path):
    assert load_settings().workspace == (tmp_path / "cwd").resolve()


# --------------------------------------------------------------------------- precedence


def test_workspace_flag_beats_sftchat_home(monkeypatch, tmp_path, ws):
    home = tmp_path / "home"
    home.mkdir()
    write_toml(home, 'model = "from-home"\n')
    monkeypatch.setenv("SFTCHAT_HOME", str(home))
    settings = load_settings()
    assert settings.workspace == home.resolve()
    assert settings.model == "from-home"     # the toml is read from the chosen workspace
    assert load_settings(workspace=str(ws)).workspace == ws.resolve()
    assert load_settings(workspace=str(ws)).model == BUILTIN_MODEL


@pytest.mark.parametrize("field, default, toml, env_name, env, flag", [
    ("model", BUILTIN_MODEL, 'model = "toml/model"', "SFTCHAT_MODEL", "env/model", "flag/model"),
    ("device", "auto", 'device = "cpu"', "SFTCHAT_DEVICE", "cuda", "cpu"),
    ("template", "auto", 'template = "chatml"', "SFTCHAT_TEMPLATE", "tokenizer", "alpaca"),
])
def test_flag_beats_env_beats_toml_beats_default(monkeypatch, ws, field, default, toml,
                                                 env_name, env, flag):
    assert getattr(load_settings(workspace=str(ws)), field) == default
    write_toml(ws, toml + "\n")
    assert getattr(load_settings(workspace=str(ws)), field) == toml.split('"')[1]
    monkeypatch.setenv(env_name, env)
    assert getattr(load_settings(workspace=str(ws)), field) == env
    assert getattr(load_settings(workspace=str(ws), **{field: flag}), field) == flag


def test_quantize_precedence(monkeypatch, ws):
    assert load_settings(workspace=str(ws)).quantize is True
    write_toml(ws, "quantize = false\n")
    assert load_settings(workspace=str(ws)).quantize is False
    # The environment beats the file in both directions.
    monkeypatch.setenv("SFTCHAT_NO_QUANTIZE", "0")
    assert load_settings(workspace=str(ws)).quantize is True
    write_toml(ws, "quantize = true\n")
    monkeypatch.setenv("SFTCHAT_NO_QUANTIZE", "1")
    assert load_settings(workspace=str(ws)).quantize is False
    # The flag beats the environment.
    monkeypatch.setenv("SFTCHAT_NO_QUANTIZE", "0")
    assert load_settings(workspace=str(ws), no_quantize=True).quantize is False


@pytest.mark.parametrize("value, quantize", [("1", False), ("true", False), ("YES", False),
                                             ("on", False), ("0", True), ("false", True),
                                             ("off", True), ("", True)])
def test_no_quantize_env_values(monkeypatch, ws, value, quantize):
    monkeypatch.setenv("SFTCHAT_NO_QUANTIZE", value)
    assert load_settings(workspace=str(ws)).quantize is quantize


def test_empty_env_vars_fall_through_to_the_toml(monkeypatch, ws):
    write_toml(ws, 'model = "toml/model"\ndevice = "cpu"\ntemplate = "chatml"\n')
    for name in ("SFTCHAT_MODEL", "SFTCHAT_DEVICE", "SFTCHAT_TEMPLATE"):
        monkeypatch.setenv(name, "")
    settings = load_settings(workspace=str(ws))
    assert (settings.model, settings.device, settings.template) == ("toml/model", "cpu",
                                                                   "chatml")


def test_toml_generation_and_trust_remote_code(ws):
    # Trust in a model's code is never taken from the workspace's file (issue 31): refused,
    # saying how to turn it on (tests/reliability/test_trust_remote_code.py).
    write_toml(ws, "trust_remote_code = true\n")
    assert "--trust-remote-code MODEL" in _config_error(ws)
    write_toml(ws, "trust_remote_code = false\n[generation]\nmax_new_tokens = 32\n"
                   "temperature = 0\ntop_p = 1\nseed = 7\n")
    settings = load_settings(workspace=str(ws))
    assert settings.trust_remote_code is False
    assert settings.generation == GenerationSettings(max_new_tokens=32, temperature=0.0,
                                                     top_p=1.0, seed=7)
    assert isinstance(settings.generation.temperature, float)


# --------------------------------------------------------------------------- training presets


def test_builtin_model_gets_the_builtin_training_preset(ws):
    training = load_settings(workspace=str(ws)).training
    assert training == dataclasses.replace(TrainingSettings(), **BUILTIN_TRAINING)
    for name, value in BUILTIN_TRAINING.items():
        assert getattr(training, name) == value, name
    # The preset is small: a higher learning rate, nothing of random answers to keep (no
    # regularizer, no drift limit).
    assert training.lr > TrainingSettings().lr
    assert training.regularize == "off" and TrainingSettings().regularize == "distill"
    assert training.max_drift == 0 and TrainingSettings().max_drift == 10
    assert set(BUILTIN_TRAINING) == {"lr", "regularize", "max_drift"}


def test_real_model_gets_the_adaptive_defaults(monkeypatch, ws):
    assert load_settings(workspace=str(ws), model=REAL_MODEL).training == TrainingSettings()
    monkeypatch.setenv("SFTCHAT_MODEL", REAL_MODEL)
    training = load_settings(workspace=str(ws)).training
    assert training == TrainingSettings()
    assert (training.lr, training.rank, training.alpha, training.epochs) == (1e-3, 16, 32,
                                                                              "auto")
    assert training.early_stop and training.regularize == "distill"
    assert (training.rehearsal_weight, training.quiet_weight) == (3.0, 1e5)


def test_epochs_auto_or_a_number_and_booleans_from_toml(ws):
    write_toml(ws, '[training]\nepochs = "auto"\nearly_stop = false\nregularize = "off"\n')
    training = load_settings(workspace=str(ws)).training
    assert (training.epochs, training.early_stop, training.regularize) == ("auto", False, "off")
    write_toml(ws, '[training]\nepochs = "many"\n')
    assert "epochs" in _config_error(ws)
    write_toml(ws, '[training]\nregularize = "kl"\n')
    assert "regularize must be one of rehearsal, distill, off" in _config_error(ws)


def test_builtin_chosen_by_flag_over_a_real_model_in_toml_gets_the_preset(ws):
    write_toml(ws, f'model = "{REAL_MODEL}"\n')
    assert load_settings(workspace=str(ws)).training == TrainingSettings()
    training = load_settings(workspace=str(ws), model="builtin").training
    assert training.lr == BUILTIN_TRAINING["lr"]


def test_toml_training_overrides_the_builtin_preset(ws):
    write_toml(ws, "[training]\nlr = 1e-3\nepochs = 5\nmax_steps = 20\n")
    training = load_settings(workspace=str(ws)).training
    assert training.lr == 1e-3
    assert training.epochs == 5
    assert training.max_steps == 20
    assert training.regularize == BUILTIN_TRAINING["regularize"]  # untouched preset values stay


def test_toml_training_overrides_the_real_model_defaults(ws):
    write_toml(ws, f'model = "{REAL_MODEL}"\n[training]\nrank = 8\nlr = 1\n')
    training = load_settings(workspace=str(ws)).training
    assert training.rank == 8
    assert training.lr == 1.0 and isinstance(training.lr, float)   # int accepted as float
    assert training.epochs == TrainingSettings().epochs


# --------------------------------------------------------------------------- invalid values


def _config_error(ws, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(workspace=str(ws), **kwargs)
    return str(info.value)


def test_bad_toml_names_the_file(ws):
    write_toml(ws, 'model = "unterminated\n')
    message = _config_error(ws)
    assert CONFIG_FILE in message
    assert "not valid TOML" in message


def test_toml_that_is_not_utf8_names_the_file(ws):
    (ws / CONFIG_FILE).write_bytes('model = "caf\xe9"\n'.encode("latin-1"))
    assert CONFIG_FILE in _config_error(ws)


@pytest.mark.parametrize("text, name", [
    ('modle = "x"\n', "modle"),
    ("[training]\nlearning_rate = 0.1\n", "learning_rate"),
    ("[generation]\ntemp = 0.1\n", "temp"),
    ("[server]\nport = 1\n", "server"),
])
def test_unknown_key_names_the_key(ws, text, name):
    write_toml(ws, text)
    message = _config_error(ws)
    assert repr(name) in message
    assert "unknown setting" in message


@pytest.mark.parametrize("text, name", [
    ("model = 5\n", "model"),
    ('quantize = "yes"\n', "quantize"),
    ("device = 1\n", "device"),
    ('trust_remote_code = "no"\n', "trust_remote_code"),
    ("[training]\nepochs = 2.5\n", "epochs"),
    ("[training]\nepochs = true\n", "epochs"),
    ('[training]\nearly_stop = "yes"\n', "early_stop"),
    ('[training]\nlr = "fast"\n', "lr"),
    ("[training]\nlr = true\n", "lr"),
    ('[generation]\nmax_new_tokens = "many"\n', "max_new_tokens"),
    ("[generation]\ntemperature = [0.5]\n", "temperature"),
])
def test_wrong_type_names_the_setting(ws, text, name):
    write_toml(ws, text)
    message = _config_error(ws)
    assert name in message
    assert "must be" in message


@pytest.mark.parametrize("text, name", [
    ("training = 3\n", "training"),
    ('generation = "fast"\n', "generation"),
])
def test_section_that_is_not_a_table_names_the_section(ws, text, name):
    write_toml(ws, text)
    assert name in _config_error(ws)


@pytest.mark.parametrize("text, name", [
    ("[training]\nlr = -1e-4\n", "lr"),
    ("[training]\nlr = 0\n", "lr"),
    ("[training]\nepochs = 0\n", "epochs"),
    ("[training]\nrank = -8\n", "rank"),
    ("[training]\nbatch_size = 0\n", "batch_size"),
    ("[training]\nmax_steps = 0\n", "max_steps"),
    ("[training]\ndropout = 1.0\n", "dropout"),
    ("[training]\nwarmup_ratio = -0.1\n", "warmup_ratio"),
    ("[training]\nmax_length = 16\n", "max_length"),
    ('[training]\ngradient_checkpointing = "maybe"\n', "gradient_checkpointing"),
    ("[generation]\nmax_new_tokens = 0\n", "max_new_tokens"),
    ("[generation]\ntemperature = -0.5\n", "temperature"),
    ("[generation]\ntop_p = 0\n", "top_p"),
    ("[generation]\ntop_p = 1.5\n", "top_p"),
])
def test_out_of_range_values_name_the_setting(ws, text, name):
    write_toml(ws, text)
    assert name in _config_error(ws)


def test_bad_device_from_toml_env_or_flag(monkeypatch, ws):
    write_toml(ws, 'device = "gpu"\n')
    assert "device" in _config_error(ws)
    assert "gpu" in _config_error(ws)
    write_toml(ws, "")
    monkeypatch.setenv("SFTCHAT_DEVICE", "tpu")
    assert "device" in _config_error(ws)
    monkeypatch.delenv("SFTCHAT_DEVICE")
    assert "mps" in _config_error(ws, device="mps")


def test_bad_template_from_toml_env_or_flag(monkeypatch, ws):
    write_toml(ws, 'template = "vicuna"\n')
    message = _config_error(ws)
    assert "template" in message and "vicuna" in message
    write_toml(ws, "")
    monkeypatch.setenv("SFTCHAT_TEMPLATE", "llama")
    assert "template" in _config_error(ws)
    monkeypatch.delenv("SFTCHAT_TEMPLATE")
    assert "template" in _config_error(ws, template="nope")


def test_bad_no_quantize_env_names_the_variable(monkeypatch, ws):
    monkeypatch.setenv("SFTCHAT_NO_QUANTIZE", "maybe")
    message = _config_error(ws)
    assert "SFTCHAT_NO_QUANTIZE" in message and "maybe" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
