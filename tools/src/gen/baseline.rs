//! `gen baseline`: a first full export.

use std::time::Instant;

use super::cli::BaselineOpts;
use super::columns::{COLUMNS, NCOL};
use super::errors::{expected_path, GenError, Summary};
use super::expected::{write_expected, Expected};
use super::plan::{
    check_count, check_csv_path, fill_generated, generated_src, plan_columns, plan_malformed,
    remove_partial, Emitter, Src,
};
use super::row::{baseline_timestamp, format_timestamp};

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
