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

import array
import importlib
import math
import os
import re
import struct
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

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
    """CCNet's ``pp()``: ``10 ** (-log10_prob / tokens)``; ``tokens`` counts an end of sentence per line.
    Infinite past the largest float."""
    try:
        return 10.0 ** (-log10_prob / tokens)
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------------------
# Models

# The layout of a fastText model file, checked in Python before fastText's C++ loader reads it: that loader
# trusts every count in the file (a 92-byte file whose header claims 2**30 words makes it read for minutes and
# allocate gigabytes; a truncated model loads with zeros and predicts one label for every text). The layout
# (fastText's saveModel, Args/Dictionary/DenseMatrix/QuantMatrix/ProductQuantizer ``save``), little-endian:
#   int32 magic, int32 version; Args: 12 int32 (dim ws epoch minCount neg wordNgrams loss model bucket minn maxn
#   lrUpdateRate) and float64 t; Dictionary: int32 size nwords nlabels, int64 ntokens pruneidx_size, ``size``
#   entries (word, NUL, int64 count, int8 type), ``pruneidx_size`` int32 pairs; bool quant + the input matrix;
#   bool qout + the output matrix. A dense matrix: int64 m n, m*n float32. A quantized one (.ftz): bool qnorm,
#   int64 m n, int32 codesize, codesize uint8 codes, a product quantizer (int32 dim nsubq dsub lastdsub,
#   dim*256 float32 centroids), and with qnorm m uint8 norm codes and a second quantizer of dimension 1.
FASTTEXT_VERSIONS = (11, 12)
FASTTEXT_MAX_DIM = 10_000
FASTTEXT_MAX_NGRAM = 32  # minn, maxn (subword lengths) and wordNgrams; real models use at most 6
FASTTEXT_MAX_WORD = 1 << 20  # bytes of one dictionary word
_FT_ENTRY_MIN = 10  # a dictionary entry: at least the NUL, the int64 count and the int8 type
_FT_ENTRY = struct.Struct("<qb")  # after the word's NUL: count, type
_FT_MAX_COUNT = 10**15  # fastText's hierarchical softmax builds its tree with this as "no count yet"
_FT_KSUB = 256  # centroids per product-quantizer subspace (fastText's 8-bit codes)
_FT_SUPERVISED = 3  # Args.model: 1 cbow, 2 skipgram, 3 supervised
_CHUNK = 1 << 20


class _BadModel(Exception):
    """Why a model file is refused (made a one-line CurationError by the caller)."""


class _Bounded:
    """Reads of a file that check each size against the bytes left before reading or allocating anything."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.left = f, size

    def need(self, n: int, what: str) -> None:
        if n < 0:
            raise _BadModel(f"{what} has a negative size ({n} bytes)")
        if n > self.left:
            raise _BadModel(f"truncated: {what} takes {n} bytes, {self.left} are left in the file")

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while read
            raise _BadModel(f"truncated: {what} takes {n} bytes, the file ended first")
        self.left -= n
        return data

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, os.SEEK_CUR)
        self.left -= n

    def floats(self, n: int, what: str) -> None:
        """Read past ``n`` float32 a chunk at a time, refusing NaN and infinity (garbled bytes, which fastText
        loads and then fails on, or predicts garbage with)."""
        self.need(4 * n, what)
        done = 0
        while done < n:
            k = min(n - done, _CHUNK // 4)
            if not np.isfinite(np.frombuffer(self.read(4 * k, what), dtype="<f4")).all():
                raise _BadModel(f"{what} holds NaN or infinite values")
            done += k


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise _BadModel(f"{name} {value} is outside {low}..{high}")


def _ft_bool(r: _Bounded, what: str) -> bool:
    (value,) = r.unpack("<B", what)
    if value > 1:
        raise _BadModel(f"{what} is {value}, not a bool")
    return bool(value)


def _ft_dictionary(r: _Bounded, size: int, nwords: int) -> None:
    """Walk the ``size`` dictionary entries a chunk at a time: each a NUL-terminated word of at most
    FASTTEXT_MAX_WORD bytes, a count >= 0 and a type (0 word for the first ``nwords``, then 1 label)."""
    buf, pos, i = b"", 0, 0
    unpack = _FT_ENTRY.unpack_from
    while True:
        find, n = buf.find, len(buf)
        while i < size:  # the entries wholly in the buffer
            end = find(b"\0", pos)
            if end < 0 or end + _FT_ENTRY_MIN > n:
                break
            count, kind = unpack(buf, end + 1)
            if not 0 <= count < _FT_MAX_COUNT or kind != (i >= nwords) or end - pos > FASTTEXT_MAX_WORD:
                raise _BadModel(f"dictionary entry {i} has {_ft_bad_entry(end - pos, count, kind, i >= nwords)}")
            pos, i = end + _FT_ENTRY_MIN, i + 1
        if i == size:
            break
        if n - pos > FASTTEXT_MAX_WORD + _FT_ENTRY_MIN:
            raise _BadModel(f"dictionary entry {i} has a word longer than {FASTTEXT_MAX_WORD} bytes")
        if r.left == 0:
            raise _BadModel(f"truncated: the file ends in dictionary entry {i} of {size}")
        buf, pos = buf[pos:] + r.read(min(_CHUNK, r.left), "the dictionary"), 0
    r.f.seek(pos - len(buf), os.SEEK_CUR)  # what was read past the last entry goes back
    r.left += len(buf) - pos


def _ft_bad_entry(length: int, count: int, kind: int, label: bool) -> str:
    if length > FASTTEXT_MAX_WORD:
        return f"a word longer than {FASTTEXT_MAX_WORD} bytes"
    if not 0 <= count < _FT_MAX_COUNT:
        return f"count {count}, outside 0..{_FT_MAX_COUNT - 1}"
    return f"type {kind}, expected {int(label)} ({'label' if label else 'word'})"


def _ft_prune_index(r: _Bounded, pairs: int, bucket: int) -> None:
    """The pruned n-gram index of a quantized model: ``pairs`` (bucket, row) pairs, rows < pairs."""
    r.need(8 * pairs, f"the pruned index of {pairs} pairs")
    done = 0
    while done < pairs:
        n = min(pairs - done, _CHUNK // 8)
        values = array.array("i")
        values.frombytes(r.read(8 * n, "the pruned index"))
        if sys.byteorder == "big":
            values.byteswap()
        hashes, rows = values[0::2], values[1::2]
        if min(hashes) < 0 or max(hashes) >= max(bucket, 1) or min(rows) < 0 or max(rows) >= pairs:
            raise _BadModel("the pruned index points outside the n-gram buckets or the matrix")
        done += n


def _ft_quantizer(r: _Bounded, dim: int, what: str) -> int:
    """A product quantizer of vectors of ``dim``: its sub-quantizer count (nsubq)."""
    pq_dim, nsubq, dsub, lastdsub = r.unpack("<4i", f"the {what} quantizer")
    if pq_dim != dim or not 1 <= dsub <= dim or nsubq != -(-dim // dsub) or lastdsub != (dim % dsub or dsub):
        raise _BadModel(f"the {what} quantizer (dim {pq_dim}, nsubq {nsubq}, dsub {dsub}) does not fit dim {dim}")
    r.floats(dim * _FT_KSUB, f"the {what} quantizer's centroids")
    return nsubq


def _ft_matrix(r: _Bounded, quantized: bool, rows: int, dim: int, what: str) -> None:
    """A matrix of ``rows`` x ``dim``, dense or quantized, skipped once its size is known to fit."""

    def shape(m: int, n: int) -> None:
        if m != rows or n != dim:
            raise _BadModel(f"the {what} matrix is {m} x {n}, the dictionary and arguments say {rows} x {dim}")

    if not quantized:
        m, n = r.unpack("<qq", f"the {what} matrix's header")
        shape(m, n)
        r.floats(m * n, f"the {what} matrix ({m} x {n} float32)")
        return
    qnorm = _ft_bool(r, f"the {what} matrix's qnorm")
    m, n, codesize = r.unpack("<qqi", f"the {what} matrix's header")
    shape(m, n)
    r.skip(codesize, f"the {what} matrix's {codesize} codes")
    nsubq = _ft_quantizer(r, n, what)
    if codesize != m * nsubq:
        raise _BadModel(f"the {what} matrix has {codesize} codes, {m} rows of {nsubq} codes need {m * nsubq}")
    if qnorm:
        r.skip(m, f"the {what} matrix's norm codes")
        _ft_quantizer(r, 1, f"{what} norm")


def check_fasttext_model(path: Path) -> None:
    """Raise :class:`_BadModel` unless ``path`` is a whole fastText model whose every count fits the file
    (the layout above): memory and time bounded by the file's size, the file's bytes never all in memory."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Bounded(f, size)
        magic, version = r.unpack("<ii", "the magic number and version")
        if magic != FASTTEXT_MAGIC:
            raise _BadModel("not a fastText model (.bin or .ftz)")
        if version not in FASTTEXT_VERSIONS:
            raise _BadModel(f"fastText format version {version}, not one of {FASTTEXT_VERSIONS}")
        args = r.unpack("<12id", "the arguments block")
        dim, ws, epoch, min_count, neg, word_ngrams, loss, model, bucket, minn, maxn, lr_update, t = args
        _in_range("dim", dim, 1, FASTTEXT_MAX_DIM)
        for name, value in (("ws", ws), ("epoch", epoch), ("minCount", min_count), ("neg", neg)):
            _in_range(name, value, 0, 2**31 - 1)
        _in_range("lrUpdateRate", lr_update, 0, 2**31 - 1)
        _in_range("wordNgrams", word_ngrams, 0, FASTTEXT_MAX_NGRAM)
        _in_range("loss", loss, 1, 4)  # hs ns softmax ova
        _in_range("model", model, 1, 3)  # cbow sg sup
        _in_range("bucket", bucket, 0, 2**31 - 1)
        _in_range("minn", minn, 0, FASTTEXT_MAX_NGRAM)
        _in_range("maxn", maxn, 0, FASTTEXT_MAX_NGRAM)
        if not (math.isfinite(t) and t >= 0):
            raise _BadModel(f"t {t} is not a finite number >= 0")
        if version == 11 and model == _FT_SUPERVISED:
            maxn = 0  # fastText ignores the subwords of old supervised models
        if bucket == 0 and (word_ngrams > 1 or maxn >= max(minn, 1)):  # every n-gram hash is modulo bucket
            raise _BadModel("bucket is 0 but the model hashes word or character n-grams")

        size, nwords, nlabels, ntokens, pruned = r.unpack("<iiiqq", "the dictionary's header")
        if nwords < 0 or nlabels < 0 or size < 1 or nwords + nlabels != size or ntokens < 0:
            raise _BadModel(f"the dictionary's header is inconsistent (size {size}, {nwords} words, {nlabels} labels)")
        r.need(_FT_ENTRY_MIN * size, f"a dictionary of {size} entries")
        if pruned < -1:
            raise _BadModel(f"the pruned index size is {pruned}")
        _ft_dictionary(r, size, nwords)
        if pruned > 0:
            _ft_prune_index(r, pruned, bucket)

        quant = _ft_bool(r, "the quantized flag")
        if pruned >= 0 and not quant:
            raise _BadModel("a dense model with a pruned dictionary (fastText refuses it)")
        _ft_matrix(r, quant, nwords + (bucket if pruned < 0 else pruned), dim, "input")
        qout = _ft_bool(r, "the quantized output flag")
        _ft_matrix(r, quant and qout, nlabels if model == _FT_SUPERVISED else nwords, dim, "output")
        if r.left:
            raise _BadModel(f"{r.left} bytes after the end of the model")


# KenLM. Its ARPA reader is strict (a truncated file, a count that does not match the n-grams, a bad number are
# its own one-line errors) but sizes its tables by the header's counts before reading an n-gram, and its binary
# loader checks the file against the size its header implies but not what follows (the vocabulary's strings) and
# computes that size from 64-bit counts that can overflow. Checked here: the ARPA counts fit the file; the
# binary header is KenLM's (format 5, this architecture), its counts fit the file, and the vocabulary's strings
# ("<unk>" first, one NUL-terminated string per word) end exactly at the end of the file.
KENLM_MAX_ORDER = 6  # the kenlm package's default KENLM_MAX_ORDER
ARPA_HEADER_MAX = 1 << 16  # bytes of "\data\" and its "ngram N=count" lines
# KenLM's binary "Sanity" block: the magic padded to 8 bytes, then test values (0.0, 1.0, -0.5, 1, 2**32 - 1,
# padding, 1) that tell a file of another byte order or word size; then order, probing multiplier, model type,
# has_vocabulary and search version (FixedWidthParameters), then one uint64 count per order.
_KENLM_SANITY = (KENLM_BINARY_MAGIC + b" format version 5\n\0").ljust(56, b"\0") + struct.pack(
    "<fffIIIQ", 0.0, 1.0, -0.5, 1, 2**32 - 1, 0, 1
)
_KENLM_FIXED = struct.Struct("<B3xfIB3xI")
_KENLM_MAX_PROBING = 100.0  # build_binary -p: 1.5 by default
_ARPA_COUNT = re.compile(rb"ngram +(\d{1,9})=[ \t]*(\d{1,20})")


def check_arpa(path: Path) -> None:
    """Raise :class:`_BadModel` unless the ``\\data\\`` header of the ARPA file ``path`` declares n-gram counts
    its size can hold: each n-gram line takes at least ``2n + 2`` bytes (``p<TAB>w1 ... wn<LF>``)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(ARPA_HEADER_MAX)
    lines = iter(head.split(b"\n"))
    line = next((line for line in lines if line.strip()), b"")
    if line.strip() != b"\\data\\":
        raise _BadModel("the first line is not \\data\\")
    counts: list[int] = []
    for line in lines:
        if not line.strip():
            break
        found = _ARPA_COUNT.fullmatch(line.strip())
        if found is None or int(found[1]) != len(counts) + 1:
            shown = _one_line(line.decode("utf-8", "replace"), 60)
            raise _BadModel(f"the header line {shown!r} is not 'ngram {len(counts) + 1}=<count of at most 20 digits>'")
        if len(counts) == KENLM_MAX_ORDER:
            raise _BadModel(f"the header declares an order above {KENLM_MAX_ORDER}, the most KenLM loads")
        counts.append(int(found[2]))
    else:
        raise _BadModel(f"the header (\\data\\ and its ngram lines) does not end within {ARPA_HEADER_MAX} bytes")
    if not counts or counts[0] < 1:
        raise _BadModel("the header declares no unigrams")
    least = sum(count * (2 * n + 2) for n, count in enumerate(counts, 1))
    if least > size:
        raise _BadModel(
            f"truncated: the header declares {sum(counts)} n-grams, at least {least} bytes, in a file of {size}"
        )


def check_kenlm_binary(path: Path) -> None:
    """Raise :class:`_BadModel` unless ``path`` has the header of a KenLM binary of this architecture whose
    counts fit the file and, when it keeps its vocabulary (build_binary's default), whose vocabulary strings end
    the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Bounded(f, size)
        if r.read(len(_KENLM_SANITY), "the binary header") != _KENLM_SANITY:
            raise _BadModel("not a KenLM binary of format version 5 built on a little-endian 64-bit machine")
        order, probing, model_type, has_vocabulary, _ = _KENLM_FIXED.unpack(r.read(_KENLM_FIXED.size, "the header"))
        _in_range("order", order, 1, KENLM_MAX_ORDER)
        if not (math.isfinite(probing) and 1.0 <= probing <= _KENLM_MAX_PROBING):
            raise _BadModel(f"the probing multiplier {probing} is outside 1..{_KENLM_MAX_PROBING}")
        _in_range("model type", model_type, 0, 5)  # probing, rest probing, trie (quantized, array-compressed)
        _in_range("has_vocabulary", has_vocabulary, 0, 1)
        counts = r.unpack(f"<{order}Q", "the n-gram counts")
        header = -(-(len(_KENLM_SANITY) + _KENLM_FIXED.size + 8 * order) // 8) * 8
        for n, count in enumerate(counts, 1):
            # A trie packs an n-gram in a few bits: at most 8 per byte, and no size computed from them overflows.
            if not (n > 1 or count >= 1) or count > 8 * size:
                raise _BadModel(f"the header declares {count} {n}-grams in a file of {size} bytes")
        r.skip(r.left - (size - header), "the header's padding")
        words = _kenlm_words(r, model_type, counts[0])
        if has_vocabulary:
            _kenlm_vocabulary(f, header, size, words)


def _kenlm_words(r: _Bounded, model_type: int, unigrams: int) -> int:
    """The vocabulary size (``<unk>`` included) that the vocabulary after the header declares: a probing one
    (uint32 version, uint32 bound), a sorted one (a trie's: uint64 words besides ``<unk>``). KenLM trusts it;
    at most one more than the unigrams (the ``<unk>`` KenLM adds to an ARPA without one)."""
    if model_type <= 1:
        _, words = r.unpack("<II", "the vocabulary's header")
    else:
        (words,) = r.unpack("<Q", "the vocabulary's header")
        words += 1
    if not unigrams <= words <= unigrams + 1:
        raise _BadModel(f"the vocabulary declares {words} words for {unigrams} unigrams")
    return words


def _nth_nul_before(f: Any, low: int, high: int, n: int) -> int:
    """The offset of the ``n``-th NUL byte counting back from ``high`` (excluded) to ``low``, or -1; read in
    chunks from the end."""
    while high > low:
        start = max(low, high - _CHUNK)
        f.seek(start)
        chunk = f.read(high - start)
        found = chunk.count(b"\0")
        if found < n:
            n, high = n - found, start
            continue
        at = len(chunk)
        for _ in range(n):
            at = chunk.rfind(b"\0", 0, at)
        return start + at
    return -1


def _kenlm_vocabulary(f: Any, header: int, size: int, words: int) -> None:
    """The strings that end a KenLM binary: ``words`` of them, each NUL-terminated, ``<unk>`` first."""
    if 2 * words > size - header:
        raise _BadModel(f"truncated: {words} vocabulary words do not fit in {size - header} bytes")
    f.seek(size - 1)
    first = _nth_nul_before(f, header, size, words) if f.read(1) == b"\0" else -1
    if first - 5 >= header:
        f.seek(first - 5)
        if f.read(6) == b"<unk>\0":
            return
    raise _BadModel(f"the file does not end with the strings of its {words} words (truncated, or bytes appended)")


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
            check_fasttext_model(p)
        except _BadModel as exc:
            raise CurationError(f"{where}: cannot load the fastText model {path}: {_one_line(exc)}") from None
        except OSError as exc:
            raise CurationError(f"{where}: cannot read the fastText model {path}: {_one_line(exc)}") from None
        try:
            self.model = fasttext.FastText._FastText(model_path=str(p))  # load_model() without its stderr warning
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise CurationError(f"{where}: cannot load the fastText model {path}: {_one_line(exc)}") from None
        labels, _ = self.model.f.getLabels("replace")
        if not any(str(label).startswith("__label__") for label in labels):
            raise CurationError(f"{where}: {path} is a fastText model without __label__ labels, not a classifier")
        self.path, self.where = path, where

    def predict(self, text: str) -> tuple[str, float]:
        """The top label of ``lang_id_text(text)`` (without ``__label__``) and its probability; ``("", 0.0)``
        when the model predicts nothing."""
        try:
            found = self.model.f.predict(lang_id_text(text) + "\n", 1, 0.0, "replace")
        except (RuntimeError, ValueError) as exc:  # "Encountered NaN.": weights whose sums overflow
            found, failure = None, _one_line(exc)
        else:
            failure = "a NaN probability" if found and math.isnan(found[0][0]) else None
        if failure is not None:  # a NaN score would keep the text at any minimum
            raise CurationError(f"{self.where}: the fastText model {self.path} failed on a text: {failure}")
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
        try:
            check_kenlm_binary(p) if head.startswith(KENLM_BINARY_MAGIC) else check_arpa(p)
        except _BadModel as exc:
            raise CurationError(f"{where}: cannot load the KenLM model {path}: {_one_line(exc)}") from None
        except OSError as exc:
            raise CurationError(f"{where}: cannot read the KenLM model {path}: {_one_line(exc)}") from None
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
        self.path, self.tokenizer, self.normalization, self.where = path, tokenizer, normalization, where

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
        if math.isnan(log10_prob):  # a damaged binary model: kept by any maximum, were it returned
            raise CurationError(f"{self.where}: the KenLM model {self.path} scored a text NaN (a damaged model)")
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
