"""Training events: what `sftchat train --json` prints, one JSON object per line on stdout.

Every event has `"event"` and `"time"` (Unix seconds). The kinds, in the order they come:

- `started`:  name, base_model, examples, total_steps, epochs, batch_size, grad_accum, device,
              template, regularize, lora {rank, alpha, dropout} (the adapter's shape),
              objective (what runs: sft, dpo, kto, dpo+kto), pairs and avoid (rejected
              answers learned by DPO against their replacement, and by the KTO-style term),
              unused_rejected (rejected answers the objective leaves out, or too long),
              ranks (training processes: 1, or N under torchrun),
              skipped_too_long (the first ids of examples whose answer alone exceeds
              max_length) and skipped_count, truncated_prompts (the first ids of examples
              whose prompt was cut to fit) and truncated_count, max_length
- `step`:     step, total_steps, epoch (fractional), loss, anchor_loss (or null),
              preference_loss (or null), lr, grad_norm, learned (curated examples reproduced
              exactly at their latest pass), examples, avoided (rejected answers met at their
              latest pass: avoided, and a pair's preferred by its margin), rejected (0 when
              the run has none), tokens_per_s (real, non-padding tokens), elapsed_s, eta_s
- `epoch`:    epoch (completed count), loss (mean over the epoch's steps)
- `finished`: name, adapter (path), final_loss, steps, stopped_early, train_seconds,
              replay {examples, reproduced, token_accuracy, not_reproduced (the first ids),
              not_reproduced_count},
              drift {prompts, kl_per_token, perplexity_ratio},
              preferences (null without rejected answers) {objective, pairs, avoid, rejected,
              accuracy, mean_margin, reward_accuracy, mean_reward_margin, still_given,
              still_given_ids (the first ids)}
- `cancelled`: message (SIGINT/SIGTERM; nothing was published)
- `failed`:   message (one sentence: what went wrong and what to do; nothing was published)

Events are bounded: a list of example ids holds at most `IDS_IN_EVENTS` of them, beside a
count (the adapter's `sftchat.json` keeps every id), so a run on 100,000 examples prints the
same few hundred bytes as one on a dozen. The TUI reads these from the trainer subprocess;
`parse_event` is the reading side (`runner` reads lines with a limit of its own). Nothing
here imports torch.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

TERMINAL_EVENTS = ("finished", "cancelled", "failed")   # every run ends with exactly one
EVENT_KINDS = ("started", "step", "epoch", *TERMINAL_EVENTS)
Emit = Callable[[dict], None]
EXIT_CANCELLED = 130   # `sftchat train`'s exit code after a cancel (as after SIGINT)


# How many example ids an event names; counts say how many there are.
IDS_IN_EVENTS = 20


def first_ids(ids) -> list:
    """The ids an event names of `ids`: the first `IDS_IN_EVENTS`."""
    return list(ids)[:IDS_IN_EVENTS]


def make_event(kind: str, **fields) -> dict:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown training event {kind!r}")
    return {"event": kind, "time": round(time.time(), 3), **fields}


def json_emitter(stream: TextIO | None = None) -> Emit:
    """Write each event as one JSON line and flush, so a reading process sees it at once."""
    out = stream or sys.stdout

    def emit(event: dict) -> None:
        out.write(json.dumps(event, ensure_ascii=False) + "\n")
        out.flush()

    return emit


def format_duration(seconds: float | None) -> str:
    """12s, 3m05s, 1h02m; "?" when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def outcome_summary(replay: dict | None, drift: dict | None,
                    preferences: dict | None = None) -> str:
    """What a run learned and what it changed, in one line (from a `finished` event or an
    adapter's metrics): "reproduces 12/12 curated answers; prefers the chosen answer in 6/6
    pairs …; avoids 11/12 rejected answers; drift ×1.03 on 12 held-out prompts"."""
    parts = []
    if replay and replay.get("examples"):
        sample = (f" (a sample of {replay['sampled_from']})"
                  if replay.get("sampled_from") else "")
        parts.append(f"reproduces {replay['reproduced']}/{replay['examples']} curated "
                     f"answers exactly{sample}")
    if preferences and preferences.get("rejected"):
        parts.append(preference_summary(preferences))
    if drift and drift.get("prompts"):
        parts.append(f"drift on {drift['prompts']} held-out prompts: perplexity "
                     f"×{drift['perplexity_ratio']:.2f}, KL {drift['kl_per_token']:.3f}/token")
    return "; ".join(parts)


def preference_summary(preferences: dict) -> str:
    """A run's preference figures (`training.preference.preference_figures`), in words."""
    parts = []
    if preferences.get("pairs"):
        pairs = preferences["pairs"]
        preferred = round(preferences["accuracy"] * pairs)
        parts.append(f"prefers the chosen answer in {preferred}/{plural(pairs, 'pair')} "
                     f"(mean margin {preferences['mean_margin']:.1f} nats)")
    rejected = preferences["rejected"]
    parts.append(f"avoids {rejected - preferences['still_given']}/{rejected} rejected answers")
    return "; ".join(parts)


def _ids(ids: list, count: int) -> str:
    return ", ".join(str(i) for i in ids[:10]) + (", …" if count > min(len(ids), 10) else "")


def truncation_notice(event: dict) -> str | None:
    """For a `started` event: which examples were skipped or had their prompt cut to fit."""
    notices = []
    skipped = event.get("skipped_too_long") or []
    skipped_count = event.get("skipped_count", len(skipped))
    if skipped_count:
        notices.append(
            f"skipped {skipped_count} example{'' if skipped_count == 1 else 's'} whose answer "
            f"alone is longer than max length {event.get('max_length')} "
            f"(ids {_ids(skipped, skipped_count)}); raise --max-length to train on them")
    truncated = event.get("truncated_prompts") or []
    truncated_count = event.get("truncated_count", len(truncated))
    if truncated_count:
        notices.append(
            f"{truncated_count} example(s) longer than max length {event.get('max_length')}: "
            f"their prompts were cut to fit (ids {_ids(truncated, truncated_count)}); raise "
            "--max-length to keep them whole")
    return "; ".join(notices) or None


def placement(event: dict) -> str:
    """Where a `started` run trains: "cpu", "cuda", "2 processes on cpu", "4 GPUs"."""
    ranks = event.get("ranks") or 1
    if ranks == 1:
        return event["device"]
    return f"{ranks} GPUs" if event["device"] == "cuda" else \
        f"{ranks} processes on {event['device']}"


def describe(event: dict) -> str | None:
    """A one-line human rendering of an event (None for events not worth a line)."""
    kind = event["event"]
    if kind == "started":
        keep = event.get("regularize")
        details = ", ".join(part for part in (
            f"template {event['template']}" if event.get("template") else "",
            f"keeping what it knew by {keep}" if keep and keep != "off" else "") if part)
        line = (f"training {event['name']} on {event['examples']} examples"
                f"{rejected_part(event)}{f' ({details})' if details else ''}: up to "
                f"{event['total_steps']} steps on {placement(event)}")
        notice = truncation_notice(event)
        return line + (f"\nnotice: {notice}" if notice else "")
    if kind == "step":
        return step_line(event)
    if kind == "finished":
        stopped = ", stopped early: all learned" if event.get("stopped_early") else ""
        line = (f"published {event['adapter']} (final loss {event['final_loss']:.4f}, "
                f"{event['steps']} steps in {format_duration(event['train_seconds'])}{stopped})")
        summary = outcome_summary(event.get("replay"), event.get("drift"),
                                  event.get("preferences"))
        return line + (f"\n{summary}" if summary else "")
    if kind in ("cancelled", "failed"):
        return event["message"]
    return None


def rejected_part(event: dict) -> str:
    """For a `started` event: " and 12 rejected answers (dpo on 6 pairs, kto on 6)", or ""."""
    pairs, avoid = event.get("pairs") or 0, event.get("avoid") or 0
    if not pairs + avoid:
        return ""
    how = ", ".join(part for part in (f"dpo on {plural(pairs, 'pair')}" if pairs else "",
                                      f"kto on {avoid}" if avoid else "") if part)
    return f" and {plural(pairs + avoid, 'rejected answer')} ({how})"


def plural(count: int, noun: str) -> str:
    """"1 pair", "2 pairs"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def step_line(event: dict) -> str:
    """One `step` event as the CLI and the app's training panel show it."""
    learned = (f"  learned {event['learned']}/{event['examples']}"
               if event.get("examples") else "")
    if event.get("rejected"):
        learned += f"  avoided {event['avoided']}/{event['rejected']}"
    return (f"step {event['step']}/{event['total_steps']}  epoch {event['epoch']:.2f}  "
            f"loss {event['loss']:.4f}{learned}  lr {event['lr']:.2e}  "
            f"{event['tokens_per_s']:,.0f} tok/s  ETA {format_duration(event['eta_s'])}")


def text_emitter(stream: TextIO | None = None, every: int = 10) -> Emit:
    """Human progress on stderr: the start, every `every`-th step, the last step, the end."""
    out = stream or sys.stderr

    def emit(event: dict) -> None:
        if event["event"] == "step":
            if event["step"] % every and event["step"] != event["total_steps"] \
                    and event["step"] != 1:
                return
        if event["event"] in ("cancelled", "failed", "epoch"):
            return  # the CLI reports these itself (as its error line)
        line = describe(event)
        if line:
            out.write(line + "\n")
            out.flush()

    return emit


def parse_event(line: str) -> dict | None:
    """Parse one line of `train --json` output; None for anything that is not an event."""
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(event, dict) and event.get("event") in EVENT_KINDS:
        return event
    return None
