"""GUIDE §4: exports must load with `datasets.load_dataset("json", data_files=...)`.

Each schema is exported in both encodings by the real `sftchat data export` (in-process, on a
real store) and loaded by the real `datasets` library, offline, into a per-test cache.
"""

from __future__ import annotations

import pytest

from sftchat.cli import main
from sftchat.dataset.store import ExampleStore

EXAMPLES = [  # (instruction, input, response): unicode, an empty input and a non-empty one
    ("Say hello in Japanese.", "", "こんにちは！🙂"),
    ("Translate", "naïve café", "Naïf café"),
    ("Multi-line\nquestion", "", "line one\nline two \"quoted\""),
]


def _expected(schema: str) -> list[dict]:
    rows = []
    for instruction, input_text, response in EXAMPLES:
        user = instruction + ("\n\n" + input_text if input_text else "")
        rows.append({
            "alpaca": {"instruction": instruction, "input": input_text, "output": response},
            "sharegpt": {"conversations": [{"from": "human", "value": user},
                                           {"from": "gpt", "value": response}]},
            "messages": {"messages": [{"role": "user", "content": user},
                                      {"role": "assistant", "content": response}]},
        }[schema])
    return rows


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("schema", ["alpaca", "sharegpt", "messages"])
def test_exports_load_with_datasets(ws, tmp_path, schema, suffix):
    import datasets

    with ExampleStore(ws / "data") as store:
        store.add_many((instruction, input_text, response, None, "test")
                       for instruction, input_text, response in EXAMPLES)
    path = tmp_path / f"export-{schema}{suffix}"
    assert main(["--workspace", str(ws), "data", "export", str(path),
                 "--format", schema]) == 0

    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == len(EXAMPLES)
    assert [dict(row) for row in loaded] == _expected(schema)
