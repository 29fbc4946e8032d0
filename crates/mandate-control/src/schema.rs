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

-- Leases: one holder at a time of a role among replicas (the audit
-- checkpoint signer), until it stops renewing.
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
) STRICT;
-- MCP transport sessions (2025-era clients), so any replica can carry
-- one on: whose it is and the client's initialize parameters.
CREATE TABLE IF NOT EXISTS mcp_sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    subject     TEXT NOT NULL,
    binding     TEXT NOT NULL,
    init_params TEXT NOT NULL,
    exp         INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS mcp_sessions_subject ON mcp_sessions (subject, created_ms);
CREATE INDEX IF NOT EXISTS mcp_sessions_exp ON mcp_sessions (exp);
-- Short-lived keyed state every replica must see (ephemeral.rs): the
-- approval page's sessions and sign-in state, MCP sign-in, MCP task handles.
CREATE TABLE IF NOT EXISTS ephemeral (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
CREATE INDEX IF NOT EXISTS ephemeral_expiry ON ephemeral (kind, expires_ms);
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

/// [`CONTROL`] for PostgreSQL: the same tables and constraints, with
/// `bigint` for every integer and an identity column for revocation ids.
pub(crate) const CONTROL_PG: &str = "
CREATE TABLE IF NOT EXISTS revocations (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    value       text NOT NULL,
    reason      text NOT NULL,
    revoked_by  text NOT NULL,
    revoked_ms  bigint NOT NULL,
    lifted_by   text,
    lifted_ms   bigint
);
CREATE UNIQUE INDEX IF NOT EXISTS revocations_active
    ON revocations (kind, value) WHERE lifted_ms IS NULL;
CREATE TABLE IF NOT EXISTS changes (
    id             text PRIMARY KEY NOT NULL,
    kind           text NOT NULL,
    target         text NOT NULL,
    payload        text NOT NULL,
    payload_hash   text NOT NULL,
    summary        text NOT NULL,
    status         text NOT NULL,
    proposed_by    text NOT NULL,
    proposed_ms    bigint NOT NULL,
    reviewed_by    text,
    reviewed_ms    bigint,
    review_comment text,
    activated_by   text,
    activated_ms   bigint
);
CREATE TABLE IF NOT EXISTS approvals (
    id          text PRIMARY KEY NOT NULL,
    created_ms  bigint NOT NULL,
    status      text NOT NULL,
    request     text NOT NULL,
    args_hash   text NOT NULL,
    sub         text NOT NULL,
    deadline_ms bigint NOT NULL,
    decided_by  text,
    decided_ms  bigint,
    comment     text,
    released_ms bigint
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created_ms);
CREATE TABLE IF NOT EXISTS tool_pins (
    tool        text PRIMARY KEY NOT NULL,
    fingerprint text NOT NULL,
    description text NOT NULL,
    status      text NOT NULL,
    reason      text NOT NULL,
    decided_by  text NOT NULL,
    decided_ms  bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS leases (
    name       text PRIMARY KEY NOT NULL,
    holder     text NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS mcp_sessions (
    id          text PRIMARY KEY NOT NULL,
    subject     text NOT NULL,
    binding     text NOT NULL,
    init_params text NOT NULL,
    exp         bigint NOT NULL,
    created_ms  bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS mcp_sessions_subject ON mcp_sessions (subject, created_ms);
CREATE INDEX IF NOT EXISTS mcp_sessions_exp ON mcp_sessions (exp);
CREATE TABLE IF NOT EXISTS ephemeral (
    kind       text NOT NULL,
    key        text NOT NULL,
    value      text NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS ephemeral_expiry ON ephemeral (kind, expires_ms);
CREATE TABLE IF NOT EXISTS tasks (
    id          text PRIMARY KEY NOT NULL,
    template    text NOT NULL,
    sub         text NOT NULL,
    status      text NOT NULL,
    started_by  text NOT NULL,
    started_ms  bigint NOT NULL,
    deadline_ms bigint NOT NULL,
    ended_by    text,
    ended_ms    bigint
);
CREATE TABLE IF NOT EXISTS active (
    kind      text NOT NULL,
    target    text NOT NULL,
    change_id text NOT NULL REFERENCES changes (id),
    PRIMARY KEY (kind, target)
);
";

/// [`INTENTS`] for PostgreSQL.
pub(crate) const INTENTS_PG: &str = "
CREATE TABLE IF NOT EXISTS intents (
    iss          text NOT NULL,
    sub          text NOT NULL,
    task_id      text NOT NULL,
    intent_hash  text NOT NULL,
    intent       text NOT NULL,
    requested_by text NOT NULL,
    created_ms   bigint NOT NULL,
    deadline_ms  bigint NOT NULL,
    approval_id  text UNIQUE,
    approval     text,
    decided_by   text,
    decided_ms   bigint,
    comment      text,
    PRIMARY KEY (iss, sub, task_id),
    CHECK ((approval_id IS NULL) = (approval IS NULL))
);
CREATE INDEX IF NOT EXISTS intents_approval ON intents (approval, created_ms);
CREATE TABLE IF NOT EXISTS intent_grants (
    iss          text NOT NULL,
    sub          text NOT NULL,
    task_id      text NOT NULL,
    identifier   text NOT NULL,
    position     bigint NOT NULL,
    body         text NOT NULL,
    status       text NOT NULL,
    max_uses     bigint,
    uses_left    bigint,
    used         bigint NOT NULL DEFAULT 0,
    last_used_ms bigint,
    PRIMARY KEY (iss, sub, task_id, identifier),
    FOREIGN KEY (iss, sub, task_id) REFERENCES intents (iss, sub, task_id),
    CHECK (uses_left >= 0 AND uses_left <= max_uses),
    CHECK ((max_uses IS NULL) = (uses_left IS NULL))
);
";
