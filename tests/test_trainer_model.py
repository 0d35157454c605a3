"""The dual encoder saves as a sentence-transformers directory that loads back to the same embeddings."""

from __future__ import annotations

import os

import pytest
import torch
from sentence_transformers import SentenceTransformer

from tripleminer.trainer.model import DOCUMENT, QUERY, DualEncoder, resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXTS = ["Vitamin D lowers the risk of fractures.", "Statins reduce all-cause mortality in adults."]


def nudge(model: DualEncoder, name_part: str) -> None:
    """Change one weight matrix, so a saved checkpoint differs from the base model."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name_part in name:
                param.add_(0.05 * torch.randn_like(param))


def test_resolve_model_defaults_to_the_bundled_minilm_and_keeps_user_choices(tmp_path):
    assert os.path.isfile(os.path.join(resolve_model(None), "modules.json"))
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.slow
def test_shared_tower_round_trips_as_a_sentence_transformers_directory(tmp_path):
    model = DualEncoder.from_pretrained(max_seq_length=16, device="cpu").eval()
    with torch.no_grad():
        before = model.embed(TEXTS, DOCUMENT)
    nudge(model, "layer.0.attention.self.query.weight")
    model.save(str(tmp_path))
    with torch.no_grad():
        after = model.embed(TEXTS, DOCUMENT)
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert loaded.max_seq_length == 16
    torch.testing.assert_close(loaded.encode(TEXTS, convert_to_tensor=True), after, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-3)  # the checkpoint holds the changed weights


@pytest.mark.slow
def test_separate_towers_are_independent_and_load_as_query_and_document_routes(tmp_path):
    model = DualEncoder.from_pretrained(separate_towers=True, max_seq_length=16, device="cpu").eval()
    assert model.separate_towers
    with torch.no_grad():
        torch.testing.assert_close(model.embed(TEXTS, QUERY), model.embed(TEXTS, DOCUMENT))  # same start
        nudge(model, "sub_modules.query.0.model.encoder.layer.0.attention.self.query.weight")
        queries, documents = model.embed(TEXTS, QUERY), model.embed(TEXTS, DOCUMENT)
    assert not torch.allclose(queries, documents, atol=1e-3)
    model.save(str(tmp_path))

    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    torch.testing.assert_close(loaded.encode_query(TEXTS, convert_to_tensor=True), queries, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded.encode_document(TEXTS, convert_to_tensor=True), documents, rtol=1e-4, atol=1e-5)
    reloaded = DualEncoder.from_pretrained(str(tmp_path), separate_towers=True, device="cpu")
    assert reloaded.separate_towers
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
