-- Credentials for a standalone egress proxy (`chiron egress`), which cannot tell callers apart
-- by listener: each names a principal, a runner and a package. Only a SHA-256 hash is kept.
CREATE TABLE egress_credentials (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    principal_id TEXT NOT NULL,
    runner_id    TEXT NOT NULL,
    package      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
