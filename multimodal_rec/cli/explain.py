"""``mmrec explain``: the attention weight of each history item (what drives ``mmrec recommend``), as HTTP /explain."""

from __future__ import annotations

import argparse

from multimodal_rec.cli.common import Subparsers, add_command, add_synonyms_flag, load_recommender, print_json


def cmd_explain(a: argparse.Namespace) -> None:
    why = load_recommender(a.bundle, a.synonyms).explain(a.history)
    if a.json:  # the shape of HTTP /explain and of `recommend --json`'s "attention"
        print_json({"attention": [{"text": t, "weight": w} for t, w in why]})
        return
    print(f"attention over a history of {len(why)} items (oldest first):")
    for t, w in why:
        print(f"  {w:.3f}  {t}")


def add_explain(sub: Subparsers) -> None:
    s = add_command(sub, "explain", "user history -> the weight of each item in the recommendation", cmd_explain)
    s.add_argument("--bundle", required=True)
    s.add_argument("--history", nargs="+", required=True, help="texts the user engaged with, oldest first")
    add_synonyms_flag(s)
