"""The teacher's tokenizer as the tasks need it (:class:`TokenizerSpec`), and conversations as chat messages."""

from __future__ import annotations

import os
from typing import Any

from lrc.data.token_shards import frame_ids, framing_order
from lrc.errors import DataError

CHAT_FIELDS = ("messages", "conversations")
"""The conversation fields ``chat: true`` looks for, in this order."""
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
              "tool": "tool"}
"""Role names of OpenHermes (``from``) and chat messages (``role``) -> the chat template's roles."""


class TokenizerSpec:
    """What the tasks need of the tokenizer, picklable: the tokenizers JSON, BOS/EOS, vocabulary size and the chat
    template (a string; ``hf()`` rebuilds an HF tokenizer from these for ``apply_chat_template``)."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        try:
            tok = _load_hf_tokenizer(self.path)
            backend = getattr(tok, "backend_tokenizer", None)
            if backend is None:
                raise DataError("not a fast tokenizer (no tokenizers backend)")
        except DataError as e:
            raise DataError(f"{self.path}: cannot load the tokenizer ({e})") from None
        except Exception as e:  # noqa: BLE001 - any loader failure is a user error here
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{self.path}: cannot load the tokenizer ({type(e).__name__}: {msg})") from None
        self.json = backend.to_str()
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id
        self.bos_token = tok.bos_token if self.bos_id is not None else None
        self.eos_token = tok.eos_token if self.eos_id is not None else None
        self.vocab_size = len(tok)
        self.name = getattr(tok, "name_or_path", "") or self.path
        self.chat_template: str | None = getattr(tok, "chat_template", None) or None
        self._hf = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _hf=None)

    def backend(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.json)

    def hf(self):
        """An HF tokenizer with the teacher's vocabulary, special tokens and chat template."""
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            self._hf = PreTrainedTokenizerFast(tokenizer_object=self.backend(), bos_token=self.bos_token,
                                               eos_token=self.eos_token)
            self._hf.chat_template = self.chat_template
        return self._hf

    def frame(self, framing: str) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around every document (``lrc.data.token_shards.frame_ids``)."""
        return frame_ids(framing, self.bos_id, self.eos_id)

    def frame_strings(self, framing: str) -> tuple[str | None, str | None]:
        """(prefix, suffix) special-token strings of the framing (None where the tokenizer has no such token)."""
        return framing_order(framing, self.bos_token, self.eos_token)


def _load_hf_tokenizer(path: str):
    """A tokenizer from a directory or ``.gguf`` file (``lrc.teacher.load_tokenizer``) or a ``tokenizer.json``."""
    from transformers import PreTrainedTokenizerFast

    from lrc.teacher import load_tokenizer

    if not os.path.exists(path):
        raise DataError("no such file or directory")
    if os.path.isdir(path) or path.endswith(".gguf"):
        return load_tokenizer(path)
    if path.endswith(".json"):
        d = os.path.dirname(os.path.abspath(path))
        if os.path.basename(path) == "tokenizer.json" and os.path.isfile(os.path.join(d, "tokenizer_config.json")):
            return load_tokenizer(d)
        return PreTrainedTokenizerFast(tokenizer_file=path)
    raise DataError("expected a tokenizer directory, a tokenizer.json or a .gguf file")


def to_messages(conv: Any, where: str, field: str) -> list[dict]:
    """OpenHermes ``[{from, value}]`` or ``[{role, content}]`` -> ``[{role, content}]`` (roles mapped)."""
    if not isinstance(conv, (list, tuple)) or not conv:
        raise DataError(f"{where}: '{field}' is not a non-empty list of turns (got {type(conv).__name__})")
    msgs = []
    for k, turn in enumerate(conv, 1):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: '{field}' turn {k} is not an object")
        if turn.get("role") is not None or "content" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif turn.get("from") is not None or "value" in turn:
            role, content = turn.get("from"), turn.get("value")
        else:
            raise DataError(f"{where}: '{field}' turn {k}: expected {{from, value}} or {{role, content}}, got keys "
                            f"{sorted(turn)}")
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: '{field}' turn {k}: unknown role {role!r} (accepted: "
                            f"{', '.join(CHAT_ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: '{field}' turn {k}: the content is not a string")
        msgs.append({"role": CHAT_ROLES[role], "content": content})
    return msgs
