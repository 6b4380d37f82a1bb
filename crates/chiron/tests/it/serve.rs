use crate::support::Chiron;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_health_and_exits_zero_on_sigterm() {
    let chiron = Chiron::new();
    let server = chiron.serve(&["serve", "--demo"]);
    assert!(
        server.handover.contains(&chiron.base()),
        "{}",
        server.handover
    );
    assert!(
        server.handover.contains("ADMIN TOKEN"),
        "{}",
        server.handover
    );
    assert!(chiron.data_dir().join("chiron.db").exists());

    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("{}{path}", chiron.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
    }
    // One gateway per data directory: a second one says who holds it, and changes nothing.
    let second = chiron.command(&["serve"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another chiron serve (pid "), "{said}");
    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("draining"), "{logs}");

    // Outside a checkout the demo wrote the shipped packages to the data directory; the CLI
    // (and a plain `serve`) use them too when no tools.dirs are configured.
    let mut chiron = chiron;
    let listed = chiron.ok(&["tool", "list"]);
    assert!(listed.contains("github"), "{listed}");
    let granted = chiron.ok(&["grant", "add", "github", "--principal", "demo"]);
    let output = chiron.run(&["grant", "add", "slack", "--principal", "demo"]);
    assert!(output.status.success());
    let noted = String::from_utf8_lossy(&output.stderr);
    assert!(!noted.contains("no package"), "{granted} {noted}");

    // Second start: the admin token is not printed again.
    let server = chiron.serve(&["serve", "--demo"]);
    assert!(
        !server.handover.contains("ADMIN TOKEN"),
        "{}",
        server.handover
    );
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_bad_config_value_names_the_key_and_writes_nothing() {
    let mut chiron = Chiron::bare();
    std::fs::write(
        chiron.dir.path().join("chiron.toml"),
        "[server]\nlisten = \"nope\"\n",
    )
    .unwrap();
    for args in [
        &["serve", "--demo"][..],
        &["init"],
        &["migrate"],
        &["doctor"],
    ] {
        let output = chiron.run(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("server.listen"), "{args:?}: {stderr}");
        assert!(
            !chiron.data_dir().exists(),
            "{args:?} wrote the data directory"
        );
    }

    let mut chiron = Chiron::new();
    chiron.set_env("CHIRON_AUTH__DEFAULT_TOKEN_TTL", "soon");
    let output = chiron.run(&["serve", "--demo"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .to_lowercase()
        .contains("auth.default_token_ttl"));
    assert!(!chiron.data_dir().exists());
}

#[test]
fn doctor_reports_config_and_host() {
    let mut chiron = Chiron::new();
    chiron.set_env(
        "CHIRON_DATABASE_URL",
        "postgres://app:hunter2@127.0.0.1:1/none",
    );
    let output = chiron.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("public_url = \"http://127.0.0.1:"),
        "{stdout}"
    );
    for check in [
        "storage",
        "user namespaces",
        "landlock",
        "cgroup version",
        "cgroup limits",
        "master key",
        "egress CA",
    ] {
        assert!(stdout.contains(check), "{check}: {stdout}");
    }
    // The unreachable database fails the doctor.
    assert!(!output.status.success());

    let mut chiron = Chiron::new();
    chiron.ok(&["init"]);
    let stdout = chiron.ok(&["doctor"]);
    assert!(stdout.contains("reachable"), "{stdout}");
    // After init the master key and the egress CA exist; the key itself is never shown.
    assert!(stdout.contains("loaded (key id"), "{stdout}");
    assert!(stdout.contains("ca.key present"), "{stdout}");
    let key = std::fs::read_to_string(chiron.data_dir().join("master.key")).unwrap();
    assert!(!stdout.contains(key.trim()), "{stdout}");
    assert!(stdout.contains("no tool directories"), "{stdout}");

    // Tool packages: counted when valid, the first problem named (file and field) when not.
    let tools = chiron.dir.path().join("tools");
    std::fs::create_dir_all(tools.join("ok")).unwrap();
    std::fs::write(
        tools.join("ok/chiron-tool.toml"),
        "name = \"ok\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n\
         [[tools]]\nname = \"t\"\ninput_schema = { type = \"object\" }\n",
    )
    .unwrap();
    let stdout = chiron.ok(&["doctor"]);
    assert!(stdout.contains("1 in tools: ok"), "{stdout}");
    std::fs::create_dir_all(tools.join("bad")).unwrap();
    std::fs::write(
        tools.join("bad/chiron-tool.toml"),
        "name = \"bad\"\nversion = \"1\"\nkind = \"shell\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let stdout = chiron.ok(&["doctor"]);
    assert!(stdout.contains("1 problem(s) in tools, first:"), "{stdout}");
    assert!(stdout.contains("bad/chiron-tool.toml"), "{stdout}");
    assert!(stdout.contains("kind"), "{stdout}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut chiron = Chiron::new();
    chiron.set_env("RUST_LOG", "debug");
    let output = chiron.run(&["--log-format", "json", "migrate"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
}
