"""Both embedding backends give the same unit vectors for the real MiniLM; cache keys follow the model."""

import numpy as np
import pytest

from conftest import read_jsonl
from tripleminer.encoders import Encoder, EncoderSettings, default_model
from tripleminer.schemas.outputs import passage_text


@pytest.mark.slow
def test_onnx_backend_matches_torch(scifact):
    texts = [passage_text(d) for d in read_jsonl(scifact / "corpus.jsonl")[:12]] + ["a short query", "x"]
    vectors = {b: Encoder(EncoderSettings(default_model(), max_seq_length=128, backend=b)).encode(texts) for b in ("torch", "onnx")}
    for v in vectors.values():
        assert v.shape == (len(texts), 384) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(vectors["torch"] * vectors["onnx"], axis=1)) > 0.9999


def test_cache_key_changes_with_model_files_and_length(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    key = EncoderSettings(str(model)).key()
    assert key == EncoderSettings(str(model), backend="onnx").key()  # same vectors, same key
    assert key != EncoderSettings(str(model), max_seq_length=64).key()
    (model / "model.safetensors").write_bytes(b"new weights")
    assert key != EncoderSettings(str(model)).key()
    with pytest.raises(ValueError, match="unknown embedding backend"):
        EncoderSettings(str(model), backend="tpu")
