"""Synonyms and query rewrites a platform maintains, in Solr's ``synonyms.txt`` format, applied at query time.

The text model knows the words it was trained on; a platform knows its own (brand names, slang, the words its
editors use). A synonym file bridges the two without retraining. The format is Solr's
(``solr.SynonymGraphFilterFactory``)::

    # a comment (a line whose first non-blank character is '#'); blank lines are skipped
    tv, television, telly          equivalent terms: each is rewritten to the first, "tv"
    crimson, scarlet => red        explicit rewrite: "crimson" and "scarlet" become "red"
    sci fi, science fiction => sci-fi   terms may be phrases of several words

How a single text embedding uses a rule: Solr's ``expand=true`` would put every term of a group into the query;
an embedding model reads one text, and a list of alternatives pulls its vector toward none of them. So each
matched term is **rewritten to the canonical term** of its rule, the first term of an equivalence group (Solr's
``expand=false``) or the first term on the right of ``=>`` (a right side of several terms keeps only its first).

Matching is case-insensitive, on whole words and whole phrases (a phrase's words separated by any whitespace), the
longest term first at each position, in one pass: a replacement is never rewritten again (``a => b`` and ``b => c``
turn "a" into "b", not "c"). A term rewritten to two different targets by two rules is refused, naming both lines;
so is a malformed line (an empty term, a side of ``=>`` without terms, two ``=>``, a single term that rewrites
nothing), with the file and line number. Solr's backslash escapes (``\\,``, ``\\=>``) are not supported.

What is in use is recorded: :meth:`Synonyms.info` (path, sha256 of the file, rule count) appears in
``Recommender.info()``, ``/healthz`` and ``mmrec eval --queries`` results.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal_rec.errors import UserError

LOG = logging.getLogger(__name__)
_WORD = re.compile(r"\w")
Error = Callable[[str], UserError]  # the reason -> the error naming the file and line


def _key(term: str) -> str:
    """How a term is looked up: lowercased, whitespace runs made one space."""
    return " ".join(term.split()).lower()


@dataclass(frozen=True)
class Synonyms:
    """Parsed rewrite rules: each matched term (lowercased key) -> its canonical term."""

    path: str
    sha256: str
    rules: int  # rule lines in the file
    targets: dict[str, str]  # term key -> the text it is rewritten to
    pattern: re.Pattern[str] | None  # every term, longest first, as whole words; None when there are none

    def rewrite(self, text: str) -> str:
        """``text`` with every matched term replaced by its canonical term (unchanged when nothing matches)."""
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: self.targets[_key(m.group(0))], text)

    def rewrite_all(self, texts: Sequence[str]) -> list[str]:
        """:meth:`rewrite` of each text."""
        return [self.rewrite(t) for t in texts]

    def info(self) -> dict[str, Any]:
        """What is in use: ``{"path", "sha256", "rules", "terms"}`` (terms: distinct terms that get rewritten)."""
        return {"path": self.path, "sha256": self.sha256, "rules": self.rules, "terms": len(self.targets)}


class QueryRewriter:
    """The synonym rules a :class:`~multimodal_rec.serving.recommender.Recommender` applies to what it reads (off
    until :meth:`set`). The rules are swapped whole, so each call reads one set of rules from start to end."""

    def __init__(self) -> None:
        self.rules: Synonyms | None = None

    def set(self, synonyms: str | Path | Synonyms | None) -> None:
        """Rewrite with a synonyms file (read now: UserError naming the file and line when malformed), a parsed
        :class:`Synonyms`, or stop rewriting (None)."""
        self.rules = synonyms if synonyms is None or isinstance(synonyms, Synonyms) else load_synonyms(synonyms)

    @property
    def info(self) -> dict[str, Any] | None:
        """``{"path", "sha256", "rules", "terms"}`` of the rules in use, None when off."""
        rules = self.rules
        return None if rules is None else rules.info()

    def texts(self, texts: Sequence[str]) -> list[str]:
        """Queries as the model and BM25 read them: rewritten (as given when off)."""
        rules = self.rules
        return list(texts) if rules is None else rules.rewrite_all(texts)

    def text(self, text: str) -> str:
        """One query as read."""
        return self.texts([text])[0]

    def history(self, read: Any) -> list[str]:
        """A resolved history's texts (``serving.catalog.ResolvedHistory``) as the user tower reads them: free-text
        items rewritten; an item read as a served video's own text (``read.resolved``) stays as the catalog has it."""
        rules = self.rules
        if rules is None:
            return list(read.texts)
        pairs = zip(read.items, read.texts, strict=True)
        return [t if item.strip() in read.resolved else rules.rewrite(t) for item, t in pairs]


def load_synonyms(path: str | Path) -> Synonyms:
    """Read and parse a synonyms file (UTF-8); one-line UserError naming the file (and line) when it is unusable."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"synonyms file {p} does not exist")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"synonyms file {p} is not UTF-8 text (byte {e.start})") from None
    syn = parse_synonyms(text, str(p.resolve()), hashlib.sha256(data).hexdigest())
    if not syn.rules:
        LOG.warning("synonyms file %s holds no rule: nothing is rewritten", p)
    LOG.info("synonyms: %s (%d rules, %d terms, sha256 %s)", p, syn.rules, len(syn.targets), syn.sha256[:12])
    return syn


def parse_synonyms(text: str, path: str = "<synonyms>", sha256: str = "") -> Synonyms:
    """Parse the text of a synonyms file (see the module docstring); ``path`` names it in errors."""
    targets: dict[str, str] = {}
    line_of: dict[str, int] = {}  # term key -> the line that mapped it
    rules = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lhs, target = _rule(line, lambda why, n=n, line=line: UserError(f"{path}, line {n}: {why}: {line!r}"))
        rules += 1
        for term in lhs:
            k = _key(term)
            if k in targets and _key(targets[k]) != _key(target):
                why = f"{term!r} is rewritten to {targets[k]!r} on line {line_of[k]} and to {target!r} here"
                raise UserError(f"{path}, line {n}: {why}")
            if k != _key(target):
                targets.setdefault(k, target)
                line_of.setdefault(k, n)
    return Synonyms(path, sha256, rules, targets, _pattern(targets))


def _rule(line: str, error: Error) -> tuple[list[str], str]:
    """One rule line -> (the terms it rewrites, their canonical term)."""
    if line.count("=>") > 1:
        raise error("more than one '=>'")
    explicit = "=>" in line
    sides = [_terms(side, error) for side in line.split("=>")]
    if explicit:
        lhs, rhs = sides
        if not lhs or not rhs:
            raise error("a term is needed on both sides of '=>'")
        return lhs, rhs[0]
    terms = sides[0]
    if len(terms) < 2:
        raise error("a rule needs two or more terms separated by commas, or 'a => b'")
    return terms[1:], terms[0]


def _terms(side: str, error: Error) -> list[str]:
    """The comma-separated terms of one side of a rule, whitespace collapsed; an empty one is an error."""
    if not side.strip():
        return []
    terms = [" ".join(t.split()) for t in side.split(",")]
    for t in terms:
        if not t:
            raise error("an empty term (two commas in a row, or a comma at an end)")
        if not _WORD.search(t):
            raise error(f"the term {t!r} has no letter or digit")
    return terms


def _pattern(targets: dict[str, str]) -> re.Pattern[str] | None:
    """One regex matching every term as whole words, longest first (so "science fiction" beats "science")."""
    if not targets:
        return None
    alts = [r"\s+".join(re.escape(w) for w in k.split()) for k in sorted(targets, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)
