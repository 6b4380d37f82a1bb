-- One row per tools/call. Argument values are kept only for tools marked safe to log.
CREATE TABLE tool_calls (
    id           TEXT PRIMARY KEY,
    at           BIGINT NOT NULL,
    principal_id TEXT NOT NULL,
    token_id     TEXT NOT NULL,
    tool         TEXT NOT NULL,
    package      TEXT NOT NULL,
    arg_keys     TEXT NOT NULL,
    arg_bytes    BIGINT NOT NULL,
    arg_values   TEXT,
    outcome      TEXT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    runner_id    TEXT,
    call_id      TEXT NOT NULL
);
CREATE INDEX tool_calls_at ON tool_calls (at);
CREATE INDEX tool_calls_principal ON tool_calls (principal_id, at);
