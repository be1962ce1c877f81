#!/usr/bin/env python3
"""Retrieval quality of each query text backend on a demo bundle (issue 18): semantic P@5 of the vocabulary and
paraphrase queries (whole catalog, and the held-out videos with --data), and caption -> video R@5 with --data.

    python scripts/compare_text_backends.py BUNDLE [--data DATA_DIR] [--backends torch onnx onnx-int8]

Needs a bundle of the synthetic world (its catalog has color, shape and motion); prints one table, differences to
the first backend included.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np


def main() -> None:
    from multimodal_rec.data.synth import paraphrase_queries, vocab_queries
    from multimodal_rec.evaluation.bundle_eval import semantic_retrieval, text_to_video
    from multimodal_rec.serving.recommender import Recommender

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--data", help="the bundle's data directory: held-out rows and captions")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"])
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows: dict[str, dict[str, float]] = {}
    for name in a.backends:
        rec = Recommender.load(a.bundle, text_backend=name)
        everything = np.arange(len(rec))
        r = {
            "vocab P@5": semantic_retrieval(rec, vocab_queries(), everything)["p@5"],
            "para P@5": semantic_retrieval(rec, paraphrase_queries(), everything)["p@5"],
        }
        if a.data:
            from multimodal_rec.evaluation.bundle_eval import load_dataset

            ds = load_dataset(a.data)
            test = set(ds.split_ids("test"))
            held = np.array([rec.row_of[v] for v in rec.video_ids if v in test])
            r["held-out vocab P@5"] = semantic_retrieval(rec, vocab_queries(), held)["p@5"]
            r["held-out para P@5"] = semantic_retrieval(rec, paraphrase_queries(), held)["p@5"]
            caps = [(v, c) for v, c in zip(ds.captions["video_id"], ds.captions["caption"], strict=True) if v in test]
            r["caption R@5"] = text_to_video(rec, caps)["r@5"]
        rows[name] = r
    cols = list(next(iter(rows.values())))
    first = next(iter(rows))
    print(f"{'backend':<12}" + "".join(f"{c:>20}" for c in cols))
    for name, r in rows.items():
        cells = "".join(f"{r[c]:>11.3f} ({r[c] - rows[first][c]:+.3f})" for c in cols)
        print(f"{name:<12}{cells}")


if __name__ == "__main__":
    main()
