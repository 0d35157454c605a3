"""Text units the pretext generators cut passages into: sentences, words and word n-grams.

Rule-based on purpose: the generators must run on any Beam worker without downloading a model
(no NLTK data, no spaCy), and must cut the same text the same way everywhere.
"""

from __future__ import annotations

import re
from typing import List, Tuple

# NLTK's English stopword list (the one Splinter and Spider filter recurring spans with).
STOPWORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that
    these those am is are was were be been being have has had having do does did doing a an the and
    but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here
    there when where why how all any both each few more most other some such no nor not only own
    same so than too very s t can will just don should now d ll m o re ve y ain aren couldn didn
    doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
    """.split()
)

# Tokens ending in a period that do not end a sentence (lowercased, period included).
_ABBREVIATIONS = frozenset(
    "e.g. i.e. et al. vs. cf. fig. figs. ca. approx. no. nos. dr. mr. mrs. ms. prof. st. vol. "
    "eq. eqs. ref. refs. resp. sp. spp. var. ver. inc. ltd. co. jr. sr.".split()
)

_WORD = re.compile(r"\S+")
# Sentence end: . ! or ? (plus closing quotes/brackets), whitespace, then no lowercase letter.
_SENTENCE_END = re.compile(r"([.!?][\"')\]]*)\s+(?=[^\sa-z])")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
_NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)*%?$")
_LETTERS = re.compile(r"[^\W\d_]+")


def words(text: str) -> List[str]:
    """Whitespace words: the unit every generator counts lengths in, so all rates share one scale."""
    return text.split()


def word_offsets(text: str) -> List[Tuple[int, int]]:
    """Character span of every whitespace word, so a run of words maps back to an exact substring."""
    return [m.span() for m in _WORD.finditer(text)]


def _ends_sentence(text: str, dot: int) -> bool:
    """False when the word ending at `dot` is an abbreviation or an initial ("J. Smith")."""
    start = max(text.rfind(space, 0, dot) for space in " \t\n") + 1
    token = text[start : dot + 1].lower().lstrip("([{\"'")
    if token.endswith("."):
        bare = token.rstrip(".")
        if token in _ABBREVIATIONS or (len(bare) == 1 and bare.isalpha()):
            return False
    return True


def split_sentences(text: str) -> List[str]:
    """Sentences of `text`, each an exact (stripped) substring of it, in order."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if _ends_sentence(text, match.start()):
            sentences.append(text[start : match.end(1)].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def span_key(word: str) -> str:
    """A word as recurring spans compare it: edge punctuation dropped, case kept ("cells," == "cells").

    A word that is all punctuation ("+/-") stays itself rather than matching every other one.
    """
    return _EDGE_PUNCT.sub("", word) or word


def is_stopword(key: str) -> bool:
    return key.lower() in STOPWORDS


def is_content(key: str) -> bool:
    """A span may start or end only on a word that carries meaning: no stopword, not bare punctuation."""
    return not is_stopword(key) and any(c.isalnum() for c in key)


def is_number(key: str) -> bool:
    return bool(_NUMBER.match(key))


def is_capitalised(key: str) -> bool:
    return key[:1].isupper()


def letter_words(text: str) -> List[str]:
    """Runs of letters only: what a replacement word may be, so no digits or punctuation leak in."""
    return _LETTERS.findall(text)
