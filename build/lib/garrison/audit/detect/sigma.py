"""Single-event Sigma rules over gateway requests: pySigma parses, SQLite evaluates.

No Sigma engine lives here. pySigma (SigmaHQ's reference library) parses and validates each rule;
pySigma-backend-sqlite (SigmaHQ's, the converter Zircolite runs on) turns it into one SQL ``WHERE``
with every modifier's meaning (contains, startswith, endswith, re, all, windash, cidr, base64 ...,
and case-insensitive matching); SQLite (the stdlib's, in memory) evaluates that SQL. Garrison
writes only the field mapping (webfields.py), the batching, and one pySigma transformation:
backend 1.x refuses keywords (values without a field), so ``KeywordsToFulltext`` binds them to the
``fulltext`` column as ``contains``, which is what backend 2.x does with its ``fulltext_field``.
(pySigma 2 and backend 2.x cannot be installed here: pyproject.toml says why.)

We checked ``azuma``, the one pure-Python evaluator: it installs beside pySigma 2 but parses rules
itself (not with pySigma), was last released in January 2025, and took about 2 ms per event for the
13 SigmaHQ webserver rules: 100 times the collector's whole budget. ``sigma-rule-matcher`` (on
pySigma) requires pySigma < 2 and calls itself a learning tool.

Cost: a batch's requests are inserted into an in-memory table and each rule is one query over it.
Requests repeat (the same route, agent and answer), so rows identical in every field a rule reads
are evaluated once per batch, and verdicts are cached (bounded, oldest first out) across batches.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sigma.backends.sqlite.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.modifiers import SigmaContainsModifier
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations.base import DetectionItemTransformation
from sigma.processing.transformations.state import SetStateTransformation
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import SigmaString

from garrison.audit.detect.webfields import COLUMNS, FULLTEXT, INTEGER_COLUMNS

__all__ = ["BUILTIN_RULES", "SigmaMatcher", "SigmaRuleInfo", "SigmaSetupError"]

BUILTIN_RULES = Path(__file__).parent / "sigma_rules"
CACHE_SIZE = 8192
_IDENTITY_COLUMNS = ("c-ip", "cs-username")  # per-client: part of a verdict only if a rule reads them
_LEVELS = {"informational": "low", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}


class SigmaSetupError(ValueError):
    """A Sigma rule that cannot be loaded (the message names the file and why)."""


@dataclass(frozen=True, slots=True)
class SigmaRuleInfo:
    name: str  # sigma:<rule id>
    title: str
    severity: str
    source: str


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: object) -> bool:
    """SQLite's REGEXP operator, which it leaves to the application: Python's re, as pySigma's
    regular expressions are written for (flags arrive as an inline ``(?i)`` prefix)."""
    return value is not None and _compiled(pattern).search(str(value)) is not None


@dataclass
class KeywordsToFulltext(DetectionItemTransformation):
    """Keywords become ``fulltext|contains`` (see the module docstring)."""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> SigmaDetectionItem | None:
        if detection_item.field is not None:
            return None
        contains = SigmaContainsModifier(detection_item, [])
        values = [contains.modify(v) if isinstance(v, SigmaString) else v for v in detection_item.value]
        return SigmaDetectionItem(FULLTEXT, [SigmaContainsModifier], values)


def _pipeline() -> ProcessingPipeline:
    return ProcessingPipeline(
        name="garrison web requests",
        items=[
            ProcessingItem(SetStateTransformation("table", "web"), identifier="garrison_table"),
            ProcessingItem(KeywordsToFulltext(), identifier="garrison_keywords"),
        ],
    )


def read_fields(rule: SigmaRule) -> set[str]:
    """The fields a rule's detections name (``fulltext`` for keywords)."""
    fields: set[str] = set()

    def walk(detection: SigmaDetection) -> None:
        for item in detection.detection_items:
            if isinstance(item, SigmaDetection):
                walk(item)
            else:
                fields.add(item.field or FULLTEXT)

    for detection in rule.detection.detections.values():
        walk(detection)
    return fields


def load_rules(dirs: list[Path]) -> list[tuple[SigmaRule, str]]:
    """Every ``category: webserver`` rule in ``dirs`` with its file (other categories are not ours
    to evaluate). Files are read here, not by pySigma's ``load_ruleset``, which leaves them open."""
    rules: list[tuple[SigmaRule, str]] = []
    for directory in dirs:
        if not directory.is_dir():
            raise SigmaSetupError(f"Sigma rule directory {directory} does not exist")
        for path in sorted([*directory.rglob("*.yml"), *directory.rglob("*.yaml")]):
            try:
                collection = SigmaCollection.from_yaml(path.read_text(encoding="utf-8"))
            except (SigmaError, OSError, UnicodeDecodeError) as exc:
                raise SigmaSetupError(f"{path}: not a Sigma rule: {exc}") from None
            for rule in collection.rules:
                if isinstance(rule, SigmaRule) and rule.logsource.category == "webserver":
                    rules.append((rule, str(path)))
    return rules


class SigmaMatcher:
    """Evaluates a set of web rules over batches of mapped requests (webfields.web_fields rows)."""

    def __init__(self, rules: list[tuple[SigmaRule, str]]) -> None:
        backend = sqliteBackend(_pipeline())
        self.rules: list[SigmaRuleInfo] = []
        self._queries: list[str] = []
        known = set(COLUMNS) | {FULLTEXT}
        read: set[str] = set()
        for rule, source in rules:
            try:
                fields = read_fields(rule)
                queries = backend.convert_rule(rule)
            except SigmaError as exc:
                raise SigmaSetupError(f"{source}: cannot be evaluated: {exc}") from None
            if fields - known:
                raise SigmaSetupError(
                    f"{source}: reads {', '.join(sorted(fields - known))}, which gateway requests do not "
                    f"carry (known: {', '.join(COLUMNS)})"
                )
            read |= fields
            name = f"sigma:{rule.id or Path(source).stem}"
            level = _LEVELS.get(rule.level.name.lower() if rule.level else "medium", "medium")
            self.rules.append(SigmaRuleInfo(name, rule.title, level, source))
            # The backend's SQL, from the rule's values, quoted by the backend: not user input at run time.
            self._queries.append(" UNION ".join(f"SELECT idx FROM ({q})" for q in queries))  # noqa: S608
        self._key_columns = self._key_positions(read)
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._db.create_function("regexp", 2, _regexp, deterministic=True)
        columns = ", ".join(
            f'"{c}" INTEGER' if c in INTEGER_COLUMNS else f'"{c}" TEXT COLLATE NOCASE'
            for c in (*COLUMNS, FULLTEXT)
        )
        self._db.execute(f"CREATE TABLE web (idx INTEGER, {columns})")
        self._insert = f"INSERT INTO web VALUES ({', '.join('?' * (len(COLUMNS) + 2))})"  # noqa: S608
        self._cache: dict[tuple[object, ...], tuple[int, ...]] = {}

    @staticmethod
    def _key_positions(read: set[str]) -> tuple[int, ...]:
        """Which row positions decide a verdict: all but the per-client ones no rule reads, and the
        derived duplicates (c-uri is cs-uri-query, c-useragent cs-user-agent, fulltext the rest)."""
        skip = {"c-uri", "c-useragent"} | {c for c in _IDENTITY_COLUMNS if c not in read}
        return tuple(i for i, c in enumerate(COLUMNS) if c not in skip)

    def close(self) -> None:
        self._db.close()

    def evaluate(self, rows: list[tuple[str | int | None, ...]]) -> list[tuple[int, ...]]:
        """For each row, the indices (into ``rules``) of the rules it matches."""
        verdicts: list[tuple[int, ...]] = [()] * len(rows)
        if not self._queries:
            return verdicts
        pending: dict[tuple[object, ...], list[int]] = {}
        positions = self._key_columns
        cache = self._cache
        for i, row in enumerate(rows):
            key = tuple(row[p] for p in positions)
            known = cache.get(key)
            if known is not None:
                verdicts[i] = known
            else:
                pending.setdefault(key, []).append(i)
        if pending:
            self._evaluate_new(rows, pending, verdicts)
        return verdicts

    def _evaluate_new(
        self,
        rows: list[tuple[str | int | None, ...]],
        pending: dict[tuple[object, ...], list[int]],
        verdicts: list[tuple[int, ...]],
    ) -> None:
        groups = list(pending.items())
        db = self._db
        db.executemany(self._insert, [(j, *rows[members[0]]) for j, (_, members) in enumerate(groups)])
        hits: list[list[int]] = [[] for _ in groups]
        try:
            for r, query in enumerate(self._queries):
                for (j,) in db.execute(query):
                    hits[j].append(r)
        finally:
            db.execute("DELETE FROM web")
        cache = self._cache
        for j, (key, members) in enumerate(groups):
            verdict = tuple(hits[j])
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[key] = verdict
            for i in members:
                verdicts[i] = verdict
