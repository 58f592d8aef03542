"""Everything about LoRA adapters, one module per concern.

- `registry`: the adapters folder — names, metadata (`sftchat.json`), resolve, remove, base checks.
- `loading`: PEFT plumbing — the one LoRA config, injecting empty layers, loading safetensors.
- `slots`: the adapters resident in the live model — load, prepare, activate, evict, unload.
- `lineage`: what an adapter learned from (dataset changes, parent) and the user's decision.
- `comparison`: is a new adapter better than the one answering? (the app's review, `sftchat eval`)

Nothing heavy is imported here: `registry` and `lineage` serve quick commands without torch.
"""
