use super::*;

fn parse(text: &str) -> Result<ToolPackage, Vec<ManifestError>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.py"), "").unwrap();
    let result = parse_manifest(dir.path(), Path::new("pkg/chiron-tool.toml"), text);
    // Keep the folder alive for relative-path checks during parsing only.
    drop(dir);
    result
}

const GOOD: &str = r#"
name = "github"
version = "1.0.0"
description = "GitHub"
kind = "command"
command = ["python3", "run.py"]
env = { LOG = "info" }

[[tools]]
name = "get_issue"
description = "Get an issue"
input_schema = { type = "object", properties = { repo = { type = "string" } }, required = ["repo"] }
annotations = { readOnlyHint = true }
timeout = "30s"

[[egress.hosts]]
host = "api.github.com"
[[egress.hosts.secrets]]
name = "GITHUB_TOKEN"
inject = "header"
template = "Bearer {value}"
"#;

#[test]
fn a_good_manifest_parses() {
    let package = parse(GOOD).unwrap();
    assert_eq!(package.name, "github");
    assert_eq!(package.kind, PackageKind::Command);
    assert_eq!(package.tools[0].timeout, Duration::from_secs(30));
    assert_eq!(
        package.tools[0].annotations["readOnlyHint"],
        Value::Bool(true)
    );
    assert_eq!(package.egress[0].host, "api.github.com");
    assert_eq!(package.egress[0].path_prefix, "/");
    assert!(package.egress[0].ports.is_empty());
    assert!(package.egress[0].allows_port(443, true) && package.egress[0].allows_port(80, false));
    assert!(
        !package.egress[0].allows_port(8443, true) && !package.egress[0].allows_port(443, false)
    );
    assert_eq!(
        package.egress[0].secrets[0].injection,
        Injection::Header {
            header: "Authorization".into(),
            template: "Bearer {value}".into()
        }
    );
}

fn first_error(text: &str) -> ManifestError {
    parse(text).unwrap_err().remove(0)
}

#[test]
fn errors_name_file_line_and_field() {
    let bad_tool = GOOD.replace("name = \"get_issue\"", "name = \"get.issue\"");
    let err = first_error(&bad_tool);
    assert_eq!(err.field, "tools[0].name");
    assert_eq!(err.line, Some(10));
    assert!(
        err.to_string()
            .starts_with("pkg/chiron-tool.toml:10: tools[0].name: "),
        "{err}"
    );

    let syntax = GOOD.replace("kind = \"command\"", "kind = \"shell\"");
    let err = first_error(&syntax);
    assert_eq!(err.line, Some(5), "{err}");
    assert!(
        err.message.contains("shell") || err.message.contains("variant"),
        "{err}"
    );
    // Values of the wrong type or variant name their field too, not only the line.
    assert_eq!(err.field, "kind", "{err}");
    let wrong_type = GOOD.replace("name = \"get_issue\"", "name = 7");
    let err = first_error(&wrong_type);
    assert_eq!(
        (err.field.as_str(), err.line),
        ("tools[0].name", Some(10)),
        "{err}"
    );
    let missing = GOOD.replace("version = \"1.0.0\"\n", "");
    let err = first_error(&missing);
    assert!(err.message.contains("version"), "{err}");

    let unknown = GOOD.replace("env = {", "envv = {");
    let err = first_error(&unknown);
    assert!(err.message.contains("envv"), "{err}");
    assert_eq!(err.line, Some(7));

    let secret = GOOD.replace("GITHUB_TOKEN", "github-token");
    let err = first_error(&secret);
    assert_eq!(err.field, "egress.hosts[0].secrets[0].name");

    let host = GOOD.replace("api.github.com", "https://api.github.com/");
    assert_eq!(first_error(&host).field, "egress.hosts[0].host");

    let ports = GOOD.replace(
        "host = \"api.github.com\"",
        "host = \"api.github.com\"\nports = [8443, 0]",
    );
    let err = first_error(&ports);
    assert_eq!(err.field, "egress.hosts[0].ports[1]");
    assert_eq!(err.line, Some(18), "{err}");
    let ports = ports.replace(", 0]", "]");
    let package = parse(&ports).unwrap();
    assert_eq!(package.egress[0].ports, [8443]);
    assert!(package.egress[0].allows_port(8443, true));

    let schema = GOOD.replace(
        "input_schema = { type = \"object\",",
        "input_schema = { type = \"string\",",
    );
    assert_eq!(first_error(&schema).field, "tools[0].input_schema");
}

#[test]
fn several_problems_are_reported_together() {
    let text = GOOD
        .replace("name = \"get_issue\"", "name = \"\"")
        .replace("inject = \"header\"", "inject = \"cookie\"");
    let errors = parse(&text).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["tools[0].name", "egress.hosts[0].secrets[0].inject"]
    );
}

#[test]
fn kind_rules() {
    let stdio = "name = \"time\"\nversion = \"1\"\nkind = \"mcp-stdio\"\ncommand = [\"mcp-server-time\"]\nsource = \"pypi:mcp-server-time==2026.10.19\"\n";
    let package = parse(stdio).unwrap();
    assert_eq!(package.kind, PackageKind::McpStdio);
    assert_eq!(
        package.source.as_deref(),
        Some("pypi:mcp-server-time==2026.10.19")
    );

    let bad_source = stdio.replace("pypi:", "cargo:");
    assert_eq!(first_error(&bad_source).field, "source");
    let no_tools = "name = \"x\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n";
    assert_eq!(first_error(no_tools).field, "tools");
    let missing_program = no_tools.replace("[\"true\"]", "[\"./missing.sh\"]");
    assert_eq!(first_error(&missing_program).field, "command");
    let absolute = no_tools.replace("[\"true\"]", "[\"/bin/true\"]");
    assert_eq!(first_error(&absolute).field, "command");
}

#[test]
fn tool_name_rules() {
    assert!(valid_tool_name("github_get_issue"));
    assert!(valid_tool_name("a-b_C9"));
    assert!(!valid_tool_name(""));
    assert!(!valid_tool_name("a.b"));
    assert!(!valid_tool_name(&"x".repeat(65)));
    let long_tool = GOOD.replace(
        "name = \"get_issue\"",
        &format!("name = \"{}\"", "y".repeat(60)),
    );
    assert_eq!(first_error(&long_tool).field, "tools[0].name");
}
