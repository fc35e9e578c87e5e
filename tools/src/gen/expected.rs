//! `PATH.expected.json`: what a correct diff of the written file must find.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::errors::{io_err, GenError};
use super::row::record_id;

pub(super) struct Expected<'a> {
    pub(super) rows: u64,
    /// New record ids: an inclusive index range.
    pub(super) new: Option<(u64, u64)>,
    pub(super) changed: Vec<String>,
    pub(super) removed: Vec<String>,
    pub(super) malformed_lines: Vec<u64>,
    pub(super) columns: &'a [String],
}

fn write_json_strings<W: Write, S: AsRef<str>>(
    w: &mut W,
    items: impl Iterator<Item = S>,
) -> Result<(), serde_json::Error> {
    w.write_all(b"[").map_err(serde_json::Error::io)?;
    for (i, s) in items.enumerate() {
        if i > 0 {
            w.write_all(b",").map_err(serde_json::Error::io)?;
        }
        serde_json::to_writer(&mut *w, s.as_ref())?;
    }
    w.write_all(b"]").map_err(serde_json::Error::io)
}

pub(super) fn write_expected(path: &Path, e: Expected<'_>) -> Result<(), GenError> {
    let to_io = |err: serde_json::Error| GenError::Io {
        action: "write",
        path: path.to_path_buf(),
        source: io::Error::other(err.to_string()),
    };
    let file = File::create(path).map_err(io_err("create", path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut changed = e.changed;
    changed.sort_unstable();
    let mut removed = e.removed;
    removed.sort_unstable();
    let mut malformed = e.malformed_lines;
    malformed.sort_unstable();

    write!(w, "{{\"rows\":{},\"new\":", e.rows).map_err(io_err("write", path))?;
    match e.new {
        None => w.write_all(b"[]").map_err(io_err("write", path))?,
        // Same digit count throughout -> string order equals numeric order.
        Some((lo, hi)) if record_id(lo).len() == record_id(hi).len() => {
            write_json_strings(&mut w, (lo..=hi).map(record_id)).map_err(to_io)?;
        }
        Some((lo, hi)) => {
            let mut ids: Vec<String> = (lo..=hi).map(record_id).collect();
            ids.sort_unstable();
            write_json_strings(&mut w, ids.iter()).map_err(to_io)?;
        }
    }
    w.write_all(b",\"changed\":")
        .map_err(io_err("write", path))?;
    write_json_strings(&mut w, changed.iter()).map_err(to_io)?;
    w.write_all(b",\"removed\":")
        .map_err(io_err("write", path))?;
    write_json_strings(&mut w, removed.iter()).map_err(to_io)?;
    w.write_all(b",\"malformed_lines\":")
        .map_err(io_err("write", path))?;
    serde_json::to_writer(&mut w, &malformed).map_err(to_io)?;
    w.write_all(b",\"columns\":")
        .map_err(io_err("write", path))?;
    serde_json::to_writer(&mut w, e.columns).map_err(to_io)?;
    w.write_all(b"}\n").map_err(io_err("write", path))?;
    w.flush().map_err(io_err("write", path))
}
