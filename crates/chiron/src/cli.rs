//! Command-line definition.

use std::path::PathBuf;

use chiron_core::config::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// chiron — a self-hosted MCP gateway for teams.
///
/// AI clients connect to chiron's MCP endpoint with a bearer token; chiron knows who they are,
/// shows them only the tools they were granted and runs those tools in a sandbox per person.
///
/// Start here: `chiron serve --demo` sets everything up in ./chiron-data and prints a working
/// MCP URL, token and client configuration.
#[derive(Debug, Parser)]
#[command(name = "chiron", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./chiron.toml if it exists. Every key can also be set
    /// with CHIRON_<SECTION>__<KEY>, e.g. CHIRON_SERVER__PUBLIC_URL.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Zero-config demo: create ./chiron-data, set up storage and an admin, and print
        /// what a client needs to connect.
        #[arg(long)]
        demo: bool,
    },
    /// Create the data directory and storage, and print the first admin token (once).
    Init,
    /// Apply storage migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted) and check what this host offers.
    Doctor,
    /// Print the version.
    Version,
    /// Manage principals: the people and services that hold tokens.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Manage groups of principals.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Issue, list and revoke MCP tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate and list tool packages.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Grant tool packages to principals, groups or everyone.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Secrets the egress proxy injects (values are read from stdin, never from arguments).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The standalone egress proxy (scale-out) and its credentials.
    #[command(subcommand)]
    Egress(EgressCommand),
    /// The Slack bot.
    #[command(subcommand)]
    Slack(SlackCommand),
    /// Read the audit log: administrative events and tool calls.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// See and stop the per-principal runners of a running server (uses its admin API with the
    /// token in CHIRON_ADMIN_TOKEN).
    #[command(subcommand)]
    Runner(RunnerCommand),
    /// Internal: the process inside a runner sandbox (started by the gateway, never by hand).
    #[command(hide = true)]
    RunnerAgent {
        /// The sandbox description, as JSON.
        spec: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// List live runners.
    List,
    /// Stop a principal's runner (the next call starts a new one).
    Stop {
        /// Principal id or exact display name.
        principal: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The most recent events and tool calls, oldest first.
    Tail {
        /// How many of each.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Search tool calls (and, with --action, events).
    Search(AuditSearchArgs),
    /// Egress requests (newest first): all, or those of one tool call.
    Egress {
        /// Only requests made during this call (the call audit's call_id).
        #[arg(long)]
        call: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete tool call and egress rows older than audit.retention (a running server does this
    /// hourly); administrative events are kept.
    Prune {
        /// Delete rows older than this instead (e.g. 30d).
        #[arg(long, value_parser = chiron_server::admin::parse_ttl)]
        older_than: Option<std::time::Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SlackCommand {
    /// Transport, workspaces, connection state and last event of the serving gateway's bot.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Run only the egress proxy on egress.listen; callers identify with a credential from
    /// `chiron egress issue` as the proxy password.
    Serve,
    /// Issue a credential for the standalone proxy (printed once).
    Issue {
        /// Whose requests it makes (principal id or exact display name).
        #[arg(long)]
        principal: String,
        /// The package whose egress declarations apply.
        #[arg(long)]
        package: String,
        /// The runner it is for (shown in the egress audit).
        #[arg(long, default_value = "standalone")]
        runner: String,
    },
    /// Revoke a credential by id.
    Revoke {
        /// The id `issue` printed.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a value, read from stdin (one line; a trailing newline is dropped).
    Set {
        /// The secret's name, as package manifests declare it (e.g. GITHUB_TOKEN).
        name: String,
        #[command(flatten)]
        owner: SecretOwnerArgs,
    },
    /// Names, owners and update times (never values).
    List {
        /// Only this principal's (and the team's).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Delete a value.
    Delete {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        owner: SecretOwnerArgs,
    },
    /// Re-seal every value under a new master key (key file only).
    RotateKey,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("owner").required(true).args(["principal", "team"]))]
pub struct SecretOwnerArgs {
    /// A principal id or exact display name: that principal's own value.
    #[arg(long)]
    pub principal: Option<String>,
    /// The team-wide value, used by principals without their own.
    #[arg(long)]
    pub team: bool,
}

#[derive(Debug, Args)]
pub struct AuditSearchArgs {
    /// Only calls of this principal (id or exact name).
    #[arg(long)]
    pub principal: Option<String>,
    /// Only calls of this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only calls with this outcome (ok, tool_error, invalid_arguments, unknown_tool, timeout,
    /// busy, runner_error).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only events with this action (token.issue, token.revoke, grant.add, …) instead of calls.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries newer than this, e.g. 1h, 7d.
    #[arg(long, value_parser = chiron_server::admin::parse_ttl)]
    pub since: Option<std::time::Duration>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Grant a package.
    Add(GrantArgs),
    /// List grants.
    List {
        /// Only this package.
        #[arg(long)]
        package: Option<String>,
    },
    /// Remove a grant.
    Remove(GrantArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["principal", "group", "everyone"]))]
pub struct GrantArgs {
    /// The package name.
    pub package: String,
    /// A principal id or exact display name.
    #[arg(long)]
    pub principal: Option<String>,
    /// A group name.
    #[arg(long)]
    pub group: Option<String>,
    /// Every principal.
    #[arg(long)]
    pub everyone: bool,
}

#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// List the packages and tools in the configured directories (tools.dirs).
    List,
    /// Make the running server load its tool packages again (sends it SIGHUP).
    Reload,
    /// Install the declared `source` (pypi:/npm:) of packages, once per version, into the
    /// data directory; then `chiron tool reload` (or a restart) makes them available.
    Install {
        /// Package names; all packages that declare a source when omitted.
        packages: Vec<String>,
    },
    /// Validate package folders (or folders of packages); errors name file, line and field.
    Check {
        /// Package folders or folders of packages.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal.
    Add {
        /// Display name.
        name: String,
    },
    /// List principals.
    List,
    /// Disable a principal: all of its tokens stop working.
    Disable {
        /// Principal id or exact display name.
        principal: String,
    },
    /// Re-enable a disabled principal.
    Enable {
        /// Principal id or exact display name.
        principal: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        /// Group name.
        name: String,
    },
    /// List groups.
    List,
    /// Delete a group.
    Delete {
        /// Group name.
        name: String,
    },
    /// Add a principal to a group.
    Add {
        /// Group name.
        group: String,
        /// Principal id or exact display name.
        principal: String,
    },
    /// Remove a principal from a group.
    Remove {
        /// Group name.
        group: String,
        /// Principal id or exact display name.
        principal: String,
    },
    /// List a group's members.
    Members {
        /// Group name.
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it once.
    Issue(IssueArgs),
    /// List a principal's tokens (metadata only; tokens are never stored).
    List {
        /// Principal id or exact display name.
        #[arg(long)]
        principal: String,
        /// Include revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke one token by id, or all of a principal's tokens with --all.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Principal id or exact display name.
    #[arg(long)]
    pub principal: String,
    /// A label for the token, e.g. the machine or client it is for.
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// Lifetime such as 7d, 12h (default: auth.default_token_ttl).
    #[arg(long, value_parser = chiron_server::admin::parse_ttl)]
    pub ttl: Option<std::time::Duration>,
    /// Scope to grant; repeat for several (mcp:tools, admin). Default: mcp:tools.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["token_id", "all"]))]
pub struct RevokeArgs {
    /// The token id (from `chiron token list`).
    pub token_id: Option<String>,
    /// Revoke every token of --principal.
    #[arg(long, requires = "principal")]
    pub all: bool,
    /// Principal id or exact display name (with --all).
    #[arg(long)]
    pub principal: Option<String>,
    /// Why, for the audit log.
    #[arg(long, default_value = "revoked by operator")]
    pub reason: String,
}
