"""Token counters for the sidecars' ``text_tokens`` / ``answer_tokens``.

``regex`` (the default) counts words and punctuation marks: fast, tokenizer-free. ``tokenizer_json`` (a local
``tokenizer.json``, counted with ``tokenizers``) and ``transformers`` (a local tokenizer directory) count a real
tokenizer's ids, special tokens excluded. Nothing is ever loaded from a model hub.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shards.atomic import sha256_file

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

TokenCounter = Callable[[str], int]
TOKENIZER_TYPES = ("regex", "tokenizer_json", "transformers")
REGEX_FINGERPRINT = "regex-v1"  # bump when _TOKEN_RE changes
# Fewer texts are encoded one by one: a batch call costs more than it saves below ~8 texts (2 cores).
_MIN_BATCH = 8
# Files of a tokenizer directory that define how it tokenizes (fingerprinted, and watched by the cache).
_DIR_FILE_PATTERNS = (
    "tokenizer*.json",
    "vocab*",
    "merges*",
    "*.model",
    "*.tiktoken",
    "added_tokens.json",
    "special_tokens_map.json",
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be used; the message is one line naming ``tokenizer.type`` or ``tokenizer.path``."""


@runtime_checkable
class BatchTokenCounter(Protocol):
    """A counter that also counts many texts in one call (``count_each`` uses it when present)."""

    def __call__(self, text: str) -> int: ...

    def count_batch(self, texts: Sequence[str]) -> list[int]: ...


def count_tokens(text: str) -> int:
    """Number of word and punctuation tokens in ``text``."""
    return len(_TOKEN_RE.findall(text))


def count_each(counter: TokenCounter, texts: Sequence[str]) -> list[int]:
    """Tokens of each text (0 for empty ones), in one batch when the counter has ``count_batch``."""
    batch = getattr(counter, "count_batch", None)
    if batch is None:
        return [counter(t) if t else 0 for t in texts]
    return batch(list(texts))


def count_many(counter: TokenCounter, texts: Iterable[str]) -> int:
    """Total tokens of ``texts``."""
    return sum(count_each(counter, list(texts)))


def count_record(counter: TokenCounter, record: Any) -> tuple[int, int]:
    """(text tokens, answer tokens) of a record, each text counted once: a record's answers are the last texts
    of ``texts_for_tokens()`` (the captions of a pair, the assistant turns of a conversation, ...)."""
    texts, answers = record.texts_for_tokens()
    counts = count_each(counter, texts)
    if answers and texts[len(texts) - len(answers) :] == answers:
        return sum(counts), sum(counts[len(texts) - len(answers) :])
    return sum(counts), count_many(counter, answers)


class _Counter:
    """Counts with a real tokenizer, one text or a batch of them."""

    def __init__(self, one: Callable[[str], int], many: Callable[[list[str]], list[int]], label: str) -> None:
        self._one = one
        self._many = many
        self.label = label

    def __repr__(self) -> str:
        return f"<token counter {self.label}>"

    def __call__(self, text: str) -> int:
        return self._one(text) if text else 0

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        todo = [t for t in texts if t]
        if len(todo) < _MIN_BATCH or self._many is None:  # below this a batch call costs more than it saves
            return [self(t) for t in texts]
        counts = iter(self._many(todo))
        return [next(counts) if t else 0 for t in texts]


# ---- loading -----------------------------------------------------------------------------------------------
def _tokenizer_json_file(path: str | None) -> Path:
    if not path:
        raise TokenizerError("tokenizer.path is required for type 'tokenizer_json'")
    p = Path(path).expanduser()
    if p.is_dir():  # a model directory holding tokenizer.json is accepted too
        p = p / "tokenizer.json"
    if not p.is_file():
        raise TokenizerError(f"tokenizer.path: no tokenizer.json at {path}")
    return p.resolve()


def _tokenizer_dir(path: str | None) -> Path:
    if not path:
        raise TokenizerError("tokenizer.path is required for type 'transformers'")
    p = Path(path).expanduser()
    if p.is_file():
        raise TokenizerError(
            f"tokenizer.path: {path} is a file; type transformers takes a tokenizer directory "
            "(use type tokenizer_json for a tokenizer.json file)"
        )
    if not p.is_dir():
        raise TokenizerError(f"tokenizer.path: no tokenizer directory at {path}")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise TokenizerError(
            f"tokenizer.path: {path} is not a tokenizer directory (no tokenizer.json or tokenizer_config.json)"
        )
    return p.resolve()


def _dir_files(directory: Path) -> list[Path]:
    found = {f for pattern in _DIR_FILE_PATTERNS for f in directory.glob(pattern) if f.is_file()}
    return sorted(found, key=lambda f: f.name)


def _resolve(type: str, path: str | None) -> tuple[Path | None, list[Path]]:
    """(the tokenizer.json file or tokenizer directory, the files that define the tokenizer); a bad type or
    path raises TokenizerError."""
    if type == "regex":
        if path:
            raise TokenizerError("tokenizer.path is only used with type tokenizer_json or transformers")
        return None, []
    if type == "tokenizer_json":
        file = _tokenizer_json_file(path)
        return file, [file]
    if type == "transformers":
        directory = _tokenizer_dir(path)
        return directory, _dir_files(directory)
    raise TokenizerError(f"tokenizer.type: unknown type {type!r}; expected one of {', '.join(TOKENIZER_TYPES)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _from_tokenizer_json(file: Path, label: str) -> _Counter:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise TokenizerError(f"tokenizer.path: {file} is not a valid tokenizer.json ({_one_line(exc)})") from None
    # encode_batch_fast (tokenizers>=0.20) skips the offsets: ~25% faster, even for a batch of one text.
    fast = getattr(tok, "encode_batch_fast", None)
    encode_batch = fast or tok.encode_batch

    def one(text: str) -> int:
        if fast is not None:
            return len(fast([text], add_special_tokens=False)[0])
        return len(tok.encode(text, add_special_tokens=False))

    def many(texts: list[str]) -> list[int]:
        return [len(e) for e in encode_batch(texts, add_special_tokens=False)]

    return _Counter(one, many, label)


def _from_transformers(directory: Path, label: str) -> _Counter:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(
            f"tokenizer.path: {directory} has no tokenizer.json, and loading it needs the transformers package, "
            "which is not installed (pip install transformers)"
        ) from None
    try:
        tok: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # missing sentencepiece, a broken config, ...: one line naming the path
        raise TokenizerError(f"tokenizer.path: cannot load the tokenizer in {directory} ({_one_line(exc)})") from None
    tok.model_max_length = 1 << 62  # counting, not truncating: no "sequence too long" warnings

    def one(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    def many(texts: list[str]) -> list[int]:
        ids = tok(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return [len(x) for x in ids["input_ids"]]

    return _Counter(one, many, label)


_CACHE: dict[tuple[Any, ...], TokenCounter] = {}


def make_token_counter(type: str = "regex", path: str | None = None) -> TokenCounter:
    """The token counter of a recipe's ``tokenizer`` (type, path); loaded once per process and file version.

    Counts exclude special tokens (``add_special_tokens=False``). A ``transformers`` directory is counted
    with its ``tokenizer.json`` through ``tokenizers`` when it has one, else with ``AutoTokenizer``
    (offline). The counter has ``count_batch``, which ``count_each`` uses.
    """
    root, files = _resolve(type, path)
    if root is None:
        return count_tokens
    stamp = tuple((f.name, st.st_mtime_ns, st.st_size) for f in files for st in [f.stat()])
    key = (type, str(root), stamp)
    counter = _CACHE.get(key)
    if counter is None:
        label = f"{type}:{root}"
        if type == "tokenizer_json":
            counter = _from_tokenizer_json(root, label)
        elif (root / "tokenizer.json").is_file():
            counter = _from_tokenizer_json(root / "tokenizer.json", label)
        else:
            counter = _from_transformers(root, label)
        _CACHE[key] = counter
    return counter


def tokenizer_fingerprint(type: str = "regex", path: str | None = None) -> str:
    """What identifies the counts: ``regex-v1``, the sha256 of a ``tokenizer.json``, or for a directory the
    sha256 of its tokenizer files' names and sha256s (``tokenizer*.json``, vocab, merges, spm models, ...)."""
    root, files = _resolve(type, path)
    if root is None:
        return REGEX_FINGERPRINT
    if type == "tokenizer_json":
        return sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()
