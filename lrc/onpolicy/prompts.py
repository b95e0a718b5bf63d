"""The prompts of an on-policy run: a jsonl file read and checked line by line, before any model is loaded.

Each non-empty line is one JSON object:

- ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``: a chat, ending on a user
  turn (the student answers it); rendered with the tokenizer's chat template;
- ``{"prompt": "text"}``: plain text; one user turn under the chat template when the tokenizer has one
  (``--chat_template auto``), else continued as it is (``--chat_template off``, or no template);
- either may add ``"completion": "text"``: the answer ``--off_policy dataset`` trains on.

A bad line stops the run with one line naming the file, the line number and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrc.errors import DataError

ROLES = ("system", "user", "assistant")


def read_prompts(path: str, chat: bool, need_completions: bool = False) -> list[dict[str, Any]]:
    """The rows of ``path`` as TRL's prompt records: ``{"prompt": [messages] | "text"}`` plus ``"completion"``
    (text) when the file gives one. ``chat``: render prompts as conversations (plain ones become one user turn);
    without it a chat line is refused. ``need_completions``: every line must have a completion."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--prompts {path}: no such file (expected a jsonl of prompts)")
    rows: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rows.append(_row(line, f"{path}:{n}", chat, need_completions))
    if not rows:
        raise DataError(f"--prompts {path}: no prompts (expected one JSON object per line)")
    return rows


def prompt_ids(tokenizer, prompt, chat: bool) -> list[int]:
    """Token ids of a prompt as training renders it (TRL's ``_tokenize_prompts``): a chat through the chat template
    with the generation prompt, plain text as it is."""
    if chat:
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def check_tokenized(rows: list[dict[str, Any]], tokenizer, chat: bool, path: str) -> None:
    """Refuse prompts that the tokenizer turns into no tokens (nothing to condition the sampling on)."""
    for i, row in enumerate(rows, start=1):
        if not prompt_ids(tokenizer, row["prompt"], chat):
            raise DataError(f"--prompts {path}: prompt {i} ({_short(row['prompt'])}) is no tokens with this tokenizer "
                            f"({type(tokenizer).__name__}); check --tokenizer")


def _row(line: str, where: str, chat: bool, need_completion: bool) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where}: not JSON ({e.msg}); expected one object per line, e.g. "
                        f'{{"prompt": "..."}} or {{"messages": [...]}}') from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a {type(obj).__name__}, expected a JSON object with \"prompt\" or \"messages\"")
    has_messages, has_prompt = "messages" in obj, "prompt" in obj
    if has_messages == has_prompt:
        raise DataError(f"{where}: expected exactly one of \"prompt\" (text) or \"messages\" (a chat), found "
                        f"{'both' if has_messages else 'neither'} (keys: {', '.join(obj) or 'none'})")
    row: dict[str, Any] = {}
    if has_messages:
        if not chat:
            raise DataError(f"{where}: a chat (\"messages\"), but the prompts are continued as raw text "
                            f"(--chat_template off, or the tokenizer has no chat template); give {{\"prompt\": text}}")
        row["prompt"] = _messages(obj["messages"], where)
    else:
        text = obj["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: \"prompt\" must be non-empty text, got {_short(text)}")
        row["prompt"] = [{"role": "user", "content": text}] if chat else text
    if "completion" in obj:
        c = obj["completion"]
        if not isinstance(c, str) or not c.strip():
            raise DataError(f"{where}: \"completion\" must be non-empty text, got {_short(c)}")
        row["completion"] = c
    elif need_completion:
        raise DataError(f"{where}: no \"completion\", which --off_policy dataset trains on (every line needs one; "
                        f"or use --off_policy teacher)")
    return row


def _messages(msgs: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for i, m in enumerate(msgs):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, \"content\": "
                            f"text}}, got {_short(m)}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise DataError(f"{where}: the chat ends on a {out[-1]['role']} turn; it must end on a user turn (the "
                        f"student writes the assistant's answer)")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."
