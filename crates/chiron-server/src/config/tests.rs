// figment's Jail closures must return figment::Error, which is large by design.
#![allow(clippy::result_large_err)]

use super::*;

use figment::Jail;

#[test]
fn defaults_need_no_file() {
    Jail::expect_with(|_jail| {
        let config = load(None).expect("defaults load");
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(config.server.public_url.as_str(), "http://127.0.0.1:8787/");
        assert_eq!(config.server.mcp_url(), "http://127.0.0.1:8787/mcp");
        assert_eq!(database_url(&config), "sqlite:./chiron-data/chiron.db");
        Ok(())
    });
}

#[test]
fn the_public_url_follows_listen_unless_set() {
    Jail::expect_with(|jail| {
        jail.set_env("CHIRON_SERVER__LISTEN", "127.0.0.1:8799");
        let config = load(None).expect("load");
        assert_eq!(config.server.mcp_url(), "http://127.0.0.1:8799/mcp");
        jail.set_env("CHIRON_SERVER__LISTEN", "0.0.0.0:9000");
        assert_eq!(
            load(None).unwrap().server.public_url.as_str(),
            "http://127.0.0.1:9000/"
        );
        jail.set_env("CHIRON_SERVER__LISTEN", "[::]:9000");
        assert_eq!(
            load(None).unwrap().server.public_url.as_str(),
            "http://[::1]:9000/"
        );
        // Set explicitly, even to the default, it stays.
        jail.set_env("CHIRON_SERVER__PUBLIC_URL", "http://127.0.0.1:8787");
        assert_eq!(
            load(None).unwrap().server.public_url.as_str(),
            "http://127.0.0.1:8787/"
        );
        Ok(())
    });
}

#[test]
fn file_then_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "chiron.toml",
            r#"
            [server]
            listen = "127.0.0.1:9000"
            public_url = "https://chiron.example.com"
            [auth]
            cache_ttl = "3s"
            "#,
        )?;
        jail.set_env("CHIRON_SERVER__LISTEN", "0.0.0.0:9100");
        jail.set_env("CHIRON_DATABASE_URL", "postgres://app:hunter2@db/chiron");
        let config = load(None).expect("load");
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9100");
        assert_eq!(config.server.mcp_url(), "https://chiron.example.com/mcp");
        assert_eq!(config.auth.cache_ttl, std::time::Duration::from_secs(3));
        assert_eq!(config.database.url, "postgres://app:hunter2@db/chiron");
        let shown = effective_toml(&config);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:redacted@"), "{shown}");
        Ok(())
    });
}

fn load_error(toml: &str) -> String {
    let mut message = String::new();
    Jail::expect_with(|jail| {
        jail.create_file("bad.toml", toml)?;
        message = load(Some(Path::new("bad.toml"))).unwrap_err().to_string();
        Ok(())
    });
    message
}

#[test]
fn bad_values_name_their_key() {
    let message = load_error("[server]\nlisten = \"nope\"\n");
    assert!(message.contains("server.listen"), "{message}");
    let message = load_error("[server]\npublic_url = \"ftp://x\"\n");
    assert!(message.contains("server.public_url"), "{message}");
    let message = load_error("[auth]\ncache_ttl = \"forever\"\n");
    assert!(message.contains("auth.cache_ttl"), "{message}");
    let message = load_error("[auth]\ncache_ttl = \"1h\"\n");
    assert!(message.contains("auth.cache_ttl"), "{message}");
    let message = load_error("[server]\nhttp_threads = 100000\n");
    assert!(message.contains("server.http_threads"), "{message}");
    let message = load_error("[server]\nlisten_addr = \"127.0.0.1:1\"\n");
    assert!(message.contains("listen_addr"), "{message}");
}

#[test]
fn bad_environment_values_name_their_key() {
    Jail::expect_with(|jail| {
        jail.set_env("CHIRON_DATABASE__MAX_CONNECTIONS", "many");
        let message = load(None).unwrap_err().to_string().to_lowercase();
        assert!(message.contains("database.max_connections"), "{message}");
        Ok(())
    });
}

#[test]
fn a_named_missing_file_is_an_error() {
    Jail::expect_with(|_jail| {
        let err = load(Some(Path::new("absent.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
        Ok(())
    });
}

#[test]
fn list_keys_take_comma_separated_values_or_arrays_from_the_environment() {
    Jail::expect_with(|jail| {
        jail.set_env("CHIRON_TOOLS__DIRS", "/srv/tools, /opt/more-tools");
        jail.set_env("CHIRON_MCP__ALLOWED_HOSTS", r#"["chiron.internal:8787"]"#);
        jail.set_env("CHIRON_EGRESS__ALLOWED_NETWORKS", "10.0.0.0/8");
        jail.set_env("CHIRON_SLACK__WORKSPACES", "");
        let config = load(None).expect("load");
        assert_eq!(
            config.tools.dirs,
            [Path::new("/srv/tools"), Path::new("/opt/more-tools")]
        );
        assert_eq!(config.mcp.allowed_hosts, ["chiron.internal:8787"]);
        assert_eq!(config.egress.allowed_networks, ["10.0.0.0/8"]);
        assert!(config.slack.workspaces.is_empty());
        // A bad item names the variable it came from.
        jail.set_env(
            "CHIRON_MCP__AUTHORIZATION_SERVERS",
            "https://ok.example, not a url",
        );
        let message = load(None).unwrap_err().to_string();
        assert!(
            message.contains("CHIRON_MCP__AUTHORIZATION_SERVERS, item 2"),
            "{message}"
        );
        Ok(())
    });
}
