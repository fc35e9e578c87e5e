//! The contact-tracing API's client: `POST {API_BASE_URL}/cases` over one `reqwest` client
//! (rustls) per container, with the envelope's idempotency key as `Idempotency-Key`.

use crate::contract::envelope::{Change, Envelope};
use crate::ports::api::{Api, ApiAnswer};
use std::time::Duration;

/// Why the API client could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ApiConfigError {
    /// `API_BASE_URL` does not parse as a URL.
    #[error("API_BASE_URL `{0}` is not a valid URL")]
    BadUrl(String),
    /// `API_BASE_URL` is plain http and `API_ALLOW_HTTP` does not allow it.
    #[error("API_BASE_URL must use https (set API_ALLOW_HTTP=1 only for local runs)")]
    NotHttps,
    /// `reqwest` could not build its client.
    #[error("building the HTTP client failed: {0}")]
    Client(String),
    /// The API token is empty or blank.
    #[error("the API token is empty")]
    EmptyToken,
}

/// The real client: one `reqwest` client (rustls) per container.
#[derive(Clone)]
pub struct HttpApi {
    client: reqwest::Client,
    cases_url: String,
    auth: String,
}

#[derive(serde::Serialize)]
struct CaseBody<'a> {
    feed: &'a str,
    record_key: &'a str,
    change: Change,
    fields: &'a std::collections::BTreeMap<String, String>,
}

impl HttpApi {
    /// A client for `base_url` with a bearer token; plain http only when `allow_http`. The
    /// timeouts bound connecting and each whole request.
    pub fn new(
        base_url: &str,
        token: &str,
        allow_http: bool,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<HttpApi, ApiConfigError> {
        let url = reqwest::Url::parse(base_url)
            .map_err(|_| ApiConfigError::BadUrl(base_url.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            _ => return Err(ApiConfigError::NotHttps),
        }
        if token.trim().is_empty() {
            return Err(ApiConfigError::EmptyToken);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("casefeed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiConfigError::Client(e.to_string()))?;
        Ok(HttpApi {
            client,
            cases_url: format!("{}/cases", base_url.trim_end_matches('/')),
            auth: format!("Bearer {}", token.trim()),
        })
    }
}

impl Api for HttpApi {
    async fn deliver(&self, env: &Envelope) -> ApiAnswer {
        let body = CaseBody {
            feed: &env.feed,
            record_key: &env.record_key,
            change: env.change,
            fields: &env.fields,
        };
        let resp = self
            .client
            .post(&self.cases_url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header("Idempotency-Key", &env.idempotency_key)
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) => {
                let code = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // drain the body so the connection is reused; its content is never kept
                let _ = r.bytes().await;
                ApiAnswer::Status { code, retry_after }
            }
            Err(e) if e.is_timeout() => ApiAnswer::Timeout,
            // reqwest's error text names the URL and the cause, never the request body
            Err(e) => ApiAnswer::Connection(error_chain(&e)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_requires_https_unless_allowed() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            HttpApi::new("http://x", "t", false, t, t),
            Err(ApiConfigError::NotHttps)
        ));
        assert!(HttpApi::new("http://127.0.0.1:1", "t", true, t, t).is_ok());
        assert!(HttpApi::new("https://api.example.org/v1/", "t", false, t, t).is_ok());
        assert!(matches!(
            HttpApi::new("not a url", "t", false, t, t),
            Err(ApiConfigError::BadUrl(_))
        ));
        assert!(matches!(
            HttpApi::new("https://x", " ", false, t, t),
            Err(ApiConfigError::EmptyToken)
        ));
    }
}
