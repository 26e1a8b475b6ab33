"""Text-model scores: fastText language identification and KenLM perplexity, as the OBELICS filters (and CCNet
before them) computed them. Local model files only (never a download), loaded once per process.

The packages are an optional extra: ``pip install 'vlm-curation[text_models]'`` (the ``fasttext`` module from
``fasttext-numpy2-wheel``, ``kenlm``, ``sentencepiece``); a missing one is a one-line :class:`CurationError`
naming it.

**Language id** (:class:`FastTextLangId`). The text is lowercased and every newline replaced by a space (as
OBELICS did; fastText predicts one line at a time), and the top label is predicted. The score of a target
language is the top label's probability when that label is the target (``__label__en`` for ``en``), else 0.0.
OBELICS kept a text at ``en`` with a score >= 0.8. Predictions go through fastText's C++ binding directly: the
Python ``predict`` of the fasttext releases builds its result with ``np.array(..., copy=False)``, which NumPy 2
refuses.

**Perplexity** (:class:`KenLMPerplexity`). The text is normalised (below), split into SentencePiece pieces
joined by spaces when a tokenizer is given (else scored as whitespace-separated words), and scored by the KenLM
model line by line with sentence boundaries: ``perplexity = 10 ** (-sum(log10 P(line)) / sum(tokens + 1))``
(CCNet's ``pp()``; the ``+ 1`` is the end of sentence), rounded to one decimal as OBELICS and CCNet did. Both
normalisations remove control characters, newlines included, so the whole text is one line (so it was there:
a newline between two words joins them).

- ``obelics`` (what OBELICS ran with the Wikipedia models of ``edugp/kenlm``): control characters (U+0000-001F,
  U+007F-009F) removed, leading and trailing whitespace stripped, the typographic spaces OBELICS listed made
  plain spaces, every digit made ``0``, full-width and typographic punctuation made ASCII (CCNet's table); case
  and accents are kept.
- ``ccnet`` (CCNet's ``text_normalizer.normalize``, for models trained on CCNet-normalised text): stripped,
  lowercased, accents removed (NFD, combining marks dropped), digits made ``0``, the same punctuation table,
  control characters removed.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from curation.errors import CurationError

EXTRA = "text_models"
Normalization = Literal["obelics", "ccnet"]
NORMALIZATIONS: tuple[Normalization, ...] = ("obelics", "ccnet")

FASTTEXT_MAGIC = 793712314  # the first int32 (little-endian) of a fastText .bin / .ftz model
KENLM_BINARY_MAGIC = b"mmap lm http://kheafield.com/code"  # a build_binary output starts with it
ARPA_HEADER = b"\\data\\"


def require(module: str, where: str) -> ModuleType:
    """Import an optional package of the ``text_models`` extra, or fail on one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CurationError(
            f"{where} needs the Python package {module!r}, which is not installed: pip install 'vlm-curation[{EXTRA}]'"
        ) from None


def _one_line(message: object, limit: int = 300) -> str:
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(message)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kenlm_reason(exc: BaseException) -> str:
    """KenLM's reason without the C++ location before it: ``Cannot read model 'x' (lm/model.cc:100 in void
    lm::...::InitializeFromARPA(...) threw FormatLoadException. This ngram implementation assumes at least a
    bigram model. Byte: 18)`` -> ``FormatLoadException. This ngram ... Byte: 18``."""
    text = str(exc)
    if " threw " in text:
        text = text.rsplit(" threw ", 1)[1].removesuffix(")")
    return _one_line(text)


def _regular_file(path: str, where: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CurationError(f"{where}: {what} {path} does not exist")
    if not p.is_file():
        raise CurationError(f"{where}: {what} {path} is not a regular file")
    return p


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# --------------------------------------------------------------------------------------------------
# Normalisation (KenLM)

_NON_PRINTING = re.compile("[" + "".join(re.escape(chr(c)) for c in [*range(32), *range(127, 160)]) + "]")
_DIGIT = re.compile(r"\d")
# The spaces OBELICS made plain (its standardize_whitespace): thin, hair, narrow no-break, four-per-em,
# ideographic, en, punctuation, em, no-break, and the object replacement character.
_OBELICS_SPACES = str.maketrans(dict.fromkeys("\u2009\u200a\u202f\u2005\u3000\u2002\u2008\u2003\ufffc\xa0", " "))


def _punctuation_table() -> dict[int, str]:
    """CCNet's replacements of full-width and typographic punctuation (``text_normalizer.UNICODE_PUNCT``),
    which OBELICS used too."""
    table = {
        **dict.fromkeys("，、", ","),
        "。": ".",
        **dict.fromkeys("„”“«»」「《》１", '"'),  # the characters replaced -> their replacement
        **dict.fromkeys("´’", "'"),
        **dict.fromkeys("∶：", ":"),
        **dict.fromkeys("–━►", "-"),
        "—": " - ",
        "．": ". ",
        "…": "...",
        **dict(zip("？！（）；～％〈〉【】", "?!();~%<>[]", strict=True)),
    }
    return str.maketrans(table)


_PUNCTUATION = _punctuation_table()


def strip_accents(text: str) -> str:
    """``text`` decomposed (NFD) without its combining marks (Unicode category Mn)."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def normalize_obelics(text: str) -> str:
    """The normalisation OBELICS applied before SentencePiece and KenLM (module docstring)."""
    text = _NON_PRINTING.sub("", text).strip()
    if not text:
        return text
    text = _DIGIT.sub("0", text.translate(_OBELICS_SPACES))
    return text.translate(_PUNCTUATION)


def normalize_ccnet(text: str) -> str:
    """CCNet's ``normalize`` with its defaults (module docstring)."""
    text = text.strip()
    if not text:
        return text
    text = _DIGIT.sub("0", strip_accents(text.lower()))
    return _NON_PRINTING.sub("", text.translate(_PUNCTUATION))


NORMALIZERS: dict[str, Callable[[str], str]] = {"obelics": normalize_obelics, "ccnet": normalize_ccnet}


def perplexity_of(log10_prob: float, tokens: int) -> float:
    """CCNet's ``pp()``: ``10 ** (-log10_prob / tokens)``; ``tokens`` counts an end of sentence per line."""
    return 10.0 ** (-log10_prob / tokens)


# --------------------------------------------------------------------------------------------------
# Models


def lang_id_text(text: str) -> str:
    """What the language-id model reads: ``text`` lowercased, each newline a space (as OBELICS)."""
    return text.lower().replace("\n", " ")


class FastTextLangId:
    """A fastText supervised model (``lid.176.bin``, or any model with ``__label__<language>`` labels)."""

    def __init__(self, path: str, where: str = "lang_id") -> None:
        fasttext = require("fasttext", where)
        p = _regular_file(path, where, "model")
        head = _head(p, 4)
        if len(head) < 4 or struct.unpack("<i", head)[0] != FASTTEXT_MAGIC:
            raise CurationError(f"{where}: {path} is not a fastText model (.bin or .ftz)")
        try:
            self.model = fasttext.FastText._FastText(model_path=str(p))  # load_model() without its stderr warning
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise CurationError(f"{where}: cannot load the fastText model {path}: {_one_line(exc)}") from None
        labels, _ = self.model.f.getLabels("replace")
        if not any(str(label).startswith("__label__") for label in labels):
            raise CurationError(f"{where}: {path} is a fastText model without __label__ labels, not a classifier")
        self.path = path

    def predict(self, text: str) -> tuple[str, float]:
        """The top label of ``lang_id_text(text)`` (without ``__label__``) and its probability; ``("", 0.0)``
        when the model predicts nothing."""
        found = self.model.f.predict(lang_id_text(text) + "\n", 1, 0.0, "replace")
        if not found:
            return "", 0.0
        prob, label = found[0]
        return str(label).removeprefix("__label__"), float(prob)

    def score(self, text: str, language: str) -> float:
        """The probability that ``text`` is in ``language`` as OBELICS used it: the top label's probability
        when that label is ``language``, else 0.0."""
        label, prob = self.predict(text)
        return prob if label == language else 0.0


class KenLMPerplexity:
    """A KenLM model (ARPA text or ``build_binary`` output), with an optional SentencePiece tokenizer."""

    def __init__(
        self,
        path: str,
        tokenizer: str | None = None,
        normalization: Normalization = "obelics",
        where: str = "perplexity",
        *,
        lazy: bool = False,
    ) -> None:
        kenlm = require("kenlm", where)
        p = _regular_file(path, where, "model")
        head = _head(p)
        if not (head.startswith(KENLM_BINARY_MAGIC) or head.lstrip().startswith(ARPA_HEADER)):
            raise CurationError(f"{where}: {path} is not a KenLM model (ARPA text starting with \\data\\, or binary)")
        config = kenlm.Config()
        if lazy:  # a check: map the file, do not read it all in
            config.load_method = kenlm.LoadMethod.LAZY
        try:
            self.lm = kenlm.Model(str(p), config)
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            raise CurationError(f"{where}: cannot load the KenLM model {path}: {_kenlm_reason(exc)}") from None
        self.sp = None
        if tokenizer is not None:
            spm = require("sentencepiece", where)
            t = _regular_file(tokenizer, where, "tokenizer")
            try:
                self.sp = spm.SentencePieceProcessor(model_file=str(t))
            except (OSError, RuntimeError, ValueError) as exc:
                raise CurationError(
                    f"{where}: cannot load the SentencePiece model {tokenizer}: {_one_line(exc)}"
                ) from None
        if normalization not in NORMALIZERS:
            raise CurationError(f"{where}: unknown normalization {normalization!r}; one of {', '.join(NORMALIZERS)}")
        self.normalize = NORMALIZERS[normalization]
        self.path, self.tokenizer, self.normalization = path, tokenizer, normalization

    def tokens(self, text: str) -> str:
        """What the KenLM model scores: the normalised text, as SentencePiece pieces joined by spaces when
        there is a tokenizer."""
        text = self.normalize(text)
        if self.sp is not None:
            text = " ".join(self.sp.encode(text, out_type=str))
        return text

    def perplexity(self, text: str) -> float:
        """The perplexity of ``text`` (module docstring), rounded to one decimal."""
        log10_prob, tokens = 0.0, 0
        for line in self.tokens(text).split("\n"):
            log10_prob += self.lm.score(line, bos=True, eos=True)
            tokens += len(line.split()) + 1
        return round(perplexity_of(log10_prob, tokens), 1)


# --------------------------------------------------------------------------------------------------
# One load per process

_loaded: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] = {}
_lock = threading.Lock()


def file_signature(*paths: str | None) -> tuple[Any, ...]:
    """What says the files changed: (path, size, mtime) of each."""
    out: list[Any] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, None))
            continue
        out.append((path, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _cached(key: tuple[Any, ...], paths: tuple[str | None, ...], load: Callable[[], Any]) -> Any:
    found = _loaded.get(key)
    if found is not None:
        return found[1]
    with _lock:
        found = _loaded.get(key)
        if found is None:
            found = (file_signature(*paths), load())
            _loaded[key] = found
    return found[1]


def lang_id_model(path: str, where: str = "lang_id") -> FastTextLangId:
    """The fastText model at ``path``, loaded once per process (see :func:`forget_changed`)."""
    return _cached(("fasttext", path), (path,), lambda: FastTextLangId(path, where))


def perplexity_model(
    path: str, tokenizer: str | None = None, normalization: Normalization = "obelics", where: str = "perplexity"
) -> KenLMPerplexity:
    """The KenLM model (and tokenizer) at ``path``, loaded once per process (see :func:`forget_changed`)."""
    return _cached(
        ("kenlm", path, tokenizer, normalization),
        (path, tokenizer),
        lambda: KenLMPerplexity(path, tokenizer, normalization, where),
    )


def forget_changed() -> None:
    """Drop the loaded models whose files changed since they were loaded (a few ``stat`` calls; a reader calls
    it once per partition, so a long-lived worker never scores with a replaced model)."""
    with _lock:
        for key, (signature, _) in list(_loaded.items()):
            paths = tuple(None if s is None else s[0] for s in signature)
            if file_signature(*paths) != signature:
                del _loaded[key]


def forget_all() -> None:
    """Drop every loaded model (tests)."""
    with _lock:
        _loaded.clear()


__all__ = [
    "EXTRA",
    "NORMALIZATIONS",
    "FastTextLangId",
    "KenLMPerplexity",
    "file_signature",
    "forget_all",
    "forget_changed",
    "lang_id_model",
    "lang_id_text",
    "normalize_ccnet",
    "normalize_obelics",
    "perplexity_model",
    "perplexity_of",
    "require",
    "strip_accents",
]
