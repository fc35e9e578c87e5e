//! Who runs an operator command, for its audit record: the caller identity from STS
//! `GetCallerIdentity` (the ARN, from the same AWS configuration the command uses), else the
//! access key id of the credentials the configuration resolves (with `AWS_PROFILE` when set),
//! plus the OS user. `source` says where the identity came from.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The identity an audit record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The caller's ARN (STS), or `access-key-id:<id>`, or `unknown`.
    pub identity: String,
    /// The AWS account, when STS answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Where `identity` came from: `sts:GetCallerIdentity`, `credentials` (the access key id
    /// of the resolved credentials: STS did not answer) or `none`.
    pub source: String,
    /// `AWS_PROFILE`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The OS user running the command (`USER`, else `LOGNAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Find out who the caller is; never fails (STS is given 5 s).
pub async fn caller(conf: &aws_config::SdkConfig) -> Caller {
    let profile = env("AWS_PROFILE");
    let os_user = env("USER").or_else(|| env("LOGNAME"));
    let sts = aws_sdk_sts::Client::new(conf);
    let answer =
        tokio::time::timeout(Duration::from_secs(5), sts.get_caller_identity().send()).await;
    if let Ok(Ok(out)) = answer {
        if let Some(arn) = out.arn() {
            return Caller {
                identity: arn.to_string(),
                account: out.account().map(str::to_string),
                source: "sts:GetCallerIdentity".into(),
                profile,
                os_user,
            };
        }
    }
    let key_id = match conf.credentials_provider() {
        Some(p) => {
            use aws_sdk_sts::config::ProvideCredentials;
            tokio::time::timeout(Duration::from_secs(5), p.provide_credentials())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|c| c.access_key_id().to_string())
        }
        None => None,
    };
    match key_id {
        Some(id) => Caller {
            identity: format!("access-key-id:{id}"),
            account: None,
            source: "credentials".into(),
            profile,
            os_user,
        },
        None => Caller {
            identity: "unknown".into(),
            account: None,
            source: "none".into(),
            profile,
            os_user,
        },
    }
}
