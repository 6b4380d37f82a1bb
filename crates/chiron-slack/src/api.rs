//! A thin client of the Slack Web API methods the bot uses, and the one outbound path for
//! messages: [`SlackApi::post`] refuses to send anything that looks like a chiron token to a
//! channel that is not a direct message, whichever code path asked.

use serde::Deserialize;
use serde_json::{json, Value};

/// A Slack Web API failure (never contains a token: bodies are not echoed).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Transport failure.
    #[error("Slack API {method}: {reason}")]
    Http {
        /// The method called.
        method: &'static str,
        /// What failed.
        reason: String,
    },
    /// Slack answered `ok: false`.
    #[error("Slack API {method} refused: {error}")]
    Slack {
        /// The method called.
        method: &'static str,
        /// Slack's error code.
        error: String,
    },
    /// The outbound guard refused a message.
    #[error("refused to post a token outside a direct message (channel {0})")]
    Guard(String),
}

/// What `users.info` tells about a user.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    /// User id.
    pub id: String,
    /// Team id.
    #[serde(default)]
    pub team_id: String,
    /// Handle.
    #[serde(default)]
    pub name: String,
    /// Real name, if set.
    #[serde(default)]
    pub real_name: Option<String>,
    /// A bot user.
    #[serde(default)]
    pub is_bot: bool,
    /// A deactivated user.
    #[serde(default)]
    pub deleted: bool,
    /// A multi-channel guest.
    #[serde(default)]
    pub is_restricted: bool,
    /// A single-channel guest.
    #[serde(default)]
    pub is_ultra_restricted: bool,
}

/// Whether `text` contains something shaped like a chiron token (the prefix, then the
/// random part and checksum in base62).
pub fn contains_token(text: &str) -> bool {
    use chiron_auth::token::{CHECKSUM_LEN, PREFIX, RANDOM_LEN};
    let body = RANDOM_LEN + CHECKSUM_LEN;
    text.match_indices(PREFIX).any(|(at, _)| {
        text[at + PREFIX.len()..]
            .chars()
            .take(body)
            .filter(char::is_ascii_alphanumeric)
            .count()
            == body
    })
}

/// The Web API client.
#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: url::Url,
    bot_token: std::sync::Arc<zeroize::Zeroizing<String>>,
}

impl SlackApi {
    /// A client for `base` (e.g. `https://slack.com/api/`) with the bot token.
    pub fn new(base: url::Url, bot_token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            bot_token: std::sync::Arc::new(zeroize::Zeroizing::new(bot_token.trim().to_owned())),
        }
    }

    /// Calls `method` with a JSON body (or form parameters for reads) using `token`.
    pub async fn call_with(
        &self,
        method: &'static str,
        token: &str,
        body: Value,
    ) -> Result<Value, ApiError> {
        let url = self.base.join(method).map_err(|e| ApiError::Http {
            method,
            reason: e.to_string(),
        })?;
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| ApiError::Http {
                method,
                reason: e.without_url().to_string(),
            })?;
        let answer: Value = response.json().await.map_err(|e| ApiError::Http {
            method,
            reason: e.without_url().to_string(),
        })?;
        if answer["ok"].as_bool() != Some(true) {
            return Err(ApiError::Slack {
                method,
                error: answer["error"]
                    .as_str()
                    .unwrap_or("unknown_error")
                    .to_owned(),
            });
        }
        Ok(answer)
    }

    async fn call(&self, method: &'static str, body: Value) -> Result<Value, ApiError> {
        let token = self.bot_token.clone();
        self.call_with(method, &token, body).await
    }

    /// `users.info`.
    pub async fn user(&self, user: &str) -> Result<User, ApiError> {
        let answer = self.call("users.info", json!({ "user": user })).await?;
        serde_json::from_value(answer["user"].clone()).map_err(|e| ApiError::Http {
            method: "users.info",
            reason: e.to_string(),
        })
    }

    /// `conversations.open` with one user: their DM channel.
    pub async fn open_dm(&self, user: &str) -> Result<String, ApiError> {
        let answer = self
            .call("conversations.open", json!({ "users": user }))
            .await?;
        Ok(answer["channel"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Whether `channel` is a direct message (`conversations.info` → `is_im`).
    pub async fn is_dm(&self, channel: &str) -> Result<bool, ApiError> {
        let answer = self
            .call("conversations.info", json!({ "channel": channel }))
            .await?;
        Ok(answer["channel"]["is_im"].as_bool() == Some(true))
    }

    /// The only way the bot posts: a message that contains a token goes only to a channel
    /// Slack confirms is a DM.
    pub async fn post(&self, channel: &str, text: &str) -> Result<(), ApiError> {
        if contains_token(text) && !self.is_dm(channel).await? {
            tracing::warn!(channel = %channel, "outbound guard refused a message with a token outside a DM");
            return Err(ApiError::Guard(channel.to_owned()));
        }
        self.call(
            "chat.postMessage",
            json!({ "channel": channel, "text": text }),
        )
        .await
        .map(|_| ())
    }

    /// `views.open`: shows a modal.
    pub async fn open_view(&self, trigger_id: &str, view: Value) -> Result<(), ApiError> {
        self.call(
            "views.open",
            json!({ "trigger_id": trigger_id, "view": view }),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::contains_token;

    #[test]
    fn token_shapes_are_recognised() {
        let token = format!("chi_{}", "a1B2".repeat(13)[..49].to_owned());
        assert!(contains_token(&format!("here: {token} ok")));
        assert!(!contains_token("chi_short"));
        assert!(!contains_token("no token here"));
    }
}
