//! The drill's pure parts: the schedule, the CSV, the backlog, the effects, the invariants
//! and the per-phase summary.

use super::report::*;
use super::DrillArgs;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn sample(t_s: f64, phase: Phase, calls: f64, in_flight: u64, depth: u64) -> Sample {
    Sample {
        t_s,
        phase,
        calls_per_s: calls,
        requests: 0,
        in_flight,
        queue_depth: depth,
        oldest_age_s: 0.0,
        breaker: "closed".into(),
        dead_lettered: 0,
        applied: 0,
        rows_sent: 0,
    }
}

fn schedule() -> Schedule {
    Schedule {
        phases: vec![
            (Phase::Normal, Duration::from_secs(10)),
            (Phase::Slow, Duration::from_secs(5)),
            (Phase::Down, Duration::from_secs(5)),
            (Phase::Back, Duration::from_secs(10)),
            (Phase::Drain, Duration::from_secs(20)),
        ],
    }
}

fn good_end() -> EndState {
    EndState {
        rate_limit: 10,
        ceiling: 6,
        api_peak_per_second: None,
        api_peak_in_flight: 6,
        api_applied: 5,
        dead_lettered: 0,
        queue_depth: 0,
        backlog: 0,
        effects: Effects {
            rows_sent: 6,
            applied: 5,
            superseded: 1,
            ..Effects::default()
        },
    }
}

#[test]
fn the_schedule_names_the_phase_at_each_second_and_stops_uploads_at_the_drain() {
    let s = schedule();
    assert_eq!(s.phase_at(Duration::ZERO), Phase::Normal);
    assert_eq!(s.phase_at(Duration::from_millis(9_999)), Phase::Normal);
    assert_eq!(s.phase_at(Duration::from_secs(10)), Phase::Slow);
    assert_eq!(s.phase_at(Duration::from_secs(17)), Phase::Down);
    assert_eq!(s.phase_at(Duration::from_secs(29)), Phase::Back);
    assert_eq!(s.phase_at(Duration::from_secs(30)), Phase::Drain);
    assert_eq!(s.phase_at(Duration::from_secs(999)), Phase::Drain);
    assert_eq!(s.start_of(Phase::Down), Duration::from_secs(15));
    assert_eq!(s.uploads_until(), Duration::from_secs(30));
    assert_eq!(s.total(), Duration::from_secs(50));
}

#[test]
fn the_quick_preset_is_about_ninety_seconds_and_options_override_it() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        drill: DrillArgs,
    }
    let quick = Cli::parse_from(["x", "--quick"]).drill.schedule();
    assert!((80..=110).contains(&quick.total().as_secs()), "{quick:?}");
    let full = Cli::parse_from(["x"]).drill.schedule();
    assert!((180..=300).contains(&full.total().as_secs()), "{full:?}");
    let custom = Cli::parse_from(["x", "--quick", "--down-secs", "40"])
        .drill
        .schedule();
    assert_eq!(
        custom.start_of(Phase::Back),
        Duration::from_secs(15 + 15 + 40)
    );
}

#[test]
fn the_csv_has_one_line_a_sample_under_the_header() {
    let mut s = sample(1.0004, Phase::Down, 12.346, 3, 40);
    s.oldest_age_s = 7.26;
    s.breaker = "open".into();
    s.dead_lettered = 1;
    s.applied = 9;
    s.rows_sent = 50;
    s.requests = 77;
    let mut out = Vec::new();
    write_csv(&mut out, &[sample(0.0, Phase::Normal, 0.0, 0, 0), s]).expect("csv");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "t_s,phase,calls_per_s,requests,in_flight,queue_depth,oldest_age_s,breaker,dead_lettered,applied,rows_sent",
            "0.000,normal,0.00,0,0,0,0.0,closed,0,0,0",
            "1.000,down,12.35,77,3,40,7.3,open,1,9,50",
        ]
    );
}

#[test]
fn the_backlog_ages_from_the_oldest_export_not_in_effect() {
    let mut b = Backlog::default();
    b.push("A".into(), 1, 0.0);
    b.push("B".into(), 1, 0.0);
    b.push("A".into(), 2, 4.0);
    b.push("C".into(), 3, 8.0);
    assert_eq!(b.oldest_age_s(10.0), 10.0);
    // B applied from export 1: A's export-1 row is still outstanding
    b.settle(&HashMap::from([("B".to_string(), 1)]));
    assert_eq!((b.len(), b.oldest_age_s(10.0)), (3, 10.0));
    // A's export-2 row applied first: its export-1 row is superseded, in effect too
    b.settle(&HashMap::from([("A".to_string(), 2)]));
    assert_eq!((b.len(), b.oldest_age_s(10.0)), (1, 2.0));
    b.settle(&HashMap::from([("C".to_string(), 3)]));
    assert!(b.is_empty());
    assert_eq!(b.oldest_age_s(10.0), 0.0);
}

fn held(versions: &[u64], last: usize) -> HeldRecord {
    HeldRecord {
        versions: versions.to_vec(),
        last_export: Some(last),
        fields_match: true,
    }
}

#[test]
fn effects_count_applied_superseded_and_every_kind_of_wrong_record() {
    let sent = BTreeMap::from([
        ("A".to_string(), vec![1, 2]),
        ("B".to_string(), vec![1]),
        ("C".to_string(), vec![2, 3]),
        ("D".to_string(), vec![3]),
    ]);
    let mut api = BTreeMap::from([
        ("A".to_string(), held(&[2, 3], 2)),
        ("B".to_string(), held(&[2], 1)),
        ("C".to_string(), held(&[4], 3)),
        ("D".to_string(), held(&[4], 3)),
    ]);
    let e = compare_effects(&sent, &api);
    assert_eq!(
        e,
        Effects {
            rows_sent: 6,
            applied: 5,
            superseded: 1,
            ..Effects::default()
        }
    );
    // a version twice, a record left behind, wrong fields, one never sent, one missing
    api.insert("A".into(), held(&[2, 2], 2));
    api.insert("C".into(), held(&[3], 2));
    api.get_mut("B").expect("B").fields_match = false;
    api.insert("Z".into(), held(&[2], 1));
    api.remove("D");
    let e = compare_effects(&sent, &api);
    assert_eq!(e.duplicate_versions, 1);
    assert_eq!(e.not_current, 1);
    assert_eq!(e.field_mismatches, 1);
    assert_eq!(e.unknown, 1);
    assert_eq!(e.missing, 1);
}

#[test]
fn a_clean_drill_passes_every_invariant() {
    let samples = vec![
        sample(0.0, Phase::Normal, 0.0, 0, 0),
        sample(1.0, Phase::Normal, 10.0, 6, 20),
        sample(2.0, Phase::Drain, 3.0, 1, 0),
    ];
    assert_eq!(check(&samples, &good_end()), Vec::<String>::new());
}

#[test]
fn each_broken_invariant_is_named() {
    let samples = vec![
        sample(0.0, Phase::Normal, 9.0, 2, 0),
        sample(1.0, Phase::Back, 10.5, 7, 5),
        sample(2.0, Phase::Back, 12.0, 3, 5),
    ];
    let mut end = good_end();
    end.dead_lettered = 2;
    end.queue_depth = 4;
    end.api_applied = 6;
    end.effects.field_mismatches = 1;
    end.effects.duplicate_versions = 1;
    let failed = check(&samples, &end);
    let has = |needle: &str| failed.iter().any(|f| f.starts_with(needle));
    assert!(has("rate: 2 sampled second(s)"), "{failed:?}");
    assert!(
        failed[0].contains("worst 12.0 /s at t=2 s, back"),
        "{failed:?}"
    );
    assert!(has("in flight: peak 7"), "{failed:?}");
    assert!(has("dead letters: 2"), "{failed:?}");
    assert!(has("effects: the API counted 6"), "{failed:?}");
    assert!(has("duplicates: 1"), "{failed:?}");
    assert!(has("content: 1"), "{failed:?}");
    assert!(has("drain: 4 message(s)"), "{failed:?}");
    assert_eq!(failed.len(), 7, "{failed:?}");
}

#[test]
fn the_apis_own_peak_per_second_decides_the_rate_invariant_when_present() {
    let samples = vec![sample(1.0, Phase::Normal, 11.0, 1, 0)];
    let mut end = good_end();
    end.api_peak_per_second = Some(10);
    assert!(check(&samples, &end).is_empty());
    end.api_peak_per_second = Some(11);
    let failed = check(&samples, &end);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("11 calls in its busiest second"));
}

#[test]
fn rows_lost_or_missing_fail_the_effects_invariant() {
    let mut end = good_end();
    end.effects.superseded = 0;
    let failed = check(&[], &end);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("6 row(s) sent, 5 applied + 0 superseded"));
}

#[test]
fn the_summary_has_one_row_a_phase_with_its_means_and_maxima() {
    let mut samples = vec![
        sample(1.0, Phase::Normal, 4.0, 2, 3),
        sample(2.0, Phase::Normal, 6.0, 4, 1),
        sample(3.0, Phase::Down, 1.0, 0, 30),
        sample(4.0, Phase::Down, 0.0, 0, 45),
    ];
    samples[1].applied = 10;
    samples[3].applied = 12;
    samples[3].oldest_age_s = 9.5;
    let rows = summarize(&samples);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].phase, Phase::Normal);
    assert_eq!(
        (
            rows[0].calls_mean,
            rows[0].calls_max,
            rows[0].in_flight_max,
            rows[0].depth_max
        ),
        (5.0, 6.0, 4, 3)
    );
    assert_eq!((rows[0].seconds, rows[0].applied), (2.0, 10));
    assert_eq!(rows[1].phase, Phase::Down);
    assert_eq!(
        (
            rows[1].calls_mean,
            rows[1].depth_max,
            rows[1].oldest_age_max,
            rows[1].applied
        ),
        (0.5, 45, 9.5, 2)
    );
    let table = summary_table(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2], "| normal | 2 | 5.0 | 6.0 | 4 | 3 | 0.0 | 10 |");
    assert_eq!(lines[3], "| down | 2 | 0.5 | 1.0 | 0 | 45 | 9.5 | 2 |");
}

#[test]
fn the_chart_is_a_png_with_labels_or_says_which_font_is_missing() {
    let dir = std::env::temp_dir().join(format!("casefeed-drill-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let png = dir.join("drill.png");
    let mut samples: Vec<Sample> = (0..60)
        .map(|i| {
            let phase = schedule().phase_at(Duration::from_secs(i));
            sample(i as f64, phase, (i % 7) as f64, i % 4, i * 2)
        })
        .collect();
    samples[20].breaker = "open".into();
    match super::chart::draw(&png, &samples, &schedule(), 10, 6, "test") {
        Ok(()) => {
            let bytes = std::fs::read(&png).expect("the chart was written");
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // five panels of lines and text: far more than a blank image compresses to
            assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
        }
        Err(e) => {
            assert!(matches!(e, super::chart::ChartError::NoFont(_)), "{e}");
            assert!(e.to_string().contains("fonts-dejavu-core"), "{e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
