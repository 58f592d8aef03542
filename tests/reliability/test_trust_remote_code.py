"""`trust_remote_code` comes from the user, for one named model, never from a workspace file
(issue 31, item 1).

A cloned or downloaded folder may hold a `sftchat.toml`, and the workspace defaults to the
current directory: starting sftchat inside that folder must not run the folder's model code.
The model folders here are the built-in model's files plus a `config.json` whose `auto_map`
points at a module that writes a marker file when imported: the marker is the proof that
model code ran. Their `model_type` stays `llama`, so that a load that does not trust them
uses transformers' own Llama code (and works).
"""

from __future__ import annotations

import json
import shutil

import pytest

from cli_helpers import clean_env, sftchat
from sftchat.cli import build_parser
from sftchat.config import CONFIG_FILE, ConfigError, load_settings

TRUST_ENV = "SFTCHAT_TRUST_REMOTE_CODE"


@pytest.fixture
def hostile_model(tmp_path, builtin_cache):
    """(a model folder whose config maps to custom code, the marker that code would write)."""
    from sftchat.models.builtin import ensure_builtin_model

    folder = tmp_path / "downloaded-model"
    shutil.copytree(ensure_builtin_model(), folder)
    marker = tmp_path / "model-code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig",
                          "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


@pytest.fixture(autouse=True)
def no_trust_from_the_machine(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def test_a_workspace_file_cannot_turn_trust_on(tmp_path, hostile_model):
    """The cloned folder is the workspace (sftchat started inside it): its sftchat.toml says
    trust_remote_code = true and names its own model. Refused, in one sentence that says how
    to turn trust on, before any model code is imported."""
    folder, marker = hostile_model
    (folder / CONFIG_FILE).write_text(f"model = {str(folder)!r}\ntrust_remote_code = true\n")
    # A real process started in that folder, its modules cache of its own (were the code
    # imported, transformers would copy it there first).
    result = sftchat(None, "ask", "Hello?", "--max-new-tokens", "2", cwd=folder,
                     env=clean_env(HF_MODULES_CACHE=str(tmp_path / "modules")))
    assert not marker.exists(), "the workspace's model code ran"
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert "trust_remote_code" in error
    assert "--trust-remote-code" in error and TRUST_ENV in error


def test_false_in_the_workspace_file_is_still_accepted(ws):
    """`trust_remote_code = false` (what older docs showed) asks for nothing: accepted."""
    (ws / CONFIG_FILE).write_text("trust_remote_code = false\n")
    assert load_settings(workspace=str(ws)).trust_remote_code is False


def test_trust_for_another_model_does_not_trust_this_one(ws, hostile_model):
    """`--trust-remote-code` names the model it trusts: naming another one (here, after the
    subcommand) loads this model without its code — transformers' own Llama answers."""
    folder, marker = hostile_model
    result = sftchat(ws, "ask", "Hello?", "--max-new-tokens", "2", "--temperature", "0",
                     "--model", str(folder), "--trust-remote-code", "someone/else",
                     in_process=True)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "trust given to another model applied to this one"
    settings = load_settings(workspace=str(ws), model=str(folder),
                             trust_remote_code="someone/else")
    assert settings.trust_remote_code is False
    assert settings.trusts("someone/else") and not settings.trusts(str(folder))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_naming_the_model_trusts_it_and_only_it(ws, hostile_model, monkeypatch, how):
    """The flag or the environment variable naming the loaded model: the loader is asked to
    trust it (checked on the settings and on the engine's call, not by running the code)."""
    folder, marker = hostile_model
    flag = None
    if how == "env":
        monkeypatch.setenv(TRUST_ENV, str(folder))
    else:
        flag = str(folder)
    settings = load_settings(workspace=str(ws), model=str(folder), trust_remote_code=flag)
    assert settings.trust_remote_code is True
    assert not settings.trusts("builtin")
    # The same folder spelt another way is the same model.
    assert settings.trusts(str(folder / ".." / folder.name))

    # The engine hands that trust to the loader: a spy that stops before anything loads.
    import sftchat.engine as engine

    asked = []

    def spy(spec, device, quantize, trust_remote_code=False, **kwargs):
        asked.append((spec, trust_remote_code))
        raise KeyboardInterrupt  # stop here: nothing is loaded, no code runs

    monkeypatch.setattr(engine, "load_model", spy)
    with pytest.raises(KeyboardInterrupt):
        engine.ChatEngine.from_settings(settings)
    assert asked == [(str(folder), True)]
    # Another model under the same settings is not trusted.
    with pytest.raises(KeyboardInterrupt):
        engine.ChatEngine.from_settings(load_settings(
            workspace=str(ws), model="builtin", trust_remote_code=flag))
    assert asked[-1] == ("builtin", False)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["1", "true", "yes", "0", "off"])
def test_a_yes_no_value_is_refused_it_must_name_the_model(ws, monkeypatch, value):
    with pytest.raises(ConfigError, match="names the model"):
        load_settings(workspace=str(ws), trust_remote_code=value)
    monkeypatch.setenv(TRUST_ENV, value)
    with pytest.raises(ConfigError, match=TRUST_ENV):
        load_settings(workspace=str(ws))


def test_the_apps_trainer_child_trusts_the_same_model_only(ws, hostile_model, monkeypatch):
    """The chat app starts `sftchat train` as a child: the trust reaches it on its command
    line, for the model it trains, and not when the app's trust named another model."""
    from sftchat import commands
    from sftchat.tui.trainer_process import trainer_command, trainer_global_args

    folder, _ = hostile_model

    def child_settings(app_settings):
        argv = trainer_command(app_settings.workspace, trainer_global_args(app_settings))
        args = build_parser().parse_args(argv[3:])  # past `python -m sftchat.cli`
        assert args.command == "train"
        return commands._settings(args)

    trusted = load_settings(workspace=str(ws), model=str(folder),
                            trust_remote_code=str(folder))
    child = child_settings(trusted)
    assert child.model == str(folder) and child.trust_remote_code is True

    other = load_settings(workspace=str(ws), model=str(folder),
                          trust_remote_code="someone/else")
    assert "--trust-remote-code" not in trainer_global_args(other)
    assert child_settings(other).trust_remote_code is False


def test_export_trusts_only_the_named_base(ws, trained_workspace, monkeypatch):
    """The exporter loads the adapter's own base, whatever --model says: trusted only when
    that base is the model named (a spy on the path resolution stops it: nothing loads)."""
    from sftchat.export import exporter
    from sftchat.models import loader

    shutil.copytree(trained_workspace / "adapters", ws / "adapters")
    asked = []

    def spy(spec, trust_remote_code=False, progress=None):
        asked.append((spec, trust_remote_code))
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "resolve_model_path", spy)
    for named, expected in (("builtin", True), ("someone/else", False)):
        settings = load_settings(workspace=str(ws), model="someone/else",
                                 trust_remote_code=named)
        job = exporter._Export(settings, "first", ws / "staging", progress=print)
        with pytest.raises(KeyboardInterrupt):
            job.base_files()
        assert asked[-1] == ("builtin", expected)
