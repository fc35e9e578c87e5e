//! The API token from Secrets Manager: the secret is the token itself, or JSON
//! `{"token": "…"}`. Read once per container, at start-up.

use super::sdk::describe;
use crate::config::ConfigError;

/// The API token's secret: read at start-up, and again when the API refuses the token (the
/// secret may have been rotated).
#[derive(Clone)]
pub struct TokenSecret {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
}

impl TokenSecret {
    /// The secret `arn`, read through one client built from `sdk`.
    pub fn new(sdk: &aws_config::SdkConfig, arn: &str) -> Self {
        TokenSecret {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            arn: arn.to_string(),
        }
    }

    /// The token the secret holds now.
    pub async fn read(&self) -> Result<String, ConfigError> {
        read_with(&self.client, &self.arn).await
    }
}

/// Read the token the secret `arn` holds; an empty or missing token is a start-up error.
pub async fn read_token_secret(
    sdk: &aws_config::SdkConfig,
    arn: &str,
) -> Result<String, ConfigError> {
    TokenSecret::new(sdk, arn).read().await
}

async fn read_with(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<String, ConfigError> {
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| ConfigError::Read {
            source_ref: arn.to_string(),
            problem: format!("GetSecretValue failed: {}", describe(&e).message),
        })?;
    let raw = out.secret_string().unwrap_or_default().trim().to_string();
    let token = match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(m)) => m
            .get("token")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_default(),
        _ => raw,
    };
    if token.is_empty() {
        return Err(ConfigError::Read {
            source_ref: arn.to_string(),
            problem: "the secret holds no token (expected the token, or JSON {\"token\": \"…\"})"
                .into(),
        });
    }
    Ok(token)
}
