-- Grants give a tool package to a principal, a group, or everyone.
-- subject_kind is 'principal', 'group' or 'everyone'; subject_id is the principal or group id,
-- or '' for everyone.
CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    package      TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (package, subject_kind, subject_id)
);
CREATE INDEX grants_subject ON grants (subject_kind, subject_id);
