-- Secrets: one value per (name, owner). owner_kind is 'principal' (owner_id the principal's id)
-- or 'team' (owner_id ''). Values are AES-256-GCM ciphertext (hex), never plaintext; key_id
-- names the master key that sealed them, nonce is hex.
CREATE TABLE secrets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    owner_kind  TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (name, owner_kind, owner_id)
);
-- The egress audit: one row per proxied request. Never a secret value, never query values.
CREATE TABLE egress_requests (
    id           TEXT PRIMARY KEY,
    at           BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    runner_id    TEXT NOT NULL,
    package      TEXT NOT NULL,
    call_id      TEXT,
    method       TEXT NOT NULL,
    host         TEXT NOT NULL,
    path         TEXT NOT NULL,
    status       BIGINT NOT NULL,
    bytes_in     BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    injected     TEXT NOT NULL,
    outcome      TEXT NOT NULL
);
CREATE INDEX egress_requests_at ON egress_requests (at);
CREATE INDEX egress_requests_call ON egress_requests (call_id);
