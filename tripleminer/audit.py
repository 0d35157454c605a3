"""`tripleminer audit OUTPUT`: the false-negative rate left in a run's written negatives, estimated
from its labelled audit sample (`--audit_sample N`, `transforms/audit_sample.py`).

Labels come from a person (`--labels FILE`: JSONL lines with `audit_id` and `label`, e.g. the
audit file itself with labels filled in, or TSV `audit_id<TAB>label`; 1 = actually relevant, a
false negative; 0 = a true negative; other or missing labels are left out and counted), or from a
cross-encoder standing in for one (`--judge MODEL`: label 1 where P(relevant) >= `--judge_threshold`).

Per stratum (source x rank bucket) the rate is k/n of its labelled sample with a Wilson score
interval. Overall, the strata rates are weighted back to the population, p = sum_h W_h p_h with
W_h = N_h / N (N_h: written negatives of stratum h), and the interval is Wilson's at the
stratified design's effective sample size n_eff = p(1-p) / sum_h W_h^2 p_h(1-p_h) / n_h (Kish;
1 / sum_h W_h^2 / n_h where that variance is 0). Strata without a labelled negative are left out
of the weighting, and their share of the population is reported. Writes `OUTPUT/audit_estimate.json`,
which the run report shows.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from statistics import NormalDist
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ESTIMATE_FILE = "audit_estimate.json"
SAMPLE_GLOB = "audit-*.jsonl"
STRATA_GLOB = "audit_strata-*.jsonl"


def wilson(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (n may be an effective, fractional size)."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 (k = n) the bound is 0 (1) exactly; rounding must not move it past a true rate of 0 (1)
    return (0.0 if k <= 0 else max(0.0, centre - half)), (1.0 if k >= n else min(1.0, centre + half))


def _read_jsonl(paths: Sequence[str]) -> List[Dict[str, Any]]:
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def load_sample(run_dir: str) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The audit sample of a run and each stratum's population (written negatives)."""
    sample_files = sorted(glob.glob(os.path.join(run_dir, SAMPLE_GLOB)))
    strata_files = sorted(glob.glob(os.path.join(run_dir, STRATA_GLOB)))
    if not sample_files or not strata_files:
        raise FileNotFoundError(f"{run_dir}: no {SAMPLE_GLOB} / {STRATA_GLOB}; mine with --audit_sample N first")
    populations = {s["stratum"]: int(s["population"]) for s in _read_jsonl(strata_files)}
    return _read_jsonl(sample_files), populations


def _label(value: Any) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return int(v) if v in (0.0, 1.0) else None


def read_labels(path: str) -> Dict[str, Optional[int]]:
    """audit_id -> label (1, 0, or None for anything else) from JSONL or TSV."""
    labels: Dict[str, Optional[int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                rec = json.loads(line)
                labels[str(rec["audit_id"])] = _label(rec.get("label"))
            else:
                cols = line.split("\t")
                if len(cols) >= 2 and cols[0] != "audit_id":
                    labels[cols[0]] = _label(cols[1])
    return labels


def judge_labels(sample: Sequence[Mapping[str, Any]], model: str, threshold: float, device: Optional[str] = None,
                 batch_size: int = 64) -> Dict[str, Optional[int]]:
    """Labels from a cross-encoder standing in for a human judge: 1 where P(relevant) >= threshold."""
    from tripleminer.rerank.score import load_cross_encoder, score_pairs

    ce = load_cross_encoder(model, device=device)
    scores = score_pairs(ce, [(s["query"], s["passage"]) for s in sample], batch_size)
    return {s["audit_id"]: int(score >= threshold) for s, score in zip(sample, scores)}


def estimate(sample: Sequence[Mapping[str, Any]], populations: Mapping[str, int], labels: Mapping[str, Optional[int]],
             confidence: float = 0.95) -> Dict[str, Any]:
    """Per-stratum and overall false-negative rates with Wilson intervals (see the module doc)."""
    per: Dict[str, Dict[str, Any]] = {h: {"population": n, "sampled": 0, "labelled": 0, "false_negatives": 0} for h, n in populations.items()}
    for s in sample:
        h = per.setdefault(s["stratum"], {"population": 0, "sampled": 0, "labelled": 0, "false_negatives": 0})
        h["sampled"] += 1
        label = labels.get(s["audit_id"])
        if label is not None:
            h["labelled"] += 1
            h["false_negatives"] += label
    total = sum(h["population"] for h in per.values())
    covered = sum(h["population"] for h in per.values() if h["labelled"])
    rate, var, inv_n = 0.0, 0.0, 0.0
    for h in per.values():
        n = h["labelled"]
        h["weight"] = h["population"] / total if total else 0.0
        if not n:
            h["rate"], h["interval"] = None, None
            continue
        p = h["false_negatives"] / n
        h["rate"], h["interval"] = p, list(wilson(h["false_negatives"], n, confidence))
        w = h["population"] / covered
        rate += w * p
        var += w * w * p * (1 - p) / n
        inv_n += w * w / n
    overall: Dict[str, Any] = {"population": total, "covered_population": covered,
                               "uncovered_share": 1 - covered / total if total else 0.0,
                               "labelled": sum(h["labelled"] for h in per.values()),
                               "false_negatives": sum(h["false_negatives"] for h in per.values())}
    if covered:
        n_eff = rate * (1 - rate) / var if var > 0 else 1 / inv_n
        overall.update(rate=rate, interval=list(wilson(rate * n_eff, n_eff, confidence)), effective_n=n_eff,
                       estimated_false_negatives=rate * covered)
    else:
        overall.update(rate=None, interval=None, effective_n=0.0, estimated_false_negatives=None)
    unlabelled = sum(h["sampled"] - h["labelled"] for h in per.values())
    return {"confidence": confidence, "strata": dict(sorted(per.items())), "overall": overall, "unlabelled": unlabelled}


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(result: Mapping[str, Any]) -> str:
    level = f"{100 * result['confidence']:.0f}%"
    lines = [f"{'stratum':<24}{'population':>11}{'labelled':>9}{'FN':>5}{'rate':>8}  {level} Wilson interval"]
    for name, h in result["strata"].items():
        interval = "-" if h["interval"] is None else f"[{_pct(h['interval'][0])}, {_pct(h['interval'][1])}]"
        lines.append(f"{name:<24}{h['population']:>11}{h['labelled']:>9}{h['false_negatives']:>5}{_pct(h['rate']):>8}  {interval}")
    o = result["overall"]
    interval = "-" if o["interval"] is None else f"[{_pct(o['interval'][0])}, {_pct(o['interval'][1])}]"
    lines.append(f"{'overall (weighted)':<24}{o['population']:>11}{o['labelled']:>9}{o['false_negatives']:>5}{_pct(o['rate']):>8}  {interval}"
                 f"  (effective n {o['effective_n']:.0f})")
    if o["uncovered_share"]:
        lines.append(f"strata without labels hold {_pct(o['uncovered_share'])} of the written negatives and are left out of the overall rate")
    if result["unlabelled"]:
        lines.append(f"{result['unlabelled']} sampled negatives have no usable label and are left out")
    return "\n".join(lines)


def run_audit(run_dir: str, labels: Optional[str] = None, judge: Optional[str] = None, judge_threshold: float = 0.5,
              confidence: float = 0.95, device: Optional[str] = None, out: Optional[str] = None) -> Dict[str, Any]:
    if bool(labels) == bool(judge):
        raise ValueError("pass exactly one of --labels FILE or --judge MODEL")
    sample, populations = load_sample(run_dir)
    found = read_labels(labels) if labels else judge_labels(sample, judge, judge_threshold, device)
    result = estimate(sample, populations, found, confidence)
    result["labels"] = {"file": labels} if labels else {"judge": judge, "threshold": judge_threshold}
    path = out or os.path.join(run_dir, ESTIMATE_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tripleminer audit", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="Output folder of a run mined with --audit_sample N.")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--labels", help="Labels of the audit sample: JSONL {audit_id, label} or TSV audit_id<TAB>label; 1 = actually relevant.")
    who.add_argument("--judge", help="Cross-encoder (local dir or hub id) to label the sample instead of a person.")
    parser.add_argument("--judge_threshold", type=float, default=0.5, help="--judge: label 1 where P(relevant) >= this.")
    parser.add_argument("--confidence", type=float, default=0.95, help="Confidence level of the Wilson intervals.")
    parser.add_argument("--device", default=None, help="--judge: model device (cpu, cuda).")
    parser.add_argument("--out", default=None, help=f"Where to write the estimate (default RUN_DIR/{ESTIMATE_FILE}).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result = run_audit(args.run_dir, args.labels, args.judge, args.judge_threshold, args.confidence, args.device, args.out)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
