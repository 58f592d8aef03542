"""The `sftchat` command line: argument parsing and error reporting, nothing else.

Each subcommand is handled in `sftchat.commands`; this module builds the parser (GUIDE §3 is
the exact surface), resolves settings and turns every user-caused failure into one line on
stderr with a non-zero exit code (a traceback only with `--debug`).

Global options (`--workspace`, `--model`, `--device`, `--no-quantize`, `--template`,
`--trust-remote-code`, `--debug`) are accepted before or after the subcommand. Importing
this module imports no torch or transformers: `data` and `adapters` commands answer at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sftchat import __version__
from sftchat.errors import SftchatError
from sftchat.export import BASES as EXPORT_BASES
from sftchat.export import FORMATS as EXPORT_FORMATS
from sftchat.export import OUTTYPES as EXPORT_OUTTYPES
from sftchat.prompts import TEMPLATE_SETTINGS
from sftchat.training.options import add_train_options

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (GUIDE §3)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"sftchat: error: {message} (see `{self.prog} --help`)\n")


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Add the global options. On subparsers their defaults are suppressed, so a value given
    before the subcommand is not overwritten by the subparser's default."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("global options")
    group.add_argument("--workspace", metavar="DIR", **default,
                       help="workspace folder (env SFTCHAT_HOME; default: current directory)")
    group.add_argument("--model", metavar="ID|PATH", **default,
                       help="Hugging Face id, local folder, .gguf file, or 'builtin' "
                            "(env SFTCHAT_MODEL)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), **default,
                       help="where the model runs (env SFTCHAT_DEVICE; default auto)")
    group.add_argument("--no-quantize", action="store_true", **default,
                       help="load without 4-bit quantization (env SFTCHAT_NO_QUANTIZE=1)")
    group.add_argument("--template", choices=TEMPLATE_SETTINGS, **default,
                       help="prompt template (env SFTCHAT_TEMPLATE; default auto: the model's "
                            "chat template when it has one, else alpaca)")
    group.add_argument("--trust-remote-code", metavar="MODEL", **default,
                       help="let MODEL (the --model it names, and no other) run the Python "
                            "code its config points to (auto_map); never read from "
                            "sftchat.toml (env SFTCHAT_TRUST_REMOTE_CODE=MODEL)")
    group.add_argument("--debug", action="store_true", **default,
                       help="show tracebacks for errors")


def _add_data_parsers(sub, common) -> None:
    data = sub.add_parser("data", parents=[common], help="the curated dataset")
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    add = dsub.add_parser(
        "add", parents=[common],
        help="add an example (prints its id), or with --rejected only, a bad answer",
        description="Add an example (--response) and print its id, or, with --rejected and no "
                    "--response, keep each rejected answer as a bad answer with no "
                    "replacement yet (what ctrl+x does in the chat) and print the new "
                    "rejected-answer ids, one line each. One of --response and --rejected is "
                    "needed; '-' reads stdin, for one option only.")
    add.add_argument("--instruction", required=True, help="the instruction ('-' reads stdin)")
    add.add_argument("--response", help="the response ('-' reads stdin); without it, "
                                        "--rejected answers are kept as bad answers")
    add.add_argument("--input", default="", help="optional extra context")
    add.add_argument("--system", default="", metavar="TEXT",
                     help="the system prompt the answer was given under (default: none)")
    add.add_argument("--rejected", action="append", default=[], metavar="TEXT",
                     help="a worse answer to the same instruction, kept as preference data "
                          "(repeatable; '-' reads stdin; exported by `data export --format "
                          "dpo|kto`); with no --response, a bad answer with no replacement: "
                          "prints 'rejected answer ID kept (no replacement yet)' — a "
                          "rejected-answer id, not an example id")

    listing = dsub.add_parser("list", parents=[common], help="list examples")
    listing.add_argument("--json", action="store_true", help="a JSON list of full examples")
    listing.add_argument("--search", metavar="TEXT", help="only examples containing TEXT")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N examples")

    show = dsub.add_parser("show", parents=[common], help="show one example")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    edit = dsub.add_parser("edit", parents=[common], help="change fields of an example")
    edit.add_argument("id", type=int)
    edit.add_argument("--instruction", help="new instruction ('-' reads stdin)")
    edit.add_argument("--response", help="new response ('-' reads stdin)")
    edit.add_argument("--input", help="new input ('' clears it)")
    edit.add_argument("--system", metavar="TEXT", help="new system prompt ('' clears it)")

    rm = dsub.add_parser("rm", parents=[common], help="delete an example")
    rm.add_argument("id", type=int)

    stats = dsub.add_parser("stats", parents=[common], help="dataset statistics")
    stats.add_argument("--json", action="store_true")

    # --format names the record schema; the encoding (JSON list or JSONL) is chosen apart from
    # it. `jsonl`, the older name for Alpaca JSONL, stays accepted so old scripts keep working.
    imp = dsub.add_parser(
        "import", parents=[common], help="import Alpaca, ShareGPT or messages records",
        description="Import a dataset file, all records or none. The file is JSONL if named "
                    ".jsonl/.ndjson, one JSON list if named .json, else whichever its content "
                    "is. Chat records may be multi-turn: the last user message is the "
                    "instruction, the last assistant message the response, a leading system "
                    "message the system prompt, and the exchanges before them the example's "
                    "earlier turns. Every earlier answer is learned unless its message has "
                    "\"weight\": 0 (axolotl's convention); the last answer always is.")
    imp.add_argument("file")
    imp.add_argument("--format", default="auto",
                     choices=("auto", "alpaca", "sharegpt", "messages", "jsonl"),
                     metavar="{auto,alpaca,sharegpt,messages}",
                     help="record format (default auto: from the first record's fields; "
                          "'jsonl' is the older name of alpaca records in JSONL)")

    exp = dsub.add_parser(
        "export", parents=[common],
        help="export to Alpaca, ShareGPT or messages records, or preference data (DPO, KTO)",
        description="Export the dataset, atomically: JSONL if FILE is named .jsonl/.ndjson, "
                    "else one JSON list. sharegpt and messages records hold whole "
                    "conversations: the system message first, then every turn; an earlier "
                    "answer that is not learned has \"weight\": 0. A non-empty input is "
                    "appended to its user message after a blank line. An Alpaca record holds "
                    "one turn: a conversation is refused unless --flatten. dpo: {prompt, "
                    "chosen, rejected} for every rejected answer of an example; kto: {prompt, "
                    "completion, label}, examples true and rejected answers false — as TRL's "
                    "DPOTrainer / KTOTrainer load them; once any record is a conversation, "
                    "the whole file is in TRL's conversational format (the prompt a list of "
                    "{role, content} messages, each answer [{role: assistant, content}]).")
    exp.add_argument("file")
    exp.add_argument("--format", choices=("alpaca", "sharegpt", "messages", "jsonl", "dpo",
                                          "kto"),
                     metavar="{alpaca,sharegpt,messages,dpo,kto}",
                     help="record format (default alpaca; 'jsonl' is the older name of "
                          "alpaca records in JSONL)")
    exp.add_argument("--flatten", action="store_true",
                     help="alpaca only: write a conversation as one record — the last user "
                          "message's instruction; as input, the conversation before it as "
                          "'System: …', 'User: …', 'Assistant: …' paragraphs, then the "
                          "original input; the last answer as output")


def _add_train_parser(sub, common) -> None:
    train = sub.add_parser(
        "train", parents=[common], help="QLoRA-train an adapter on the dataset",
        description="Train a LoRA adapter on a snapshot of the curated dataset and publish it "
                    "as adapters/NAME. Unset values come from sftchat.toml [training], else "
                    "from the defaults: a schedule fitted to the dataset's size that stops once "
                    "every curated answer is reproduced (the built-in model only differs in "
                    "its learning rate and no rehearsal).")
    add_train_options(train)
    train.add_argument("--json", action="store_true",
                       help="one JSON event per line on stdout")
    machines = train.add_argument_group(
        "several machines", "Passed to torchrun's rendezvous. Run the same command on every "
        "machine, each with its own --node-rank; machine 0 holds the dataset and publishes the "
        "adapter, the others need the same model (README: Training on several GPUs or "
        "machines).")
    machines.add_argument("--nnodes", type=int, default=1, metavar="K",
                          help="machines taking part (default: 1)")
    machines.add_argument("--node-rank", type=int, default=0, metavar="I",
                          help="this machine's number, 0 to K-1 (default: 0)")
    machines.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                          help="machine 0's address and a free port, where the machines meet")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)

    parser = _Parser(
        prog="sftchat",
        description="Chat with a base model, curate its answers, QLoRA-train, hot-swap.",
    )
    parser.add_argument("--version", action="version", version=f"sftchat {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("chat", parents=[common], help="the chat app (the default)")

    ask = sub.add_parser(
        "ask", parents=[common], help="one-shot: print only the response",
        description="Answer one question, or the last user message of a conversation "
                    "(--messages), and print only the answer.")
    ask.add_argument("prompt", nargs="?", help="the question; '-' reads it from stdin")
    ask.add_argument("--input", default="",
                     help="optional extra context for the prompt; '-' reads it from stdin")
    ask.add_argument("--messages", metavar="FILE",
                     help="answer the last user message of an OpenAI messages JSON file "
                          "(a list of {role, content}, or {\"messages\": [...]}), after the "
                          "turns before it; '-' reads it from stdin")
    ask.add_argument("--system", metavar="TEXT",
                     help="the system prompt (default: the file's system message, else "
                          "`system` in sftchat.toml, else none)")
    ask.add_argument("--adapter", default="none", metavar="NAME|latest|none",
                     help="adapter to answer with (default: none, the base model)")
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument("--temperature", type=float, help="0 means greedy")
    ask.add_argument("--top-p", type=float)
    ask.add_argument("--seed", type=int)

    _add_data_parsers(sub, common)
    _add_train_parser(sub, common)

    adapters = sub.add_parser("adapters", parents=[common], help="published adapters")
    asub = adapters.add_subparsers(dest="adapters_command", metavar="COMMAND", required=True)
    alist = asub.add_parser("list", parents=[common], help="list adapters")
    alist.add_argument("--json", action="store_true")
    ashow = asub.add_parser("show", parents=[common], help="show an adapter's metadata")
    ashow.add_argument("name")
    adiff = asub.add_parser(
        "diff", parents=[common], help="what changed between two adapters' datasets",
        description="Compare the training snapshots of two adapters by example id: "
                    "+ added, ~ edited, - removed.")
    adiff.add_argument("a", help="the earlier adapter")
    adiff.add_argument("b", help="the later adapter")
    adiff.add_argument("--json", action="store_true")
    arm = asub.add_parser("rm", parents=[common], help="delete an adapter")
    arm.add_argument("name")

    evaluate = sub.add_parser(
        "eval", parents=[common], help="is the new adapter better? replay it against another",
        description="Replay a candidate adapter against the current one (default: the latest "
                    "against the one before it, or the base model) in one process: curated "
                    "examples reproduced exactly under greedy decoding, pinned prompts' "
                    "answers, and answers to the prompts of --prompts FILE, side by side. "
                    "The same numbers as the app's review before a swap.")
    evaluate.add_argument("--adapter", action="append", default=[], metavar="NAME",
                          help="the candidate; give it twice for CURRENT then CANDIDATE "
                               "('none' is the base model)")
    evaluate.add_argument("--prompts", metavar="FILE",
                          help='JSONL of extra prompts (a string or {"prompt": ...} a line)')
    evaluate.add_argument("--json", action="store_true", help="the comparison as JSON")
    evaluate.add_argument("--fail-on", choices=("never", "regression"), default="never",
                          help="exit 1 when the candidate reproduces fewer curated answers "
                               "than the current one or changes a pinned answer")

    export = sub.add_parser(
        "export", parents=[common], help="take an adapter where models run: HF, GGUF, Ollama",
        description="Export an adapter: `merged` (a Hugging Face folder: the base dequantized "
                    "and the LoRA merged in float), `gguf` (the merged model as one GGUF "
                    "file), `gguf-lora` (a llama.cpp LoRA GGUF for the base it was trained "
                    "on), `ollama` (base GGUF + LoRA GGUF + Modelfile). The adapter's own "
                    "base model is loaded, whatever --model says.")
    export.add_argument("adapter", metavar="ADAPTER", help="adapter name, or latest")
    export.add_argument("--to", required=True, metavar="DIR",
                        help="the folder to write (new or empty; see --force)")
    export.add_argument("--format", required=True, dest="export_format",
                        choices=tuple(EXPORT_FORMATS))
    export.add_argument("--outtype", choices=EXPORT_OUTTYPES, default="f16",
                        help="tensor type of the GGUF model files written (default f16)")
    export.add_argument("--base", choices=EXPORT_BASES, default="as-trained",
                        help="the base GGUF a LoRA GGUF runs on (gguf-lora, ollama): "
                             "as-trained (default) is the 4-bit base the adapter learned on, "
                             "dequantized, where its answers come back as in the chat; "
                             "original is your own .gguf file or the base's own weights")
    export.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        default="auto",
                        help="dtype of a merged folder (default: the base checkpoint's)")
    export.add_argument("--force", action="store_true",
                        help="replace --to when it exists and is not empty")
    export.add_argument("--json", action="store_true",
                        help="one JSON event per line on stdout (progress, then finished)")

    pins = sub.add_parser(
        "pins", parents=[common], help="pinned prompts: answers that must keep working",
        description="A pin is a prompt and the answer it must keep giving: every new adapter "
                    "is replayed on the pins before it answers (the app's review, `sftchat "
                    "eval`). Pins are never trained on.")
    psub = pins.add_subparsers(dest="pins_command", metavar="COMMAND", required=True)
    plist = psub.add_parser("list", parents=[common], help="list pins")
    plist.add_argument("--json", action="store_true")
    padd = psub.add_parser("add", parents=[common], help="pin a prompt; prints its id")
    padd.add_argument("--instruction", required=True, help="the prompt ('-' reads stdin)")
    padd.add_argument("--response", required=True,
                      help="the answer it must keep giving ('-' reads stdin)")
    padd.add_argument("--input", default="", help="optional extra context")
    prm = psub.add_parser("rm", parents=[common], help="remove a pin")
    prm.add_argument("id", type=int)
    return parser


def _check_usage(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot express, refused like its own (one line, exit 2)."""
    if getattr(args, "data_command", None) == "add" and args.response is None \
            and not args.rejected:
        sys.stderr.write("sftchat: error: data add needs --response TEXT (an example) or "
                         "--rejected TEXT (a bad answer with no replacement yet) (see "
                         "`sftchat data add --help`)\n")
        sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(args)
    # `sftchat train --nproc N` runs these same arguments again as each of its ranks.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    debug = getattr(args, "debug", False)
    try:
        from sftchat import commands

        return commands.dispatch(args)
    except KeyboardInterrupt:
        print("sftchat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a message.
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - user errors become one line; others too
        if debug:
            raise
        if isinstance(exc, SftchatError):
            print(f"sftchat: error: {exc}", file=sys.stderr)
        else:
            print(f"sftchat: error: {type(exc).__name__}: {exc} "
                  "(this is a bug; rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
