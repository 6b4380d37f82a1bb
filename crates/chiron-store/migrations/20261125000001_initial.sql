-- Portable across SQLite and PostgreSQL: ids are UUID text, times are Unix milliseconds.

CREATE TABLE principals (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE external_identities (
    provider     TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (provider, tenant, subject)
);
CREATE INDEX external_identities_principal ON external_identities (principal_id);

CREATE TABLE principal_groups (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id     TEXT NOT NULL REFERENCES principal_groups (id) ON DELETE CASCADE,
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    added_at     BIGINT NOT NULL,
    PRIMARY KEY (group_id, principal_id)
);
CREATE INDEX group_members_principal ON group_members (principal_id);

-- token_hash is the hex SHA-256 (or HMAC-SHA-256 with the server pepper) of the token;
-- the token itself is never stored.
CREATE TABLE mcp_tokens (
    id             TEXT PRIMARY KEY,
    principal_id   TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    token_hash     TEXT NOT NULL UNIQUE,
    display_prefix TEXT NOT NULL,
    name           TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    audience       TEXT NOT NULL,
    created_via    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    last_used_at   BIGINT,
    revoked_at     BIGINT,
    revoke_reason  TEXT
);
CREATE INDEX mcp_tokens_principal ON mcp_tokens (principal_id);

CREATE TABLE audit_events (
    id                 TEXT PRIMARY KEY,
    at                 BIGINT NOT NULL,
    actor_principal_id TEXT,
    actor_via          TEXT NOT NULL,
    action             TEXT NOT NULL,
    target_kind        TEXT NOT NULL,
    target_id          TEXT NOT NULL,
    detail             TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_target ON audit_events (target_kind, target_id);
