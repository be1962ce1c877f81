"""Bytes per vector of each index type, measured on N clustered vectors, for docs/scaling.md.

Usage: python scripts/measure_index_memory.py [--n 100000] [--d 129]
Serialized size (what index.faiss takes on disk and, read without mmap, in RAM) and the resident estimate of
``multimodal_rec.index.build.describe``, per vector; recall@10 against exact search at the default search parameters.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss

from multimodal_rec.bench.index import clustered_vectors, exact_knn, recall_at_k
from multimodal_rec.index.build import PQ_CODE, build_index, describe, ivf_nlist, pq_m
from multimodal_rec.index.search import search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=129, help="embed_dim + 1 (the popularity-prior column)")
    p.add_argument("--nq", type=int, default=200)
    a = p.parse_args()
    xb, xq = clustered_vectors(a.n, a.d), clustered_vectors(a.nq, a.d, stream=1)
    _, gt = exact_knn(xb, xq, 10)
    nlist, m = ivf_nlist(a.n), pq_m(a.d)
    factories = [
        "Flat",
        "HNSW32",
        f"IVF{nlist},PQ{m}{PQ_CODE},RFlat",
        f"IVF{nlist},PQ{m}{PQ_CODE}",
        f"IVF{nlist},PQ{m}",
    ]
    rows = []
    for f in factories:
        t0 = time.time()
        index = build_index(xb, f)
        build_s = time.time() - t0
        _, I = search(index, xq, 10)  # noqa: E741
        disk = faiss.serialize_index(index).size
        rows.append(
            {
                "factory": f,
                "n": a.n,
                "d": a.d,
                "bytes_per_vector_serialized": round(disk / a.n, 1),
                "bytes_per_vector_resident": round(describe(index)["bytes"] / a.n, 1),
                "recall_at_10": round(float(recall_at_k(I, gt, 10)), 3),
                "build_s": round(build_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
