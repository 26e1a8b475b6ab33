"""Benchmark metrics as their official evaluation code computes them: VQAv2 accuracy, ANLS, multiple-choice
letter extraction, MME acc + acc+, and a trial's aggregate score."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

from rapidfuzz.distance import Levenshtein

from curation.recipe.selection import ScoreConfig

# ---- VQAv2 (the official vqaEval.py normalization) --------------------------------------------------
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (malformed) lookahead that never fires before a
# period, so a period is removed unless a digit follows it ("2.5" is kept, "end." and "mr. x" lose it).
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa(text: str) -> str:
    """The VQAv2 answer normalization: punctuation, lowercase, number words to digits, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, references: list[str]) -> float:
    """Mean over the references of min(1, matches among the other references / 3) (leave one out)."""
    if not references:
        raise ValueError("vqa_accuracy needs at least one reference")
    pred = normalize_vqa(prediction)
    same = [normalize_vqa(r) == pred for r in references]
    matches = sum(same)
    # Integer arithmetic so that e.g. 3 agreeing answers of 10 give exactly 0.9.
    total = sum(min(3, matches - int(s)) for s in same)
    return total / (3 * len(references))


# ---- ANLS ----------------------------------------------------------------------------------------------
def _anls_norm(text: str) -> str:
    return " ".join(text.lower().split())


def anls(prediction: str, references: list[str], threshold: float = 0.5) -> float:
    """1 - normalized Levenshtein distance, best over the references; 0 when it falls below ``threshold``."""
    if not references:
        raise ValueError("anls needs at least one reference")
    pred = _anls_norm(prediction)
    best = max(1.0 - Levenshtein.normalized_distance(pred, _anls_norm(r)) for r in references)
    return best if best >= threshold else 0.0


# ---- multiple choice -----------------------------------------------------------------------------------
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_LETTER_FIRST = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])(?:\s|$)")
_ANSWER_IS = re.compile(r"(?i:answer)(?:\s+(?i:is))?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z0-9])")


def extract_choice(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter a prediction names ("B", "B.", "(B)", "B)", "B: text", "Answer: B", "The answer is B."),
    else the one option whose text it contains (case-insensitive), else None."""
    text = prediction.strip()
    letters = {k.strip().upper() for k in options}
    for pattern in (_LETTER_ONLY, _LETTER_FIRST, _ANSWER_IS):
        m = pattern.search(text)
        if m:
            letter = next(g for g in m.groups() if g)
            if letter in letters:
                return letter
    return _match_option_text(text, options)


def _match_option_text(text: str, options: Mapping[str, str]) -> str | None:
    folded = " ".join(text.casefold().split()).rstrip(".")
    texts = {k.strip().upper(): " ".join(str(v).casefold().split()) for k, v in options.items()}
    exact = [k for k, v in texts.items() if v and v == folded]
    if len(exact) == 1:
        return exact[0]
    found = [k for k, v in texts.items() if v and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", folded)]
    return found[0] if len(found) == 1 else None


# ---- MME -----------------------------------------------------------------------------------------------
MME_CATEGORIES = ("perception", "cognition")


def mme_answer(prediction: str) -> str | None:
    """The yes/no an answer gives as MME's calculation.py reads it (whole answer, else its first 4 characters)."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return None


def mme_scores(items: Iterable[tuple[str, str, str, bool]]) -> dict[str, float]:
    """(subtask, image_id, category, correct) per question -> per subtask score = acc + acc+ (0-200, also as
    ``<subtask>_acc`` and ``<subtask>_acc_plus``), ``perception`` / ``cognition`` sums and their ``total``."""
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    categories: dict[str, str] = {}
    for subtask, image_id, category, correct in items:
        if category not in MME_CATEGORIES:
            raise ValueError(f"MME subtask {subtask!r}: category {category!r} is not perception or cognition")
        if categories.setdefault(subtask, category) != category:
            raise ValueError(f"MME subtask {subtask!r} is both {categories[subtask]} and {category}")
        images[subtask][image_id].append(bool(correct))
    if not images:
        raise ValueError("mme_scores needs at least one item")
    out: dict[str, float] = {"perception": 0.0, "cognition": 0.0}
    for subtask in sorted(images):
        answers = list(images[subtask].values())
        acc = 100.0 * sum(sum(a) for a in answers) / sum(len(a) for a in answers)
        acc_plus = 100.0 * sum(all(a) for a in answers) / len(answers)
        out[subtask] = acc + acc_plus
        out[f"{subtask}_acc"] = acc
        out[f"{subtask}_acc_plus"] = acc_plus
        out[categories[subtask]] += acc + acc_plus
    out["total"] = out["perception"] + out["cognition"]
    return out


# ---- the trial's score ---------------------------------------------------------------------------------
def score(metrics: Mapping[str, float], cfg: ScoreConfig) -> float:
    """The mean of ``metrics[key] * scale`` over ``cfg.metrics``."""
    if not cfg.metrics:
        raise ValueError("score: no metrics configured")
    values = []
    for key, scale in cfg.metrics.items():
        if key not in metrics:
            raise ValueError(f"score: no metric {key!r}; available: {', '.join(sorted(metrics)) or 'none'}")
        values.append(float(metrics[key]) * scale)
    return sum(values) / len(values)
