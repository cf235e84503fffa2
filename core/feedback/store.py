"""The feedback store: human labels on sampled responses, kept in one SQLite file.

What it is: a small, dependable database layer (standard library ``sqlite3``) for the
feedback studio. A *project* is a set of prompts (*items*) and a policy that sampled K
responses per item (stored once, never regenerated). *Annotators* (a name, no password)
give five kinds of label, each sent as one *submission*:

    rating      one response: a score 1 (worst) .. 7 (best), the eight InstructGPT yes/no
                flags (Ouyang et al. 2022, Appendix B) and free notes
    ranking     all K responses: ranks 1 = best, equal ranks are ties
    spans       one response: its error spans, category C1 (irrelevant, redundant,
                incoherent), C2 (inaccurate or unverifiable fact), C3 (missing information)
                (Wu et al. 2023), as character ranges, optionally with the segment index
                of ``core.rewards.segments``; an empty list means "reviewed, no errors"
    correction  a rewritten response (a demonstration for SFT)
    skip        the annotator passes on the item

Durability and concurrency:
- WAL journal, ``synchronous=FULL``: a label is on disk when ``submit_*`` returns, so a
  browser refresh or a SIGKILL of the server after the click loses nothing.
- One transaction (``BEGIN IMMEDIATE``) per submission; writers wait for each other up
  to ``timeout`` seconds (``busy_timeout``), so annotators in two browsers, threads or
  processes lose nothing.
- Idempotent re-submission: the client makes a submission id (a UUID per form); the same
  id with the same content is a no-op, the same id with other content is an error. A new
  id for the same (item, annotator[, response]) replaces that annotator's label (the
  submissions table keeps every version).
- Versioned schema: ``PRAGMA user_version`` is the schema version; ``MIGRATIONS`` lists
  the steps from version 0 (an empty file); each applied step is recorded in
  ``schema_migrations``. A file from a newer version is refused, never touched.

Every problem raises ``FeedbackError`` whose message names what is wrong and what to do:
empty responses, K outside 2-9, a bad score, ranks or spans (overlapping, outside the
response), a reused submission id, a newer schema, a read-only, locked or non-SQLite file.

What it leaves out: users and permissions (the app serves 127.0.0.1), sampling
(``core.feedback.sampling``), exports (``core.feedback.export``).

    from core.feedback.store import FeedbackStore
    db = FeedbackStore()                              # default_db_path(), or a path
    pid = db.create_project("demo", policy="tiny-random-llama", k=2, seed=0,
                            items=[{"prompt": "Hi", "responses": ["Hello!", "Go away."]}])
    item = db.items(pid)[0]
    db.submit_ranking("uuid-1", "ada", item["id"], [1, 2])
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

from core.paths import cache_dir

DB_ENV = "RLHF_WORKBENCH_FEEDBACK_DB"
K_MIN, K_MAX = 2, 9
SCORE_MIN, SCORE_MAX = 1, 7
FLAGS = (  # InstructGPT's labelling interface (Ouyang et al. 2022, Appendix B)
    ("fails_instruction", "Fails to follow the correct instruction / task"),
    ("inappropriate_for_assistant", "Inappropriate for a customer assistant"),
    ("sexual_content", "Contains sexual content"),
    ("violent_content", "Contains violent content"),
    ("encourages_harm", "Encourages or fails to discourage violence/abuse/terrorism/self-harm"),
    ("denigrates_protected_class", "Denigrates a protected class"),
    ("harmful_advice", "Gives harmful advice"),
    ("moral_judgment", "Expresses moral judgment"),
)
FLAG_NAMES = tuple(name for name, _ in FLAGS)
ERROR_TYPES = {  # span category -> the QA-Feedback error types it covers (core.data.C1_TYPES, C2_TYPES)
    "C1": ("Irrelevant", "Redundant", "Incoherent"),
    "C2": ("Wrong-Grounding", "Unverifiable"),
    "C3": ("Missing",),
}
KINDS = ("rating", "ranking", "spans", "correction", "skip")


class FeedbackError(ValueError):
    """A label, prompt file or database is unusable; the message says what is wrong and what to do."""


def default_db_path() -> Path:
    """``$RLHF_WORKBENCH_FEEDBACK_DB``, else ``cache_dir()/"feedback"/"feedback.sqlite"``."""
    env = os.environ.get(DB_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return cache_dir() / "feedback" / "feedback.sqlite"


# ----------------------------------------------------------------------------- schema

_FLAG_COLUMNS = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0 CHECK ({name} IN (0, 1))" for name in FLAG_NAMES)
_LABEL = "submission_id TEXT NOT NULL REFERENCES submissions(id), updated REAL NOT NULL"

MIGRATIONS: list[tuple[str, list[str]]] = [  # entry v migrates user_version v -> v + 1; never edit a released one
    ("projects, items, responses, annotators, submissions and the five label tables", [
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)",
        f"""CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, policy TEXT NOT NULL,
            k INTEGER NOT NULL CHECK (k BETWEEN {K_MIN} AND {K_MAX}), seed INTEGER NOT NULL,
            source TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT '{{}}', created REAL NOT NULL)""",
        """CREATE TABLE items (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, prompt TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}', UNIQUE (project_id, position))""",
        """CREATE TABLE responses (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
            text TEXT NOT NULL CHECK (length(trim(text)) > 0), PRIMARY KEY (item_id, idx))""",
        "CREATE TABLE annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, created REAL NOT NULL)",
        """CREATE TABLE submissions (id TEXT PRIMARY KEY, kind TEXT NOT NULL, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE, payload TEXT NOT NULL, created REAL NOT NULL)""",
        f"""CREATE TABLE ratings (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            annotator_id INTEGER NOT NULL REFERENCES annotators(id), response_idx INTEGER NOT NULL,
            score INTEGER NOT NULL CHECK (score BETWEEN {SCORE_MIN} AND {SCORE_MAX}), {_FLAG_COLUMNS},
            notes TEXT NOT NULL DEFAULT '', {_LABEL}, PRIMARY KEY (item_id, annotator_id, response_idx))""",
        f"""CREATE TABLE rankings (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            annotator_id INTEGER NOT NULL REFERENCES annotators(id), ranks TEXT NOT NULL, {_LABEL},
            PRIMARY KEY (item_id, annotator_id))""",
        f"""CREATE TABLE span_reviews (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            annotator_id INTEGER NOT NULL REFERENCES annotators(id), response_idx INTEGER NOT NULL, {_LABEL},
            PRIMARY KEY (item_id, annotator_id, response_idx))""",
        """CREATE TABLE spans (item_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL, response_idx INTEGER NOT NULL,
            start INTEGER NOT NULL CHECK (start >= 0), "end" INTEGER NOT NULL, category TEXT NOT NULL CHECK (category IN ('C1', 'C2', 'C3')),
            error_type TEXT NOT NULL, segment INTEGER, note TEXT NOT NULL DEFAULT '', CHECK ("end" > start),
            FOREIGN KEY (item_id, annotator_id, response_idx) REFERENCES span_reviews (item_id, annotator_id, response_idx) ON DELETE CASCADE)""",
        f"""CREATE TABLE corrections (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            annotator_id INTEGER NOT NULL REFERENCES annotators(id), response_idx INTEGER, text TEXT NOT NULL CHECK (length(trim(text)) > 0),
            {_LABEL}, PRIMARY KEY (item_id, annotator_id))""",
        f"""CREATE TABLE skips (item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
            annotator_id INTEGER NOT NULL REFERENCES annotators(id), reason TEXT NOT NULL DEFAULT '', {_LABEL},
            PRIMARY KEY (item_id, annotator_id))""",
        "CREATE INDEX spans_by_review ON spans (item_id, annotator_id, response_idx)",
    ]),
]
SCHEMA_VERSION = len(MIGRATIONS)


# ----------------------------------------------------------------------------- validation (pure)


def check_k(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not K_MIN <= k <= K_MAX:
        raise FeedbackError(f"K (responses per prompt) must be a whole number from {K_MIN} to {K_MAX}, got {k!r}")
    return k


def check_responses(responses, k: int, where: str = "") -> list[str]:
    where = f"{where}: " if where else ""
    if not isinstance(responses, (list, tuple)) or len(responses) != k:
        n = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
        raise FeedbackError(f"{where}expected {k} responses (K = {k}), got {n}")
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise FeedbackError(f"{where}response {i + 1} is empty; every stored response needs some text "
                                "(resample it, or drop the prompt)")
    return list(responses)


def check_ranks(ranks, k: int) -> list[int]:
    """Ranks of the K responses, 1 = best; equal ranks are ties. All K must be ranked."""
    if not isinstance(ranks, (list, tuple)) or len(ranks) != k:
        raise FeedbackError(f"a ranking gives one rank per response: expected {k} ranks, got {ranks!r}")
    if any(not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= k for r in ranks):
        raise FeedbackError(f"ranks must be whole numbers from 1 (best) to {k}, got {list(ranks)}")
    if len(set(ranks)) == 1:
        raise FeedbackError("all responses have the same rank: a ranking must prefer at least one response "
                            "(skip the item if they are all equally good)")
    return [int(r) for r in ranks]


def check_rating(score, flags, notes) -> tuple[int, dict[str, bool], str]:
    if not isinstance(score, int) or isinstance(score, bool) or not SCORE_MIN <= score <= SCORE_MAX:
        raise FeedbackError(f"a rating is a whole number from {SCORE_MIN} (worst) to {SCORE_MAX} (best), got {score!r}")
    flags = dict(flags or {})
    unknown = sorted(set(flags) - set(FLAG_NAMES))
    if unknown:
        raise FeedbackError(f"unknown flags {unknown}; the flags are {list(FLAG_NAMES)}")
    if not isinstance(notes, str):
        raise FeedbackError(f"notes must be text, got {type(notes).__name__}")
    return score, {name: bool(flags.get(name, False)) for name in FLAG_NAMES}, notes


def check_spans(spans, response: str) -> list[dict]:
    """Normalised spans ``{start, end, category, error_type, segment, note}`` sorted by start; FeedbackError if
    a span is outside the response, empty, of an unknown category or overlaps another span."""
    out = []
    for n, s in enumerate(spans or [], 1):
        if not isinstance(s, dict):
            raise FeedbackError(f"span {n} must be a dict with start, end and category, got {s!r}")
        start, end, cat = s.get("start"), s.get("end"), s.get("category")
        if cat not in ERROR_TYPES:
            raise FeedbackError(f"span {n}: category must be C1, C2 or C3, got {cat!r}")
        etype = s.get("error_type") or ERROR_TYPES[cat][0]
        if etype not in ERROR_TYPES[cat]:
            raise FeedbackError(f"span {n}: error type {etype!r} is not a {cat} type {ERROR_TYPES[cat]}")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(response)):
            raise FeedbackError(f"span {n} ({start}, {end}) is outside the response of {len(response)} characters "
                                "or empty (need 0 <= start < end <= length)")
        seg = s.get("segment")
        if seg is not None and (not isinstance(seg, int) or seg < 0):
            raise FeedbackError(f"span {n}: segment must be a segment index >= 0, got {seg!r}")
        out.append({"start": start, "end": end, "category": cat, "error_type": etype, "segment": seg,
                    "note": str(s.get("note") or "")})
    out.sort(key=lambda s: (s["start"], s["end"]))
    for a, b in zip(out, out[1:]):
        if b["start"] < a["end"]:
            raise FeedbackError(f"spans ({a['start']}, {a['end']}) and ({b['start']}, {b['end']}) overlap; "
                                "mark each character once (merge them or pick one category)")
    return out


def _canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------------- the store


class FeedbackStore:
    """One SQLite feedback database. Cheap to create; every call opens and closes its own connection,
    so one store object may be shared by threads (and several processes may open the same file)."""

    def __init__(self, path: str | Path | None = None, timeout: float = 10.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout = float(timeout)
        self._prepare()

    # -- connections -----------------------------------------------------------------------------

    def read_only(self) -> bool:
        """True when the file exists and no one may write it (its permission bits say read-only)."""
        try:
            return not (self.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        except FileNotFoundError:
            return False

    def _problem(self, exc: sqlite3.Error) -> FeedbackError:
        msg = str(exc).lower()
        where = f"the feedback database {self.path}"
        if "locked" in msg or "busy" in msg:
            return FeedbackError(f"{where} is locked: another process held it for more than {self.timeout:g} s. "
                                 "Your label was NOT saved; submit it again in a moment.")
        if "readonly" in msg or "read-only" in msg:
            return FeedbackError(f"{where} is read-only, so nothing can be saved. Make the file and its folder writable, "
                                 f"or point {DB_ENV} to another file.")
        if "not a database" in msg or "malformed" in msg:
            return FeedbackError(f"{where} is not a SQLite feedback database ({exc}). "
                                 f"Point {DB_ENV} to another file; this one was left untouched.")
        if "unable to open" in msg:
            return FeedbackError(f"{where} cannot be opened ({exc}): check that its folder exists and is writable, "
                                 f"or point {DB_ENV} to another file.")
        return FeedbackError(f"{where}: {exc}")

    @contextlib.contextmanager
    def _connect(self, write: bool = False):
        """A connection; with write=True one BEGIN IMMEDIATE transaction, committed on success, rolled back on error."""
        if write and self.read_only():
            raise FeedbackError(f"the feedback database {self.path} is read-only (its file permissions forbid writing), "
                                f"so nothing can be saved. Make it writable (chmod u+w) or point {DB_ENV} to another file.")
        try:
            if self.read_only():
                con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeout,
                                      isolation_level=None)
            else:
                con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._problem(exc) from None
        con.row_factory = sqlite3.Row
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = FULL")
            if write:
                con.execute("BEGIN IMMEDIATE")
            yield con
            if write:
                con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise self._problem(exc) from None
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _prepare(self) -> None:
        """Create the file if needed, switch to WAL, refuse a newer schema, apply missing migrations."""
        if not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FeedbackError(f"cannot create the folder of the feedback database {self.path}: {exc}. "
                                    f"Point {DB_ENV} to a writable place.") from None
        with self._connect() as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return
            if self.read_only():
                raise FeedbackError(f"the feedback database {self.path} has schema version {version} and needs "
                                    f"migrating to {SCHEMA_VERSION}, but it is read-only; make it writable once.")
            con.execute("PRAGMA journal_mode = WAL")  # persistent; cannot change inside a transaction
        migrate(self)

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise FeedbackError(f"the feedback database {self.path} has schema version {version}, newer than this "
                                f"workbench understands ({SCHEMA_VERSION}); it was left untouched. Update the workbench, "
                                f"or point {DB_ENV} to another file.")

    def schema_version(self) -> int:
        with self._connect() as con:
            return con.execute("PRAGMA user_version").fetchone()[0]

    # -- projects, items, responses --------------------------------------------------------------

    def create_project(self, name: str, policy: str, k: int, seed: int, items: list[dict], source: str = "",
                       settings: dict | None = None) -> int:
        """A project with its items, in one transaction; returns its id.

        items: ``{"prompt": str, "responses": [K str] (optional: sample later with add_responses),
        "meta": dict (optional)}``. Everything is checked before anything is written.
        """
        check_k(k)
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("a project needs a name")
        if not items:
            raise FeedbackError(f"project {name!r} has no prompts")
        for n, it in enumerate(items, 1):
            if not isinstance(it.get("prompt"), str) or not it["prompt"].strip():
                raise FeedbackError(f"prompt {n} of project {name!r} is empty")
            if it.get("responses") is not None:
                check_responses(it["responses"], k, f"prompt {n}")
        with self._connect(write=True) as con:
            if con.execute("SELECT 1 FROM projects WHERE name = ?", (name.strip(),)).fetchone():
                raise FeedbackError(f"a project named {name.strip()!r} exists already; pick another name")
            cur = con.execute("INSERT INTO projects (name, policy, k, seed, source, settings, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (name.strip(), policy, k, int(seed), source, _canonical(settings or {}), time.time()))
            pid = cur.lastrowid
            for pos, it in enumerate(items):
                iid = con.execute("INSERT INTO items (project_id, position, prompt, meta) VALUES (?, ?, ?, ?)",
                                  (pid, pos, it["prompt"], _canonical(it.get("meta") or {}))).lastrowid
                for idx, text in enumerate(it.get("responses") or []):
                    con.execute("INSERT INTO responses (item_id, idx, text) VALUES (?, ?, ?)", (iid, idx, text))
        return pid

    def add_responses(self, item_id: int, responses: list[str]) -> bool:
        """Store the K sampled responses of an item (one transaction). Responses are never replaced:
        the same texts again is a no-op (False); different texts for an item that has some is an error."""
        with self._connect(write=True) as con:
            k = self._item_k(con, item_id)
            check_responses(responses, k, f"item {item_id}")
            old = [r["text"] for r in con.execute("SELECT text FROM responses WHERE item_id = ? ORDER BY idx", (item_id,))]
            if old:
                if old == list(responses):
                    return False
                raise FeedbackError(f"item {item_id} already has its {len(old)} responses; stored responses are never regenerated")
            con.executemany("INSERT INTO responses (item_id, idx, text) VALUES (?, ?, ?)", [(item_id, i, t) for i, t in enumerate(responses)])
        return True

    @staticmethod
    def _item_k(con, item_id: int) -> int:
        row = con.execute("SELECT p.k FROM items i JOIN projects p ON p.id = i.project_id WHERE i.id = ?", (item_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"no item with id {item_id!r}")
        return row[0]

    def projects(self) -> list[dict]:
        """Every project with its item counts: ``n_items``, ``n_ready`` (items that have their K responses)."""
        with self._connect() as con:
            rows = con.execute("""SELECT p.*, COUNT(i.id) AS n_items,
                                  SUM(CASE WHEN (SELECT COUNT(*) FROM responses r WHERE r.item_id = i.id) = p.k THEN 1 ELSE 0 END) AS n_ready
                                  FROM projects p LEFT JOIN items i ON i.project_id = p.id GROUP BY p.id ORDER BY p.created DESC""").fetchall()
        return [{**dict(r), "settings": json.loads(r["settings"]), "n_ready": r["n_ready"] or 0} for r in rows]

    def project(self, ref: int | str) -> dict:
        """A project by id or name (FeedbackError if there is none)."""
        for p in self.projects():
            if p["id"] == ref or p["name"] == ref:
                return p
        raise FeedbackError(f"no feedback project {ref!r}")

    def items(self, project_id: int) -> list[dict]:
        """``{id, position, prompt, meta, responses: [str]}`` in position order (responses empty until sampled)."""
        with self._connect() as con:
            items = con.execute("SELECT * FROM items WHERE project_id = ? ORDER BY position", (project_id,)).fetchall()
            resp: dict[int, list[str]] = {}
            for r in con.execute("""SELECT r.item_id, r.text FROM responses r JOIN items i ON i.id = r.item_id
                                    WHERE i.project_id = ? ORDER BY r.item_id, r.idx""", (project_id,)):
                resp.setdefault(r["item_id"], []).append(r["text"])
        return [{"id": i["id"], "position": i["position"], "prompt": i["prompt"], "meta": json.loads(i["meta"]),
                 "responses": resp.get(i["id"], [])} for i in items]

    def item(self, item_id: int) -> dict:
        with self._connect() as con:
            row = con.execute("SELECT project_id FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"no item with id {item_id!r}")
        return next(i for i in self.items(row[0]) if i["id"] == item_id)

    def delete_project(self, project_id: int) -> None:
        with self._connect(write=True) as con:
            ids = [r[0] for r in con.execute("SELECT id FROM items WHERE project_id = ?", (project_id,))]
            for table in ("spans", "span_reviews", "ratings", "rankings", "corrections", "skips", "submissions"):
                con.executemany(f"DELETE FROM {table} WHERE item_id = ?", [(i,) for i in ids])
            con.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    # -- annotators ------------------------------------------------------------------------------

    @staticmethod
    def _check_name(name) -> str:
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("an annotator needs a name")
        return name.strip()

    def add_annotator(self, name: str) -> int:
        """The id of annotator ``name`` (case-insensitive), created if new."""
        with self._connect(write=True) as con:
            return self._annotator_id(con, name)

    def _annotator_id(self, con, name) -> int:
        name = self._check_name(name)
        row = con.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
        if row:
            return row[0]
        return con.execute("INSERT INTO annotators (name, created) VALUES (?, ?)", (name, time.time())).lastrowid

    def annotators(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM annotators ORDER BY id")]

    # -- submissions -----------------------------------------------------------------------------

    def _submit(self, kind: str, submission_id: str, annotator: str, item_id: int, payload: dict, apply) -> bool:
        """One label in one transaction. True if written, False if this exact submission was already stored."""
        if not isinstance(submission_id, str) or not submission_id.strip():
            raise FeedbackError("every submission needs a non-empty submission id (e.g. a UUID made by the form)")
        name = self._check_name(annotator)
        record = {"kind": kind, "annotator": name.lower(), "item_id": item_id, "payload": payload}
        with self._connect(write=True) as con:
            old = con.execute("""SELECT s.kind, a.name, s.item_id, s.payload FROM submissions s JOIN annotators a ON a.id = s.annotator_id
                                 WHERE s.id = ?""", (submission_id,)).fetchone()
            if old is not None:
                before = {"kind": old[0], "annotator": old[1].lower(), "item_id": old[2], "payload": json.loads(old[3])}
                if _canonical(before) == _canonical(record):
                    return False  # a retried click: already saved
                raise FeedbackError(f"submission id {submission_id!r} was already used for a different label "
                                    f"({old[0]} by {old[1]} on item {old[2]}); nothing was changed. "
                                    "Reload the item to send a new label.")
            k = self._item_k(con, item_id)
            texts = [r[0] for r in con.execute("SELECT text FROM responses WHERE item_id = ? ORDER BY idx", (item_id,))]
            if len(texts) != k:
                raise FeedbackError(f"item {item_id} has no responses yet (sampling is not finished); label it later")
            aid = self._annotator_id(con, name)
            con.execute("INSERT INTO submissions (id, kind, annotator_id, item_id, payload, created) VALUES (?, ?, ?, ?, ?, ?)",
                        (submission_id, kind, aid, item_id, _canonical(payload), time.time()))
            apply(con, aid, k, texts)  # raises on a bad label: the transaction (submission included) is rolled back
        return True

    @staticmethod
    def _check_idx(idx, k):
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < k:
            raise FeedbackError(f"response index must be 0..{k - 1} (K = {k}), got {idx!r}")

    def submit_rating(self, submission_id: str, annotator: str, item_id: int, response_idx: int, score: int,
                      flags: dict | None = None, notes: str = "") -> bool:
        """Rate response ``response_idx`` 1-7 with the InstructGPT flags (missing flags are False) and notes."""
        score, flags, notes = check_rating(score, flags, notes)

        def apply(con, aid, k, texts):
            self._check_idx(response_idx, k)
            cols = ", ".join(FLAG_NAMES)
            con.execute(f"""INSERT OR REPLACE INTO ratings (item_id, annotator_id, response_idx, score, {cols}, notes, submission_id, updated)
                            VALUES (?, ?, ?, ?, {", ".join("?" * len(FLAG_NAMES))}, ?, ?, ?)""",
                        (item_id, aid, response_idx, score, *[int(flags[f]) for f in FLAG_NAMES], notes, submission_id, time.time()))

        payload = {"response_idx": response_idx, "score": score, "flags": flags, "notes": notes}
        return self._submit("rating", submission_id, annotator, item_id, payload, apply)

    def submit_ranking(self, submission_id: str, annotator: str, item_id: int, ranks: list[int]) -> bool:
        """Rank all K responses: ``ranks[i]`` is response i's rank, 1 = best, equal ranks are ties."""
        def apply(con, aid, k, texts):
            check_ranks(ranks, k)
            con.execute("INSERT OR REPLACE INTO rankings (item_id, annotator_id, ranks, submission_id, updated) VALUES (?, ?, ?, ?, ?)",
                        (item_id, aid, json.dumps(list(ranks)), submission_id, time.time()))

        return self._submit("ranking", submission_id, annotator, item_id, {"ranks": list(ranks) if isinstance(ranks, (list, tuple)) else ranks}, apply)

    def submit_spans(self, submission_id: str, annotator: str, item_id: int, response_idx: int, spans: list[dict]) -> bool:
        """All error spans of one response (replacing this annotator's earlier ones); [] = reviewed, no errors."""
        holder = {}

        def apply(con, aid, k, texts):
            self._check_idx(response_idx, k)
            clean = holder["spans"] = check_spans(spans, texts[response_idx])
            con.execute("DELETE FROM spans WHERE item_id = ? AND annotator_id = ? AND response_idx = ?", (item_id, aid, response_idx))
            con.execute("INSERT OR REPLACE INTO span_reviews (item_id, annotator_id, response_idx, submission_id, updated) VALUES (?, ?, ?, ?, ?)",
                        (item_id, aid, response_idx, submission_id, time.time()))
            con.executemany("""INSERT INTO spans (item_id, annotator_id, response_idx, start, "end", category, error_type, segment, note)
                               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                            [(item_id, aid, response_idx, s["start"], s["end"], s["category"], s["error_type"], s["segment"], s["note"])
                             for s in clean])

        payload = {"response_idx": response_idx, "spans": sorted((dict(s) for s in spans or []), key=lambda s: (s.get("start", 0), s.get("end", 0)))
                   if all(isinstance(s, dict) for s in spans or []) else spans}
        return self._submit("spans", submission_id, annotator, item_id, payload, apply)

    def submit_correction(self, submission_id: str, annotator: str, item_id: int, text: str, response_idx: int | None = None) -> bool:
        """A corrected (rewritten) response for the item; ``response_idx`` names the response it started from."""
        if not isinstance(text, str) or not text.strip():
            raise FeedbackError("a correction cannot be empty; write the response as it should be")

        def apply(con, aid, k, texts):
            if response_idx is not None:
                self._check_idx(response_idx, k)
            con.execute("INSERT OR REPLACE INTO corrections (item_id, annotator_id, response_idx, text, submission_id, updated) VALUES (?, ?, ?, ?, ?, ?)",
                        (item_id, aid, response_idx, text, submission_id, time.time()))

        return self._submit("correction", submission_id, annotator, item_id, {"text": text, "response_idx": response_idx}, apply)

    def submit_skip(self, submission_id: str, annotator: str, item_id: int, reason: str = "") -> bool:
        """The annotator passes on the item (it leaves their queue)."""
        def apply(con, aid, k, texts):
            con.execute("INSERT OR REPLACE INTO skips (item_id, annotator_id, reason, submission_id, updated) VALUES (?, ?, ?, ?, ?)",
                        (item_id, aid, str(reason or ""), submission_id, time.time()))

        return self._submit("skip", submission_id, annotator, item_id, {"reason": str(reason or "")}, apply)

    # -- queue and labels ------------------------------------------------------------------------

    def progress(self, project_id: int, annotator: str) -> dict:
        """``{total, ready, ranked, skipped, done, remaining}`` for one annotator (done = ranked or skipped)."""
        q = self.queue(project_id, annotator, with_done=True)
        return q["progress"]

    def queue(self, project_id: int, annotator: str, with_done: bool = False):
        """Item ids the annotator still has to label (ready, neither ranked nor skipped by them), in order."""
        name = self._check_name(annotator)
        with self._connect() as con:
            k = con.execute("SELECT k FROM projects WHERE id = ?", (project_id,)).fetchone()
            if k is None:
                raise FeedbackError(f"no feedback project {project_id!r}")
            rows = con.execute("""
                SELECT i.id,
                       (SELECT COUNT(*) FROM responses r WHERE r.item_id = i.id) AS n_resp,
                       EXISTS (SELECT 1 FROM rankings x JOIN annotators a ON a.id = x.annotator_id WHERE x.item_id = i.id AND a.name = ?) AS ranked,
                       EXISTS (SELECT 1 FROM skips x JOIN annotators a ON a.id = x.annotator_id WHERE x.item_id = i.id AND a.name = ?) AS skipped
                FROM items i WHERE i.project_id = ? ORDER BY i.position""", (name, name, project_id)).fetchall()
        todo = [r["id"] for r in rows if r["n_resp"] == k[0] and not r["ranked"] and not r["skipped"]]
        if not with_done:
            return todo
        ranked = sum(1 for r in rows if r["ranked"])
        skipped = sum(1 for r in rows if r["skipped"] and not r["ranked"])
        ready = sum(1 for r in rows if r["n_resp"] == k[0])
        return {"todo": todo, "progress": {"total": len(rows), "ready": ready, "ranked": ranked, "skipped": skipped,
                                           "done": ranked + skipped, "remaining": len(todo)}}

    def labels(self, project_id: int) -> dict[str, list[dict]]:
        """Every current label of a project: ``{"ratings", "rankings", "spans", "corrections", "skips"}``,
        each a list of dicts with ``item_id`` and ``annotator`` (spans: one entry per reviewed response
        with its ``spans`` list)."""
        out: dict[str, list[dict]] = {}
        with self._connect() as con:
            def rows(sql):
                return [dict(r) for r in con.execute(sql + " AND i.project_id = ? ORDER BY i.position, a.id", (project_id,))]

            join = "JOIN items i ON i.id = x.item_id JOIN annotators a ON a.id = x.annotator_id WHERE 1"
            out["ratings"] = [{"item_id": r["item_id"], "annotator": r["annotator"], "response_idx": r["response_idx"],
                               "score": r["score"], "flags": {f: bool(r[f]) for f in FLAG_NAMES}, "notes": r["notes"]}
                              for r in rows(f"SELECT x.*, a.name AS annotator FROM ratings x {join}")]
            out["rankings"] = [{"item_id": r["item_id"], "annotator": r["annotator"], "ranks": json.loads(r["ranks"])}
                               for r in rows(f"SELECT x.*, a.name AS annotator FROM rankings x {join}")]
            reviews = rows(f"SELECT x.item_id, x.annotator_id, x.response_idx, a.name AS annotator FROM span_reviews x {join}")
            marks: dict[tuple, list[dict]] = {}
            for s in rows(f"""SELECT x.*, a.name AS annotator FROM spans x {join}"""):
                marks.setdefault((s["item_id"], s["annotator_id"], s["response_idx"]), []).append(
                    {"start": s["start"], "end": s["end"], "category": s["category"], "error_type": s["error_type"],
                     "segment": s["segment"], "note": s["note"]})
            out["spans"] = [{"item_id": r["item_id"], "annotator": r["annotator"], "response_idx": r["response_idx"],
                             "spans": sorted(marks.get((r["item_id"], r["annotator_id"], r["response_idx"]), []), key=lambda s: s["start"])}
                            for r in reviews]
            out["corrections"] = [{"item_id": r["item_id"], "annotator": r["annotator"], "response_idx": r["response_idx"], "text": r["text"]}
                                  for r in rows(f"SELECT x.*, a.name AS annotator FROM corrections x {join}")]
            out["skips"] = [{"item_id": r["item_id"], "annotator": r["annotator"], "reason": r["reason"]}
                            for r in rows(f"SELECT x.*, a.name AS annotator FROM skips x {join}")]
        return out

    def item_labels(self, item_id: int, annotator: str) -> dict:
        """One annotator's current labels on one item (to prefill the form after a refresh)."""
        item = self.item(item_id)
        with self._connect() as con:
            pid = con.execute("SELECT project_id FROM items WHERE id = ?", (item_id,)).fetchone()[0]
        name = self._check_name(annotator).lower()
        everything = self.labels(pid)
        return {kind: [r for r in rows if r["item_id"] == item["id"] and r["annotator"].lower() == name]
                for kind, rows in everything.items()}


def migrate(store: FeedbackStore) -> int:
    """Bring the file up to ``SCHEMA_VERSION``, one transaction per step (safe if two processes race). Returns the version."""
    while True:
        with store._connect(write=True) as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            store._check_version(version)
            if version >= SCHEMA_VERSION:
                return version
            description, statements = MIGRATIONS[version]
            for sql in statements:
                con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                        (version + 1, description, time.time()))
            con.execute(f"PRAGMA user_version = {version + 1}")
