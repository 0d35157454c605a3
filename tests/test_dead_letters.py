"""The one dead-letter shape (schemas/outputs.py): every stage's dead letters have exactly
DEAD_LETTER_FIELDS, the record kept as text (JSON unless it is one) and cut to RAW_LIMIT."""

from __future__ import annotations

import datetime
import json

from tripleminer.io import readers
from tripleminer.schemas.outputs import DEAD_LETTER_FIELDS, RAW_LIMIT, dead_letter


def test_fields_and_values():
    letter = dead_letter("corpus", "malformed JSON: x", '{"_id": ', file="in/corpus.jsonl")
    assert tuple(letter) == DEAD_LETTER_FIELDS
    assert letter == {"input": "corpus", "file": "in/corpus.jsonl", "reason": "malformed JSON: x", "raw": '{"_id": '}
    assert dead_letter("positives", "r", {"query_id": "q"})["file"] == ""  # later stages have no file


def test_records_become_json_text_cut_to_the_limit():
    assert dead_letter("qrels", "r", {"doc_id": "é", "score": 1.5})["raw"] == json.dumps({"doc_id": "é", "score": 1.5}, ensure_ascii=False)
    when = datetime.date(2024, 1, 2)
    assert dead_letter("sessions", "r", {"t": when})["raw"] == '{"t": "2024-01-02"}'  # non-JSON values as str()
    assert dead_letter("corpus", "r", "x" * (RAW_LIMIT + 10))["raw"] == "x" * RAW_LIMIT
    assert len(dead_letter("corpus", "r", {"text": "y" * RAW_LIMIT})["raw"]) == RAW_LIMIT


def test_readers_build_theirs_with_the_same_helper():
    assert readers.dead_letter is dead_letter
