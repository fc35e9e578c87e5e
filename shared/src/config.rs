//! Feed configuration: which CSV types ("feeds") exist, how their rows are keyed and compared.
//!
//! Loaded once per container from a TOML document (a local path or an `s3://` URI given in
//! the environment) and validated before the first event is handled; every error names the
//! feed and the field.

use crate::contract::source::ExportOrder;
use serde::Deserialize;
use std::collections::BTreeSet;

/// A configuration problem, found at start-up. Always permanent: a redeploy fixes it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document does not parse as TOML of the configuration's shape.
    #[error("feed configuration is not valid TOML: {0}")]
    Toml(String),
    /// The document as a whole is wrong (no feed), or a configuration location is malformed.
    #[error("feed configuration: {0}")]
    Invalid(String),
    /// One feed's field is wrong.
    #[error("feed `{feed}`: field `{field}`: {problem}")]
    Feed {
        /// The feed's name.
        feed: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An environment variable is missing or invalid.
    #[error("environment variable {name}: {problem}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configuration (or a secret) could not be read.
    #[error("could not read feed configuration from {source_ref}: {problem}")]
    Read {
        /// Where it was read from: a path, an `s3://` URI or a secret's ARN.
        source_ref: String,
        /// What went wrong.
        problem: String,
    },
}

/// What happens to the first file of a feed (when there is no snapshot yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstFile {
    /// The first file only sets the state: nothing is sent.
    Baseline,
    /// Every row of the first file is sent as `new`.
    Send,
}

/// What a feed does with the records a file no longer has (`removed` in `feeds.toml`).
/// Either way they leave the state and a committed run lists them by record key in
/// `removed/<feed>/<run>.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Removals {
    /// Counted and listed, not sent.
    #[default]
    Count,
    /// Also sent: one `removed` message (a tombstone, no fields) per removed record.
    Send,
}

/// `order` as `feeds.toml` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOrder {
    Upload,
    Key,
    Metadata,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    first_file: Option<FirstFile>,
    removed: Option<Removals>,
    order: Option<RawOrder>,
    order_metadata: Option<String>,
    max_row_bytes: Option<usize>,
    max_columns: Option<usize>,
    max_object_bytes: Option<u64>,
    max_changes: Option<u64>,
    max_change_share: Option<f64>,
    max_removed_share: Option<f64>,
    guard_floor: Option<u64>,
    max_inflated_bytes: Option<u64>,
    trim_keys: Option<bool>,
    retry_window_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: String,
    prefix: Option<String>,
    key_columns: Vec<String>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(default)]
    required_columns: Vec<String>,
    first_file: Option<FirstFile>,
    removed: Option<Removals>,
    order: Option<RawOrder>,
    order_metadata: Option<String>,
    max_row_bytes: Option<usize>,
    max_columns: Option<usize>,
    max_object_bytes: Option<u64>,
    max_changes: Option<u64>,
    max_change_share: Option<f64>,
    max_removed_share: Option<f64>,
    guard_floor: Option<u64>,
    max_inflated_bytes: Option<u64>,
    trim_keys: Option<bool>,
    retry_window_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "feed")]
    feeds: Vec<RawFeed>,
}

/// The guards that stop a file before it floods the API or moves the state wrongly.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Guards {
    /// Objects larger than this are rejected before a byte is read.
    pub max_object_bytes: u64,
    /// Flood guard: more new+changed rows than this holds the file.
    pub max_changes: u64,
    /// Flood guard: new+changed rows above this share of the previous row count hold the
    /// file (only when they are also above `guard_floor`).
    pub max_change_share: f64,
    /// Shrink guard: removed rows above this share of the previous row count hold the file
    /// (only when they are also above `guard_floor`).
    pub max_removed_share: f64,
    /// Counts at or below this never trip a share-based guard (small feeds change a lot in
    /// relative terms).
    pub guard_floor: u64,
}

/// The default object-size limit: 4 GiB.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            max_changes: 20_000,
            max_change_share: 0.10,
            max_removed_share: 0.10,
            guard_floor: 100,
        }
    }
}

/// One feed, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    /// The feed's name: in reports, metrics, and the `state/`, `runs/`, `held/` keys.
    pub name: String,
    /// Files of this feed arrive under `incoming/<prefix>/`.
    pub prefix: String,
    /// The columns whose values identify a record, in key order.
    pub key_columns: Vec<String>,
    /// Columns left out of the content fingerprints and line prints: a change in them alone
    /// does not make a row changed.
    pub ignore_columns: Vec<String>,
    /// Key columns are always required; this holds the union.
    pub required_columns: Vec<String>,
    /// What happens to the feed's first file.
    pub first_file: FirstFile,
    /// Whether records a file no longer has are only counted or also sent as tombstones.
    pub removed: Removals,
    /// How the feed's exports are ordered (which is later); an older one is stale.
    pub order: ExportOrder,
    /// The largest row accepted, in bytes; a longer row is rejected.
    pub max_row_bytes: usize,
    /// The most columns a header may have.
    pub max_columns: usize,
    /// Whether leading and trailing ASCII whitespace of key values is trimmed before they
    /// are used (record key, key fingerprint, idempotency key): `" 42 "` is then record
    /// `42`. A key value that is empty or only whitespace is rejected either way.
    pub trim_keys: bool,
    /// The most bytes a gzip object may inflate to; past it the file is rejected.
    pub max_inflated_bytes: u64,
    /// How long the consumer retries a transient failure of one of the feed's messages
    /// (backoff with jitter, the breaker's waits included) before it dead-letters it with
    /// `retry window exceeded`; carried in each message.
    pub retry_window_secs: u64,
    /// The guards' limits.
    pub guards: Guards,
}

impl FeedConfig {
    /// A feed with defaults, for tests and tools.
    pub fn new(name: &str, key_columns: &[&str]) -> Self {
        FeedConfig {
            name: name.to_string(),
            prefix: name.to_string(),
            key_columns: key_columns.iter().map(|s| s.to_string()).collect(),
            ignore_columns: Vec::new(),
            required_columns: key_columns.iter().map(|s| s.to_string()).collect(),
            first_file: FirstFile::Baseline,
            removed: Removals::Count,
            order: ExportOrder::Upload,
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            max_columns: DEFAULT_MAX_COLUMNS,
            trim_keys: false,
            max_inflated_bytes: DEFAULT_MAX_INFLATED_BYTES,
            retry_window_secs: DEFAULT_RETRY_WINDOW_SECS,
            guards: Guards::default(),
        }
    }
}

/// The default row-size limit: 64 KiB.
pub const DEFAULT_MAX_ROW_BYTES: usize = 64 * 1024;
/// The default column limit: 1024 columns.
pub const DEFAULT_MAX_COLUMNS: usize = 1024;
/// The default limit on a gzip object's inflated bytes: 16 GiB (a 5-million-row export of
/// rows up to about 3.4 KiB; four times the default largest plain object).
pub const DEFAULT_MAX_INFLATED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// The default retry window: 24 hours.
pub const DEFAULT_RETRY_WINDOW_SECS: u64 = 86_400;
/// The longest retry window: 3 days. The work queue keeps a message 4 days: a window this
/// long plus the longest backoff (15 minutes) still ends before SQS would drop it.
pub const MAX_RETRY_WINDOW_SECS: u64 = 259_200;
/// The prefix that triggers the splitter; nothing else may be written there.
use crate::contract::layout::INCOMING_PREFIX;

/// All feeds.
#[derive(Debug, Clone)]
pub struct Config {
    /// The feeds, in the document's order.
    pub feeds: Vec<FeedConfig>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        if raw.feeds.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[feed]] defined; at least one feed is required".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let mut feeds = Vec::with_capacity(raw.feeds.len());
        for f in &raw.feeds {
            let feed = FeedConfig::from_raw(f, &raw.defaults)?;
            if !names.insert(feed.name.clone()) {
                return Err(feed_error(f, "name", "defined twice".into()));
            }
            if !prefixes.insert(feed.prefix.clone()) {
                let problem = format!("`{}` is already used by another feed", feed.prefix);
                return Err(feed_error(f, "prefix", problem));
            }
            feeds.push(feed);
        }
        Ok(Config { feeds })
    }

    /// The feed an object key belongs to: `incoming/<prefix>/<anything>`.
    /// `None` for keys outside `incoming/` or of no known feed.
    pub fn feed_for_key(&self, key: &str) -> Option<&FeedConfig> {
        let rest = key.strip_prefix(INCOMING_PREFIX)?;
        let (prefix, file) = rest.split_once('/')?;
        if file.is_empty() || file.ends_with('/') {
            return None;
        }
        self.feeds.iter().find(|f| f.prefix == prefix)
    }

    /// The feed of this name.
    pub fn feed(&self, name: &str) -> Option<&FeedConfig> {
        self.feeds.iter().find(|f| f.name == name)
    }
}

fn feed_error(f: &RawFeed, field: &'static str, problem: String) -> ConfigError {
    ConfigError::Feed {
        feed: f.name.clone(),
        field,
        problem,
    }
}

impl FeedConfig {
    /// One validated feed: its name and prefix, columns, limits and guards, the feed's own
    /// settings over the `[defaults]`.
    fn from_raw(f: &RawFeed, defaults: &RawDefaults) -> Result<FeedConfig, ConfigError> {
        if !valid_name(&f.name) {
            return Err(feed_error(
                f,
                "name",
                "must be 1-128 characters of A-Z a-z 0-9 _ - . (not starting with a dot)".into(),
            ));
        }
        let prefix = f.prefix.clone().unwrap_or_else(|| f.name.clone());
        if !valid_name(&prefix) {
            return Err(feed_error(
                f,
                "prefix",
                "must be one path segment of A-Z a-z 0-9 _ - . (no slash)".into(),
            ));
        }
        let required_columns = check_columns(f)?;
        let (max_row_bytes, max_columns) = row_limits(f, defaults)?;
        let max_inflated_bytes = f
            .max_inflated_bytes
            .or(defaults.max_inflated_bytes)
            .unwrap_or(DEFAULT_MAX_INFLATED_BYTES);
        if max_inflated_bytes == 0 {
            return Err(feed_error(
                f,
                "max_inflated_bytes",
                "must be at least 1".into(),
            ));
        }
        let order = export_order(f, defaults)?;
        let retry_window_secs = f
            .retry_window_secs
            .or(defaults.retry_window_secs)
            .unwrap_or(DEFAULT_RETRY_WINDOW_SECS);
        if !(1..=MAX_RETRY_WINDOW_SECS).contains(&retry_window_secs) {
            return Err(feed_error(
                f,
                "retry_window_secs",
                format!("must be 1 to {MAX_RETRY_WINDOW_SECS} seconds (3 days: the work queue keeps a message 4)"),
            ));
        }
        Ok(FeedConfig {
            name: f.name.clone(),
            prefix,
            key_columns: f.key_columns.clone(),
            ignore_columns: f.ignore_columns.clone(),
            required_columns,
            first_file: f
                .first_file
                .or(defaults.first_file)
                .unwrap_or(FirstFile::Baseline),
            removed: f.removed.or(defaults.removed).unwrap_or_default(),
            order,
            max_row_bytes,
            max_columns,
            trim_keys: f.trim_keys.or(defaults.trim_keys).unwrap_or(false),
            max_inflated_bytes,
            retry_window_secs,
            guards: guards(f, defaults)?,
        })
    }
}

/// The key, ignored and required columns, checked; the required columns (keys first).
fn check_columns(f: &RawFeed) -> Result<Vec<String>, ConfigError> {
    if f.key_columns.is_empty() {
        return Err(feed_error(
            f,
            "key_columns",
            "at least one key column is required".into(),
        ));
    }
    // every list is checked against sets, never searched per column
    let mut keys = BTreeSet::new();
    for c in &f.key_columns {
        if c.is_empty() {
            return Err(feed_error(f, "key_columns", "empty column name".into()));
        }
        if !keys.insert(c.as_str()) {
            return Err(feed_error(f, "key_columns", format!("`{c}` listed twice")));
        }
    }
    let listed_required: BTreeSet<&str> = f.required_columns.iter().map(String::as_str).collect();
    for c in &f.ignore_columns {
        if keys.contains(c.as_str()) {
            return Err(feed_error(
                f,
                "ignore_columns",
                format!("`{c}` is a key column and cannot be ignored"),
            ));
        }
        if listed_required.contains(c.as_str()) {
            return Err(feed_error(
                f,
                "ignore_columns",
                format!("`{c}` is also a required column"),
            ));
        }
    }
    let mut required = f.key_columns.clone();
    let mut in_required = keys;
    for c in &f.required_columns {
        if c.is_empty() {
            return Err(feed_error(
                f,
                "required_columns",
                "empty column name".into(),
            ));
        }
        if in_required.insert(c.as_str()) {
            required.push(c.clone());
        }
    }
    Ok(required)
}

/// `order` and `order_metadata`, checked: a metadata order needs the metadata's name, and
/// only a metadata order takes one.
fn export_order(f: &RawFeed, defaults: &RawDefaults) -> Result<ExportOrder, ConfigError> {
    let order = f.order.or(defaults.order).unwrap_or(RawOrder::Upload);
    if order != RawOrder::Metadata {
        if f.order_metadata.is_some() {
            return Err(feed_error(
                f,
                "order_metadata",
                "is only used with order = \"metadata\"".into(),
            ));
        }
        return Ok(match order {
            RawOrder::Key => ExportOrder::Key,
            _ => ExportOrder::Upload,
        });
    }
    let Some(raw) = f
        .order_metadata
        .as_ref()
        .or(defaults.order_metadata.as_ref())
    else {
        return Err(feed_error(
            f,
            "order_metadata",
            "order = \"metadata\" needs order_metadata = \"<name>\": the S3 user metadata x-amz-meta-<name> whose value orders the exports".into(),
        ));
    };
    let t = raw.trim();
    let name = match t.get(..11) {
        Some(p) if p.eq_ignore_ascii_case("x-amz-meta-") => &t[11..],
        _ => t,
    }
    .to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid {
        return Err(feed_error(
            f,
            "order_metadata",
            format!("`{raw}` is not a metadata name: 1-128 characters of A-Z a-z 0-9 - _ . (with or without x-amz-meta-)"),
        ));
    }
    Ok(ExportOrder::Metadata(name))
}

/// `max_row_bytes` and `max_columns`, checked against their ranges.
fn row_limits(f: &RawFeed, defaults: &RawDefaults) -> Result<(usize, usize), ConfigError> {
    let max_row_bytes = f
        .max_row_bytes
        .or(defaults.max_row_bytes)
        .unwrap_or(DEFAULT_MAX_ROW_BYTES);
    if !(64..=64 * 1024 * 1024).contains(&max_row_bytes) {
        return Err(feed_error(
            f,
            "max_row_bytes",
            format!("{max_row_bytes} is outside 64..=67108864"),
        ));
    }
    let max_columns = f
        .max_columns
        .or(defaults.max_columns)
        .unwrap_or(DEFAULT_MAX_COLUMNS);
    if !(1..=100_000).contains(&max_columns) {
        return Err(feed_error(
            f,
            "max_columns",
            format!("{max_columns} is outside 1..=100000"),
        ));
    }
    Ok((max_row_bytes, max_columns))
}

/// The feed's guards, checked.
fn guards(f: &RawFeed, defaults: &RawDefaults) -> Result<Guards, ConfigError> {
    let d = Guards::default();
    let guards = Guards {
        max_object_bytes: f
            .max_object_bytes
            .or(defaults.max_object_bytes)
            .unwrap_or(d.max_object_bytes),
        max_changes: f
            .max_changes
            .or(defaults.max_changes)
            .unwrap_or(d.max_changes),
        max_change_share: f
            .max_change_share
            .or(defaults.max_change_share)
            .unwrap_or(d.max_change_share),
        max_removed_share: f
            .max_removed_share
            .or(defaults.max_removed_share)
            .unwrap_or(d.max_removed_share),
        guard_floor: f
            .guard_floor
            .or(defaults.guard_floor)
            .unwrap_or(d.guard_floor),
    };
    if guards.max_object_bytes == 0 {
        return Err(feed_error(
            f,
            "max_object_bytes",
            "must be at least 1".into(),
        ));
    }
    for (field, v) in [
        ("max_change_share", guards.max_change_share),
        ("max_removed_share", guards.max_removed_share),
    ] {
        if !(v > 0.0 && v <= 1.0) {
            return Err(feed_error(
                f,
                field,
                format!("{v} is not a share in (0, 1]; 1 turns the guard off"),
            ));
        }
    }
    Ok(guards)
}

/// Where the configuration comes from, parsed from the environment value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A local file path.
    Path(String),
    /// An S3 object, from `s3://<bucket>/<key>`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
    },
}

impl ConfigSource {
    /// Parse a configuration location: `s3://<bucket>/<key>`, or else a local path.
    pub fn parse(value: &str) -> Result<ConfigSource, ConfigError> {
        let v = value.trim();
        if v.is_empty() {
            return Err(ConfigError::Invalid("empty configuration location".into()));
        }
        if let Some(rest) = v.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| {
                ConfigError::Invalid(format!("`{v}`: expected s3://<bucket>/<key>"))
            })?;
            if bucket.len() < 3 || key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "`{v}`: expected s3://<bucket>/<key>"
                )));
            }
            return Ok(ConfigSource::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        Ok(ConfigSource::Path(v.to_string()))
    }
}

/// Read a required environment variable.
pub fn env_required(name: &str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        Ok(_) => Err(ConfigError::Env {
            name: name.into(),
            problem: "is set but empty".into(),
        }),
        Err(_) => Err(ConfigError::Env {
            name: name.into(),
            problem: "is not set".into(),
        }),
    }
}

/// Read an optional numeric environment variable within bounds.
pub fn env_number(name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) if v.trim().is_empty() => Ok(default),
        Ok(v) => {
            let n: u64 = v.trim().parse().map_err(|_| ConfigError::Env {
                name: name.into(),
                problem: format!("`{v}` is not a whole number"),
            })?;
            if n < min || n > max {
                return Err(ConfigError::Env {
                    name: name.into(),
                    problem: format!("{n} is outside {min}..={max}"),
                });
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[defaults]
first_file = "baseline"
max_row_bytes = 4096

[[feed]]
name = "lab_results"
key_columns = ["record_id"]
ignore_columns = ["export_timestamp"]
required_columns = ["record_id", "patient_id"]

[[feed]]
name = "case_reports"
prefix = "cases"
key_columns = ["jurisdiction", "case_id"]
required_columns = ["status"]
first_file = "send"
"#;

    #[test]
    fn parses_and_applies_defaults() {
        let c = Config::from_toml(SAMPLE).unwrap();
        let lab = c.feed("lab_results").unwrap();
        assert_eq!(lab.prefix, "lab_results");
        assert_eq!(lab.max_row_bytes, 4096);
        assert_eq!(lab.first_file, FirstFile::Baseline);
        let cases = c.feed("case_reports").unwrap();
        assert_eq!(cases.first_file, FirstFile::Send);
        assert_eq!(
            cases.required_columns,
            vec!["jurisdiction", "case_id", "status"]
        );
    }

    #[test]
    fn finds_feed_by_key() {
        let c = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(
            c.feed_for_key("incoming/cases/2026/x.csv").unwrap().name,
            "case_reports"
        );
        assert_eq!(
            c.feed_for_key("incoming/lab_results/a.csv.gz")
                .unwrap()
                .name,
            "lab_results"
        );
        assert!(c.feed_for_key("incoming/unknown/a.csv").is_none());
        assert!(c.feed_for_key("runs/lab_results/a.json").is_none());
        assert!(c.feed_for_key("incoming/lab_results/").is_none());
        assert!(c.feed_for_key("incoming/lab_results").is_none());
    }

    #[test]
    fn errors_name_feed_and_field() {
        let bad = "[[feed]]\nname = \"x\"\nkey_columns = []\n";
        let e = Config::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("key_columns"), "{e}");
        let bad = "[[feed]]\nname = \"x\"\nkey_columns = [\"id\"]\nignore_columns=[\"id\"]\n";
        let e = Config::from_toml(bad).unwrap_err().to_string();
        assert!(e.contains("ignore_columns"), "{e}");
        let bad = "[[feed]]\nname = \"a/b\"\nkey_columns = [\"id\"]\n";
        assert!(Config::from_toml(bad)
            .unwrap_err()
            .to_string()
            .contains("name"));
        let dup = "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n[[feed]]\nname=\"b\"\nprefix=\"a\"\nkey_columns=[\"id\"]\n";
        assert!(Config::from_toml(dup)
            .unwrap_err()
            .to_string()
            .contains("prefix"));
        let typo = "[[feed]]\nname=\"a\"\nkey_column=[\"id\"]\n";
        assert!(Config::from_toml(typo).is_err());
        assert!(Config::from_toml("").is_err());
    }

    /// Long column lists are checked against sets (only that it runs: no time is
    /// measured); the required columns stay the keys first, then the listed ones in order,
    /// each once, and an ignored column that is also required is still found.
    #[test]
    fn a_feed_listing_100000_columns_is_checked() {
        let list = |prefix: &str, n: usize| {
            (0..n)
                .map(|i| format!("\"{prefix}{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let doc = |ignored: &str| {
            format!(
                "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nrequired_columns=[\"c1\",\"id\",{},\"c0\"]\nignore_columns=[{}]\n",
                list("c", 100_000),
                ignored
            )
        };
        let c = Config::from_toml(&doc(&list("x", 50_000))).unwrap();
        let req = &c.feeds[0].required_columns;
        assert_eq!(req.len(), 100_001);
        assert_eq!(req[..3], ["id", "c1", "c0"]);
        assert_eq!(req[100_000], "c99999");
        let e = Config::from_toml(&doc(&format!("{},\"c99999\"", list("x", 50_000))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ignore_columns") && e.contains("`c99999` is also a required column"),
            "{e}"
        );
    }

    #[test]
    fn the_retry_window_defaults_to_a_day_is_set_per_feed_or_in_defaults_and_is_bounded() {
        let c = Config::from_toml(
            "[defaults]\nretry_window_secs = 3600\n[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nretry_window_secs = 60\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\n",
        )
        .unwrap();
        assert_eq!(c.feed("a").unwrap().retry_window_secs, 60);
        assert_eq!(c.feed("b").unwrap().retry_window_secs, 3600);
        let d = Config::from_toml("[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n").unwrap();
        assert_eq!(d.feeds[0].retry_window_secs, 86_400);
        for bad in ["0", "259201"] {
            let e = Config::from_toml(&format!(
                "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nretry_window_secs = {bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("retry_window_secs"), "{e}");
        }
    }

    #[test]
    fn max_inflated_bytes_defaults_to_16_gib_and_is_set_per_feed_or_in_defaults() {
        let c = Config::from_toml(
            "[defaults]\nmax_inflated_bytes = 5000\n[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nmax_inflated_bytes = 1000\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\n",
        )
        .unwrap();
        assert_eq!(c.feed("a").unwrap().max_inflated_bytes, 1000);
        assert_eq!(c.feed("b").unwrap().max_inflated_bytes, 5000);
        let c = Config::from_toml("[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n").unwrap();
        assert_eq!(c.feeds[0].max_inflated_bytes, 16 << 30);
        assert_eq!(
            FeedConfig::new("a", &["id"]).max_inflated_bytes,
            DEFAULT_MAX_INFLATED_BYTES
        );
        let e = Config::from_toml(
            "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nmax_inflated_bytes = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("max_inflated_bytes") && e.contains("at least 1"),
            "{e}"
        );
    }

    #[test]
    fn trim_keys_is_off_by_default_and_is_set_per_feed_or_in_defaults() {
        let feeds = "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\ntrim_keys = false\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\n";
        let c = Config::from_toml(feeds).unwrap();
        assert!(!c.feed("a").unwrap().trim_keys && !c.feed("b").unwrap().trim_keys);
        assert!(!FeedConfig::new("a", &["id"]).trim_keys);
        let c = Config::from_toml(&format!("[defaults]\ntrim_keys = true\n{feeds}")).unwrap();
        assert!(
            !c.feed("a").unwrap().trim_keys,
            "the feed's own setting wins"
        );
        assert!(c.feed("b").unwrap().trim_keys, "the default applies");
        assert!(Config::from_toml(&feeds.replace("false", "\"yes\"")).is_err());
    }

    #[test]
    fn guards_default_and_override() {
        let c = Config::from_toml(
            "[defaults]\nmax_changes = 500\n[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nmax_change_share = 0.5\nmax_object_bytes = 1000\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\n",
        )
        .unwrap();
        let a = c.feed("a").unwrap().guards;
        assert_eq!(a.max_changes, 500);
        assert_eq!(a.max_change_share, 0.5);
        assert_eq!(a.max_object_bytes, 1000);
        assert_eq!(a.max_removed_share, Guards::default().max_removed_share);
        let b = c.feed("b").unwrap().guards;
        assert_eq!(b.max_change_share, Guards::default().max_change_share);
        assert_eq!(b.max_changes, 500);
        for bad in [
            "max_change_share = 0.0",
            "max_removed_share = 1.5",
            "max_object_bytes = 0",
        ] {
            let t = format!("[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n{bad}\n");
            let e = Config::from_toml(&t).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn removed_defaults_to_count_and_parses() {
        let c = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(c.feed("lab_results").unwrap().removed, Removals::Count);
        let t = "[defaults]\nremoved = \"send\"\n[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\nremoved = \"count\"\n";
        let c = Config::from_toml(t).unwrap();
        assert_eq!(c.feed("a").unwrap().removed, Removals::Send);
        assert_eq!(c.feed("b").unwrap().removed, Removals::Count);
        let bad = "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\nremoved = \"delete\"\n";
        assert!(Config::from_toml(bad).is_err());
    }

    #[test]
    fn order_defaults_to_upload_and_parses_key_and_metadata() {
        let c = Config::from_toml(SAMPLE).unwrap();
        assert_eq!(c.feed("lab_results").unwrap().order, ExportOrder::Upload);
        let t = "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\norder = \"key\"\n[[feed]]\nname=\"b\"\nkey_columns=[\"id\"]\norder = \"metadata\"\norder_metadata = \"X-Amz-Meta-Export-Seq\"\n[[feed]]\nname=\"c\"\nkey_columns=[\"id\"]\norder = \"upload\"\n";
        let c = Config::from_toml(t).unwrap();
        assert_eq!(c.feed("a").unwrap().order, ExportOrder::Key);
        assert_eq!(
            c.feed("b").unwrap().order,
            ExportOrder::Metadata("export-seq".into())
        );
        assert_eq!(c.feed("c").unwrap().order, ExportOrder::Upload);
    }

    #[test]
    fn a_metadata_order_without_its_metadata_name_is_a_config_error() {
        let feed = "[[feed]]\nname=\"a\"\nkey_columns=[\"id\"]\n";
        let e = Config::from_toml(&format!("{feed}order = \"metadata\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`a`") && e.contains("order_metadata") && e.contains("x-amz-meta-"),
            "{e}"
        );
        let e = Config::from_toml(&format!(
            "{feed}order = \"key\"\norder_metadata = \"seq\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("only used with"), "{e}");
        for bad in ["", "x-amz-meta-", "a b", "seq/1"] {
            let t = format!("{feed}order = \"metadata\"\norder_metadata = \"{bad}\"\n");
            assert!(Config::from_toml(&t).is_err(), "`{bad}`");
        }
        for bad in ["order = \"time\"", "removed = \"delete\""] {
            assert!(
                Config::from_toml(&format!("{feed}{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_sample_configuration_is_valid() {
        let c = Config::from_toml(include_str!("../../events/feeds.toml")).unwrap();
        assert_eq!(c.feeds.len(), 2);
        assert_eq!(c.feeds[0].guards, Guards::default());
    }

    #[test]
    fn config_source() {
        assert_eq!(
            ConfigSource::parse("s3://bkt/config/feeds.toml").unwrap(),
            ConfigSource::S3 {
                bucket: "bkt".into(),
                key: "config/feeds.toml".into()
            }
        );
        assert_eq!(
            ConfigSource::parse("/etc/feeds.toml").unwrap(),
            ConfigSource::Path("/etc/feeds.toml".into())
        );
        assert!(ConfigSource::parse("s3://bkt").is_err());
    }
}
