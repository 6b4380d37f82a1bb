//! `chiron-tool.toml`: parsing and validation. Every error names the file, the line (when the
//! problem has a place in the file) and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// The manifest's file name inside a package folder.
pub const MANIFEST_FILE: &str = "chiron-tool.toml";

/// Default per-call timeout of a command tool.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A manifest problem, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest (or package folder) at fault.
    pub file: PathBuf,
    /// 1-based line, when the problem is at a place in the file.
    pub line: Option<usize>,
    /// Dotted field path, e.g. `tools[1].name`; empty for whole-file problems.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// How a package runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageKind {
    /// One process per call; `{"tool","arguments"}` on stdin, result on stdout.
    Command,
    /// A stdio MCP server kept warm in the principal's runner.
    McpStdio,
}

/// How a secret is put into a request to its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Set `header` to `template` with `{value}` replaced.
    Header {
        /// Header name.
        header: String,
        /// Template containing `{value}`.
        template: String,
    },
    /// HTTP Basic with `username` and the secret as password.
    Basic {
        /// The Basic user name.
        username: String,
    },
    /// Replace the placeholder `chiron-secret:<NAME>` the tool put in a header or query value.
    Placeholder,
}

/// One secret a package may have injected for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInjection {
    /// The secret's name in the secret store.
    pub name: String,
    /// How it is injected.
    pub injection: Injection,
}

/// A host a package may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    /// Exact host name.
    pub host: String,
    /// Ports besides the standard ones (443 for HTTPS, 80 for plain HTTP).
    pub ports: Vec<u16>,
    /// Secrets are injected only under this path prefix (default `/`).
    pub path_prefix: String,
    /// Secrets injected for this host.
    pub secrets: Vec<SecretInjection>,
}

/// The standard port of HTTPS (`tls`) or plain HTTP: what a host is reached on unless its
/// entry lists others.
pub fn standard_port(tls: bool) -> u16 {
    if tls {
        443
    } else {
        80
    }
}

impl EgressHost {
    /// Whether this entry covers `port`: the [`standard_port`] of the scheme or one of
    /// [`EgressHost::ports`].
    pub fn allows_port(&self, port: u16, tls: bool) -> bool {
        port == standard_port(tls) || self.ports.contains(&port)
    }
}

/// A tool a command package declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDecl {
    /// Name within the package; the MCP name is `<package>_<name>`.
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// JSON Schema of structured output, if declared.
    pub output_schema: Option<Value>,
    /// MCP annotations such as `readOnlyHint`.
    pub annotations: BTreeMap<String, Value>,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Whether argument values may be written to the call audit.
    pub safe_to_log: bool,
}

/// A validated package.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPackage {
    /// The package folder.
    pub dir: PathBuf,
    /// Package name; the prefix of its tool names.
    pub name: String,
    /// Version; installs and discovered catalogs are cached per version.
    pub version: String,
    /// What the package is for.
    pub description: String,
    /// How it runs.
    pub kind: PackageKind,
    /// argv: a path relative to the package folder, or a program on the sandbox's PATH.
    pub command: Vec<String>,
    /// Non-secret environment for its processes.
    pub env: BTreeMap<String, String>,
    /// Installable source such as `pypi:mcp-server-time==2026.10.19`.
    pub source: Option<String>,
    /// The per-call timeout of tools that set none (default 120 s).
    pub timeout: Duration,
    /// Declared tools (command kind); mcp-stdio tools are discovered.
    pub tools: Vec<ToolDecl>,
    /// Hosts it may reach and the secrets injected there.
    pub egress: Vec<EgressHost>,
}

// ---- raw serde shapes, with spans where semantic checks need a line -------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    kind: PackageKind,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    source: Option<Spanned<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    tools: Vec<RawTool>,
    #[serde(default)]
    egress: RawEgress,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    input_schema: Spanned<Value>,
    #[serde(default)]
    output_schema: Option<Spanned<Value>>,
    #[serde(default)]
    annotations: BTreeMap<String, Value>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    safe_to_log: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    host: Spanned<String>,
    #[serde(default)]
    ports: Vec<Spanned<i64>>,
    #[serde(default)]
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    name: Spanned<String>,
    inject: Spanned<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

/// Whether `name` is a valid tool or package name fragment: `^[A-Za-z0-9_-]{1,64}$`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` is a valid secret name: upper-case letters, digits and `_`, starting with a
/// letter.
fn valid_secret_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ManifestError>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Checker<'_> {
    fn fail(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ManifestError {
            file: self.file.to_owned(),
            line: span.map(|s| line_at(self.text, s.start)),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Reads and validates the manifest in package folder `dir`. Returns every problem found, not
/// just the first.
pub fn load_manifest(dir: &Path) -> Result<ToolPackage, Vec<ManifestError>> {
    let file = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&file).map_err(|err| {
        vec![ManifestError {
            file: file.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {err}"),
        }]
    })?;
    parse_manifest(dir, &file, &text)
}

/// A deserialization path as manifest errors name fields (`tools[0].name`), without the
/// private keys toml's `Spanned` adds.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__") {
                    continue;
                }
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    field
}

/// Parses manifest `text` of the package in `dir` (`file` is used in errors).
pub fn parse_manifest(
    dir: &Path,
    file: &Path,
    text: &str,
) -> Result<ToolPackage, Vec<ManifestError>> {
    // Through serde_path_to_error, so that a value of the wrong type or variant is reported
    // with its field (`tools[0].timeout`), which toml's own errors leave out.
    let raw: RawManifest = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|err| {
            let field = field_path(err.path());
            let err = err.into_inner();
            let line = err.span().map(|s| line_at(text, s.start));
            vec![ManifestError {
                file: file.to_owned(),
                line,
                field,
                message: err.message().to_owned(),
            }]
        })?;
    let mut check = Checker {
        file,
        text,
        errors: Vec::new(),
    };

    let name = raw.name.get_ref().clone();
    if !valid_tool_name(&name) {
        check.fail(
            Some(raw.name.span()),
            "name",
            "must match ^[A-Za-z0-9_-]{1,64}$ (it prefixes tool names)",
        );
    }
    if raw.version.get_ref().trim().is_empty() {
        check.fail(Some(raw.version.span()), "version", "must not be empty");
    }
    let command = raw.command.get_ref().clone();
    if command.is_empty() || command[0].trim().is_empty() {
        check.fail(
            Some(raw.command.span()),
            "command",
            "must name a program (a path relative to the package or a program on PATH)",
        );
    } else if command[0].starts_with('/') {
        check.fail(
            Some(raw.command.span()),
            "command",
            "must be relative to the package folder or a bare program name, not an absolute path",
        );
    } else if command[0].contains('/') {
        let program = dir.join(&command[0]);
        if !program.is_file() {
            check.fail(
                Some(raw.command.span()),
                "command",
                format!("{} does not exist in the package", command[0]),
            );
        }
    }
    if let Some(source) = &raw.source {
        let ok = source
            .get_ref()
            .split_once(':')
            .is_some_and(|(ecosystem, spec)| {
                matches!(ecosystem, "pypi" | "npm") && !spec.is_empty()
            });
        if !ok {
            check.fail(
                Some(source.span()),
                "source",
                "must be pypi:<package>==<version> or npm:<package>@<version>",
            );
        }
    }

    let mut tools = Vec::new();
    match raw.kind {
        PackageKind::McpStdio if !raw.tools.is_empty() => {
            check.fail(
                None,
                "tools",
                "an mcp-stdio package discovers its tools from the server; declare none",
            );
        }
        PackageKind::Command if raw.tools.is_empty() => {
            check.fail(
                None,
                "tools",
                "a command package must declare at least one [[tools]] entry",
            );
        }
        _ => {}
    }
    let mut seen = std::collections::HashSet::new();
    for (idx, tool) in raw.tools.into_iter().enumerate() {
        let field = |f: &str| format!("tools[{idx}].{f}");
        let tool_name = tool.name.get_ref().clone();
        let full = format!("{name}_{tool_name}");
        if !valid_tool_name(&tool_name) || !valid_tool_name(&full) {
            check.fail(
                Some(tool.name.span()),
                field("name"),
                format!("`{full}` must match ^[A-Za-z0-9_-]{{1,64}}$"),
            );
        } else if !seen.insert(tool_name.clone()) {
            check.fail(
                Some(tool.name.span()),
                field("name"),
                format!("`{tool_name}` is declared twice"),
            );
        }
        let input_schema =
            resolve_schema(&mut check, dir, tool.input_schema, &field("input_schema"));
        let output_schema = tool
            .output_schema
            .map(|s| resolve_schema(&mut check, dir, s, &field("output_schema")));
        tools.push(ToolDecl {
            name: tool_name,
            description: tool.description,
            input_schema,
            output_schema,
            annotations: tool.annotations,
            timeout: tool.timeout.or(raw.timeout).unwrap_or(DEFAULT_TIMEOUT),
            safe_to_log: tool.safe_to_log,
        });
    }

    let mut egress = Vec::new();
    for (host_idx, host) in raw.egress.hosts.into_iter().enumerate() {
        let host_name = host.host.get_ref().to_ascii_lowercase();
        let field = |f: &str| format!("egress.hosts[{host_idx}].{f}");
        let host_ok = !host_name.is_empty()
            && host_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host_name.starts_with('.')
            && !host_name.ends_with('.');
        if !host_ok {
            check.fail(Some(host.host.span()), field("host"), "must be an exact host name such as api.github.com (no scheme, port, path or wildcard)");
        }
        let mut ports = Vec::new();
        for (port_idx, port) in host.ports.iter().enumerate() {
            match u16::try_from(*port.get_ref()) {
                Ok(valid) if valid > 0 => ports.push(valid),
                _ => check.fail(
                    Some(port.span()),
                    field(&format!("ports[{port_idx}]")),
                    "must be a port number from 1 to 65535",
                ),
            }
        }
        let path_prefix = match host.path_prefix {
            Some(prefix) if !prefix.get_ref().starts_with('/') => {
                check.fail(
                    Some(prefix.span()),
                    field("path_prefix"),
                    "must start with /",
                );
                "/".to_owned()
            }
            Some(prefix) => prefix.into_inner(),
            None => "/".to_owned(),
        };
        let mut secrets = Vec::new();
        for (secret_idx, secret) in host.secrets.into_iter().enumerate() {
            let sfield = |f: &str| format!("egress.hosts[{host_idx}].secrets[{secret_idx}].{f}");
            if !valid_secret_name(secret.name.get_ref()) {
                check.fail(
                    Some(secret.name.span()),
                    sfield("name"),
                    "must be UPPER_SNAKE_CASE, e.g. GITHUB_TOKEN",
                );
            }
            let injection = match secret.inject.get_ref().as_str() {
                "header" => {
                    let header = secret
                        .header
                        .clone()
                        .unwrap_or_else(|| "Authorization".into());
                    let template = secret
                        .template
                        .clone()
                        .unwrap_or_else(|| "Bearer {value}".into());
                    if !template.contains("{value}") {
                        check.fail(
                            Some(secret.inject.span()),
                            sfield("template"),
                            "must contain {value}",
                        );
                    }
                    Injection::Header { header, template }
                }
                "basic" => Injection::Basic {
                    username: secret.username.clone().unwrap_or_default(),
                },
                "placeholder" => Injection::Placeholder,
                other => {
                    check.fail(
                        Some(secret.inject.span()),
                        sfield("inject"),
                        format!("unknown injection `{other}`; use header, basic or placeholder"),
                    );
                    Injection::Placeholder
                }
            };
            secrets.push(SecretInjection {
                name: secret.name.into_inner(),
                injection,
            });
        }
        egress.push(EgressHost {
            host: host_name,
            ports,
            path_prefix,
            secrets,
        });
    }

    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok(ToolPackage {
        dir: dir.to_owned(),
        name,
        version: raw.version.into_inner(),
        description: raw.description,
        kind: raw.kind,
        command,
        env: raw.env,
        source: raw.source.map(Spanned::into_inner),
        timeout: raw.timeout.unwrap_or(DEFAULT_TIMEOUT),
        tools,
        egress,
    })
}

/// An inline schema object, or a path (relative to the package) of a JSON file holding one.
fn resolve_schema(
    check: &mut Checker<'_>,
    dir: &Path,
    schema: Spanned<Value>,
    field: &str,
) -> Value {
    let span = schema.span();
    let value = match schema.into_inner() {
        Value::String(path) => {
            let full = dir.join(&path);
            match std::fs::read_to_string(&full).map(|t| serde_json::from_str::<Value>(&t)) {
                Ok(Ok(value)) => value,
                Ok(Err(err)) => {
                    check.fail(
                        Some(span),
                        field,
                        format!("{path} is not valid JSON: {err}"),
                    );
                    return Value::Null;
                }
                Err(err) => {
                    check.fail(Some(span), field, format!("cannot read {path}: {err}"));
                    return Value::Null;
                }
            }
        }
        other => other,
    };
    if value.get("type").and_then(Value::as_str) != Some("object") {
        check.fail(
            Some(span),
            field,
            "must be a JSON Schema object with \"type\" = \"object\"",
        );
    }
    value
}

#[cfg(test)]
mod tests;
