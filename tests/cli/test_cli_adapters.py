"""`sftchat adapters ...` and the adapter registry on a workspace of fake adapter folders.

The adapter folders here are hand-made metadata fixtures (an adapter_config.json, an empty
adapter_model.safetensors and a sftchat.json): listing, resolving and removing only read the
folder layout and the metadata. A real trained adapter is covered by the end-to-end test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.adapters import registry as adapters
from sftchat.adapters.registry import AdapterError, check_name, clean_leftovers, list_adapters, resolve

DEAD_PID = 999999










REPLAY = {"examples": 3, "reproduced": 3, "token_accuracy": 1.0}
DRIFT = {"prompts": 12, "tokens": 480, "kl_per_token": 0.02, "perplexity_ratio": 1.034}


def make_adapter(folder: Path, finished_at: str = "2024-01-01T00:00:00+00:00",
                 example_ids=(1, 2), final_loss: float = 0.5, steps: int = 3,
                 measures: dict | None = None) -> Path:
    """A hand-made adapter folder: the files and metadata, no real weights."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "sftchat.json").write_text(json.dumps({
        "finished_at": finished_at,
        "base_model": {"model": "builtin", "fingerprint": "x"},
        "dataset": {"example_ids": list(example_ids)},
        "template": "alpaca",
        "metrics": {"final_loss": final_loss, "steps": steps, **(measures or {})},
    }))
    return folder


@pytest.fixture
def three(ws) -> Path:
    """Three adapters whose chronological order differs from their alphabetical order."""
    root = ws / "adapters"
    make_adapter(root / "zeta", "2024-01-01T10:00:00+00:00", example_ids=[1], final_loss=0.9,
                 steps=1)
    make_adapter(root / "alpha", "2024-03-01T10:00:00+00:00", example_ids=[1, 2, 3],
                 final_loss=0.1, steps=30, measures={"replay": REPLAY, "drift": DRIFT})
    make_adapter(root / "mid", "2024-02-01T10:00:00+00:00")
    return ws


@pytest.fixture
def dead_pid() -> int:
    try:
        os.kill(DEAD_PID, 0)
    except ProcessLookupError:
        return DEAD_PID
    except PermissionError:
        pass
    pytest.skip(f"pid {DEAD_PID} happens to be in use on this machine")


@pytest.fixture
def live_pid():
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- list


def test_list_json_is_ordered_by_finished_at_with_summary_fields(three):
    listed = json.loads(ok(sftchat(three, "adapters", "list", "--json", in_process=True)).stdout)
    assert [row["name"] for row in listed] == ["zeta", "mid", "alpha"]
    alpha = listed[-1]
    assert alpha == {
        "name": "alpha",
        "created": "2024-03-01T10:00:00+00:00",
        "base_model": "builtin",
        "examples": 3,
        "steps": 30,
        "final_loss": 0.1,
        "template": "alpaca",
        "replay": REPLAY,
        "drift": DRIFT,
        "path": str((three / "adapters" / "alpha").resolve()),
        # Lineage: compared with the adapter before it (these have no train.jsonl, so no
        # data to compare), no parent, not reviewed.
        "parent": None,
        "compared_with": "mid",
        "dataset_change": {"added": [], "removed": [], "edited": []},
        "decision": None,
    }


def test_list_human_shows_one_row_per_adapter_in_order(three):
    result = ok(sftchat(three, "adapters", "list", in_process=True))
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["zeta", "mid", "alpha"]
    assert "0.1000" in lines[-1] and "builtin" in lines[-1]
    # What each run learned and changed; "-" for an adapter that predates the measures.
    assert "replay 3/3" in lines[-1] and "drift ×1.03" in lines[-1]
    assert "replay -" in lines[0] and "drift -" in lines[0]


def test_show_prints_the_metadata_and_says_what_the_run_learned(three):
    result = ok(sftchat(three, "adapters", "show", "alpha", in_process=True))
    assert json.loads(result.stdout)["metrics"]["replay"] == REPLAY
    assert result.stderr == ("alpha: reproduces 3/3 curated answers exactly; drift on 12 "
                             "held-out prompts: perplexity ×1.03, KL 0.020/token\n")


def test_list_of_a_workspace_without_adapters(ws):
    assert json.loads(ok(sftchat(ws, "adapters", "list", "--json", in_process=True)).stdout) == []
    result = ok(sftchat(ws, "adapters", "list", in_process=True))
    assert result.stdout == ""
    assert "no adapters" in result.stderr


def test_list_skips_hidden_and_incomplete_folders(three, dead_pid):
    root = three / "adapters"
    make_adapter(root / f".staging-new-{dead_pid}", "2030-01-01T00:00:00+00:00")
    make_adapter(root / f".trash-old-{dead_pid}", "2030-01-01T00:00:00+00:00")
    make_adapter(root / ".hidden", "2030-01-01T00:00:00+00:00")
    (root / "no-config").mkdir()
    (root / "no-config" / "sftchat.json").write_text("{}")
    (root / "a-file").write_text("not a folder")
    listed = json.loads(ok(sftchat(three, "adapters", "list", "--json", in_process=True)).stdout)
    assert [row["name"] for row in listed] == ["zeta", "mid", "alpha"]
    assert [info.name for info in list_adapters(root)] == ["zeta", "mid", "alpha"]


def test_list_survives_a_corrupted_metadata_file(three):
    broken = make_adapter(three / "adapters" / "broken")
    (broken / "sftchat.json").write_text("{not json")
    listed = json.loads(ok(sftchat(three, "adapters", "list", "--json", in_process=True)).stdout)
    assert "broken" in [row["name"] for row in listed]
    ok(sftchat(three, "adapters", "list", in_process=True))


# --------------------------------------------------------------------------- resolve


def test_resolve_latest_none_and_names(three):
    root = three / "adapters"
    latest = resolve(root, "latest")
    assert latest is not None and latest.name == "alpha"
    assert latest.path == root / "alpha"
    assert latest.meta["metrics"]["steps"] == 30
    assert resolve(root, None) is None
    assert resolve(root, "none") is None
    assert resolve(root, "mid").name == "mid"
    # A newer adapter becomes the latest.
    make_adapter(root / "newest", "2024-04-01T00:00:00+00:00")
    assert resolve(root, "latest").name == "newest"


def test_resolve_latest_without_adapters_is_an_error(ws):
    with pytest.raises(AdapterError, match="no adapters"):
        resolve(ws / "adapters", "latest")


def test_resolve_unknown_name_lists_the_available_ones(three):
    with pytest.raises(AdapterError) as info:
        resolve(three / "adapters", "nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "zeta, mid, alpha" in message


# --------------------------------------------------------------------------- show


def test_show_prints_the_metadata_as_json(three):
    shown = json.loads(ok(sftchat(three, "adapters", "show", "mid", in_process=True)).stdout)
    assert shown["name"] == "mid"
    assert shown["path"] == str((three / "adapters" / "mid").resolve())
    assert shown["finished_at"] == "2024-02-01T10:00:00+00:00"
    assert shown["base_model"] == {"model": "builtin", "fingerprint": "x"}
    assert shown["dataset"] == {"example_ids": [1, 2]}
    assert shown["metrics"] == {"final_loss": 0.5, "steps": 3}


def test_show_latest_shows_the_newest(three):
    shown = json.loads(ok(sftchat(three, "adapters", "show", "latest", in_process=True)).stdout)
    assert shown["name"] == "alpha"


def test_show_unknown_name_is_a_one_line_error_listing_the_available_names(three):
    assert_one_line_error(sftchat(three, "adapters", "show", "nope", in_process=True),
                          "nope", "zeta", "mid", "alpha")


def test_show_with_no_adapters_says_so(ws):
    assert_one_line_error(sftchat(ws, "adapters", "show", "anything", in_process=True), "none yet")


def test_show_none_is_a_one_line_user_error(three):
    # "none" means "no adapter" to --adapter; showing it must be a clear error, not a crash.
    assert_one_line_error(sftchat(three, "adapters", "show", "none", in_process=True), "none")


# --------------------------------------------------------------------------- rm


def test_rm_removes_the_folder_and_nothing_else(three):
    root = three / "adapters"
    result = ok(sftchat(three, "adapters", "rm", "mid", in_process=True))
    assert "mid" in result.stderr
    assert not (root / "mid").exists()
    assert sorted(p.name for p in root.iterdir()) == ["alpha", "zeta"]   # no trash left
    listed = json.loads(ok(sftchat(three, "adapters", "list", "--json", in_process=True)).stdout)
    assert [row["name"] for row in listed] == ["zeta", "alpha"]
    assert_one_line_error(sftchat(three, "adapters", "show", "mid", in_process=True), "mid")


def test_rm_unknown_name_is_a_one_line_error_and_removes_nothing(three):
    before = sorted(p.name for p in (three / "adapters").iterdir())
    assert_one_line_error(sftchat(three, "adapters", "rm", "nope", in_process=True),
                          "nope", "zeta, mid, alpha")
    assert sorted(p.name for p in (three / "adapters").iterdir()) == before


def test_rm_latest_is_refused(three):
    assert_one_line_error(sftchat(three, "adapters", "rm", "latest", in_process=True), "reserved")
    assert (three / "adapters" / "alpha").is_dir()


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../x", "..", "/abs", "/tmp/x", "a/b", "a\\b", ".hidden",
                                  "-dash", "_under", "a..b", "", "latest", "LATEST", "none",
                                  "x" * 65, "sp ace", "new\nline", "é"])
def test_check_name_rejects_unsafe_or_reserved_names(name):
    with pytest.raises(AdapterError):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "sft-20240101-1200", "v1.2_final", "X" * 64,
                                  "latest2", "nonempty"])
def test_check_name_accepts_plain_names(name):
    assert check_name(name) == name


def test_names_cannot_reach_outside_the_adapters_folder(three, tmp_path):
    outside = make_adapter(three / "victim")                  # WORKSPACE/victim
    absolute = make_adapter(tmp_path / "elsewhere" / "abs")
    hidden = make_adapter(three / "adapters" / ".hidden")
    for name in ("../victim", str(absolute), ".hidden"):
        assert_one_line_error(sftchat(three, "adapters", "rm", name, in_process=True), "invalid adapter name")
        assert_one_line_error(sftchat(three, "adapters", "show", name, in_process=True),
                              "invalid adapter name")
    for folder in (outside, absolute, hidden):
        assert (folder / "adapter_config.json").is_file()
        assert (folder / "sftchat.json").is_file()
    with pytest.raises(AdapterError):
        adapters.remove(three / "adapters", "../victim")
    assert outside.is_dir()


# --------------------------------------------------------------------------- leftovers


def test_clean_leftovers_removes_dead_runs_and_keeps_live_ones(three, dead_pid, live_pid):
    root = three / "adapters"
    dead_staging = make_adapter(root / f".staging-my-run-{dead_pid}")
    dead_trash = make_adapter(root / f".trash-old-{dead_pid}")
    live_staging = make_adapter(root / f".staging-running-{live_pid}")
    live_trash = make_adapter(root / f".trash-going-{live_pid}")
    unrelated_hidden = make_adapter(root / ".keepme")

    removed = clean_leftovers(root)

    assert sorted(removed) == sorted([dead_staging.name, dead_trash.name])
    assert not dead_staging.exists()
    assert not dead_trash.exists()
    assert live_staging.is_dir() and live_trash.is_dir()
    assert unrelated_hidden.is_dir()
    assert [info.name for info in list_adapters(root)] == ["zeta", "mid", "alpha"]
    # Nothing left to clean while the live run is still running.
    assert clean_leftovers(root) == []


def test_clean_leftovers_on_a_missing_folder(ws):
    assert clean_leftovers(ws / "adapters") == []


@pytest.mark.parametrize("meta", ["[]", '{"base_model": null, "dataset": null, "metrics": null}',
                                  '{"finished_at": 5}'])
def test_odd_metadata_never_crashes_the_listing(ws, meta):
    folder = ws / "adapters" / "odd"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "sftchat.json").write_text(meta)
    result = ok(sftchat(ws, "adapters", "list", "--json", in_process=True))
    assert [row["name"] for row in json.loads(result.stdout)] == ["odd"]
