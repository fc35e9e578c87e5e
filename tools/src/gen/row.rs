//! The row generator: the seeded SplitMix64 stream, ids, dates and timestamps, `gen_row`.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::columns::{
    CITY, COLLECTED, DOB, EXPORT_TS, FIRST_NAME, LAB, LAST_NAME, NOTES, PATIENT_ID, PHONE,
    RECORD_ID, RESULT, RESULT_DATE, SEX, STATE, STREET, TEST_CODE, TEST_NAME, ZIP,
};
use super::pools::{
    CITIES, FEMALE_FIRST, LABS, LAST, MALE_FIRST, NOTES_MULTILINE, NOTES_POOL, RESULTS, STREETS,
    STREET_SUFFIX, TESTS,
};

const TAG_ROW: u64 = 0x524f_5721;
const TAG_PATIENT: u64 = 0x5041_5449;
const TAG_EXTRA: u64 = 0x4558_5452;
pub(super) const TAG_MUTATE: u64 = 0x4d55_5441;
pub(super) const TAG_SELECT: u64 = 0x5345_4c45;
pub(super) const TAG_SHUFFLE: u64 = 0x5348_5546;
pub(super) const TAG_REORDER: u64 = 0x5245_4f52;
pub(super) const TAG_MALFORMED: u64 = 0x4d41_4c46;
const TAG_TS: u64 = 0x5449_4d45;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A SplitMix64 stream whose start is xxh3(seed; a, b): cheap to create per row.
pub(super) struct Mix(u64);

impl Mix {
    pub(super) fn new(seed: u64, a: u64, b: u64) -> Mix {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&a.to_le_bytes());
        buf[8..].copy_from_slice(&b.to_le_bytes());
        Mix(xxh3_64_with_seed(&buf, seed))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n == 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `ppm` per million.
    fn ppm(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
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

pub(super) fn record_id(index: u64) -> String {
    let mut b = Vec::with_capacity(12);
    push_record_id(&mut b, index);
    String::from_utf8_lossy(&b).into_owned()
}

/// `LR-<digits>` -> index.
pub(super) fn parse_index(id: &[u8]) -> Option<u64> {
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
pub(super) fn row_key(id: &[u8]) -> u64 {
    parse_index(id).unwrap_or_else(|| xxh3_64(id) | (1 << 63))
}

/// Days since 1970-01-01 -> (year, month, day) (proleptic Gregorian).
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
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
pub(super) fn format_timestamp(secs: i64) -> String {
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

pub(super) fn parse_timestamp(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp())
}

/// 2025-06-01T00:00:00Z
pub(super) const EXPORT_BASE_SECS: i64 = 1_748_736_000;

pub(super) fn baseline_timestamp(seed: u64) -> i64 {
    let slots = Mix::new(seed, 0, TAG_TS).below(365 * 48) as i64;
    EXPORT_BASE_SECS + slots * 1800
}

/// Next export: 30 minutes (plus a seeded 0..120 s) after the previous one.
pub(super) fn next_timestamp(prev: Option<i64>, seed: u64) -> i64 {
    let jitter = Mix::new(seed, 1, TAG_TS).below(120) as i64;
    match prev {
        Some(p) => p + 1800 + jitter,
        None => baseline_timestamp(seed) + 1800 + jitter,
    }
}

/// Generate the canonical fields of one row into `f` (NCOL buffers): a pure function of
/// `(seed, index, version)` and the export timestamp.
pub(super) fn gen_row(seed: u64, index: u64, version: u64, ts: &[u8], f: &mut [Vec<u8>]) {
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
pub(super) fn extra_value(seed: u64, key: u64, name_hash: u64, version: u64, out: &mut Vec<u8>) {
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
