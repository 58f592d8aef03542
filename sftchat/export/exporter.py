"""`export_adapter`: one adapter out, in one of the formats where models run.

- `merged`: a Hugging Face folder (base dequantized, LoRA merged in float: `merge`).
- `gguf`: the merged model as one GGUF file (f16, q8_0 or f32: `gguf_files`).
- `gguf-lora`: the LoRA as a llama.cpp adapter GGUF, and the base GGUF it runs on.
- `ollama`: a folder with the base GGUF, the LoRA GGUF and a Modelfile whose TEMPLATE is
  the adapter's prompt template (`ollama`), and the `ollama create` line.

Which base a LoRA GGUF runs on (`base`): a QLoRA adapter was trained on the 4-bit NF4 base,
and it learned on top of that base's rounding. On a 135M model that matters: SmolLM2's
adapter gave 12/12 curated answers on its 4-bit base and 3/12 on the original weights, in
PyTorch and in llama.cpp alike (benchmarks/RESULTS.md §17). So `as-trained` (the default)
writes the base exactly as training saw it — the NF4 weights dequantized, in f16 or q8_0;
every adapter trained on that base shares the file — and `original` points at the user's own
GGUF file (or writes the base's original weights), which is what a large model's users
usually want and where a small model's adapter answers less exactly. An adapter trained
unquantized (`--no-quantize`) runs on the original either way.

The adapter's recorded base is what gets loaded (and checked against its fingerprint), not
whatever model the workspace now names. Files are written into a staging folder beside the
target and renamed into place at the end, so a failed or interrupted export leaves no
half-written folder; an existing non-empty target is replaced only with `force`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sftchat import __version__
from sftchat.adapters.registry import check_base, resolve
from sftchat.config import Settings
from sftchat.export.architectures import ExportError, architecture_for
from sftchat.export import BASES, FORMATS, OUTTYPES
from sftchat.export.gguf_files import write_lora_gguf, write_model_gguf
from sftchat.export.merge import (
    dequantized_model, float_dtype, merge_lora, read_lora, save_hf_folder)

MANIFEST = "sftchat-export.json"
Progress = Callable[[str], None]


@dataclass
class ExportResult:
    format: str
    folder: Path
    files: list[str] = field(default_factory=list)   # relative to `folder`
    base_gguf: str | None = None                      # the base a LoRA GGUF runs on
    next_step: str = ""                               # the command that runs the export

    def to_dict(self) -> dict:
        return {"format": self.format, "folder": str(self.folder), "files": self.files,
                "base_gguf": self.base_gguf, "next_step": self.next_step}


def _staging(to: Path, force: bool) -> Path:
    if to.exists() and (not to.is_dir() or any(to.iterdir())) and not force:
        raise ExportError(f"{to} already exists and is not empty; pick a new folder or pass "
                          "--force to replace it")
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = to.parent / f".{to.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(staging: Path, to: Path) -> None:
    # Files meant to be shared get the umask's usual permissions (transformers writes its
    # safetensors through a private temporary file: 0600).
    umask = os.umask(0)
    os.umask(umask)
    for path in staging.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
    old = None
    if to.exists():
        old = to.parent / f".{to.name}.old-{os.getpid()}"
        to.rename(old)
    staging.rename(to)
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both are on one file system (a base GGUF can be gigabytes)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class _Export:
    """The state of one export: the adapter, its base, the target being written."""

    def __init__(self, settings: Settings, adapter: str, staging: Path, progress: Progress):
        self.settings, self.staging, self.progress = settings, staging, progress
        info = resolve(settings.adapters_dir, adapter)
        if info is None:
            raise ExportError("export needs an adapter (NAME or latest), not 'none'")
        self.info, self.meta = info, info.meta
        base = self.meta.get("base_model") or {}
        if not base.get("model"):
            raise ExportError(f"adapter {info.name!r} does not record its base model "
                              "(no sftchat.json?); it cannot be exported")
        self.base_spec = base["model"]
        self.template = self.meta.get("template") or "alpaca"
        self.trained_in_4bit = self.meta.get("quantization") is not None
        self.dequantized_on: str | None = None   # where a 4-bit base was dequantized
        gguf = base.get("gguf") or {}
        self.source_gguf = Path(gguf["path"]) if gguf.get("path") else None
        if self.source_gguf is not None and not self.source_gguf.is_file():
            self.source_gguf = None  # moved: the cached conversion still serves (checked)
        self.lora = read_lora(info.path)

    # -- the base ------------------------------------------------------------------------
    def base_files(self):
        """(config, tokenizer, folder) of the base, checked against the adapter's record,
        without loading its weights."""
        from transformers import AutoConfig, AutoTokenizer

        from sftchat.models.loader import ModelLoadError, model_identity, resolve_model_path

        # The base loaded is the adapter's, whatever --model says: trusted only if named.
        trust = self.settings.trusts(self.base_spec)
        try:
            path, gguf = resolve_model_path(self.base_spec, trust, self.progress)
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        except (ModelLoadError, OSError, ValueError) as exc:
            raise ExportError(f"cannot read adapter {self.info.name!r}'s base model "
                              f"{self.base_spec!r}: {exc}") from exc
        check_base(self.info, model_identity(self.base_spec, path, config, gguf))
        return config, tokenizer, Path(path)

    def load(self, as_trained: bool, merge: bool = False):
        """The base in float32: as the adapter was trained on it (a 4-bit base dequantized)
        or its original weights; with the LoRA merged in when `merge`."""
        from sftchat.models.loader import ModelLoadError, load_model

        quantized = as_trained and self.trained_in_4bit
        device = self.quantization_device() if quantized else "cpu"
        self.progress(f"loading base model {self.base_spec}"
                      + (f" in 4-bit on {device}, as the adapter was trained" if quantized
                         else ""))
        try:
            loaded = load_model(self.base_spec, device=device, quantize=quantized,
                                trust_remote_code=self.settings.trusts(self.base_spec),
                                progress=self.progress, for_training=True)
        except ModelLoadError as exc:
            raise ExportError(f"cannot load adapter {self.info.name!r}'s base model: {exc}") \
                from exc
        check_base(self.info, loaded.identity)
        dequantized_model(loaded, self.progress)
        if merge:
            merge_lora(loaded.model, self.lora, self.progress)
        loaded.model.to("cpu")
        return loaded

    def quantization_device(self) -> str:
        """Where to quantize the base as it was for training: bitsandbytes' CUDA and CPU NF4
        weights differ slightly (its CUDA ones in the bfloat16 compute dtype: measured up to
        0.033 apart on the built-in model, RESULTS §17), so an adapter trained on a GPU is
        exported from the GPU's when there is one."""
        import torch

        self.dequantized_on = "cuda" if (self.meta.get("device") == "cuda"
                                         and torch.cuda.is_available()) else "cpu"
        return self.dequantized_on

    def chat_template(self, tokenizer) -> str:
        from sftchat.prompts import chat_template_jinja

        return chat_template_jinja(self.template, tokenizer)

    def add_tokenizer(self, tokenizer, folder: Path, vocab_size: int):
        """A function adding the tokenizer keys to a GGUF writer (see `gguf_tokenizer`)."""
        from sftchat.export.gguf_tokenizer import add_hf_tokenizer, copy_gguf_tokenizer

        template = self.chat_template(tokenizer)
        if self.source_gguf is not None:
            return lambda writer: copy_gguf_tokenizer(writer, self.source_gguf, template)
        return lambda writer: add_hf_tokenizer(writer, folder, tokenizer, vocab_size, template)

    def model_gguf(self, loaded, name: str, outtype: str, what: str) -> str:
        config = loaded.model.config
        write_model_gguf(self.staging / name, loaded.model.state_dict(), config,
                         architecture_for(config), f"{what} ({self.base_spec})", outtype,
                         self.add_tokenizer(loaded.tokenizer, Path(loaded.path),
                                            config.vocab_size), self.progress)
        return name

    def lora_gguf(self, config) -> str:
        name = f"{self.info.name}-lora.gguf"
        self.progress("writing the LoRA adapter GGUF")
        write_lora_gguf(self.staging / name, self.lora, config, architecture_for(config),
                        self.info.name)
        return name

    def base_gguf(self, result: ExportResult, base: str, outtype: str, copy_into: bool) -> str:
        """The GGUF the LoRA runs on (its path relative to the export, or absolute).

        `as-trained`: the base exactly as the adapter saw it — a 4-bit NF4 base dequantized
        and written in `outtype` (every adapter trained on that base shares it). `original`
        (and `as-trained` when the adapter was trained unquantized): the user's own GGUF
        file, or the base's original weights in `outtype`."""
        if base == "as-trained" and self.trained_in_4bit:
            name = f"base-as-trained-{outtype}.gguf"
            loaded = self.load(as_trained=True)
            self.progress(f"writing the base as the adapter was trained on it ({outtype})")
            result.files.append(self.model_gguf(loaded, name, outtype, "4-bit NF4 base"))
            return name
        if self.source_gguf is not None:
            if not copy_into:
                return str(self.source_gguf)
            self.progress(f"copying the base GGUF {self.source_gguf.name}")
            _link_or_copy(self.source_gguf, self.staging / self.source_gguf.name)
            result.files.append(self.source_gguf.name)
            return self.source_gguf.name
        name = f"base-{outtype}.gguf"
        loaded = self.load(as_trained=False)
        self.progress(f"writing the base model as a GGUF ({outtype})")
        result.files.append(self.model_gguf(loaded, name, outtype, "base"))
        return name


def export_adapter(settings: Settings, adapter: str, to: Path, fmt: str, outtype: str = "f16",
                   dtype: str = "auto", base: str = "as-trained", force: bool = False,
                   progress: Progress = lambda message: None) -> ExportResult:
    """Export `adapter` to the folder `to` in format `fmt`; see the module docstring."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if base not in BASES:
        raise ExportError(f"unknown base {base!r}: use one of {', '.join(BASES)}")
    to = Path(to).expanduser().absolute()
    staging = _staging(to, force)
    try:
        job = _Export(settings, adapter, staging, progress)
        result = ExportResult(format=fmt, folder=to)
        _FORMAT_WRITERS[fmt](job, result, outtype=outtype, dtype=dtype, base=base)
        _write_manifest(job, result, staging)
        _publish(staging, to)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"exported {job.info.name} to {to}")
    return result


def _merged(job: _Export, result: ExportResult, dtype: str, **_) -> None:
    from sftchat.prompts import stop_token_ids

    loaded = job.load(as_trained=True, merge=True)
    target = float_dtype(dtype, Path(loaded.path))
    job.progress(f"saving the merged model ({str(target).removeprefix('torch.')})")
    save_hf_folder(loaded.model, loaded.tokenizer, job.staging, target,
                   job.chat_template(loaded.tokenizer),
                   stop_token_ids(job.template, loaded.tokenizer))
    result.files = sorted(path.name for path in job.staging.iterdir())
    result.next_step = f"sftchat --model {result.folder}"


def _gguf(job: _Export, result: ExportResult, outtype: str, **_) -> None:
    loaded = job.load(as_trained=True, merge=True)
    name = job.model_gguf(loaded, f"{job.info.name}-{outtype}.gguf", outtype,
                          f"{job.info.name} merged")
    result.files.append(name)
    result.next_step = f"llama-cli -m {result.folder / name} -cnv"


def _gguf_lora(job: _Export, result: ExportResult, outtype: str, base: str, **_) -> None:
    config, _tokenizer, _folder = job.base_files()
    result.files.append(job.lora_gguf(config))
    base_file = job.base_gguf(result, base, outtype, copy_into=False)
    result.base_gguf = base_file if Path(base_file).is_absolute() else str(
        result.folder / base_file)
    result.next_step = (f"llama-cli -m {result.base_gguf} --lora "
                        f"{result.folder / result.files[0]} -cnv")


def _ollama(job: _Export, result: ExportResult, outtype: str, base: str, **_) -> None:
    from sftchat.export.ollama import (
        go_template, modelfile, ollama_create_command, prompt_segments, stop_texts)

    config, tokenizer, _folder = job.base_files()
    adapter = job.lora_gguf(config)
    result.files.append(adapter)
    base_file = job.base_gguf(result, base, outtype, copy_into=True)
    result.base_gguf = str(result.folder / base_file)
    text = modelfile(base_file, adapter, go_template(prompt_segments(job.template, tokenizer)),
                     stop_texts(job.template, tokenizer), system=job.settings.system)
    (job.staging / "Modelfile").write_text(text, encoding="utf-8")
    result.files.append("Modelfile")
    result.next_step = ollama_create_command(job.info.name, result.folder)


_FORMAT_WRITERS = {"merged": _merged, "gguf": _gguf, "gguf-lora": _gguf_lora,
                   "ollama": _ollama}


def _write_manifest(job: _Export, result: ExportResult, staging: Path) -> None:
    """What was exported from what: read by people, and by a later `sftchat --model`."""
    manifest = {
        "sftchat_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "adapter": job.info.name,
        "adapter_path": str(job.info.path),
        "base_model": job.meta.get("base_model"),
        "template": job.template,
        "lora": {"rank": job.lora.rank, "alpha": job.lora.alpha, "scale": job.lora.scale},
        "trained_in_4bit": job.trained_in_4bit,
        "trained_on": job.meta.get("device"),
        "dequantized_on": job.dequantized_on,
        **result.to_dict(),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
