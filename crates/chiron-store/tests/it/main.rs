//! Every repository method, run once on SQLite and once on PostgreSQL
//! (`<case>::sqlite` / `<case>::postgres`).

mod audit;
mod grants;
mod groups;
mod principals;
mod secrets;
mod support;
mod tokens;
mod tool_calls;
