//! The contact-tracing API's client: `POST {API_BASE_URL}/cases` over one `reqwest` client
//! (rustls) per container, with the envelope's idempotency key as `Idempotency-Key` and its
//! record version as `Casefeed-Version`.
//!
//! The body: `{"feed":…,"record_key":…,"change":"new"|"changed"|"removed","version":N,
//! "source":{"bucket":…,"key":…,"etag":…,"version_id":…},"fields":{…}}` (`version_id` only
//! in a versioned bucket; `fields` is `{}` for a removal).

use crate::contract::envelope::{Change, Envelope, EnvelopeSource};
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
    auth: std::sync::Arc<std::sync::RwLock<String>>,
    secret: Option<super::secrets::TokenSecret>,
    /// When the secret was last re-read: at most once per [`REFRESH_EVERY`].
    /// And whether that read changed the token.
    refreshed: std::sync::Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>>,
}

/// The least time between two re-reads of the token's secret (every refused call would
/// otherwise read it).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

#[derive(serde::Serialize)]
struct CaseBody<'a> {
    feed: &'a str,
    record_key: &'a str,
    change: Change,
    version: u64,
    source: &'a EnvelopeSource,
    fields: &'a std::collections::BTreeMap<String, String>,
}

/// The header that carries the record's version (the body's `version`, repeated so that a
/// proxy or the API can refuse a stale call before reading the body).
pub const VERSION_HEADER: &str = "Casefeed-Version";

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
            auth: std::sync::Arc::new(std::sync::RwLock::new(format!("Bearer {}", token.trim()))),
            secret: None,
            refreshed: Default::default(),
        })
    }
}

impl HttpApi {
    /// Re-read the token from `secret` when the API refuses it.
    pub fn with_secret(mut self, secret: super::secrets::TokenSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    fn auth(&self) -> String {
        self.auth.read().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Api for HttpApi {
    async fn refresh_credentials(&self) -> bool {
        let Some(secret) = &self.secret else {
            return false;
        };
        let mut last = self.refreshed.lock().await;
        if let Some((at, changed)) = *last {
            if at.elapsed() < REFRESH_EVERY {
                // read moments ago (by another call refused at the same time): a new token
                // from that read is worth one more call
                return changed;
            }
        }
        let before = self.auth();
        match secret.read().await {
            Ok(token) if !token.trim().is_empty() => {
                let auth = format!("Bearer {}", token.trim());
                let changed = auth != before;
                if let Ok(mut a) = self.auth.write() {
                    *a = auth;
                }
                *last = Some((tokio::time::Instant::now(), changed));
                tracing::info!(changed, "re-read the API token's secret");
                changed
            }
            Ok(_) => {
                *last = Some((tokio::time::Instant::now(), false));
                tracing::error!("the API token's secret is empty now; keeping the token we have");
                false
            }
            Err(e) => {
                *last = Some((tokio::time::Instant::now(), false));
                tracing::error!(error = %e, "could not re-read the API token's secret");
                false
            }
        }
    }

    async fn deliver(&self, env: &Envelope) -> ApiAnswer {
        let body = CaseBody {
            feed: &env.feed,
            record_key: &env.record_key,
            change: env.change,
            version: env.version,
            source: &env.source,
            fields: &env.fields,
        };
        let resp = self
            .client
            .post(&self.cases_url)
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .header("Idempotency-Key", &env.idempotency_key)
            .header(VERSION_HEADER, env.version)
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
            // no connection was made (refused, DNS, TLS, connect timeout): the request never
            // left. Checked before the timeout: a connect timeout is both.
            Err(e) if e.is_connect() => ApiAnswer::Unreachable(error_chain(&e)),
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
    use crate::contract::envelope::ENVELOPE_VERSION;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one request on 127.0.0.1 with `answer` (a whole HTTP/1.1 response); the task
    /// returns the request's head (lowercased) and body.
    async fn serve_once(
        answer: &'static str,
    ) -> (String, tokio::task::JoinHandle<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before its request ended");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed before its body ended");
                buf.extend_from_slice(&chunk[..n]);
            }
            sock.write_all(answer.as_bytes()).await.unwrap();
            (head, buf[head_end..head_end + len].to_vec())
        });
        (base, task)
    }

    fn envelope(change: Change, version_id: Option<&str>) -> Envelope {
        let fields: BTreeMap<String, String> = match change {
            Change::Removed => BTreeMap::new(),
            _ => [("name".to_string(), "Jane Roe".to_string())].into(),
        };
        Envelope {
            v: ENVELOPE_VERSION,
            feed: "labs".into(),
            run: "run-1".into(),
            source: EnvelopeSource {
                bucket: "data".into(),
                key: "incoming/labs/export-0002.csv".into(),
                etag: "abc123".into(),
                version_id: version_id.map(str::to_string),
            },
            change,
            record_key: "R1".into(),
            version: 7,
            idempotency_key: "ik-0123456789".into(),
            fields,
            sent_at_ms: Some(1_700_000_000_000),
            uploaded_at_ms: None,
            retry_window_secs: Some(86_400),
        }
    }

    fn client(base: &str) -> HttpApi {
        let t = Duration::from_secs(5);
        HttpApi::new(base, "secret-token", true, t, t).unwrap()
    }

    #[tokio::test]
    async fn a_delivery_posts_the_version_2_body_with_key_and_version_headers() {
        let (base, task) =
            serve_once("HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        let answer = client(&format!("{base}/"))
            .deliver(&envelope(Change::Changed, Some("v9")))
            .await;
        assert_eq!(
            answer,
            ApiAnswer::Status {
                code: 201,
                retry_after: None
            }
        );
        let (head, body) = task.await.unwrap();
        assert!(head.starts_with("post /cases http/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nauthorization: bearer secret-token\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nidempotency-key: ik-0123456789\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncasefeed-version: 7\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "feed": "labs",
                "record_key": "R1",
                "change": "changed",
                "version": 7,
                "source": {"bucket": "data", "key": "incoming/labs/export-0002.csv",
                           "etag": "abc123", "version_id": "v9"},
                "fields": {"name": "Jane Roe"}
            })
        );
    }

    #[tokio::test]
    async fn a_removal_is_sent_with_empty_fields_and_no_version_id_outside_a_versioned_bucket() {
        let (base, task) = serve_once(
            "HTTP/1.1 409 Conflict\r\ncontent-length: 19\r\nconnection: close\r\n\r\n\
             {\"outcome\":\"stale\"}",
        )
        .await;
        let answer = client(&base)
            .deliver(&envelope(Change::Removed, None))
            .await;
        assert_eq!(
            answer,
            ApiAnswer::Status {
                code: 409,
                retry_after: None
            }
        );
        let (_, body) = task.await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["change"], "removed");
        assert_eq!(body["fields"], serde_json::json!({}));
        assert_eq!(
            body["source"],
            serde_json::json!({"bucket": "data", "key": "incoming/labs/export-0002.csv",
                               "etag": "abc123"})
        );
    }

    #[tokio::test]
    async fn a_429_answer_keeps_its_retry_after() {
        let (base, task) = serve_once(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n",
        )
        .await;
        let answer = client(&base).deliver(&envelope(Change::New, None)).await;
        assert_eq!(
            answer,
            ApiAnswer::Status {
                code: 429,
                retry_after: Some("7".into())
            }
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_unreachable_api() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let answer = client(&base).deliver(&envelope(Change::New, None)).await;
        assert!(matches!(answer, ApiAnswer::Unreachable(_)), "{answer:?}");
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_a_broken_connection() {
        // the request reaches the server, which reads it and hangs up without answering
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = sock.read(&mut buf).await.unwrap();
            drop(sock);
        });
        let answer = client(&base).deliver(&envelope(Change::New, None)).await;
        assert!(matches!(answer, ApiAnswer::Connection(_)), "{answer:?}");
        task.await.unwrap();
    }

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
