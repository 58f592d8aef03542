"""Settings: the workspace's `sftchat.toml`, environment variables and flags, validated.

Precedence for every setting: command-line flag, then environment variable, then
`sftchat.toml`, then the default (GUIDE §3). Training defaults are one recipe for every model
(see `TrainingSettings`): the schedule adapts to the dataset's size and stops once the curated
answers are learned; the built-in tiny model, whose random weights know nothing worth
keeping, only differs in a higher learning rate and no rehearsal.

`sftchat.toml` looks like::

    model = "Qwen/Qwen2.5-0.5B"     # hub id, local folder, or "builtin"
    device = "auto"                 # auto | cpu | cuda
    quantize = true                 # 4-bit NF4 through bitsandbytes
    template = "auto"               # auto | alpaca | chatml | tokenizer
    review = true                   # the app reviews a new adapter before it answers
    system = ""                     # the system prompt of new conversations ("": none)

    [generation]
    max_new_tokens = 256
    temperature = 0.7
    top_p = 0.9

    [training]
    epochs = "auto"
    lr = 1e-3
    rank = 16

`trust_remote_code` is never read from `sftchat.toml`: the workspace defaults to the current
directory, so a downloaded folder's own settings file would decide whether the folder's model
code runs. Only the user turns it on, for one model they name: `--trust-remote-code MODEL`
or `SFTCHAT_TRUST_REMOTE_CODE=MODEL`, which trusts that model and no other
(`Settings.trusts`); `trust_remote_code = true` in the file is refused, saying so.

This module imports nothing heavy: the `data` and `adapters` commands use it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from sftchat.errors import SftchatError
from sftchat.prompts import AUTO_TEMPLATE, TEMPLATE_SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

CONFIG_FILE = "sftchat.toml"
BUILTIN_MODEL = "builtin"
DEVICES = ("auto", "cpu", "cuda")
TRUST_ENV = "SFTCHAT_TRUST_REMOTE_CODE"
TRUST_FLAG = "--trust-remote-code"
# What someone who thinks of trust as a switch would write; trust names a model instead.
_SWITCH_WORDS = ("1", "0", "true", "false", "yes", "no", "on", "off")


class ConfigError(SftchatError, ValueError):
    """A setting has an invalid value (in the toml file, the environment or a flag)."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256   # upper bound on the length of one answer, in tokens
    temperature: float = 0.7    # 0 means greedy decoding
    top_p: float = 0.9          # nucleus sampling mass (ignored when greedy)
    seed: int | None = None     # fixes sampling for reproducible answers


AUTO = "auto"


def _setting(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field documented for every place that shows it: `sftchat train --help`,
    `/train` (both through `training.options`) and this file."""
    return field(default=default, metadata={"help": help, "choices": choices})


GRADIENT_CHECKPOINTING = ("auto", "on", "off")
# What a run learns from (`training.preference`): imitation alone, or also rejected answers.
OBJECTIVES = ("auto", "sft", "dpo", "kto")


@dataclass(frozen=True)
class TrainingSettings:
    """QLoRA hyperparameters: one recipe that learns a dozen curated answers and keeps what
    the model knew (measured on SmolLM2-135M-Instruct, benchmarks/RESULTS.md §8). Each field
    is a `[training]` key in sftchat.toml and a `sftchat train` / `/train` option."""

    epochs: int | str = _setting(
        AUTO, "passes over the dataset; auto: at least --min-steps optimizer steps for a small "
              "dataset, 3 passes over a large one")
    max_steps: int | None = _setting(None, "optimizer steps (overrides --epochs)")
    min_steps: int = _setting(60, "with epochs auto: at least this many optimizer steps")
    early_stop: bool = _setting(
        True, "stop once every curated answer is reproduced exactly under greedy decoding "
              "(and every rejected answer avoided)")
    lr: float = _setting(1e-3, "peak learning rate (AdamW, warm-up then cosine decay)")
    rank: int = _setting(16, "LoRA rank r")
    alpha: int = _setting(32, "LoRA alpha (the update is scaled by alpha / r)")
    # Off by default: a dozen curated answers are meant to be learned exactly, and dropout
    # makes every LoRA layer keep its own copy of its input for the backward pass.
    dropout: float = _setting(0.0, "LoRA dropout")
    batch_size: int = _setting(4, "examples per micro-batch (never more than the dataset)")
    grad_accum: int = _setting(4, "micro-batches per optimizer step (never more than needed)")
    max_length: int = _setting(1024, "tokens per example; the prompt side is cut beyond it")
    strict: bool = _setting(
        False, "refuse to train when an example's answer alone is longer than --max-length "
               "(default: skip it, with a notice naming it)")
    warmup_ratio: float = _setting(0.03, "share of steps with a linear learning-rate warm-up")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    max_grad_norm: float = _setting(1.0, "gradient clipping")
    regularize: str = _setting(
        "distill", "how to keep what the model knew: rehearsal trains on the base model's own "
                     "answers to general prompts too; distill matches its next-token "
                     "distributions there; off trains on the curated examples only",
        choices=("rehearsal", "distill", "off"))
    rehearsal_weight: float = _setting(3.0, "weight of that loss beside the curated loss")
    quiet_weight: float = _setting(
        1e5, "with rehearsal or distill: weight of a penalty on what the adapter adds to each "
             "layer's output on those general prompts (relative to the layer's own output), "
             "which keeps it quiet on text unlike the curated examples; 0: off")
    max_drift: float = _setting(
        10.0, "fail the run, publishing nothing, when the base model's own answers to held-out "
              "prompts become this many times less likely under the adapter (perplexity "
              "ratio; healthy runs stay near 1); 0: never")
    objective: str = _setting(
        "auto", "what the run learns from: sft imitates the curated answers; dpo also prefers "
                "each curated answer to its rejected versions (edits' originals, compare "
                "losers, --rejected); kto also pushes away every rejected answer, one with no "
                "replacement (ctrl+x) included; auto: sft, plus dpo on pairs and kto on bad "
                "answers with no replacement wherever the dataset has them",
        choices=OBJECTIVES)
    beta: float = _setting(
        0.1, "with dpo, kto or auto: how far from the base model the preference loss may "
             "move (DPO's beta: larger keeps closer)")
    preference_weight: float = _setting(
        1.0, "weight of the preference loss beside the curated answers' loss")
    seed: int = _setting(42, "seed for shuffling and initialisation")
    # "auto": a checkpoint per 2 minutes of training, so a killed run loses at most that and
    # the writes stay a small share of the run however fast its steps are; runs shorter than
    # that write none (training.checkpoint).
    checkpoint_every: int | str = _setting(
        AUTO, "write a checkpoint every N optimizer steps, which `sftchat train --resume` "
              "continues from after a crash, a kill or a cancel; auto: every 2 minutes of "
              "training; 0: never")
    gradient_checkpointing: str = _setting(
        "auto", "recompute activations in the backward pass (auto: on for CUDA)",
        choices=GRADIENT_CHECKPOINTING)
    nproc: int | str = _setting(
        1, "training processes on this machine, data-parallel through torchrun (gloo on CPU, "
           "nccl on CUDA; one GPU each); auto: one per visible GPU, 1 on CPU")


REGULARIZERS = next(f for f in fields(TrainingSettings) if f.name == "regularize") \
    .metadata["choices"]


# The built-in tiny model's random weights know nothing worth keeping (no rehearsal, and no
# drift limit: its gibberish answers drift x8 in a healthy run), and learn fastest at a high
# learning rate (measured; GUIDE §9). These apply unless the user sets a value.
BUILTIN_TRAINING = {"lr": 4e-3, "regularize": "off", "max_drift": 0.0}


@dataclass(frozen=True)
class Settings:
    workspace: Path
    model: str = BUILTIN_MODEL
    device: str = "auto"
    quantize: bool = True
    template: str = AUTO_TEMPLATE  # a setting: resolved per model (prompts.resolve_template)
    # The one model whose own code (a config's `auto_map`) may run: named by the user's flag
    # or environment, never by the workspace's file. None: no model's.
    trusted_model: str | None = None
    # A finished run's adapter is replayed against the one answering and shown for review
    # before it takes over (False: it is swapped in at once; `/train --auto-swap` per run).
    review: bool = True
    # The system prompt a new conversation starts with (`/system` changes it in the app,
    # `ask --system` per question); saved with every example it produced. "": none.
    system: str = ""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    @property
    def data_dir(self) -> Path:
        return self.workspace / "data"

    @property
    def adapters_dir(self) -> Path:
        return self.workspace / "adapters"

    @property
    def is_builtin(self) -> bool:
        return self.model == BUILTIN_MODEL

    def trusts(self, spec: str) -> bool:
        """Whether model `spec` may run its own code: only the model the user named."""
        return self.trusted_model is not None and same_model(self.trusted_model, spec)

    @property
    def trust_remote_code(self) -> bool:
        """Whether the model these settings load (`model`) may run its own code."""
        return self.trusts(self.model)


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name one model: equal, or one folder or file spelt two ways
    (paths compared resolved)."""
    def canonical(spec: str) -> str:
        path = Path(spec).expanduser()
        return str(path.resolve()) if path.exists() else spec

    return a == b or canonical(a) == canonical(b)


def _trusted_model(flag: str | None) -> str | None:
    """The model the user trusts to run its own code (flag, then environment), or None."""
    where, value = (TRUST_FLAG, flag) if flag is not None else \
        (TRUST_ENV, os.environ.get(TRUST_ENV))
    if value is None or (where == TRUST_ENV and value.strip() == ""):
        return None
    if value.strip().lower() in _SWITCH_WORDS or not value.strip():
        raise ConfigError(
            f"{where} names the model whose own code may run (e.g. {where}"
            f"{' ' if where == TRUST_FLAG else '='}org/model), not {value!r}; leave it "
            "out to run no model's code")
    return value.strip()


def _accepted_types(annotation: str) -> tuple[type, ...]:
    """The toml types a dataclass field accepts, read from its annotation's text."""
    names = {"bool": bool, "int": int, "float": float, "str": str}
    return tuple(kind for name, kind in names.items() if name in annotation) or (str,)


def _check_type(where: str, name: str, value: Any, expected: type | tuple[type, ...]) -> Any:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in expected:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"{where}: {name} must be {' or '.join(t.__name__ for t in expected)}, "
            f"not {value!r}"
        )
    return value


def _section(where: str, cls: type, table: Any) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of settings, not {table!r}")
    known = {f.name: f for f in fields(cls)}
    out = {}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(
                f"{where}: unknown setting {name!r}; known: {', '.join(sorted(known))}"
            )
        out[name] = _check_type(where, name, value, _accepted_types(str(known[name].type)))
    return out


def validate_training(settings: TrainingSettings, where: str = "training") -> TrainingSettings:
    for name in ("epochs", "nproc", "checkpoint_every"):  # a number or "auto"
        value = getattr(settings, name)
        if (isinstance(value, str) and value != AUTO) or isinstance(value, bool):
            kind = "a number (0: never)" if name == "checkpoint_every" else "a positive number"
            raise ConfigError(f"{where}: {name} must be {kind} or \"auto\", not {value!r}")
    if settings.checkpoint_every != AUTO and settings.checkpoint_every < 0:
        raise ConfigError(f"{where}: checkpoint_every must be 0 (never) or more, not "
                          f"{settings.checkpoint_every}")
    if settings.regularize not in REGULARIZERS:
        raise ConfigError(f"{where}: regularize must be one of {', '.join(REGULARIZERS)}, "
                          f"not {settings.regularize!r}")
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}, "
                          f"not {settings.objective!r}")
    if settings.beta <= 0:
        raise ConfigError(f"{where}: beta must be positive, not {settings.beta}")
    for name in ("rehearsal_weight", "quiet_weight", "max_drift", "preference_weight"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{where}: {name} must be 0 or more")
    positive = ("lr", "rank", "alpha", "batch_size", "grad_accum", "max_length", "min_steps")
    positive += tuple(name for name in ("epochs", "nproc") if getattr(settings, name) != AUTO)
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{where}: {name} must be positive, not {getattr(settings, name)}")
    if settings.max_steps is not None and settings.max_steps <= 0:
        raise ConfigError(f"{where}: max_steps must be positive, not {settings.max_steps}")
    if not 0 <= settings.dropout < 1:
        raise ConfigError(f"{where}: dropout must be in [0, 1), not {settings.dropout}")
    if not 0 <= settings.warmup_ratio < 1:
        raise ConfigError(f"{where}: warmup_ratio must be in [0, 1), not {settings.warmup_ratio}")
    if settings.gradient_checkpointing not in GRADIENT_CHECKPOINTING:
        raise ConfigError(f"{where}: gradient_checkpointing must be auto, on or off")
    if settings.max_length < 64:
        raise ConfigError(f"{where}: max_length must be at least 64, not {settings.max_length}")
    return settings


def validate_generation(settings: GenerationSettings, where: str = "generation"):
    if settings.max_new_tokens <= 0:
        raise ConfigError(f"{where}: max_new_tokens must be positive")
    if settings.temperature < 0:
        raise ConfigError(f"{where}: temperature must be 0 (greedy) or more")
    if not 0 < settings.top_p <= 1:
        raise ConfigError(f"{where}: top_p must be in (0, 1]")
    return settings


def read_toml(workspace: Path) -> dict[str, Any]:
    path = workspace / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or delete the file") from exc


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {name} must be 1 or 0, not {value!r}")


def resolve_workspace(flag: str | None) -> Path:
    raw = flag or os.environ.get("SFTCHAT_HOME") or "."
    return Path(raw).expanduser().resolve()


def load_settings(
    workspace: str | None = None,
    model: str | None = None,
    device: str | None = None,
    no_quantize: bool = False,
    template: str | None = None,
    trust_remote_code: str | None = None,
) -> Settings:
    """Resolve every setting: flag, then environment, then sftchat.toml, then default.

    `trust_remote_code` is the model `--trust-remote-code` names: flag, then environment,
    and never the file."""
    root = resolve_workspace(workspace)
    toml = read_toml(root)
    where = str(root / CONFIG_FILE)
    top_level = {"model": str, "device": str, "quantize": bool, "template": str,
                 "trust_remote_code": bool, "review": bool, "system": str}
    if toml.get("trust_remote_code") is True:
        raise ConfigError(
            f"{where}: trust_remote_code is not read from the workspace's file, since a "
            "downloaded folder could turn it on for its own code; remove it, and pass "
            f"{TRUST_FLAG} MODEL (or set {TRUST_ENV}=MODEL) to let that one model run its "
            "code")
    for key in toml:
        if key not in top_level and key not in ("generation", "training"):
            raise ConfigError(
                f"{where}: unknown setting {key!r}; known: "
                f"{', '.join(sorted([*top_level, 'generation', 'training']))}"
            )
    file_values = {k: _check_type(where, k, toml[k], t) for k, t in top_level.items() if k in toml}

    env_quantize = _env_bool("SFTCHAT_NO_QUANTIZE")
    chosen_model = model or os.environ.get("SFTCHAT_MODEL") or file_values.get("model")
    chosen_model = chosen_model or BUILTIN_MODEL
    chosen_device = device or os.environ.get("SFTCHAT_DEVICE") or file_values.get("device")
    chosen_device = chosen_device or "auto"
    if chosen_device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {chosen_device!r}")
    if no_quantize:
        quantize = False
    elif env_quantize is not None:
        quantize = not env_quantize
    else:
        quantize = file_values.get("quantize", True)
    chosen_template = template or os.environ.get("SFTCHAT_TEMPLATE")
    chosen_template = chosen_template or file_values.get("template") or AUTO_TEMPLATE
    if chosen_template not in TEMPLATE_SETTINGS:
        raise ConfigError(
            f"template must be one of {', '.join(TEMPLATE_SETTINGS)}, not {chosen_template!r}"
        )

    generation = GenerationSettings(
        **_section(f"{where} [generation]", GenerationSettings, toml.get("generation", {}))
    )
    training = TrainingSettings()
    if chosen_model == BUILTIN_MODEL:
        training = replace(training, **BUILTIN_TRAINING)
    training = replace(
        training, **_section(f"{where} [training]", TrainingSettings, toml.get("training", {}))
    )
    return Settings(
        workspace=root,
        model=chosen_model,
        device=chosen_device,
        quantize=quantize,
        template=chosen_template,
        trusted_model=_trusted_model(trust_remote_code),
        review=file_values.get("review", True),
        system=file_values.get("system", ""),
        generation=validate_generation(generation, f"{where} [generation]"),
        training=validate_training(training, f"{where} [training]"),
    )
