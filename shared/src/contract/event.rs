//! S3 event notification details, independent of any Lambda type.

/// One `ObjectCreated` record, with the key already decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectEvent {
    /// The bucket the object was created in.
    pub bucket: String,
    /// The object's key, URL-decoded.
    pub key: String,
    /// The object's ETag; `None` when the record had none.
    pub etag: Option<String>,
    /// The object's version id; `None` when the bucket is not versioned.
    pub version_id: Option<String>,
    /// The event's sequencer (hex): S3's order of events for one key; `None` when absent.
    pub sequencer: Option<String>,
    /// The object's size in bytes; `None` when absent.
    pub size: Option<u64>,
    /// The event's name (`ObjectCreated:Put`, …); `None` when not given.
    pub event_name: Option<String>,
    /// When S3 received the request (RFC 3339, millisecond precision).
    pub event_time: Option<String>,
}

/// S3 event keys are URL-encoded form values: `+` is a space, `%XX` a byte.
/// Returns `None` when the decoded bytes are not UTF-8.
pub fn decode_s3_key(raw: &str) -> Option<String> {
    let plus = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_keys() {
        assert_eq!(
            decode_s3_key("incoming/lab_results/export+2026-11-22%2B01.csv").unwrap(),
            "incoming/lab_results/export 2026-11-22+01.csv"
        );
        assert_eq!(
            decode_s3_key("incoming/f/Z%C3%B6e.csv").unwrap(),
            "incoming/f/Zöe.csv"
        );
        assert_eq!(decode_s3_key("a%2Fb").unwrap(), "a/b");
        assert!(decode_s3_key("bad%FF").is_none());
        assert_eq!(decode_s3_key("plain.csv").unwrap(), "plain.csv");
    }
}
