"""How examples read in a terminal (`sftchat data list` / `data show`): plain text, one
function per view. The text is the stored text as it is: the caller strips terminal escape
sequences before it reaches a terminal (`sftchat.text.strip_control`)."""

from __future__ import annotations

from sftchat.conversation import conversation_marks
from sftchat.text import one_line


def example_line(example) -> str:
    """One `data list` line: id, instruction (a conversation marked "(3 turns)", "(system
    prompt)" or both), response."""
    marks = conversation_marks(example, system_mark="system prompt")
    mark = f" ({', '.join(marks)})" if marks else ""
    instruction = one_line(example.instruction, 50 - len(mark)) + mark
    return f"{example.id:>6}  {instruction:<50}  {one_line(example.response, 60)}"


def example_text(example, rejected_answers=()) -> str:
    """`data show`: every field, the system prompt and earlier turns first (each earlier
    answer marked when it is learned), then the answers not chosen for it."""
    lines = [f"id:        {example.id}", f"source:    {example.source}"]
    if example.context:
        learned = [str(number) for number, turn in enumerate(example.context, start=1)
                   if turn.learn] + [str(len(example.context) + 1)]
        lines.append(f"turns:     {len(example.context) + 1} "
                     f"(answers learned: {', '.join(learned)})")
    if example.system:
        lines += ["system prompt:", example.system]
    for number, turn in enumerate(example.context, start=1):
        lines += [f"turn {number}, user:", turn.instruction]
        if turn.input:
            lines += [f"turn {number}, input:", turn.input]
        lines += [f"turn {number}, assistant{' (learned)' if turn.learn else ''}:",
                  turn.response]
    lines += ["instruction:", example.instruction]
    if example.input:
        lines += ["input:", example.input]
    lines += ["response:", example.response]
    if example.original_response is not None and example.original_response != example.response:
        lines += ["original model answer:", example.original_response]
    for rejected in rejected_answers:
        if rejected.source != "edit":  # the original answer is shown above
            lines += [f"rejected answer ({rejected.source}):", rejected.response]
    return "\n".join(lines)
