//! The default columns of an export, their indices and the key and timestamp columns.

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
pub(super) const NCOL: usize = 19;
pub(super) const RECORD_ID: usize = 0;
pub(super) const PATIENT_ID: usize = 1;
pub(super) const FIRST_NAME: usize = 2;
pub(super) const LAST_NAME: usize = 3;
pub(super) const DOB: usize = 4;
pub(super) const SEX: usize = 5;
pub(super) const PHONE: usize = 6;
pub(super) const STREET: usize = 7;
pub(super) const CITY: usize = 8;
pub(super) const STATE: usize = 9;
pub(super) const ZIP: usize = 10;
pub(super) const COLLECTED: usize = 11;
pub(super) const TEST_CODE: usize = 12;
pub(super) const TEST_NAME: usize = 13;
pub(super) const RESULT: usize = 14;
pub(super) const RESULT_DATE: usize = 15;
pub(super) const LAB: usize = 16;
pub(super) const NOTES: usize = 17;
pub(super) const EXPORT_TS: usize = 18;

pub(super) const KEY_COLUMN: &str = "record_id";
pub(crate) const TS_COLUMN: &str = "export_timestamp";
