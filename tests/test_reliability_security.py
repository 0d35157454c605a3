"""Security: model weights load from safetensors only, never from a pickle; index files never
unpickle; no model code runs (trust_remote_code off); no shell commands built from options.

The static checks parse the package's source (ast), so a later `os.system(...)` or
`np.load(path)` without `allow_pickle=False` fails here.
"""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest

from conftest import REPO
from tripleminer.index import bm25

PACKAGE = REPO / "tripleminer"


class _Payload:
    """A pickle that, if ever unpickled, creates a file: the proof that untrusted code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --------------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny bi-encoder and a tiny cross-encoder, each saved twice: with model.safetensors, and
    with the same weights as a pickled pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from tripleminer.encoders import default_model

    base = tmp_path_factory.mktemp("models")
    tokenizer = AutoTokenizer.from_pretrained(default_model())
    config = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    hf = base / "hf"
    BertModel(BertConfig(**config)).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    SentenceTransformer(modules=[models.Transformer(str(hf)), models.Pooling(16)], device="cpu").save(str(base / "bi_safe"))
    ce = base / "ce_safe"
    BertForSequenceClassification(BertConfig(**config, num_labels=1)).save_pretrained(ce)
    tokenizer.save_pretrained(ce)
    for name in ("bi", "ce"):
        safe, pickled = base / f"{name}_safe", base / f"{name}_bin"
        shutil.copytree(safe, pickled)
        torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
        (pickled / "model.safetensors").unlink()
    return base


@pytest.mark.slow
def test_encoder_loads_safetensors_and_refuses_pickled_weights(tiny_models, tmp_path):
    from sentence_transformers import SentenceTransformer

    from tripleminer.encoders import Encoder, EncoderSettings

    vectors = Encoder(EncoderSettings(str(tiny_models / "bi_safe"), device="cpu")).encode(["a query"])
    assert vectors.shape == (1, 16)
    pickled = str(tiny_models / "bi_bin")
    assert SentenceTransformer(pickled, device="cpu").encode(["x"]).shape == (1, 16)  # the library alone would load it
    with pytest.raises(OSError, match="model.safetensors"):
        Encoder(EncoderSettings(pickled, device="cpu"))
    # a malicious pickle in place of the weights: refused before anything is unpickled
    evil = tmp_path / "evil"
    shutil.copytree(pickled, evil)
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(OSError, match="model.safetensors"):
        Encoder(EncoderSettings(str(evil), device="cpu"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_cross_encoder_loads_safetensors_and_refuses_pickled_weights(tiny_models):
    from sentence_transformers import CrossEncoder

    from tripleminer.rerank.score import load_cross_encoder, score_pairs

    scores = score_pairs(load_cross_encoder(str(tiny_models / "ce_safe"), device="cpu"), [("q", "p")])
    assert scores.shape == (1,) and 0 <= scores[0] <= 1
    assert CrossEncoder(str(tiny_models / "ce_bin"), device="cpu").num_labels == 1  # the library alone would load it
    with pytest.raises(OSError, match="model.safetensors"):
        load_cross_encoder(str(tiny_models / "ce_bin"), device="cpu")


# --------------------------------------------------------------------------------------------
# Index files
# --------------------------------------------------------------------------------------------


def test_tampered_bm25_index_is_refused_not_unpickled(tmp_path):
    index = tmp_path / "index"
    bm25.build(["a", "b", "c"], ["the cat sat", "a dog ran", "cats and dogs"], bm25.BM25Settings(), str(index))
    assert bm25.BM25Shard(str(index)).search(["ran"], 1)[0] == [["b"]]
    npy = sorted(index.glob("*.npy"))
    assert npy, "bm25s stores its matrices as .npy"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(tmp_path / "pwned")
    np.save(npy[0], payload, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        bm25.BM25Shard(str(index))
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------------------------
# Static checks over the package source
# --------------------------------------------------------------------------------------------


def _calls(paths: List[Path]) -> Iterator[Tuple[Path, ast.Call, str]]:
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Call):
                yield path, node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))


def test_no_unsafe_deserialisation_or_shell_in_the_code():
    problems = []
    for path, call, func in _calls(SOURCES):
        where = f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)[:120]}"
        if func in ("os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads", "dill.load", "dill.loads",
                    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "yaml.load", "marshal.loads", "shelve.open"):
            problems.append(f"{where}: forbidden")
        if func.endswith(("np.load", "numpy.load")) and _kw(call, "allow_pickle") != "False":
            problems.append(f"{where}: np.load without allow_pickle=False")
        if func.endswith("BM25.load") and _kw(call, "allow_pickle") != "False":
            problems.append(f"{where}: bm25s load without allow_pickle=False")
        if func.endswith("torch.load") and _kw(call, "weights_only") != "True":
            problems.append(f"{where}: torch.load without weights_only=True")
        if func.startswith("subprocess.") or func in ("Popen", "check_output", "check_call"):
            if _kw(call, "shell") not in (None, "False"):
                problems.append(f"{where}: shell=True")
            if call.args and isinstance(call.args[0], (ast.JoinedStr, ast.BinOp, ast.Constant)):
                problems.append(f"{where}: a command string, not an argument list")
        if _kw(call, "trust_remote_code") not in (None, "False"):
            problems.append(f"{where}: trust_remote_code enabled")
    assert problems == []


def test_production_model_loaders_pin_safetensors_and_no_remote_code():
    """Every SentenceTransformer/CrossEncoder the mining pipelines load (encoders.py, rerank/score.py)
    passes trust_remote_code=False and use_safetensors=True explicitly."""
    loaders = [PACKAGE / "encoders.py", PACKAGE / "rerank" / "score.py"]
    found = [(path, call) for path, call, func in _calls(loaders) if func in ("SentenceTransformer", "CrossEncoder")]
    assert len(found) == 2
    for path, call in found:
        assert _kw(call, "trust_remote_code") == "False", path
        assert "'use_safetensors': True" in (_kw(call, "model_kwargs") or ""), path
