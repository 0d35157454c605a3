"""Reduced-precision inference: `auto` resolves from what torch reports about the hardware, explicit
requests the hardware or backend cannot honour are refused, cache keys keep precisions apart (fp32
keys unchanged), the run config records the resolved precision, and on a SciFact slice bf16 gives
the fp32 vectors, rankings and cross-encoder scores to within the issue's bounds."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import read_jsonl
from tripleminer import precision as pr
from tripleminer.encoders import EncoderSettings
from tripleminer.fingerprint import model_key
from tripleminer.pipelines import mine
from tripleminer.precision import compute_at, resolve_precision
from tripleminer.transforms.crossencoder import DenoiseSettings

NATIVE_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
NATIVE_FP16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: False)())


def test_each_request_on_this_cpu():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if NATIVE_BF16 else "fp32")
    assert resolve_precision(None, "cpu") == resolve_precision("auto", "cpu")
    assert resolve_precision("bf16", "cpu") == "bf16"  # emulated where not native: correct, slow (warned at load)
    if NATIVE_FP16:
        assert resolve_precision("fp16", "cpu") == "fp16"
    else:
        with pytest.raises(ValueError, match="no native fp16"):
            resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", "cpu")


@pytest.mark.parametrize("bf16, fp16, auto", [(True, False, "bf16"), (False, False, "fp32"), (False, True, "fp32")])
def test_cpu_branches(monkeypatch, bf16, fp16, auto):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: fp16)
    assert resolve_precision("auto", "cpu") == auto  # auto never picks fp16 on a CPU
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert pr.native("bf16", "cpu") is bf16
    if fp16:
        assert resolve_precision("fp16", "cpu") == "fp16"
    else:
        with pytest.raises(ValueError, match="no native fp16"):
            resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_branch(monkeypatch, bf16):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert pr.default_device() == "cuda"
    for device in (None, "cuda", "cuda:1"):
        assert resolve_precision("auto", device) == ("bf16" if bf16 else "fp16")
        assert resolve_precision("fp16", device) == "fp16"
        assert resolve_precision("fp32", device) == "fp32"
    assert asked and not any(asked)  # native support, not torch's emulation
    if bf16:
        assert resolve_precision("bf16", "cuda") == "bf16"
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            resolve_precision("bf16", "cuda")


def test_other_devices_and_onnx():
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="not mps"):
        resolve_precision("bf16", "mps")
    assert resolve_precision("auto", "cpu", backend="onnx") == "fp32"
    assert resolve_precision("fp32", "cpu", backend="onnx") == "fp32"
    for asked in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="onnx backend runs fp32 only"):
            resolve_precision(asked, "cpu", backend="onnx")


def test_compute_at_autocasts_matmuls_only_below_fp32():
    a = torch.ones(4, 4)
    with compute_at("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32
    with compute_at("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32  # only inside
    with pytest.raises(ValueError, match="cpu or cuda"):
        with compute_at("bf16", "mps"):
            pass


def test_cache_keys_fp32_unchanged_reduced_apart(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fp32 = EncoderSettings(str(model), max_seq_length=256, device="cpu")
    assert fp32.precision == "fp32" and fp32.key() == model_key(str(model), 256)  # the key from before precision existed
    assert EncoderSettings(str(model), max_seq_length=256, device="cpu", precision="fp32").key() == fp32.key()
    bf16 = EncoderSettings(str(model), max_seq_length=256, device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and bf16.key() == fp32.key() + "-bf16"
    auto = EncoderSettings(str(model), max_seq_length=256, device="cpu", precision="auto")
    assert auto.precision in ("fp32", "bf16") and auto.key() == (bf16 if auto.precision == "bf16" else fp32).key()
    assert EncoderSettings(str(model), backend="onnx", precision="auto", device="cpu").key() == model_key(str(model), None)

    ce32 = DenoiseSettings(str(model), max_length=64, device="cpu")
    assert ce32.precision == "fp32" and ce32.key() == model_key(str(model), 64)
    ce16 = DenoiseSettings(str(model), max_length=64, device="cpu", precision="bf16")
    assert ce16.key() == ce32.key() + "-bf16"


def plan(*extra):
    return mine.plan(mine.SPEC.options(["--corpus", "c.jsonl", "--qrels", "q.tsv", "--output", "out", *extra]))


def test_config_records_resolved_precision():
    auto = resolve_precision("auto", None)
    t = plan().triples
    assert t.config["precision"] == "auto" and t.config["precision_resolved"] == auto
    assert t.candidates.dense.encoder.precision == auto and "ce_precision_resolved" not in t.config
    t = plan("--precision", "fp32", "--cross_encoder", "ce-model").triples
    assert t.config["precision_resolved"] == "fp32" and t.config["ce_precision_resolved"] == "fp32"  # ce follows --precision
    assert t.denoise.precision == "fp32" and not t.denoise.key().endswith("-bf16")
    t = plan("--precision", "fp32", "--cross_encoder", "ce-model", "--ce_precision", "bf16").triples
    assert t.config["precision_resolved"] == "fp32" and t.config["ce_precision_resolved"] == "bf16"
    assert t.denoise.key().endswith("-bf16") and t.config["ce_precision"] == "bf16"
    t = plan("--embed_backend", "onnx", "--cross_encoder", "ce-model").triples
    assert t.config["precision_resolved"] == "fp32" and t.config["ce_precision_resolved"] == auto  # onnx: fp32; ce on torch
    with pytest.raises(ValueError, match="--precision bf16: the onnx backend runs fp32 only"):
        plan("--embed_backend", "onnx", "--precision", "bf16")
    if not NATIVE_FP16:
        with pytest.raises(ValueError, match="--ce_precision fp16"):
            plan("--cross_encoder", "ce-model", "--ce_precision", "fp16")


def test_log_precision_warns_where_emulated(caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="tripleminer.precision"):
        pr.log_precision("bi-encoder", "m", "fp32", "cpu")
    assert "m on cpu: fp32 precision" in caplog.text and "emulated" not in caplog.text
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with caplog.at_level(logging.INFO, logger="tripleminer.precision"):
        pr.log_precision("bi-encoder", "m", "bf16", "cpu")
    assert "bf16 is emulated on this worker's cpu" in caplog.text and "auto would pick fp32" in caplog.text


# Fidelity on a SciFact slice: bf16 against fp32 with the real MiniLM and the small trained cross-encoder.

@pytest.mark.slow
def test_bf16_fidelity_on_scifact(scifact, trained_ce):
    from tripleminer.encoders import Encoder, default_model
    from tripleminer.rerank.score import load_cross_encoder, score_pairs
    from tripleminer.schemas.outputs import passage_text
    from tripleminer.transforms.crossencoder import CrossEncoderModelHandler
    from tripleminer.transforms.embed import EncoderModelHandler

    docs = [passage_text(d) for d in read_jsonl(scifact / "corpus.jsonl")[:150]]
    queries = [q["text"] for q in read_jsonl(scifact / "queries.jsonl")[:50]]
    texts = docs + queries
    fp32 = Encoder(EncoderSettings(default_model(), max_seq_length=256, device="cpu")).encode(texts)
    handler = EncoderModelHandler(EncoderSettings(default_model(), max_seq_length=256, device="cpu", precision="bf16"), "doc",
                                  max_batch_size=512)
    bf16 = np.stack([r.inference for r in handler.run_inference(texts, handler.load_model())])  # the pipeline's path
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(fp32 * bf16, axis=1)
    assert cosine.min() >= 0.999, cosine.min()

    k = 20  # exact inner product of each query over the 150 documents
    top = {name: np.argsort(-(v[150:] @ v[:150].T), axis=1, kind="stable")[:, :k] for name, v in (("fp32", fp32), ("bf16", bf16))}
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top["fp32"], top["bf16"])])
    assert overlap >= 0.97, overlap

    pairs = [(queries[i], docs[j]) for i in range(50) for j in top["fp32"][i][:2]] + [(queries[i], docs[i]) for i in range(50)]
    ce_fp32 = score_pairs(load_cross_encoder(str(trained_ce), device="cpu"), pairs, 64)
    ce_handler = CrossEncoderModelHandler(DenoiseSettings(str(trained_ce), device="cpu", precision="bf16"))
    ce_bf16 = np.array([r.inference for r in ce_handler.run_inference(pairs, ce_handler.load_model())])
    assert ce_bf16.dtype == np.float64 and ((0 <= ce_bf16) & (ce_bf16 <= 1)).all()
    assert np.abs(ce_bf16 - ce_fp32).max() <= 0.02, np.abs(ce_bf16 - ce_fp32).max()
