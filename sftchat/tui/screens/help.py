"""The help screen: slash commands and keys."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# sftchat

Chat → curate → train → chat again, without leaving the terminal.

| command | key | what it does |
|---|---|---|
| `/save` | ctrl+s | save the last answer (edited) to the dataset, with the conversation before it |
| `/train [OPTIONS]` | ctrl+t | train an adapter in the background; options as for sftchat train, e.g. --name v2 --epochs 3; --auto-swap skips the review |
| `/cancel` | ctrl+b | stop the running training |
| `/adapter NAME\\|latest\\|previous\\|none` | | answer with that adapter (previous: the one that answered before; none: the base model) |
| `/pin [N]` | ctrl+k | pin the last answer (or turn N of this conversation), with the turns before it: every new adapter is checked against it before it answers |
| `/bad` | ctrl+x | keep the last answer as a bad one (preference data) |
| `/compare` | ctrl+y | the last prompt answered by the base, the previous and the active adapter; 1/2/3 saves the best |
| `/adapters` | F3 | list adapters and switch; e exports the highlighted one |
| `/export NAME FORMAT [DIR]` | | export adapter NAME (or latest) as gguf, gguf-lora, merged or ollama, into DIR (default: exports/NAME-FORMAT in the workspace) in the background; /export cancel stops it, /export copy copies the command that runs it |
| `/data` | F2 | browse, search, edit and delete examples |
| `/retry` | ctrl+r | regenerate the last answer |
| `/new` | ctrl+n | start a new conversation (the system prompt stays) |
| `/system [TEXT\\|none]` | | the system prompt, from the next answer on (alone: show it; none: clear it); saved with what you curate |
| `/set [KEY VALUE]` | | sampling for this session: temperature, top_p or max_new_tokens, e.g. /set temperature 0.2 (alone: show them) |
| `/help` | F1 | this help |
| `/quit` | ctrl+q | quit (asks first while training) |

Enter sends · shift+enter or ctrl+j adds a newline · Esc stops an answer ·
ctrl+p opens the command palette.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self):
        with VerticalScroll(id="help-dialog"):
            yield Markdown(HELP)
