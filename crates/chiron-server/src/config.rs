//! Loading the configuration: defaults, then the TOML file, then environment overrides
//! (`CHIRON_<SECTION>__<KEY>`, plus the flat `CHIRON_DATABASE_URL`). A list key takes a TOML
//! array (`["a", "b"]`) or a comma-separated list (`a,b`) from the environment. The result is
//! validated once; any error names the offending key and nothing has been written anywhere yet.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

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

/// The key whose default follows `server.listen`.
const PUBLIC_URL_KEY: &str = "server.public_url";

/// Loads the configuration. `explicit` is `--config`; without it `chiron.toml` in the current
/// directory is used when present.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let file = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_owned())),
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    let default_public_url = figment
        .find_value(PUBLIC_URL_KEY)
        .ok()
        .map(|value| value.tag());
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let lists = EnvLists::read(&Config::default());
    let taken = lists.names();
    figment = figment
        .merge(
            Env::prefixed("CHIRON_")
                .filter(move |key| {
                    key.as_str().contains("__")
                        && !taken
                            .iter()
                            .any(|name| name.eq_ignore_ascii_case(key.as_str()))
                })
                .split("__"),
        )
        .merge(lists)
        .merge(
            Env::raw()
                .only(&["CHIRON_DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
    let public_url_given = figment
        .find_value(PUBLIC_URL_KEY)
        .ok()
        .map(|value| value.tag())
        != default_public_url;
    let mut config: Config = figment
        .extract()
        .map_err(|err| ConfigError::Parse(Box::new(err)))?;
    if !public_url_given {
        // Not set: clients reach chiron where it listens (a changed port included).
        config.server.public_url = chiron_core::config::public_url_for(config.server.listen);
    }
    config.validate()?;
    Ok(config)
}

/// The `CHIRON_<SECTION>__<KEY>` variables of list keys given as comma-separated lists
/// (`CHIRON_TOOLS__DIRS=/srv/tools,/opt/tools`); a value that starts with `[` is left to
/// [`Env`], which reads it as a TOML array.
struct EnvLists {
    /// Variable name (without the prefix, as [`Env`] filters it) → key path and items.
    found: Vec<(String, Vec<String>, Vec<String>)>,
}

impl EnvLists {
    fn read(defaults: &Config) -> Self {
        let mut keys = Vec::new();
        if let Ok(Value::Dict(_, dict)) = Value::serialize(defaults) {
            list_keys(&dict, &mut Vec::new(), &mut keys);
        }
        let found = keys
            .into_iter()
            .filter_map(|path| {
                let name = path.join("__").to_ascii_uppercase();
                let value = std::env::var(format!("CHIRON_{name}")).ok()?;
                if value.trim_start().starts_with('[') {
                    return None;
                }
                let items = value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some((name, path, items))
            })
            .collect();
        Self { found }
    }

    /// The variables read here, without the prefix, for [`Env`] to leave alone.
    fn names(&self) -> Vec<String> {
        self.found.iter().map(|(name, _, _)| name.clone()).collect()
    }
}

/// The paths of every list (array) under `dict`.
fn list_keys(dict: &Dict, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in dict {
        path.push(key.clone());
        match value {
            Value::Array(..) => out.push(path.clone()),
            Value::Dict(_, inner) => list_keys(inner, path, out),
            _ => {}
        }
        path.pop();
    }
}

impl Provider for EnvLists {
    fn metadata(&self) -> Metadata {
        Metadata::named("a comma-separated environment variable").interpolater(
            |_: &Profile, keys: &[&str]| {
                let name = |path: &[&str]| format!("CHIRON_{}", path.join("__").to_uppercase());
                // An error in one item ends its path with the item's index.
                match keys
                    .split_last()
                    .map(|(last, path)| (last.parse::<usize>(), path))
                {
                    Some((Ok(index), path)) => format!("{}, item {}", name(path), index + 1),
                    _ => name(keys),
                }
            },
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (_, path, items) in &self.found {
            let (last, sections) = path.split_last().expect("a key path is never empty");
            let mut dict = &mut root;
            for section in sections {
                let entry = dict
                    .entry(section.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, inner) = entry else {
                    unreachable!("only sections are inserted on the way")
                };
                dict = inner;
            }
            dict.insert(last.clone(), Value::from(items.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
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
