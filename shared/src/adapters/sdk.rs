//! The one place where an AWS SDK error becomes a message and a class. Every adapter maps
//! [`SdkFailure`] into its port's error; none formats or classifies an SDK error itself.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// An SDK call that failed, as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SdkFailure {
    /// The HTTP status of the service's answer, when there was one.
    pub status: Option<u16>,
    /// The service's error code (`QueueDoesNotExist`, `NoSuchKey`, …), when it gave one.
    pub code: Option<String>,
    /// What went wrong, for logs and reports: the code and the service's message, or the
    /// kind of transport failure. Never a request's body.
    pub message: String,
    /// Worth retrying: a timeout, a dropped connection, a throttle or a service fault.
    /// Permanent: the request could not be built, or the service says the target itself is
    /// wrong (a queue that does not exist, a batch that is too large).
    pub retryable: bool,
}

/// Service error codes that no retry can fix.
const PERMANENT_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "InvalidAddress",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "BatchRequestTooLong",
    "ResourceNotFoundException",
];

/// Describe a failed SDK call.
pub(crate) fn describe<E>(e: &SdkError<E, Response>) -> SdkFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().map(str::to_string);
            let retryable = !code
                .as_deref()
                .is_some_and(|c| PERMANENT_CODES.contains(&c));
            SdkFailure {
                status,
                message: format!(
                    "{}: {}",
                    code.as_deref().unwrap_or("unknown"),
                    err.message().unwrap_or("")
                ),
                code,
                retryable,
            }
        }
        SdkError::ConstructionFailure(_) => SdkFailure {
            status,
            code: None,
            message: format!("the request could not be built: {}", DisplayErrorContext(e)),
            retryable: false,
        },
        SdkError::TimeoutError(_) => SdkFailure {
            status,
            code: None,
            message: "timeout".into(),
            retryable: true,
        },
        SdkError::DispatchFailure(_) => SdkFailure {
            status,
            code: None,
            message: format!("dispatch failure: {}", DisplayErrorContext(e)),
            retryable: true,
        },
        _ => SdkFailure {
            status,
            code: None,
            message: DisplayErrorContext(e).to_string(),
            retryable: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::{ConstructionFailure, ServiceError};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[derive(Debug)]
    struct Service(ErrorMetadata);
    impl std::fmt::Display for Service {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("service error")
        }
    }
    impl std::error::Error for Service {}
    impl ProvideErrorMetadata for Service {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    fn service(code: &str, status: u16) -> SdkError<Service, Response> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("the message")
            .build();
        let raw = Response::new(status.try_into().expect("a valid status"), SdkBody::empty());
        SdkError::ServiceError(
            ServiceError::builder()
                .source(Service(meta))
                .raw(raw)
                .build(),
        )
    }

    #[test]
    fn service_errors_carry_code_status_and_class() {
        let f = describe(&service("InternalError", 500));
        assert_eq!(f.status, Some(500));
        assert_eq!(f.code.as_deref(), Some("InternalError"));
        assert_eq!(f.message, "InternalError: the message");
        assert!(f.retryable);
        let f = describe(&service("AWS.SimpleQueueService.NonExistentQueue", 400));
        assert!(!f.retryable, "a queue that does not exist stays missing");
        let f = describe(&service("BatchRequestTooLong", 400));
        assert!(!f.retryable);
    }

    #[test]
    fn transport_and_construction_failures() {
        let e: SdkError<Service, Response> =
            SdkError::ConstructionFailure(ConstructionFailure::builder().source("bad").build());
        let f = describe(&e);
        assert!(!f.retryable);
        assert_eq!(f.status, None);
        let e: SdkError<Service, Response> = SdkError::timeout_error("slow");
        let f = describe(&e);
        assert!(f.retryable);
        assert_eq!(f.message, "timeout");
    }
}
