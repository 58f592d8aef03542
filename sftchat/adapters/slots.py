"""The LoRA adapters loaded into one live base model: load, prepare, activate, unload.

An `AdapterSlots` owns the PEFT wrapper around the engine's base model. Adapters load into it
with PEFT (`PeftModel.from_pretrained` for the first, `load_adapter` for the next) and switch
with `set_adapter`; "no adapter" runs under `disable_adapter()`. The base weights are never
reloaded, which is what makes a swap take milliseconds instead of a full model load.

A *prepared slot* is a set of empty LoRA layers injected while a training run is still going
(shaped as its `started` event announced), so that publishing its adapter only copies weights.

Memory stays bounded: at most `max_loaded` adapters stay loaded beside the base; loading one
more unloads the least recently used (never the one answering), and it reloads from disk in
milliseconds if asked for again. The app unloads a candidate its review rejected at once.

`active` is the adapter the chat answers with (the user's choice); `apply(name)` is what the
next forward pass runs as — every job on the engine thread applies its own adapter before
each step (a review replays the candidate between two tokens of an answer by the active
one), so `apply` only touches PEFT when the state really changes. An adapter a live job
uses (`in_use`) is never evicted.

Not thread-safe: only the engine thread (`sftchat.engine_thread`) calls it. PEFT keys
(`a0_name`, `slot1`) are an implementation detail; callers speak adapter names.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from sftchat.adapters import registry as adapter_registry
from sftchat.adapters.loading import (
    add_lora_adapter, config_signature, inject_empty_adapter, lora_config, read_adapter_config,
)
from sftchat.adapters.registry import AdapterError, AdapterInfo
from sftchat.models.loader import LoadedModel
from sftchat.prompts import ALPACA, check_template

# Adapters kept loaded at once; each costs its LoRA weights (tens of MB on a 7B model).
MAX_LOADED_ADAPTERS = 4


class AdapterSlots:
    """Adapters resident in `loaded.model`, by name, and which one answers (None: the base)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.peft = None                      # the PeftModel, once an adapter or slot exists
        self.active: str | None = None
        self._keys: dict[str, tuple[str, str]] = {}   # name -> (peft key, file stamp)
        self._templates: dict[str, str] = {}          # name -> the template it was trained with
        self._prepared: tuple[str, tuple] | None = None  # (peft key, config signature)
        self.max_loaded = MAX_LOADED_ADAPTERS
        self._last_used: dict[str, int] = {}          # name -> tick of its last load or use
        self._ticks = 0
        self.in_use: Callable[[], set[str]] = set     # names live jobs answer as: not evicted
        # What the PEFT model runs as now: adapter layers on/off (None: unknown, after a
        # load), and the PEFT key set active.
        self._layers_on: bool | None = None
        self._applied_key: str | None = None

    # ------------------------------------------------------------------ reading

    @property
    def model(self):
        return self.peft if self.peft is not None else self.loaded.model

    @property
    def names(self) -> list[str]:
        return list(self._keys)

    @property
    def prepared_key(self) -> str | None:
        """The PEFT key of the prepared (still empty) slot, if one is waiting."""
        return self._prepared[0] if self._prepared else None

    def key_of(self, name: str) -> str:
        return self._keys[name][0]

    def template_of(self, name: str) -> str:
        return self._templates[name]

    def answering_context(self):
        """Run the forwards inside as the active adapter (the base: adapter layers off)."""
        self.apply(self.active)
        return contextlib.nullcontext()

    def apply(self, name: str | None) -> None:
        """Make the next forward pass run as loaded adapter `name` (None: the base model)."""
        if self.peft is None:
            return
        if name is None:
            self._switch_layers(False)
            return
        key = self._keys[name][0]
        self._switch_layers(True)
        if self._applied_key != key:
            self.peft.set_adapter(key)
            self._applied_key = key
        self._touch(name)

    def _switch_layers(self, on: bool) -> None:
        if self._layers_on is on:
            return
        if on:
            self.peft.base_model.enable_adapter_layers()
        else:
            self.peft.base_model.disable_adapter_layers()
        self.peft._adapters_disabled = not on   # what PEFT's own disable_adapter() records
        self._layers_on = on

    def _forget_applied(self) -> None:
        """PEFT's state changed under us (a load, an injection, a deletion): re-apply."""
        self._layers_on = None
        self._applied_key = None

    # ------------------------------------------------------------------ changing

    def load(self, info: AdapterInfo) -> bool:
        """Load `info` unless already loaded from the same files; True if read from disk."""
        weights = info.path / "adapter_model.safetensors"
        try:
            stamp = f"{info.created_at}:{weights.stat().st_mtime}"
        except FileNotFoundError:
            raise AdapterError(
                f"adapter {info.name!r} has no weights file ({weights} is missing: the folder "
                f"was copied or changed by hand); retrain it, or remove it with `sftchat "
                f"adapters rm {info.name}`") from None
        current = self._keys.get(info.name)
        if current and current[1] == stamp:
            return False
        self._check(info)
        if current:  # same name, new folder (removed and retrained): replace it
            self._forget_applied()
            self.peft.delete_adapter(current[0])
            del self._keys[info.name]
        key = self._free_key("a" + str(len(self._keys)) + "_" + "".join(
            c if c.isalnum() else "_" for c in info.name))  # PEFT keys allow no "."
        injected = False
        try:
            if self._prepared is not None and self._prepared[1] == config_signature(
                    read_adapter_config(info.path)):
                key, injected, self._prepared = self._prepared[0], True, None
            self._forget_applied()
            self.peft = add_lora_adapter(self.peft, self.loaded.model, info.path, key,
                                         self.loaded.model.device, injected=injected)
        except Exception as exc:  # noqa: BLE001 - becomes one clear message
            self._undo_failed_load(key)
            raise AdapterError(
                f"adapter {info.name!r} could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); it may be corrupted "
                f"or made for another model: remove it with `sftchat adapters rm {info.name}`"
            ) from exc
        self._keys[info.name] = (key, stamp)
        # Adapters from before templates were recorded were all trained with Alpaca.
        self._templates[info.name] = check_template(info.meta.get("template") or ALPACA)
        self._touch(info.name)
        self._evict(keep=info.name)
        return True

    def activate(self, name: str | None) -> None:
        """Make loaded adapter `name` the chat's (None: the base model)."""
        if name is not None and name not in self._keys:
            raise KeyError(name)
        self.active = name
        if name is not None:
            self._touch(name)

    def _touch(self, name: str) -> None:
        self._ticks += 1
        self._last_used[name] = self._ticks

    def _evict(self, keep: str) -> None:
        """Unload the least recently used adapters beyond `max_loaded` (not `keep`, not the
        one answering)."""
        while len(self._keys) > self.max_loaded:
            busy = self.in_use()
            spare = [name for name in self._keys
                     if name not in (keep, self.active) and name not in busy]
            if not spare:
                return
            self.unload(min(spare, key=lambda name: self._last_used.get(name, 0)))

    def prepare(self, rank: int, alpha: int, dropout: float = 0.0) -> None:
        """Inject empty LoRA layers for the adapter a training run will publish (r, alpha,
        all linear layers); they stay unused until an adapter with that config loads."""
        if self._prepared is not None:
            return
        key = self._free_key(f"slot{len(self._keys)}")
        self._forget_applied()
        self.peft = inject_empty_adapter(self.peft, self.loaded.model,
                                         lora_config(rank, alpha, dropout), key)
        self._prepared = (key, config_signature(self.peft.peft_config[key]))

    def unload(self, name: str) -> None:
        """Forget a loaded adapter (e.g. after `adapters rm`); the base answers if it was
        active."""
        entry = self._keys.pop(name, None)
        if entry is None:
            return
        self._templates.pop(name, None)
        self._last_used.pop(name, None)
        if self.active == name:
            self.active = None
        self._forget_applied()
        if self._keys:
            if self.peft.active_adapter == entry[0]:
                # PEFT refuses to delete the adapter it considers active.
                self.peft.set_adapter(next(iter(self._keys.values()))[0])
            self.peft.delete_adapter(entry[0])
        # PEFT cannot delete its only adapter: its weights stay, unused, until the next
        # adapter loads; nothing is active, so generation runs with adapters disabled.

    # ------------------------------------------------------------------ internals

    def _check(self, info: AdapterInfo) -> None:
        adapter_registry.check_base(info, self.loaded.identity)
        if not (info.path / "adapter_model.safetensors").is_file():
            raise AdapterError(
                f"adapter {info.name!r} has no adapter_model.safetensors; sftchat loads "
                "adapters from safetensors only"
            )

    def _free_key(self, key: str) -> str:
        while self.peft is not None and key in self.peft.peft_config:
            key += "_"
        return key

    def _undo_failed_load(self, key: str) -> None:
        """Leave the model as it was before a failed load: PEFT injects LoRA layers before it
        reads the weights, so a bad file would otherwise leave them behind."""
        if self.peft is not None:
            if key in self.peft.peft_config:
                try:
                    self.peft.delete_adapter(key)
                except Exception:  # noqa: BLE001 - best effort; the adapter stays unused
                    pass
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        model = self.loaded.model
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer) and hasattr(module, "base_layer"):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.base_layer)
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in model.__dict__:
                delattr(model, attribute)
