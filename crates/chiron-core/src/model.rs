//! Records that storage persists and the server exposes. None of them ever holds a token or a
//! secret value: tokens are represented by their id and display prefix only.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{AuditId, GroupId, PrincipalId, TokenId};
use crate::time_util::serde_rfc3339;

/// Whether a principal may authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalStatus {
    /// Tokens of this principal verify.
    Active,
    /// Every token of this principal is refused.
    Disabled,
}

impl PrincipalStatus {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

impl FromStr for PrincipalStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            other => Err(UnknownValue::new("principal status", other)),
        }
    }
}

/// A person or service known to chiron.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Stable id.
    pub id: PrincipalId,
    /// Human-readable name, unique is not required.
    pub display_name: String,
    /// Active or disabled.
    pub status: PrincipalStatus,
    /// When the principal was created.
    #[serde(with = "serde_rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Principal {
    /// Whether tokens of this principal may be used.
    pub fn is_active(&self) -> bool {
        self.status == PrincipalStatus::Active
    }
}

/// A link from an external identity provider's account to a principal, for example
/// `slack` / team id / user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdentity {
    /// Provider name such as `slack`.
    pub provider: String,
    /// Provider tenant such as a Slack team id.
    pub tenant: String,
    /// Subject within the tenant such as a Slack user id.
    pub subject: String,
    /// The principal this identity maps to.
    pub principal_id: PrincipalId,
    /// When the link was made.
    #[serde(with = "serde_rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A named set of principals, used by grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Stable id.
    pub id: GroupId,
    /// Unique name.
    pub name: String,
    /// When the group was created.
    #[serde(with = "serde_rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// List and call tools over MCP.
    #[serde(rename = "mcp:tools")]
    McpTools,
    /// Use the admin API.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::McpTools => "mcp:tools",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mcp:tools" => Ok(Self::McpTools),
            "admin" => Ok(Self::Admin),
            other => Err(UnknownValue::new("scope", other)),
        }
    }
}

/// A non-empty set of scopes, stored as a space-separated list (the OAuth spelling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// A set holding exactly the given scopes.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().collect())
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Scopes {
    type Err = UnknownValue;
    /// Parses a list separated by spaces or commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split([' ', ','])
            .filter(|part| !part.is_empty())
            .map(Scope::from_str)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }
}

/// Which path issued a token; recorded for audit and for the Slack "your tokens" view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreatedVia {
    /// `chiron token issue` or `chiron init`.
    Cli,
    /// The admin HTTP API.
    AdminApi,
    /// The Slack bot.
    Slack,
    /// `chiron serve --demo`.
    Demo,
}

impl CreatedVia {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::AdminApi => "admin-api",
            Self::Slack => "slack",
            Self::Demo => "demo",
        }
    }
}

impl FromStr for CreatedVia {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cli" => Ok(Self::Cli),
            "admin-api" => Ok(Self::AdminApi),
            "slack" => Ok(Self::Slack),
            "demo" => Ok(Self::Demo),
            other => Err(UnknownValue::new("token origin", other)),
        }
    }
}

/// Metadata of an issued MCP token. The token itself is never stored; only its keyed hash
/// (kept inside storage) and this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpToken {
    /// Stable id, shown to users so they can revoke.
    pub id: TokenId,
    /// The principal the token authenticates.
    pub principal_id: PrincipalId,
    /// A label chosen at issue time.
    pub name: String,
    /// The first characters of the token, enough to recognise it, never enough to use it.
    pub display_prefix: String,
    /// What the token may do.
    pub scopes: Scopes,
    /// The resource the token is for, normally `<public_url>/mcp`.
    pub audience: String,
    /// Which path issued it.
    pub created_via: CreatedVia,
    /// When it was issued.
    #[serde(with = "serde_rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it stops working.
    #[serde(with = "serde_rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The last time it verified, coalesced to about once a minute.
    #[serde(with = "serde_rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    #[serde(with = "serde_rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
}

impl McpToken {
    /// Whether the token is neither revoked nor expired at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// Who performed an audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting principal, when the action came through an authenticated path.
    pub principal_id: Option<PrincipalId>,
    /// The path: `cli`, `admin-api`, `slack`, `demo`, `system`.
    pub via: String,
}

impl Actor {
    /// An action taken by an operator on the command line.
    pub fn cli() -> Self {
        Self {
            principal_id: None,
            via: "cli".into(),
        }
    }

    /// An action taken by chiron itself (demo setup, expiry).
    pub fn system(via: &str) -> Self {
        Self {
            principal_id: None,
            via: via.into(),
        }
    }

    /// An action taken by an authenticated principal through `via`.
    pub fn principal(principal_id: PrincipalId, via: &str) -> Self {
        Self {
            principal_id: Some(principal_id),
            via: via.into(),
        }
    }
}

/// An audit event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// Who did it.
    pub actor: Actor,
    /// What was done, e.g. `token.issue`, `token.revoke`, `principal.disable`.
    pub action: String,
    /// The kind of object acted on, e.g. `token`, `principal`, `group`.
    pub target_kind: String,
    /// The id of the object acted on.
    pub target_id: String,
    /// Extra structured detail; never a token or secret value.
    pub detail: serde_json::Value,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable id.
    pub id: AuditId,
    /// When it happened.
    #[serde(with = "serde_rfc3339")]
    pub at: OffsetDateTime,
    /// Who did it.
    pub actor: Actor,
    /// What was done.
    pub action: String,
    /// The kind of object acted on.
    pub target_kind: String,
    /// The id of the object acted on.
    pub target_id: String,
    /// Extra structured detail.
    pub detail: serde_json::Value,
}

/// A stored or supplied value that is not one of the known spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

impl UnknownValue {
    fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.to_owned(),
        }
    }
}
