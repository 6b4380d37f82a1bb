//! Loading the configuration: defaults, then the TOML file, then environment overrides
//! (`CHIRON_<SECTION>__<KEY>`, plus the flat `CHIRON_DATABASE_URL`). The result is validated
//! once; any error names the offending key and nothing has been written anywhere yet.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use chiron_core::Config;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "chiron.toml";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An explicitly named file does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value has the wrong type or shape; the message names the key and its source.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value parses but is not acceptable.
    #[error(transparent)]
    Invalid(#[from] chiron_core::config::InvalidConfig),
}

/// Loads the configuration. `explicit` is `--config`; without it `chiron.toml` in the current
/// directory is used when present.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let file = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_owned())),
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment
        .merge(
            Env::prefixed("CHIRON_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
        .merge(
            Env::raw()
                .only(&["CHIRON_DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
    let config: Config = figment
        .extract()
        .map_err(|err| ConfigError::Parse(Box::new(err)))?;
    config.validate()?;
    Ok(config)
}

/// The database URL in force: `database.url`, or SQLite in the data directory.
pub fn database_url(config: &Config) -> String {
    if config.database.url.is_empty() {
        format!(
            "sqlite:{}",
            config.server.data_dir.join("chiron.db").display()
        )
    } else {
        config.database.url.clone()
    }
}

/// The configuration as TOML with credentials removed, for `chiron doctor`.
pub fn effective_toml(config: &Config) -> String {
    let mut shown = config.clone();
    shown.database.url = redact_url(&database_url(config));
    toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
}

/// Replaces a password in a URL with `redacted`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests;
