//! chiron's Slack bot. A team member becomes a principal through Slack (team id + user id),
//! gets MCP tokens in a DM (never in a shared channel: every outgoing message passes one
//! guard), lists and revokes them, and sets their own secrets through a modal. Both Slack
//! transports: the Events API over HTTP ([`http`]) and Socket Mode ([`socket`]).

pub mod api;
pub mod bot;
pub mod http;
pub mod signature;
pub mod socket;
pub mod status;

pub use api::SlackApi;
pub use bot::Bot;
pub use signature::Verifier;
