//! The control store's tables, created when the store opens
//! (`store.rs`). Kept apart from the code that reads and writes them so
//! that opening the store needs no module that extends it.

/// Revocations, changes, approvals, tool pins and tasks.
pub(crate) const CONTROL: &str = "
CREATE TABLE IF NOT EXISTS revocations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    revoked_by  TEXT NOT NULL,
    revoked_ms  INTEGER NOT NULL,
    lifted_by   TEXT,
    lifted_ms   INTEGER
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS revocations_active
    ON revocations (kind, value) WHERE lifted_ms IS NULL;
CREATE TABLE IF NOT EXISTS changes (
    id             TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL,
    target         TEXT NOT NULL,
    payload        TEXT NOT NULL,
    payload_hash   TEXT NOT NULL,
    summary        TEXT NOT NULL,
    status         TEXT NOT NULL,
    proposed_by    TEXT NOT NULL,
    proposed_ms    INTEGER NOT NULL,
    reviewed_by    TEXT,
    reviewed_ms    INTEGER,
    review_comment TEXT,
    activated_by   TEXT,
    activated_ms   INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY NOT NULL,
    created_ms  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    request     TEXT NOT NULL,
    args_hash   TEXT NOT NULL,
    sub         TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    decided_by  TEXT,
    decided_ms  INTEGER,
    comment     TEXT,
    released_ms INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created_ms);
CREATE TABLE IF NOT EXISTS tool_pins (
    tool        TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    decided_by  TEXT NOT NULL,
    decided_ms  INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY NOT NULL,
    template    TEXT NOT NULL,
    sub         TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_by  TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    ended_by    TEXT,
    ended_ms    INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS active (
    kind      TEXT NOT NULL,
    target    TEXT NOT NULL,
    change_id TEXT NOT NULL REFERENCES changes (id),
    PRIMARY KEY (kind, target)
) STRICT;
";

/// Task intents and their grants (`intents.rs`).
pub(crate) const INTENTS: &str = "
CREATE TABLE IF NOT EXISTS intents (
    iss          TEXT NOT NULL,
    sub          TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    intent_hash  TEXT NOT NULL,
    intent       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,
    approval_id  TEXT UNIQUE,
    approval     TEXT,
    decided_by   TEXT,
    decided_ms   INTEGER,
    comment      TEXT,
    PRIMARY KEY (iss, sub, task_id),
    CHECK ((approval_id IS NULL) = (approval IS NULL))
) STRICT;
CREATE INDEX IF NOT EXISTS intents_approval ON intents (approval, created_ms);
CREATE TABLE IF NOT EXISTS intent_grants (
    iss          TEXT NOT NULL,
    sub          TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    identifier   TEXT NOT NULL,
    position     INTEGER NOT NULL,
    body         TEXT NOT NULL,
    status       TEXT NOT NULL,
    max_uses     INTEGER,
    uses_left    INTEGER,
    used         INTEGER NOT NULL DEFAULT 0,
    last_used_ms INTEGER,
    PRIMARY KEY (iss, sub, task_id, identifier),
    FOREIGN KEY (iss, sub, task_id) REFERENCES intents (iss, sub, task_id),
    CHECK (uses_left >= 0 AND uses_left <= max_uses),
    CHECK ((max_uses IS NULL) = (uses_left IS NULL))
) STRICT;
";
