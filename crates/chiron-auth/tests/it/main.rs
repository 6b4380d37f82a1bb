//! `AuthService` against real storage, once on SQLite and once on PostgreSQL.

mod support;
mod verify;
