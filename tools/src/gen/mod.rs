//! `casefeed gen`: a deterministic, seeded generator of realistic lab-result CSV exports.
//!
//! * `gen baseline` writes a first full export.
//! * `gen next` reads a previous export (by header name, so reordered files work) and writes
//!   the next one: some rows removed, some changed in a compared column, some new rows
//!   appended, a fresh `export_timestamp` in every row, optionally shuffled rows, reordered,
//!   added or dropped columns, and malformed lines.
//!
//! Beside every output `PATH` a `PATH.expected.json` records what a correct diff must find.
//!
//! Row content is a pure function of `(seed, record index, version)`: the generator hashes
//! those with xxh3 into the state of a SplitMix64 stream and draws from fixed pools, so any
//! row can be regenerated on its own, and `next` can work from nothing but the previous file.
//! No row value is ever printed: the summary line carries counts and paths only.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

/// Generate synthetic lab-result CSV exports (deterministic, seeded).
#[derive(Args, Debug)]
pub struct GenArgs {
    #[command(subcommand)]
    pub command: GenCommand,
}

#[derive(Subcommand, Debug)]
pub enum GenCommand {
    /// Write a first full export of N rows (record ids LR-00000001 ..).
    Baseline(BaselineOpts),
    /// Write the next export from a previous one: removed, changed and new rows.
    Next(NextOpts),
}

/// Column layout options shared by `baseline` and `next`.
#[derive(Args, Debug, Clone, Default)]
pub struct ColumnOpts {
    /// Write the columns in a different, seeded order (never the unchanged order).
    #[arg(long = "reorder-columns")]
    pub reorder: bool,
    /// Add a column with a value in every row (repeatable).
    #[arg(long = "add-column", value_name = "NAME")]
    pub add: Vec<String>,
    /// Omit a column (repeatable; `record_id` cannot be dropped).
    #[arg(long = "drop-column", value_name = "NAME")]
    pub drop: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct BaselineOpts {
    /// Number of data rows.
    #[arg(long, value_name = "N")]
    pub rows: u64,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Output CSV path (`PATH.expected.json` is written beside it).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Insert this many malformed lines (alternately ragged and invalid UTF-8).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    #[command(flatten)]
    pub columns: ColumnOpts,
}

#[derive(Args, Debug, Clone)]
pub struct NextOpts {
    /// The previous export (CSV, read by header name).
    #[arg(long, value_name = "PATH")]
    pub prev: PathBuf,
    /// Output CSV path (`PATH.expected.json` is written beside it).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Number of new rows to append.
    #[arg(long = "new", value_name = "N", default_value_t = 0)]
    pub new_rows: u64,
    /// Number of existing rows to change in a compared column.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub changed: u64,
    /// Number of existing rows to remove.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub removed: u64,
    /// Seed (default: derived from the previous file's row count, max id and timestamp).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Shuffle the order of the data rows.
    #[arg(long)]
    pub shuffle: bool,
    /// Insert this many malformed lines (alternately ragged and invalid UTF-8), each with its
    /// own fresh record_id; they are not counted as new or changed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub malformed: u64,
    #[command(flatten)]
    pub columns: ColumnOpts,
}

/// Run a `gen` subcommand and print its one-line summary to stderr.
pub fn run(args: GenArgs) -> Result<(), GenError> {
    let (kind, summary) = match args.command {
        GenCommand::Baseline(o) => ("baseline", baseline(&o)?),
        GenCommand::Next(o) => ("next", next(&o)?),
    };
    eprintln!(
        "casefeed gen {kind}: wrote {} data rows (new {}, changed {}, removed {}, malformed lines {}{}), {} columns, seed {} -> {} (+ {}) in {:.2}s",
        summary.rows,
        summary.new,
        summary.changed,
        summary.removed,
        summary.malformed,
        if summary.skipped_prev > 0 {
            format!(", invalid rows skipped from prev {}", summary.skipped_prev)
        } else {
            String::new()
        },
        summary.columns,
        summary.seed,
        summary.out.display(),
        summary.expected.display(),
        summary.elapsed.as_secs_f64(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors and results
// ---------------------------------------------------------------------------------------------

/// Errors carry paths and counts only, never row values.
#[derive(Debug)]
pub enum GenError {
    Invalid(String),
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Csv {
        action: &'static str,
        path: PathBuf,
        source: csv::Error,
    },
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenError::Invalid(msg) => f.write_str(msg),
            GenError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            GenError::Csv {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for GenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GenError::Invalid(_) => None,
            GenError::Io { source, .. } => Some(source),
            GenError::Csv { source, .. } => Some(source),
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, GenError> {
    Err(GenError::Invalid(msg.into()))
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GenError + 'a {
    move |source| GenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn csv_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(csv::Error) -> GenError + 'a {
    move |source| GenError::Csv {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What one run wrote (counts only).
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: u64,
    pub new: u64,
    pub changed: u64,
    pub removed: u64,
    pub malformed: u64,
    pub skipped_prev: u64,
    pub columns: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub expected: PathBuf,
    pub elapsed: Duration,
}

/// `PATH` -> `PATH.expected.json`.
pub fn expected_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".expected.json");
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------------------------
// Columns, pools and the row generator
// ---------------------------------------------------------------------------------------------

/// The default columns, in their default order.
pub const COLUMNS: [&str; NCOL] = [
    "record_id",
    "patient_id",
    "first_name",
    "last_name",
    "date_of_birth",
    "sex",
    "phone",
    "street",
    "city",
    "state",
    "zip",
    "specimen_collected",
    "test_code",
    "test_name",
    "result",
    "result_date",
    "lab_name",
    "notes",
    "export_timestamp",
];
const NCOL: usize = 19;
const RECORD_ID: usize = 0;
const PATIENT_ID: usize = 1;
const FIRST_NAME: usize = 2;
const LAST_NAME: usize = 3;
const DOB: usize = 4;
const SEX: usize = 5;
const PHONE: usize = 6;
const STREET: usize = 7;
const CITY: usize = 8;
const STATE: usize = 9;
const ZIP: usize = 10;
const COLLECTED: usize = 11;
const TEST_CODE: usize = 12;
const TEST_NAME: usize = 13;
const RESULT: usize = 14;
const RESULT_DATE: usize = 15;
const LAB: usize = 16;
const NOTES: usize = 17;
const EXPORT_TS: usize = 18;

const KEY_COLUMN: &str = "record_id";
pub(crate) const TS_COLUMN: &str = "export_timestamp";

const FEMALE_FIRST: &[&str] = &[
    "Zoë",
    "María",
    "Chloé",
    "Siobhán",
    "Ana",
    "Mary",
    "Fatima",
    "Aaliyah",
    "Priya",
    "Mei",
    "Ingrid",
    "Małgorzata",
    "Renée",
    "Jennifer",
    "Linda",
    "Patricia",
    "Aisha",
    "Sofía",
    "Hana",
    "Noémie",
    "Ayşe",
    "Jessica",
    "Emily",
    "Olivia",
    "Ximena",
    "Dagný",
    "Grace",
    "Keisha",
    "Thảo",
    "Anne-Marie",
];
const MALE_FIRST: &[&str] = &[
    "José",
    "Łukasz",
    "Øyvind",
    "François",
    "Søren",
    "Björn",
    "John",
    "Wei",
    "Aarav",
    "Mohammed",
    "Jürgen",
    "Andrés",
    "Dmitri",
    "Kwame",
    "Tomás",
    "Seán",
    "Jiří",
    "Michael",
    "David",
    "James",
    "Robert",
    "Daniel",
    "Carlos",
    "Minh",
    "Hiroshi",
    "Oluwaseun",
    "Ahmed",
    "Mateo",
    "Ethan",
    "Jean-Luc",
];
const LAST: &[&str] = &[
    "Nguyễn",
    "Müller",
    "O'Brien",
    "Ramírez",
    "Smith",
    "Johnson",
    "García",
    "Kowalski",
    "Johansson",
    "Østergaard",
    "Dubois",
    "Schröder",
    "Kim",
    "Patel",
    "Brown",
    "Wójcik",
    "Núñez",
    "D'Angelo",
    "van der Berg",
    "Lê",
    "Williams",
    "Jones",
    "Miller",
    "Davis",
    "Rodríguez",
    "Martínez",
    "Hernández",
    "López",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Pérez",
    "Thompson",
    "White",
    "Harris",
    "Sánchez",
    "Clark",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "King",
    "Wright",
    "Torres",
    "Çelik",
    "Ó Súilleabháin",
    "MacDonald",
    "Al-Farsi",
    "Okafor",
    "Chen",
    "Wang",
    "Singh",
    "Yılmaz",
    "Nowak",
];

/// (city, state, first zip, area code)
const CITIES: &[(&str, &str, u32, &str)] = &[
    ("Springfield", "IL", 62701, "217"),
    ("Chicago", "IL", 60601, "312"),
    ("Boston", "MA", 2108, "617"),
    ("Seattle", "WA", 98101, "206"),
    ("Austin", "TX", 78701, "512"),
    ("San Antonio", "TX", 78201, "210"),
    ("Miami", "FL", 33101, "305"),
    ("Denver", "CO", 80201, "303"),
    ("Portland", "OR", 97201, "503"),
    ("Atlanta", "GA", 30301, "404"),
    ("Phoenix", "AZ", 85001, "602"),
    ("Albuquerque", "NM", 87101, "505"),
    ("Minneapolis", "MN", 55401, "612"),
    ("Detroit", "MI", 48201, "313"),
    ("Española", "NM", 87532, "505"),
    ("Cañon City", "CO", 81212, "719"),
    ("Coeur d'Alene", "ID", 83814, "208"),
    ("New York", "NY", 10001, "212"),
    ("Brooklyn", "NY", 11201, "718"),
    ("Los Angeles", "CA", 90001, "213"),
    ("San Jose", "CA", 95110, "408"),
    ("Honolulu", "HI", 96813, "808"),
    ("Anchorage", "AK", 99501, "907"),
    ("Burlington", "VT", 5401, "802"),
    ("Nashville", "TN", 37201, "615"),
    ("Baton Rouge", "LA", 70801, "225"),
    ("Salt Lake City", "UT", 84101, "801"),
    ("Providence", "RI", 2903, "401"),
    ("Winston-Salem", "NC", 27101, "336"),
    ("St. Louis", "MO", 63101, "314"),
];

const STREETS: &[&str] = &[
    "Main",
    "Oak",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Pine",
    "Sunset",
    "Martin Luther King Jr",
    "Río Grande",
    "Calle Señora",
    "Peachtree",
    "Broadway",
    "Church",
    "High",
    "Mill",
    "River",
    "Center",
    "2nd",
    "3rd",
    "5th",
    "Jefferson",
    "Lincoln",
    "Kennedy",
    "Walnut",
    "Chestnut",
    "Willow",
    "Canal",
    "Ocean",
    "Mountain View",
    "Forest",
    "Spring",
    "Highland",
    "Ridge",
    "Prospect",
    "Franklin",
    "Madison",
];
const STREET_SUFFIX: &[&str] = &[
    "St", "Ave", "Rd", "Blvd", "Dr", "Ln", "Ct", "Way", "Pl", "Ter",
];

const TESTS: &[(&str, &str)] = &[
    (
        "94500-6",
        "SARS-CoV-2 RNA [Presence] in Respiratory specimen by NAA with probe detection",
    ),
    (
        "94558-4",
        "SARS-CoV-2 Ag [Presence] in Respiratory specimen by Rapid immunoassay",
    ),
    (
        "92142-9",
        "Influenza virus A RNA [Presence] in Respiratory specimen by NAA with probe detection",
    ),
    (
        "92141-1",
        "Influenza virus B RNA [Presence] in Respiratory specimen by NAA with probe detection",
    ),
    (
        "40988-8",
        "Respiratory syncytial virus RNA [Presence] in Nasopharynx by NAA with probe detection",
    ),
    (
        "21613-5",
        "Chlamydia trachomatis DNA [Presence] in Specimen by NAA with probe detection",
    ),
    (
        "24111-7",
        "Neisseria gonorrhoeae DNA [Presence] in Specimen by NAA with probe detection",
    ),
    (
        "43304-5",
        "Bordetella pertussis DNA [Presence] in Nasopharynx by NAA with probe detection",
    ),
    ("5292-8", "Reagin Ab [Presence] in Serum by VDRL"),
    (
        "16128-1",
        "Hepatitis C virus Ab [Presence] in Serum, Plasma or Blood",
    ),
];

const RESULTS: [&str; 3] = ["Positive", "Negative", "Inconclusive"];

const LABS: &[&str] = &[
    "Quest Diagnostics, Inc.",
    "LabCorp",
    "County Public Health Laboratory",
    "St. Mary's Hospital Laboratory",
    "Mercy Medical Center Lab",
    "State Public Health Lab",
    "Sonora Quest Laboratories",
    "ARUP Laboratories",
    "BioReference Laboratories, Inc.",
    "Clínica Familiar Lab",
    "University Hospital Core Lab",
    "Northside Urgent Care (POC)",
];

const NOTES_POOL: &[&str] = &[
    "Repeat specimen requested",
    "Specimen received at ambient temperature, processed within 72h",
    "Patient reported \"no symptoms\" at collection",
    "Hemolyzed; interpret with caution",
    "Called provider, left message",
    "Result verified by supervisor",
    "Specimen source: nasopharyngeal swab",
    "Specimen source: \"NP\" swab, VTM",
    "Duplicate order cancelled",
    "Corrected report: patient demographics updated",
    "Insufficient volume, recollect",
    "Sent to reference lab; see amended report",
    "Patient is a healthcare worker",
    "Congregate setting (long-term care)",
];
const NOTES_MULTILINE: &[&str] = &[
    "Amended result.\nPrevious report issued in error.",
    "Comment from lab:\n\"specimen leaked in transit\", recollected",
    "Line 1 of 2: provider notified\nLine 2 of 2: patient notified",
];

const TAG_ROW: u64 = 0x524f_5721;
const TAG_PATIENT: u64 = 0x5041_5449;
const TAG_EXTRA: u64 = 0x4558_5452;
const TAG_MUTATE: u64 = 0x4d55_5441;
const TAG_SELECT: u64 = 0x5345_4c45;
const TAG_SHUFFLE: u64 = 0x5348_5546;
const TAG_REORDER: u64 = 0x5245_4f52;
const TAG_MALFORMED: u64 = 0x4d41_4c46;
const TAG_TS: u64 = 0x5449_4d45;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A SplitMix64 stream whose start is xxh3(seed; a, b): cheap to create per row.
struct Mix(u64);

impl Mix {
    fn new(seed: u64, a: u64, b: u64) -> Mix {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&a.to_le_bytes());
        buf[8..].copy_from_slice(&b.to_le_bytes());
        Mix(xxh3_64_with_seed(&buf, seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n == 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `ppm` per million.
    fn ppm(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

fn push_num(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        buf.push(b'0');
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_record_id(buf: &mut Vec<u8>, index: u64) {
    buf.extend_from_slice(b"LR-");
    push_num(buf, index, 8);
}

fn record_id(index: u64) -> String {
    let mut b = Vec::with_capacity(12);
    push_record_id(&mut b, index);
    String::from_utf8_lossy(&b).into_owned()
}

/// `LR-<digits>` -> index.
fn parse_index(id: &[u8]) -> Option<u64> {
    let digits = id.strip_prefix(b"LR-")?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')),
    )
}

/// The number the per-row streams are seeded with: the index for our ids, a hash otherwise.
fn row_key(id: &[u8]) -> u64 {
    parse_index(id).unwrap_or_else(|| xxh3_64(id) | (1 << 63))
}

/// Days since 1970-01-01 -> (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn push_date(buf: &mut Vec<u8>, days: i64) {
    let (y, m, d) = civil_from_days(days);
    push_num(buf, y.max(0) as u64, 4);
    buf.push(b'-');
    push_num(buf, u64::from(m), 2);
    buf.push(b'-');
    push_num(buf, u64::from(d), 2);
}

/// Unix seconds -> `YYYY-MM-DDTHH:MM:SSZ`.
fn format_timestamp(secs: i64) -> String {
    let mut b = Vec::with_capacity(20);
    push_date(&mut b, secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400) as u64;
    b.push(b'T');
    push_num(&mut b, s / 3600, 2);
    b.push(b':');
    push_num(&mut b, s / 60 % 60, 2);
    b.push(b':');
    push_num(&mut b, s % 60, 2);
    b.push(b'Z');
    String::from_utf8_lossy(&b).into_owned()
}

fn parse_timestamp(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

/// 2025-06-01T00:00:00Z
const EXPORT_BASE_SECS: i64 = 1_748_736_000;

fn baseline_timestamp(seed: u64) -> i64 {
    let slots = Mix::new(seed, 0, TAG_TS).below(365 * 48) as i64;
    EXPORT_BASE_SECS + slots * 1800
}

/// Next export: 30 minutes (plus a seeded 0..120 s) after the previous one.
fn next_timestamp(prev: Option<i64>, seed: u64) -> i64 {
    let jitter = Mix::new(seed, 1, TAG_TS).below(120) as i64;
    match prev {
        Some(p) => p + 1800 + jitter,
        None => baseline_timestamp(seed) + 1800 + jitter,
    }
}

/// Generate the canonical fields of one row into `f` (NCOL buffers): a pure function of
/// `(seed, index, version)` and the export timestamp.
fn gen_row(seed: u64, index: u64, version: u64, ts: &[u8], f: &mut [Vec<u8>]) {
    for b in f.iter_mut() {
        b.clear();
    }
    let vmix = version.wrapping_mul(GOLDEN);
    let mut r = Mix::new(seed, index, vmix ^ TAG_ROW);

    push_record_id(&mut f[RECORD_ID], index);

    // About a fifth of the records belong to a patient already seen in a recent record.
    let patient_no = if index > 1 && r.ppm(220_000) {
        let span = (index - 1).min(5000);
        index - 1 - r.below(span)
    } else {
        index
    };
    let mut p = Mix::new(seed ^ vmix, patient_no, TAG_PATIENT);

    let pid = ((patient_no % 100_000_000) * 73_939_133 + seed % 100_000_000) % 100_000_000;
    f[PATIENT_ID].push(b'P');
    push_num(&mut f[PATIENT_ID], pid, 8);

    let sex_draw = p.below(1000);
    let (sex, first_pool): (&str, &[&str]) = match sex_draw {
        0..=489 => ("F", FEMALE_FIRST),
        490..=979 => ("M", MALE_FIRST),
        980..=994 => (
            "U",
            if p.ppm(500_000) {
                FEMALE_FIRST
            } else {
                MALE_FIRST
            },
        ),
        _ => (
            "X",
            if p.ppm(500_000) {
                FEMALE_FIRST
            } else {
                MALE_FIRST
            },
        ),
    };
    f[FIRST_NAME].extend_from_slice(p.pick(first_pool).as_bytes());
    f[LAST_NAME].extend_from_slice(p.pick(LAST).as_bytes());
    if p.ppm(40_000) {
        f[LAST_NAME].push(b'-');
        f[LAST_NAME].extend_from_slice(p.pick(LAST).as_bytes());
    }
    f[SEX].extend_from_slice(sex.as_bytes());

    // Dates of birth 1925-01-01 .. 2023-12-31.
    let dob_start = days_from_civil(1925, 1, 1);
    let dob_span = (days_from_civil(2024, 1, 1) - dob_start) as u64;
    let dob = dob_start + p.below(dob_span) as i64;
    if !r.ppm(4_000) {
        push_date(&mut f[DOB], dob);
    }

    let (city, state, zip0, area) = p.pick(CITIES);
    let phone_fmt = p.below(10);
    let exchange = 201 + p.below(799);
    let line = p.below(10_000);
    if !r.ppm(30_000) {
        let ph = &mut f[PHONE];
        match phone_fmt {
            0..=4 => {
                ph.push(b'(');
                ph.extend_from_slice(area.as_bytes());
                ph.extend_from_slice(b") ");
                push_num(ph, exchange, 3);
                ph.push(b'-');
            }
            5..=8 => {
                ph.extend_from_slice(area.as_bytes());
                ph.push(b'-');
                push_num(ph, exchange, 3);
                ph.push(b'-');
            }
            _ => {
                ph.extend_from_slice(b"+1 ");
                ph.extend_from_slice(area.as_bytes());
                ph.push(b' ');
                push_num(ph, exchange, 3);
                ph.push(b' ');
            }
        }
        push_num(ph, line, 4);
    }

    let st = &mut f[STREET];
    if p.ppm(20_000) {
        st.extend_from_slice(b"PO Box ");
        push_num(st, 1 + p.below(9999), 0);
    } else {
        push_num(st, 1 + p.below(9899), 0);
        st.push(b' ');
        st.extend_from_slice(p.pick(STREETS).as_bytes());
        st.push(b' ');
        st.extend_from_slice(p.pick(STREET_SUFFIX).as_bytes());
        match p.below(100) {
            0..=7 => {
                st.extend_from_slice(b", Apt ");
                push_num(st, 1 + p.below(40), 0);
            }
            8..=11 => {
                st.extend_from_slice(b", Apt ");
                push_num(st, 1 + p.below(12), 0);
                st.push(b'A' + p.below(4) as u8);
            }
            12..=14 => {
                st.extend_from_slice(b", Unit ");
                push_num(st, 1 + p.below(300), 0);
            }
            15..=16 => {
                st.extend_from_slice(b", Suite ");
                push_num(st, 100 + p.below(400), 0);
            }
            17..=19 => {
                st.extend_from_slice(b" #");
                push_num(st, 1 + p.below(30), 0);
            }
            _ => {}
        }
    }
    f[CITY].extend_from_slice(city.as_bytes());
    f[STATE].extend_from_slice(state.as_bytes());
    let zip = u64::from(zip0) + p.below(60);
    let zip4 = p.ppm(100_000);
    let plus4 = p.below(10_000);
    if !r.ppm(30_000) {
        push_num(&mut f[ZIP], zip, 5);
        if zip4 {
            f[ZIP].push(b'-');
            push_num(&mut f[ZIP], plus4, 4);
        }
    }

    // Collection dates advance with the record index (~2,500 records a day from 2020-03-01).
    let day = days_from_civil(2020, 3, 1) + (index / 2500) as i64 + r.below(3) as i64;
    let minute = r.below(24 * 60);
    push_date(&mut f[COLLECTED], day);
    f[COLLECTED].push(b' ');
    push_num(&mut f[COLLECTED], minute / 60, 2);
    f[COLLECTED].push(b':');
    push_num(&mut f[COLLECTED], minute % 60, 2);

    let (code, name) = r.pick(TESTS);
    f[TEST_CODE].extend_from_slice(code.as_bytes());
    f[TEST_NAME].extend_from_slice(name.as_bytes());
    let result = match r.below(100) {
        0..=13 => RESULTS[0],
        14..=95 => RESULTS[1],
        _ => RESULTS[2],
    };
    f[RESULT].extend_from_slice(result.as_bytes());
    push_date(&mut f[RESULT_DATE], day + r.below(5) as i64);
    f[LAB].extend_from_slice(r.pick(LABS).as_bytes());
    if r.ppm(1_000) {
        f[NOTES].extend_from_slice(r.pick(NOTES_MULTILINE).as_bytes());
    } else if r.ppm(300_000) {
        f[NOTES].extend_from_slice(r.pick(NOTES_POOL).as_bytes());
    }
    f[EXPORT_TS].extend_from_slice(ts);
}

/// The value of an added, non-canonical column.
fn extra_value(seed: u64, key: u64, name_hash: u64, version: u64, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let v = Mix::new(
        seed ^ name_hash,
        key,
        version.wrapping_mul(GOLDEN) ^ TAG_EXTRA,
    )
    .next_u64();
    out.clear();
    for i in 0..8 {
        out.push(HEX[((v >> (60 - 4 * i)) & 0xF) as usize]);
    }
}

// ---------------------------------------------------------------------------------------------
// Output planning
// ---------------------------------------------------------------------------------------------

/// Upper bound for --rows, --new and --malformed (keeps every index arithmetic in range).
const MAX_ROWS: u64 = 1_000_000_000;

fn check_count(flag: &str, n: u64) -> Result<(), GenError> {
    if n > MAX_ROWS {
        return invalid(format!("{flag} {n} is too large (at most {MAX_ROWS})"));
    }
    Ok(())
}

fn check_csv_path(path: &Path, what: &str) -> Result<(), GenError> {
    let s = path.to_string_lossy();
    if s.ends_with(".gz") {
        return invalid(format!(
            "{what} {}: gzip is not supported by `casefeed gen`; use a plain .csv path (compress it separately, e.g. `gzip -k`)",
            path.display()
        ));
    }
    Ok(())
}

/// Apply drop / add / reorder to a base column list.
fn plan_columns(base: Vec<String>, opts: &ColumnOpts, seed: u64) -> Result<Vec<String>, GenError> {
    for d in &opts.drop {
        if d == KEY_COLUMN {
            return invalid("cannot drop column record_id: it is the key column");
        }
        if !base.contains(d) {
            return invalid(format!("cannot drop column {d:?}: no such column"));
        }
        if opts.add.contains(d) {
            return invalid(format!("column {d:?} is both added and dropped"));
        }
    }
    let mut cols: Vec<String> = base
        .into_iter()
        .filter(|c| !opts.drop.contains(c))
        .collect();
    for a in &opts.add {
        if a.is_empty() {
            return invalid("cannot add a column with an empty name");
        }
        if cols.contains(a) {
            return invalid(format!("cannot add column {a:?}: it is already present"));
        }
        cols.push(a.clone());
    }
    if opts.reorder && cols.len() >= 2 {
        let before = cols.clone();
        Mix::new(seed, 0, TAG_REORDER).shuffle(&mut cols);
        if cols == before {
            cols.rotate_left(1);
        }
    }
    Ok(cols)
}

/// Where an output column's value comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Src {
    /// Field `i` of the previous file's record.
    Prev(usize),
    /// Canonical column `i` of a generated row.
    Canon(usize),
    /// An added column: seeded value from the column name's hash.
    Extra(u64),
    /// The export timestamp of this file.
    Ts,
}

fn canonical_index(name: &str) -> Option<usize> {
    COLUMNS.iter().position(|c| *c == name)
}

fn generated_src(name: &str) -> Src {
    if name == TS_COLUMN {
        Src::Ts
    } else if let Some(ci) = canonical_index(name) {
        Src::Canon(ci)
    } else {
        Src::Extra(xxh3_64(name.as_bytes()))
    }
}

/// Fill `out` for a generated row (`new` or malformed) with index `index`.
fn fill_generated(
    seed: u64,
    index: u64,
    ts: &[u8],
    srcs: &[Src],
    canon: &mut [Vec<u8>],
    out: &mut [Vec<u8>],
) {
    gen_row(seed, index, 0, ts, canon);
    for (o, src) in out.iter_mut().zip(srcs) {
        match *src {
            Src::Canon(ci) => {
                o.clear();
                o.extend_from_slice(&canon[ci]);
            }
            Src::Extra(h) => extra_value(seed, index, h, 0, o),
            Src::Ts => {
                o.clear();
                o.extend_from_slice(ts);
            }
            Src::Prev(_) => o.clear(),
        }
    }
}

/// Malformed rows to insert: (data position to insert before, fields), by position.
type Malformed = Vec<(u64, Vec<Vec<u8>>)>;

/// Plan the malformed rows. Alternately ragged (too few
/// fields, record_id kept) and invalid UTF-8 (0xFF 0xFE in a name).
fn plan_malformed(
    n: u64,
    rows: u64,
    first_index: u64,
    seed: u64,
    ts: &[u8],
    columns: &[String],
    srcs: &[Src],
) -> Result<Malformed, GenError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if columns.len() < 2 {
        return invalid(
            "--malformed needs at least 2 columns (a ragged row must have fewer fields)",
        );
    }
    let mut rng = Mix::new(seed, n, TAG_MALFORMED);
    let mut positions: Vec<u64> = (0..n).map(|_| rng.below(rows + 1)).collect();
    positions.sort_unstable();
    let key_col = columns.iter().position(|c| c == KEY_COLUMN);
    let utf8_col = ["first_name", "last_name"]
        .iter()
        .find_map(|n| columns.iter().position(|c| c == n))
        .or_else(|| columns.iter().position(|c| c != KEY_COLUMN))
        .unwrap_or(0);
    let keep = (columns.len() / 2).max(1);
    let mut canon = vec![Vec::new(); NCOL];
    let mut out = vec![Vec::new(); columns.len()];
    let mut planned = Vec::with_capacity(positions.len());
    for (k, pos) in positions.into_iter().enumerate() {
        let index = first_index + k as u64;
        fill_generated(seed, index, ts, srcs, &mut canon, &mut out);
        let fields: Vec<Vec<u8>> = if k % 2 == 0 {
            // Ragged: `keep` fields, always including record_id, in column order.
            let mut others = keep - usize::from(key_col.is_some());
            out.iter()
                .enumerate()
                .filter(|(j, _)| {
                    if Some(*j) == key_col {
                        true
                    } else if others > 0 {
                        others -= 1;
                        true
                    } else {
                        false
                    }
                })
                .map(|(_, f)| f.clone())
                .collect()
        } else {
            let mut v = out.clone();
            let mut bad = vec![0xFF, 0xFE];
            bad.extend_from_slice(&v[utf8_col]);
            v[utf8_col] = bad;
            v
        };
        planned.push((pos, fields));
    }
    Ok(planned)
}

/// Writes the CSV, inserting malformed rows at their positions and counting physical lines.
struct Emitter {
    w: csv::Writer<BufWriter<File>>,
    /// The final path; rows go to `path` (`OUT.partial`) which is renamed on success and
    /// removed on failure.
    out: PathBuf,
    path: PathBuf,
    /// Physical lines written so far (header included).
    lines: u64,
    data_rows: u64,
    malformed: Malformed,
    next_malformed: usize,
    malformed_lines: Vec<u64>,
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// Remove a leftover `OUT.partial` after a failed run.
fn remove_partial(out: &Path) {
    let _ = std::fs::remove_file(partial_path(out));
}

fn newlines(field: &[u8]) -> u64 {
    field.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Emitter {
    fn create(path: &Path, columns: &[String], malformed: Malformed) -> Result<Emitter, GenError> {
        let partial = partial_path(path);
        let file = File::create(&partial).map_err(io_err("create", &partial))?;
        let w = csv::WriterBuilder::new()
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .buffer_capacity(1 << 16)
            .from_writer(BufWriter::with_capacity(1 << 20, file));
        let mut e = Emitter {
            w,
            out: path.to_path_buf(),
            path: partial,
            lines: 0,
            data_rows: 0,
            malformed,
            next_malformed: 0,
            malformed_lines: Vec::new(),
        };
        e.write(columns.iter().map(|c| c.as_bytes()))?;
        Ok(e)
    }

    fn write<'a, I>(&mut self, fields: I) -> Result<(), GenError>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        self.lines += 1 + fields.clone().map(newlines).sum::<u64>();
        self.w
            .write_record(fields)
            .map_err(csv_err("write", &self.path))
    }

    fn emit_malformed_upto(&mut self, pos: u64) -> Result<(), GenError> {
        while self.next_malformed < self.malformed.len()
            && self.malformed[self.next_malformed].0 <= pos
        {
            let fields = std::mem::take(&mut self.malformed[self.next_malformed].1);
            self.malformed_lines.push(self.lines + 1);
            self.write(fields.iter().map(|f| f.as_slice()))?;
            self.next_malformed += 1;
        }
        Ok(())
    }

    fn data(&mut self, fields: &[Vec<u8>]) -> Result<(), GenError> {
        self.emit_malformed_upto(self.data_rows)?;
        self.write(fields.iter().map(|f| f.as_slice()))?;
        self.data_rows += 1;
        Ok(())
    }

    /// Returns (data rows, malformed line numbers).
    fn finish(mut self) -> Result<(u64, Vec<u64>), GenError> {
        self.emit_malformed_upto(u64::MAX)?;
        let path = self.path.clone();
        let inner = self.w.into_inner().map_err(|e| GenError::Io {
            action: "write",
            path: path.clone(),
            source: io::Error::other(e.error().to_string()),
        })?;
        let file = inner.into_inner().map_err(|e| GenError::Io {
            action: "write",
            path: path.clone(),
            source: io::Error::other(e.error().to_string()),
        })?;
        drop(file);
        std::fs::rename(&path, &self.out).map_err(io_err("rename", &path))?;
        Ok((self.data_rows, self.malformed_lines))
    }
}

/// Rows kept in memory for `--shuffle`: fields stored as varint length + bytes.
#[derive(Default)]
struct Arena {
    data: Vec<u8>,
    starts: Vec<u64>,
}

impl Arena {
    fn push(&mut self, fields: &[Vec<u8>]) {
        self.starts.push(self.data.len() as u64);
        for f in fields {
            let mut n = f.len() as u64;
            loop {
                let b = (n & 0x7F) as u8;
                n >>= 7;
                if n == 0 {
                    self.data.push(b);
                    break;
                }
                self.data.push(b | 0x80);
            }
            self.data.extend_from_slice(f);
        }
    }

    fn load(&self, i: usize, out: &mut [Vec<u8>]) {
        let mut at = self.starts[i] as usize;
        for o in out.iter_mut() {
            let mut n = 0usize;
            let mut shift = 0;
            loop {
                let b = self.data[at];
                at += 1;
                n |= usize::from(b & 0x7F) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            o.clear();
            o.extend_from_slice(&self.data[at..at + n]);
            at += n;
        }
    }
}

/// Either streams rows straight to the emitter or collects them for a shuffle.
enum RowSink {
    Direct(Emitter),
    Shuffle(Emitter, Arena),
}

impl RowSink {
    fn push(&mut self, fields: &[Vec<u8>]) -> Result<(), GenError> {
        match self {
            RowSink::Direct(e) => e.data(fields),
            RowSink::Shuffle(_, a) => {
                a.push(fields);
                Ok(())
            }
        }
    }

    fn finish(self, seed: u64, ncols: usize) -> Result<(u64, Vec<u64>), GenError> {
        match self {
            RowSink::Direct(e) => e.finish(),
            RowSink::Shuffle(mut e, arena) => {
                let mut order: Vec<usize> = (0..arena.starts.len()).collect();
                Mix::new(seed, order.len() as u64, TAG_SHUFFLE).shuffle(&mut order);
                let mut buf = vec![Vec::new(); ncols];
                for i in order {
                    arena.load(i, &mut buf);
                    e.data(&buf)?;
                }
                e.finish()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// expected.json
// ---------------------------------------------------------------------------------------------

struct Expected<'a> {
    rows: u64,
    /// New record ids: an inclusive index range.
    new: Option<(u64, u64)>,
    changed: Vec<String>,
    removed: Vec<String>,
    malformed_lines: Vec<u64>,
    columns: &'a [String],
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

fn write_expected(path: &Path, e: Expected<'_>) -> Result<(), GenError> {
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

// ---------------------------------------------------------------------------------------------
// baseline
// ---------------------------------------------------------------------------------------------

pub fn baseline(opts: &BaselineOpts) -> Result<Summary, GenError> {
    let r = baseline_inner(opts);
    if r.is_err() {
        remove_partial(&opts.out);
    }
    r
}

fn baseline_inner(opts: &BaselineOpts) -> Result<Summary, GenError> {
    let started = Instant::now();
    check_csv_path(&opts.out, "output")?;
    check_count("--rows", opts.rows)?;
    check_count("--malformed", opts.malformed)?;
    let seed = opts.seed;
    let base: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let columns = plan_columns(base, &opts.columns, seed)?;
    let srcs: Vec<Src> = columns.iter().map(|c| generated_src(c)).collect();
    let ts = format_timestamp(baseline_timestamp(seed));
    let ts = ts.as_bytes();

    let malformed = plan_malformed(
        opts.malformed,
        opts.rows,
        opts.rows + 1,
        seed,
        ts,
        &columns,
        &srcs,
    )?;
    let mut emitter = Emitter::create(&opts.out, &columns, malformed)?;
    let mut canon = vec![Vec::new(); NCOL];
    let mut out = vec![Vec::new(); columns.len()];
    for index in 1..=opts.rows {
        fill_generated(seed, index, ts, &srcs, &mut canon, &mut out);
        emitter.data(&out)?;
    }
    let (rows, malformed_lines) = emitter.finish()?;
    let malformed = malformed_lines.len() as u64;
    let expected = expected_path(&opts.out);
    write_expected(
        &expected,
        Expected {
            rows,
            new: (opts.rows > 0).then_some((1, opts.rows)),
            changed: Vec::new(),
            removed: Vec::new(),
            malformed_lines,
            columns: &columns,
        },
    )?;
    Ok(Summary {
        rows,
        new: opts.rows,
        changed: 0,
        removed: 0,
        malformed,
        skipped_prev: 0,
        columns: columns.len(),
        seed,
        out: opts.out.clone(),
        expected,
        elapsed: started.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// next
// ---------------------------------------------------------------------------------------------

fn open_prev(path: &Path) -> Result<csv::Reader<File>, GenError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    Ok(csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .buffer_capacity(1 << 20)
        .from_reader(file))
}

/// A previous-file record counts as a data row when it has every field and valid UTF-8.
fn is_valid_row(rec: &csv::ByteRecord, ncols: usize) -> bool {
    rec.len() == ncols && rec.iter().all(|f| std::str::from_utf8(f).is_ok())
}

/// Mutate column `name` of a changed row so that it differs from its previous value.
fn mutate(
    seed: u64,
    key: u64,
    name: &str,
    ts: &[u8],
    rng: &mut Mix,
    canon: &mut [Vec<u8>],
    field: &mut Vec<u8>,
) {
    if name == "result" {
        let choices: Vec<&str> = RESULTS
            .iter()
            .copied()
            .filter(|r| r.as_bytes() != field.as_slice())
            .collect();
        let pick = rng.pick(&choices);
        field.clear();
        field.extend_from_slice(pick.as_bytes());
        return;
    }
    for _ in 0..16 {
        let version = rng.next_u64() | 1;
        let candidate: Vec<u8> = match canonical_index(name) {
            Some(ci) => {
                gen_row(seed, key, version, ts, canon);
                std::mem::take(&mut canon[ci])
            }
            None => {
                let mut v = Vec::new();
                extra_value(seed, key, xxh3_64(name.as_bytes()), version, &mut v);
                v
            }
        };
        if candidate != *field {
            *field = candidate;
            return;
        }
    }
    field.extend_from_slice(b" (amended)");
}

pub fn next(opts: &NextOpts) -> Result<Summary, GenError> {
    let r = next_inner(opts);
    if r.is_err() {
        remove_partial(&opts.out);
    }
    r
}

fn next_inner(opts: &NextOpts) -> Result<Summary, GenError> {
    let started = Instant::now();
    check_csv_path(&opts.prev, "previous file")?;
    check_csv_path(&opts.out, "output")?;
    check_count("--new", opts.new_rows)?;
    check_count("--malformed", opts.malformed)?;
    if let (Ok(a), Ok(b)) = (opts.prev.canonicalize(), opts.out.canonicalize()) {
        if a == b {
            return invalid("--out must not be the same file as --prev");
        }
    }
    let prev = &opts.prev;

    // Pass 1: header, valid row count, max record index, previous timestamp.
    let mut rdr = open_prev(prev)?;
    let header_raw = rdr.byte_headers().map_err(csv_err("read", prev))?.clone();
    if header_raw.is_empty() || header_raw.iter().all(|h| h.is_empty()) {
        return invalid(format!("{}: no header row", prev.display()));
    }
    let mut header = Vec::with_capacity(header_raw.len());
    for h in header_raw.iter() {
        match std::str::from_utf8(h) {
            Ok(s) => header.push(s.to_string()),
            Err(_) => {
                return invalid(format!("{}: header is not valid UTF-8", prev.display()));
            }
        }
    }
    {
        let mut seen = HashSet::new();
        for h in &header {
            if !seen.insert(h.as_str()) {
                return invalid(format!(
                    "{}: duplicate column {h:?} in header",
                    prev.display()
                ));
            }
        }
    }
    let ncols_prev = header.len();
    let Some(key_col) = header.iter().position(|h| h == KEY_COLUMN) else {
        return invalid(format!("{}: no record_id column", prev.display()));
    };
    let ts_col = header.iter().position(|h| h == TS_COLUMN);

    let mut rec = csv::ByteRecord::new();
    let mut prev_rows: u64 = 0;
    let mut skipped: u64 = 0;
    let mut max_index: u64 = 0;
    let mut prev_ts: Option<i64> = None;
    let mut prev_ts_raw: Vec<u8> = Vec::new();
    while rdr
        .read_byte_record(&mut rec)
        .map_err(csv_err("read", prev))?
    {
        if let Some(n) = rec.get(key_col).and_then(parse_index) {
            max_index = max_index.max(n);
        }
        if !is_valid_row(&rec, ncols_prev) {
            skipped += 1;
            continue;
        }
        if prev_rows == 0 {
            if let Some(v) = ts_col.and_then(|c| rec.get(c)) {
                prev_ts = parse_timestamp(v);
                prev_ts_raw = v.to_vec();
            }
        }
        prev_rows += 1;
    }
    drop(rdr);

    let picked = opts.removed.saturating_add(opts.changed);
    if picked > prev_rows {
        return invalid(format!(
            "--removed {} + --changed {} exceeds the {} data rows of {}",
            opts.removed,
            opts.changed,
            prev_rows,
            prev.display()
        ));
    }
    let seed = opts.seed.unwrap_or_else(|| {
        let mut b = Vec::with_capacity(16 + prev_ts_raw.len());
        b.extend_from_slice(&prev_rows.to_le_bytes());
        b.extend_from_slice(&max_index.to_le_bytes());
        b.extend_from_slice(&prev_ts_raw);
        xxh3_64(&b)
    });
    let ts_string = format_timestamp(next_timestamp(prev_ts, seed));
    let ts = ts_string.as_bytes();

    // Select removed and changed rows by position (Floyd's sampling, then a shuffle).
    let mut marks = vec![0u8; prev_rows as usize];
    if picked > 0 {
        let mut rng = Mix::new(seed, prev_rows, TAG_SELECT);
        let mut set = HashSet::with_capacity(picked as usize);
        let mut sample = Vec::with_capacity(picked as usize);
        for j in (prev_rows - picked)..prev_rows {
            let t = rng.below(j + 1);
            let v = if set.insert(t) {
                t
            } else {
                set.insert(j);
                j
            };
            sample.push(v);
        }
        rng.shuffle(&mut sample);
        for (k, pos) in sample.into_iter().enumerate() {
            marks[pos as usize] = if (k as u64) < opts.removed { 1 } else { 2 };
        }
    }

    // Output columns: the previous header's order, then drop / add / reorder.
    let columns = plan_columns(header.clone(), &opts.columns, seed)?;
    let carried: Vec<Src> = columns
        .iter()
        .map(|c| {
            if c == TS_COLUMN {
                Src::Ts
            } else if let Some(i) = header.iter().position(|h| h == c) {
                Src::Prev(i)
            } else {
                generated_src(c)
            }
        })
        .collect();
    let generated: Vec<Src> = columns.iter().map(|c| generated_src(c)).collect();
    let carried_needs_canon = carried.iter().any(|s| matches!(s, Src::Canon(_)));

    // Columns a change may touch: present before and after, compared (not the key or the
    // timestamp). Preferred: result (twice as likely), phone, street.
    let mutable: Vec<usize> = (0..columns.len())
        .filter(|&j| matches!(carried[j], Src::Prev(_)) && columns[j] != KEY_COLUMN)
        .collect();
    let mut preferred: Vec<usize> = Vec::new();
    for (name, weight) in [("result", 2), ("phone", 1), ("street", 1)] {
        if let Some(j) = mutable.iter().copied().find(|&j| columns[j] == name) {
            preferred.extend(std::iter::repeat_n(j, weight));
        }
    }
    let change_targets = if preferred.is_empty() {
        mutable
    } else {
        preferred
    };
    if opts.changed > 0 && change_targets.is_empty() {
        return invalid(
            "cannot change rows: no compared column is present in both the previous and the next file",
        );
    }

    let rows_total = prev_rows - opts.removed + opts.new_rows;
    if max_index > u64::MAX / 4 {
        return invalid(format!(
            "{}: record_id index too large to continue from",
            prev.display()
        ));
    }
    let first_new = max_index + 1;
    let first_malformed = first_new + opts.new_rows;
    let malformed = plan_malformed(
        opts.malformed,
        rows_total,
        first_malformed,
        seed,
        ts,
        &columns,
        &generated,
    )?;
    let emitter = Emitter::create(&opts.out, &columns, malformed)?;
    let mut sink = if opts.shuffle {
        RowSink::Shuffle(emitter, Arena::default())
    } else {
        RowSink::Direct(emitter)
    };

    // Pass 2: carry, change or remove each previous row.
    let mut rdr = open_prev(prev)?;
    let mut canon = vec![Vec::new(); NCOL];
    let mut out = vec![Vec::new(); columns.len()];
    let mut removed_ids = Vec::with_capacity(opts.removed as usize);
    let mut changed_ids = Vec::with_capacity(opts.changed as usize);
    let mut pos: usize = 0;
    while rdr
        .read_byte_record(&mut rec)
        .map_err(csv_err("read", prev))?
    {
        if !is_valid_row(&rec, ncols_prev) {
            continue;
        }
        let Some(&mark) = marks.get(pos) else {
            return invalid(format!(
                "{} changed while it was being read",
                prev.display()
            ));
        };
        pos += 1;
        let id = rec.get(key_col).unwrap_or_default();
        let id_str = String::from_utf8_lossy(id).into_owned();
        if mark == 1 {
            removed_ids.push(id_str);
            continue;
        }
        let key = row_key(id);
        if carried_needs_canon {
            gen_row(seed, key, 0, ts, &mut canon);
        }
        for (o, src) in out.iter_mut().zip(&carried) {
            o.clear();
            match *src {
                Src::Prev(i) => o.extend_from_slice(rec.get(i).unwrap_or_default()),
                Src::Canon(ci) => o.extend_from_slice(&canon[ci]),
                Src::Extra(h) => extra_value(seed, key, h, 0, o),
                Src::Ts => o.extend_from_slice(ts),
            }
        }
        if mark == 2 {
            let mut rng = Mix::new(seed, key, TAG_MUTATE);
            let j = rng.pick(&change_targets);
            mutate(
                seed,
                key,
                &columns[j],
                ts,
                &mut rng,
                &mut canon,
                &mut out[j],
            );
            changed_ids.push(id_str);
        }
        sink.push(&out)?;
    }
    if (pos as u64) != prev_rows {
        return invalid(format!(
            "{} changed while it was being read",
            prev.display()
        ));
    }

    for index in first_new..first_new + opts.new_rows {
        fill_generated(seed, index, ts, &generated, &mut canon, &mut out);
        sink.push(&out)?;
    }
    let (rows, malformed_lines) = sink.finish(seed, columns.len())?;
    let malformed = malformed_lines.len() as u64;
    let expected = expected_path(&opts.out);
    write_expected(
        &expected,
        Expected {
            rows,
            new: (opts.new_rows > 0).then(|| (first_new, first_new + opts.new_rows - 1)),
            changed: changed_ids,
            removed: removed_ids,
            malformed_lines,
            columns: &columns,
        },
    )?;
    Ok(Summary {
        rows,
        new: opts.new_rows,
        changed: opts.changed,
        removed: opts.removed,
        malformed,
        skipped_prev: skipped,
        columns: columns.len(),
        seed,
        out: opts.out.clone(),
        expected,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("casefeed-gen-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn cleanup(paths: &[&Path]) {
        for p in paths {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(expected_path(p));
            if let Some(dir) = p.parent() {
                // Succeeds only once the last test has cleaned up.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    fn base_opts(rows: u64, seed: u64, out: &Path) -> BaselineOpts {
        BaselineOpts {
            rows,
            seed,
            out: out.to_path_buf(),
            malformed: 0,
            columns: ColumnOpts::default(),
        }
    }

    fn next_opts(prev: &Path, out: &Path) -> NextOpts {
        NextOpts {
            prev: prev.to_path_buf(),
            out: out.to_path_buf(),
            new_rows: 0,
            changed: 0,
            removed: 0,
            seed: Some(99),
            shuffle: false,
            malformed: 0,
            columns: ColumnOpts::default(),
        }
    }

    struct Parsed {
        header: Vec<String>,
        /// record_id -> column -> value (export_timestamp excluded), valid rows only.
        rows: HashMap<String, BTreeMap<String, String>>,
        /// record_ids in file order, valid rows only.
        order: Vec<String>,
        timestamps: BTreeSet<String>,
        /// (start line, record_id if readable) of every ragged or non-UTF-8 record.
        malformed: Vec<(u64, Vec<u8>)>,
        /// Malformed records whose line number differs from "record number + 1", i.e. an
        /// embedded newline came before them.
        malformed_after_newline: usize,
        embedded_newline_records: usize,
    }

    fn parse(path: &Path) -> Parsed {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .expect("open");
        let header: Vec<String> = rdr
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        let key = header.iter().position(|h| h == KEY_COLUMN).expect("key");
        let mut p = Parsed {
            header: header.clone(),
            rows: HashMap::new(),
            order: Vec::new(),
            timestamps: BTreeSet::new(),
            malformed: Vec::new(),
            malformed_after_newline: 0,
            embedded_newline_records: 0,
        };
        let mut rec = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut rec).expect("read") {
            let line = rec.position().expect("position").line();
            if rec.iter().any(|f| f.contains(&b'\n')) {
                p.embedded_newline_records += 1;
            }
            if !is_valid_row(&rec, header.len()) {
                let record_no = rec.position().expect("position").record();
                if line != record_no + 1 {
                    p.malformed_after_newline += 1;
                }
                p.malformed
                    .push((line, rec.get(key).unwrap_or_default().to_vec()));
                continue;
            }
            let mut m = BTreeMap::new();
            let mut id = String::new();
            for (h, v) in header.iter().zip(rec.iter()) {
                let v = String::from_utf8(v.to_vec()).expect("utf8");
                if h == TS_COLUMN {
                    p.timestamps.insert(v);
                } else {
                    if h == KEY_COLUMN {
                        id = v.clone();
                    }
                    m.insert(h.clone(), v);
                }
            }
            p.order.push(id.clone());
            assert!(p.rows.insert(id, m).is_none(), "duplicate record_id");
        }
        p
    }

    fn expected(path: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(expected_path(path)).expect("expected.json");
        serde_json::from_str(&text).expect("json")
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    }

    /// Diff two parsed files by record_id over the columns both have (timestamp excluded).
    fn diff(a: &Parsed, b: &Parsed) -> (Vec<String>, Vec<String>, Vec<String>) {
        let common: BTreeSet<&String> = a
            .header
            .iter()
            .filter(|h| b.header.contains(h) && *h != TS_COLUMN)
            .collect();
        let project = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
            m.iter()
                .filter(|(k, _)| common.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut new = Vec::new();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (id, row) in &b.rows {
            match a.rows.get(id) {
                None => new.push(id.clone()),
                Some(old) if project(old) != project(row) => changed.push(id.clone()),
                Some(_) => {}
            }
        }
        for id in a.rows.keys() {
            if !b.rows.contains_key(id) {
                removed.push(id.clone());
            }
        }
        new.sort();
        changed.sort();
        removed.sort();
        (new, changed, removed)
    }

    #[test]
    fn same_seed_gives_identical_bytes() {
        let a = tmp("same-a.csv");
        let b = tmp("same-b.csv");
        let c = tmp("same-c.csv");
        baseline(&base_opts(3000, 42, &a)).expect("a");
        baseline(&base_opts(3000, 42, &b)).expect("b");
        baseline(&base_opts(3000, 43, &c)).expect("c");
        let read = |p: &Path| std::fs::read(p).expect("read");
        assert_eq!(read(&a), read(&b));
        assert_eq!(read(&expected_path(&a)), read(&expected_path(&b)));
        assert_ne!(read(&a), read(&c));

        let n1 = tmp("same-n1.csv");
        let n2 = tmp("same-n2.csv");
        let mut o = next_opts(&a, &n1);
        o.new_rows = 20;
        o.changed = 15;
        o.removed = 10;
        o.shuffle = true;
        o.malformed = 3;
        o.columns.reorder = true;
        o.columns.add.push("ordering_provider".into());
        next(&o).expect("n1");
        o.out = n2.clone();
        next(&o).expect("n2");
        assert_eq!(read(&n1), read(&n2));
        assert_eq!(read(&expected_path(&n1)), read(&expected_path(&n2)));
        cleanup(&[&a, &b, &c, &n1, &n2]);
    }

    #[test]
    fn baseline_shape() {
        let a = tmp("shape.csv");
        let s = baseline(&base_opts(20_000, 5, &a)).expect("baseline");
        assert_eq!(s.rows, 20_000);
        let p = parse(&a);
        assert_eq!(p.header, COLUMNS.to_vec());
        assert_eq!(p.rows.len(), 20_000);
        assert_eq!(p.timestamps.len(), 1);
        assert!(p.malformed.is_empty());
        assert_eq!(p.order.first().map(String::as_str), Some("LR-00000001"));
        assert_eq!(p.order.last().map(String::as_str), Some("LR-00020000"));
        let e = expected(&a);
        assert_eq!(e["rows"], 20_000);
        assert_eq!(strings(&e["new"]).len(), 20_000);
        assert!(strings(&e["changed"]).is_empty());
        assert!(strings(&e["removed"]).is_empty());
        // Realism: non-ASCII names, quoted commas in streets, empty notes and zips,
        // quotes and (rarely) embedded newlines in notes.
        let vals = |c: &'static str| p.rows.values().map(move |r| r[c].clone());
        assert!(vals("first_name").any(|v| !v.is_ascii()));
        assert!(vals("last_name").any(|v| v.contains('\'')));
        assert!(vals("street").any(|v| v.contains(',')));
        assert!(vals("notes").filter(String::is_empty).count() > 10_000);
        assert!(vals("zip").any(|v| v.is_empty()));
        assert!(vals("notes").any(|v| v.contains('"')));
        assert!(vals("notes").any(|v| v.contains(',')));
        assert!(p.embedded_newline_records > 0);
        assert!(p.embedded_newline_records < 100);
        cleanup(&[&a]);
    }

    #[test]
    fn next_changes_match_expected() {
        let a = tmp("chg-a.csv");
        let b = tmp("chg-b.csv");
        let c = tmp("chg-c.csv");
        baseline(&base_opts(5000, 11, &a)).expect("baseline");
        let mut o = next_opts(&a, &b);
        o.new_rows = 50;
        o.changed = 40;
        o.removed = 30;
        let s = next(&o).expect("next");
        assert_eq!(s.rows, 5000 - 30 + 50);

        let (pa, pb) = (parse(&a), parse(&b));
        let e = expected(&b);
        let (new, changed, removed) = diff(&pa, &pb);
        assert_eq!(new, strings(&e["new"]));
        assert_eq!(changed, strings(&e["changed"]));
        assert_eq!(removed, strings(&e["removed"]));
        assert_eq!((new.len(), changed.len(), removed.len()), (50, 40, 30));
        assert_eq!(e["rows"], pb.rows.len());
        assert_eq!(strings(&e["columns"]), pb.header);
        // New ids continue above the previous maximum.
        assert_eq!(new.first().map(String::as_str), Some("LR-00005001"));
        // One timestamp per file, different between files.
        assert_eq!(pb.timestamps.len(), 1);
        assert_ne!(pa.timestamps, pb.timestamps);

        // A second step with schema drift: an added and a dropped column change no row.
        let mut o2 = next_opts(&b, &c);
        o2.seed = None;
        o2.new_rows = 5;
        o2.changed = 7;
        o2.removed = 3;
        o2.columns.add.push("ordering_provider".into());
        o2.columns.drop.push("notes".into());
        next(&o2).expect("next 2");
        let pc = parse(&c);
        let e2 = expected(&c);
        let (new, changed, removed) = diff(&pb, &pc);
        assert_eq!(new, strings(&e2["new"]));
        assert_eq!(changed, strings(&e2["changed"]));
        assert_eq!(removed, strings(&e2["removed"]));
        assert_eq!((new.len(), changed.len(), removed.len()), (5, 7, 3));
        assert!(pc.header.contains(&"ordering_provider".to_string()));
        assert!(!pc.header.contains(&"notes".to_string()));
        assert!(pc.rows.values().all(|r| r["ordering_provider"].len() == 8));
        assert_ne!(pb.timestamps, pc.timestamps);
        cleanup(&[&a, &b, &c]);
    }

    #[test]
    fn shuffle_and_reorder_without_changes_keep_rows() {
        let a = tmp("shuf-a.csv");
        let b = tmp("shuf-b.csv");
        baseline(&base_opts(4000, 3, &a)).expect("baseline");
        let mut o = next_opts(&a, &b);
        o.shuffle = true;
        o.columns.reorder = true;
        next(&o).expect("next");
        let (pa, pb) = (parse(&a), parse(&b));
        assert_eq!(pa.rows, pb.rows);
        assert_ne!(pa.order, pb.order);
        assert_ne!(pa.header, pb.header);
        let (mut ha, mut hb) = (pa.header.clone(), pb.header.clone());
        ha.sort();
        hb.sort();
        assert_eq!(ha, hb);
        let e = expected(&b);
        assert!(strings(&e["new"]).is_empty());
        assert!(strings(&e["changed"]).is_empty());
        assert!(strings(&e["removed"]).is_empty());
        assert_eq!(strings(&e["columns"]), pb.header);
        assert_ne!(pa.timestamps, pb.timestamps);
        cleanup(&[&a, &b]);
    }

    #[test]
    fn malformed_lines_point_at_malformed_rows() {
        let a = tmp("mal-a.csv");
        let b = tmp("mal-b.csv");
        let c = tmp("mal-c.csv");
        let mut bo = base_opts(20_000, 8, &a);
        bo.malformed = 2;
        baseline(&bo).expect("baseline");
        let mut o = next_opts(&a, &b);
        o.new_rows = 100;
        o.changed = 20;
        o.removed = 10;
        o.malformed = 9;
        let s = next(&o).expect("next");
        assert_eq!(s.skipped_prev, 2);
        assert_eq!(s.malformed, 9);

        for path in [&a, &b] {
            let p = parse(path);
            let e = expected(path);
            let lines: Vec<u64> = e["malformed_lines"]
                .as_array()
                .expect("array")
                .iter()
                .map(|v| v.as_u64().expect("u64"))
                .collect();
            let found: Vec<u64> = p.malformed.iter().map(|(l, _)| *l).collect();
            assert_eq!(found, lines, "{}", path.display());
            assert_eq!(e["rows"], p.rows.len());
            // Physical lines: each listed line starts with its malformed record's id.
            let bytes = std::fs::read(path).expect("read");
            let physical: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
            for (line, id) in &p.malformed {
                assert!(id.starts_with(b"LR-"));
                assert!(physical[(*line - 1) as usize].starts_with(id));
                assert!(!p
                    .rows
                    .contains_key(&String::from_utf8_lossy(id).into_owned()));
            }
        }
        // Both kinds are present, and the numbering had to count embedded newlines.
        let pb = parse(&b);
        let physical_lines = std::fs::read(&b)
            .expect("read")
            .iter()
            .filter(|&&x| x == b'\n')
            .count();
        assert!(pb.embedded_newline_records > 0);
        assert!(pb.malformed_after_newline > 0);
        assert!(physical_lines > pb.rows.len() + pb.malformed.len() + 1);
        let e = expected(&b);
        let (new, changed, removed) = diff(&parse(&a), &pb);
        assert_eq!(new, strings(&e["new"]));
        assert_eq!(changed, strings(&e["changed"]));
        assert_eq!(removed, strings(&e["removed"]));

        // Ragged and invalid-UTF-8 rows alternate.
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&b)
            .expect("open");
        let mut kinds = Vec::new();
        let mut rec = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut rec).expect("read") {
            if rec.len() != COLUMNS.len() {
                kinds.push('r');
            } else if !is_valid_row(&rec, COLUMNS.len()) {
                kinds.push('u');
            }
        }
        assert_eq!(kinds.iter().collect::<String>(), "rurururur");

        // Reordered columns plus shuffle keep the numbering right too.
        let mut o3 = next_opts(&b, &c);
        o3.malformed = 4;
        o3.shuffle = true;
        o3.columns.reorder = true;
        next(&o3).expect("next 3");
        let pc = parse(&c);
        let lines: Vec<u64> = expected(&c)["malformed_lines"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_u64().expect("u64"))
            .collect();
        assert_eq!(
            pc.malformed.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            lines
        );
        cleanup(&[&a, &b, &c]);
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let a = tmp("err-a.csv");
        let b = tmp("err-b.csv");
        baseline(&base_opts(10, 1, &a)).expect("baseline");

        let mut o = next_opts(&a, &b);
        o.removed = 6;
        o.changed = 5;
        let msg = next(&o).expect_err("too many").to_string();
        assert!(msg.contains("exceeds the 10 data rows"), "{msg}");

        let gz = tmp("err.csv.gz");
        assert!(baseline(&base_opts(10, 1, &gz)).is_err());

        let mut o = next_opts(&a, &b);
        o.columns.drop.push("record_id".into());
        assert!(next(&o).is_err());

        let mut o = next_opts(&a, &b);
        o.columns.add.push("city".into());
        assert!(next(&o).is_err());

        let mut o = next_opts(&a, &a);
        o.new_rows = 1;
        assert!(next(&o).is_err());

        let missing = tmp("does-not-exist.csv");
        let o = next_opts(&missing, &b);
        let msg = next(&o).expect_err("missing").to_string();
        assert!(msg.contains("does-not-exist.csv"), "{msg}");

        let no_key = tmp("err-nokey.csv");
        std::fs::write(&no_key, "a,b\n1,2\n").expect("write");
        assert!(next(&next_opts(&no_key, &b)).is_err());
        cleanup(&[&a, &b, &no_key]);
    }

    #[test]
    fn helpers() {
        assert_eq!(record_id(1), "LR-00000001");
        assert_eq!(record_id(123_456_789), "LR-123456789");
        assert_eq!(parse_index(b"LR-00000042"), Some(42));
        assert_eq!(parse_index(b"LR-"), None);
        assert_eq!(parse_index(b"XX-1"), None);
        for d in [-1000, 0, 1, 59, 60, 18_000, 20_000, 100_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(format_timestamp(EXPORT_BASE_SECS), "2025-06-01T00:00:00Z");
        assert_eq!(
            parse_timestamp(b"2025-06-01T00:00:00Z"),
            Some(EXPORT_BASE_SECS)
        );
        let mut arena = Arena::default();
        let row = vec![b"a".to_vec(), Vec::new(), vec![b'x'; 300]];
        arena.push(&row);
        arena.push(&vec![row[0].clone(); 3]);
        let mut out = vec![Vec::new(); 3];
        arena.load(0, &mut out);
        assert_eq!(out, row);
        arena.load(1, &mut out);
        assert_eq!(out, vec![row[0].clone(); 3]);
    }
}
