"""Reference trainer: fine-tune a dual encoder on mined nested triples, and evaluate it on BEIR splits.

Tevatron-style layout: `arguments` (options), `data` (shard reader and collator), `model` (dual
encoder over sentence-transformers), `losses` and `memory` (contrastive objectives, queue), `distributed`
(process group and gathers), `train` (driver), `evaluate` (retrieval metrics) and `cli` (entry points).
"""
