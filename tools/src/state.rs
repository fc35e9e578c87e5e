//! `casefeed state show <feed>`: the feed's state as the splitter will next read it — the
//! snapshot's header (format, generation, the run and the export it came from, rows, key
//! and hashed columns, when it was written) and its size. The snapshot holds fingerprints
//! and record keys, never a row value; this prints neither the keys nor the fingerprints.

use crate::ops::{print_json, OutputError};
use casefeed::adapters::s3::S3Store;
use casefeed::contract::layout::snapshot_key;
use casefeed::ports::store::{ObjectStore, StoreError};
use casefeed::splitter::state::{Snapshot, SnapshotError, SnapshotHeader};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum StateCommand {
    /// The snapshot's header: source, rows, format, generation.
    Show(ShowArgs),
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The feed.
    pub feed: String,
    /// The data bucket (state/).
    #[arg(long, env = "DATA_BUCKET")]
    pub bucket: String,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("feed {feed} has no state yet ({key} does not exist): its next file is its first")]
    NoState { feed: String, key: String },
    #[error("the snapshot {key} cannot be read: {source}")]
    Snapshot {
        key: String,
        #[source]
        source: SnapshotError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The state of a feed, as `state show` prints it.
#[derive(Debug, Serialize)]
pub struct StateView {
    pub key: String,
    pub etag: Option<String>,
    pub bytes: u64,
    pub header: SnapshotHeader,
    /// Rows loaded (equal to `header.row_count` in a sound snapshot).
    pub rows: usize,
    /// Whether its rows carry record keys (so removed records can be named).
    pub named: bool,
}

/// The feed's snapshot, decoded (and checked against its feed).
pub async fn load(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    feed: &str,
) -> Result<(Snapshot, StateView), StateError> {
    let key = snapshot_key(feed);
    let store = S3Store::new(s3.clone());
    let Some(fetched) = store.get_bytes(bucket, &key).await? else {
        return Err(StateError::NoState {
            feed: feed.to_string(),
            key,
        });
    };
    let snapshot =
        Snapshot::decode(&fetched.bytes, Some(feed)).map_err(|source| StateError::Snapshot {
            key: key.clone(),
            source,
        })?;
    let view = StateView {
        key,
        etag: fetched.etag,
        bytes: fetched.bytes.len() as u64,
        header: snapshot.header.clone(),
        rows: snapshot.len(),
        named: snapshot.names().is_some(),
    };
    Ok((snapshot, view))
}

/// `casefeed state …`.
pub async fn run(args: StateArgs) -> Result<(), StateError> {
    let StateCommand::Show(args) = args.command;
    let conf = casefeed::adapters::env::aws_config().await;
    let s3 = aws_sdk_s3::Client::new(&conf);
    let (_, view) = load(&s3, &args.bucket, &args.feed).await?;
    if args.json {
        print_json(&view)?;
        return Ok(());
    }
    let h = &view.header;
    let s = &h.source;
    println!("state of {} ({}, {} bytes)", h.feed, view.key, view.bytes);
    println!("  generation     {}", h.generation);
    println!("  written by run {} at {}", h.run, h.created_at);
    println!(
        "  from export    s3://{}/{}{}",
        s.bucket,
        s.key,
        s.version_id
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default()
    );
    if let Some(t) = s.event_time.as_deref().or(s.last_modified.as_deref()) {
        println!("  uploaded       {t}");
    }
    println!(
        "  rows           {}{}",
        h.row_count,
        if view.rows as u64 != h.row_count {
            format!(" (but {} loaded)", view.rows)
        } else {
            String::new()
        }
    );
    println!("  format         {}", h.format);
    println!("  key columns    {}", h.key_columns.join(", "));
    println!("  hashed columns {}", h.hashed_columns.join(", "));
    println!(
        "  record keys    {}",
        if view.named {
            "kept (removed records are named)"
        } else {
            "not kept (a snapshot from before format 3)"
        }
    );
    Ok(())
}
