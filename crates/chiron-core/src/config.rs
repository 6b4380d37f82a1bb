//! The typed configuration tree. The server builds it once at start from `chiron.toml` plus
//! `CHIRON_<SECTION>__<KEY>` environment overrides and hands each component its own section.
//! Every field has a default, so `chiron serve --demo` needs no file at all.
//!
//! Secret material is never a config value: the token pepper is referenced by file path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener and public identity.
    pub server: ServerConfig,
    /// Storage backend.
    pub database: DatabaseConfig,
    /// Token issuance and verification.
    pub auth: AuthConfig,
    /// The MCP endpoint.
    pub mcp: McpConfig,
    /// Tool packages.
    pub tools: ToolsConfig,
    /// Per-principal runners.
    pub runner: RunnerConfig,
    /// The egress proxy and secrets.
    pub egress: EgressConfig,
    /// The Slack bot.
    pub slack: SlackConfig,
    /// Audit rows.
    pub audit: AuditConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// The URL clients use to reach chiron (may differ from `listen` behind a reverse proxy).
    /// Token audiences and protected-resource metadata derive from it. Not set:
    /// `http://<listen>` (see [`public_url_for`]).
    pub public_url: Url,
    /// Where chiron keeps its SQLite database, keys and per-principal homes.
    pub data_dir: PathBuf,
    /// How long shutdown waits for in-flight requests before giving up.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads serving HTTP, each with its own single-threaded runtime; 0 means one per CPU.
    /// At most [`MAX_HTTP_THREADS`].
    pub http_threads: usize,
}

/// The URL clients use when `server.public_url` is not set: `http://<listen>`, with a
/// wildcard address (`0.0.0.0`, `::`) replaced by loopback.
pub fn public_url_for(listen: SocketAddr) -> Url {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Url::parse(&format!("http://{address}")).expect("a socket address makes a valid url")
}

/// The most HTTP threads `server.http_threads` may ask for.
pub const MAX_HTTP_THREADS: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            public_url: Url::parse("http://127.0.0.1:8787").expect("constant url parses"),
            data_dir: PathBuf::from("./chiron-data"),
            shutdown_grace: Duration::from_secs(30),
            http_threads: 0,
        }
    }
}

impl ServerConfig {
    /// How many HTTP threads to run: `http_threads`, or one per CPU when it is 0.
    pub fn http_thread_count(&self) -> usize {
        match self.http_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `public_url` without a trailing slash, the base for every URL chiron hands out.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_owned()
    }

    /// The MCP endpoint URL and default token audience: `<public_url>/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.public_base())
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. Empty means `sqlite://<data_dir>/chiron.db`.
    /// `CHIRON_DATABASE_URL` overrides it.
    pub url: String,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// How long a query waits for a connection before failing (and `/readyz` turning 503).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a token when the issuer names none.
    #[serde(with = "humantime_serde")]
    pub default_token_ttl: Duration,
    /// The longest lifetime any issuer may ask for.
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// How long a positive verification is cached. A revoke made through the server takes
    /// effect at once; one made by the CLI on storage takes effect within this time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How often `last_used_at` is written per token at most.
    #[serde(with = "humantime_serde")]
    pub last_used_interval: Duration,
    /// A file holding a server pepper; when set, token hashes are HMAC-SHA-256 keyed with it.
    pub pepper_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            default_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_token_ttl: Duration::from_secs(365 * 24 * 3600),
            cache_ttl: Duration::from_secs(2),
            last_used_interval: Duration::from_secs(60),
            pepper_file: None,
        }
    }
}

/// `[mcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// `Host` values accepted besides the host of `server.public_url` (and its loopback
    /// aliases when that host is loopback), e.g. `["chiron.internal:8787"]`.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin` values accepted besides the origin of `server.public_url`.
    pub allowed_origins: Vec<String>,
    /// Authorization servers advertised in protected-resource metadata; empty means
    /// `server.public_url`.
    pub authorization_servers: Vec<Url>,
    /// Human-readable name in protected-resource metadata.
    pub resource_name: String,
    /// A session unused for this long is closed.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Open sessions allowed per principal.
    pub max_sessions_per_principal: usize,
    /// Open sessions allowed in total on this process.
    pub max_sessions_total: usize,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `tools/call` requests allowed per principal per minute (429 above it).
    pub calls_per_minute: u32,
    /// How many `tools/call` requests may arrive at once before the per-minute rate applies.
    pub call_burst: u32,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            authorization_servers: Vec::new(),
            resource_name: "chiron MCP gateway".into(),
            session_ttl: Duration::from_secs(30 * 60),
            max_sessions_per_principal: 32,
            max_sessions_total: 4096,
            max_body_bytes: 4 * 1024 * 1024,
            calls_per_minute: 600,
            call_burst: 100,
        }
    }
}

/// `[tools]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Directories holding tool packages: each is a package folder (with `chiron-tool.toml`)
    /// or a folder of package folders. Empty: `./tools` if it exists, else
    /// `<data_dir>/tools` if it exists (where `serve --demo` writes the shipped packages).
    pub dirs: Vec<PathBuf>,
    /// Reload packages when a file under `dirs` changes.
    pub watch: bool,
    /// The Python whose pip installs `pypi:` sources; use the interpreter the sandbox runs
    /// (`python3` on its PATH), so compiled wheels match.
    pub python: PathBuf,
    /// The npm that installs `npm:` sources.
    pub npm: PathBuf,
    /// How often a server checks storage for grant and group changes made elsewhere (the CLI,
    /// another replica) to tell open sessions that their tool list changed.
    #[serde(with = "humantime_serde")]
    pub access_poll_interval: Duration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            watch: true,
            python: PathBuf::from("/usr/bin/python3"),
            npm: PathBuf::from("npm"),
            access_poll_interval: Duration::from_secs(2),
        }
    }
}

/// `[slack]`. Credentials come from files or the environment (`CHIRON_SLACK_SIGNING_SECRET`,
/// `CHIRON_SLACK_BOT_TOKEN`, `CHIRON_SLACK_APP_TOKEN`), never from this file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Serve the Slack bot.
    pub enabled: bool,
    /// `events` (Events API over HTTP: /slack/events, /slack/commands, /slack/interactions)
    /// or `socket` (Socket Mode over a WebSocket the gateway opens).
    pub transport: String,
    /// Slack's Web API base URL (tests point it at a local fake).
    pub api_base: Url,
    /// Team ids served; others are refused. Empty: none (the bot answers nobody).
    pub workspaces: Vec<String>,
    /// Serve guest accounts (restricted and ultra-restricted users).
    pub allow_guests: bool,
    /// Serve bot users.
    pub allow_bots: bool,
    /// File holding the signing secret (Events API).
    pub signing_secret_file: Option<PathBuf>,
    /// File holding the bot token (`xoxb-…`).
    pub bot_token_file: Option<PathBuf>,
    /// File holding the app-level token (`xapp-…`, Socket Mode).
    pub app_token_file: Option<PathBuf>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            transport: "events".into(),
            api_base: Url::parse("https://slack.com/api/").expect("invariant: static URL"),
            workspaces: Vec::new(),
            allow_guests: false,
            allow_bots: false,
            signing_secret_file: None,
            bot_token_file: None,
            app_token_file: None,
        }
    }
}

/// `[egress]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Serve each runner's proxy listener (without it, all egress is refused).
    pub enabled: bool,
    /// The master key file sealing secrets (default `<data_dir>/master.key`); the
    /// `CHIRON_MASTER_KEY` variable takes precedence.
    pub master_key_file: Option<PathBuf>,
    /// Networks tools may reach although they are internal (`10.0.0.0/8`, `127.0.0.1/32`).
    pub allowed_networks: Vec<String>,
    /// Fixed resolutions, `host` or `host:port` → `ip:port`, used before DNS.
    pub resolve: std::collections::BTreeMap<String, SocketAddr>,
    /// A PEM file of extra CA certificates upstream TLS may chain to.
    pub extra_ca: Option<PathBuf>,
    /// Where the standalone proxy (`chiron egress serve`) listens.
    pub listen: SocketAddr,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            master_key_file: None,
            allowed_networks: Vec::new(),
            resolve: Default::default(),
            extra_ca: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 3129)),
        }
    }
}

/// `[runner]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// A runner unused this long is stopped.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Live runners on this node at most; the least recently used idle one makes room.
    pub max_runners: usize,
    /// Calls running at once in one runner.
    pub max_concurrent_calls: usize,
    /// Calls waiting in one runner before new ones are refused.
    pub max_queued_calls: usize,
    /// Memory limit per runner in MiB (cgroups, where the host allows).
    pub memory_mib: u64,
    /// Process limit per runner (cgroups, where the host allows; else an rlimit).
    pub max_processes: u64,
    /// CPU per runner in percent of one core (cgroups, where the host allows; 0 = no limit).
    pub cpu_percent: u32,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15 * 60),
            max_runners: 64,
            max_concurrent_calls: 4,
            max_queued_calls: 16,
            memory_mib: 512,
            max_processes: 128,
            cpu_percent: 100,
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Tool call and egress rows older than this are deleted (hourly, by every server);
    /// `0s` keeps them forever. Administrative events are always kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 24 * 60 * 60),
        }
    }
}

/// The default `log.filter`: rmcp logs every JSON-RPC error it answers (an unknown tool, bad
/// arguments) at warn in `rmcp::service`; those are the client's mistakes, and audited.
pub const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn,rmcp::service=error";

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `chiron=debug,info`; `RUST_LOG` wins. The
    /// default keeps the MCP library's per-request lifecycle events (info level) out.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: DEFAULT_LOG_FILTER.into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A value that parses but makes no sense, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct InvalidConfig {
    /// Dotted key, e.g. `auth.cache_ttl`.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Config {
    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |key, reason: &str| {
            Err(InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        match self.server.public_url.scheme() {
            "http" | "https" => {}
            _ => return bad("server.public_url", "must be an http:// or https:// URL"),
        }
        if self.server.public_url.host_str().is_none() {
            return bad("server.public_url", "must name a host");
        }
        if !(self.database.url.is_empty()
            || self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return bad("database.url", "must start with sqlite: or postgres://");
        }
        if self.server.http_threads > MAX_HTTP_THREADS {
            return bad(
                "server.http_threads",
                &format!("must be at most {MAX_HTTP_THREADS} (0 means one per CPU)"),
            );
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if self.auth.default_token_ttl.is_zero() {
            return bad("auth.default_token_ttl", "must be positive");
        }
        if self.auth.default_token_ttl > self.auth.max_token_ttl {
            return bad(
                "auth.default_token_ttl",
                "must not exceed auth.max_token_ttl",
            );
        }
        if self.mcp.session_ttl.is_zero() {
            return bad("mcp.session_ttl", "must be positive");
        }
        if self.mcp.max_sessions_per_principal == 0 || self.mcp.max_sessions_total == 0 {
            return bad(
                "mcp.max_sessions_per_principal",
                "session limits must be at least 1",
            );
        }
        if self.mcp.calls_per_minute == 0 || self.mcp.call_burst == 0 {
            return bad("mcp.calls_per_minute", "rate limits must be at least 1");
        }
        if self.runner.max_runners == 0 || self.runner.max_concurrent_calls == 0 {
            return bad("runner.max_runners", "runner limits must be at least 1");
        }
        if self.auth.cache_ttl > Duration::from_secs(10) {
            return bad(
                "auth.cache_ttl",
                "must be at most 10s so revocations apply quickly",
            );
        }
        Ok(())
    }
}
