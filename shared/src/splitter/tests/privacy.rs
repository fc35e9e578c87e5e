//! No row value in any reason, report, error or message attribute.

use super::harness::{gzip, Harness, QueueMode, Table, BUCKET, LAB_COLS, LAB_HEADER, TS1};
use crate::contract::report::RunStatus;

// ---------------------------------------------------------------------------------------
// no row values in reasons
// ---------------------------------------------------------------------------------------

const PII: [&str; 6] = [
    "Zelda",
    "Quixote",
    "555-0199",
    "1961-07-04",
    "Baker Street",
    "ZZ-SECRET",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_value_appears_in_any_reason() {
    let h = Harness::new();
    let pii_row = |id: u32| {
        vec![
            id.to_string(),
            format!("Zelda Quixote {id}, 221 Baker Street, 555-0199"),
            "ZZ-SECRET".to_string(),
            "1961-07-04".to_string(),
            TS1.to_string(),
        ]
    };
    let mut t1 = Table::new(&LAB_COLS, "record_id");
    for id in 1..=8 {
        t1.push(pii_row(id));
    }
    h.run_table("labs", "e1.csv", &t1).await;
    let mut errors: Vec<String> = Vec::new();

    // bad rows, each carrying values
    let mut bad = Vec::new();
    bad.extend_from_slice(LAB_HEADER.as_bytes());
    bad.extend_from_slice(b"\n1,Zelda Quixote,ZZ-SECRET,1961-07-04,T,555-0199\n");
    bad.extend_from_slice(b"2,Zelda \xFF Quixote,ZZ-SECRET,1961-07-04,T\n");
    bad.extend_from_slice(b",Zelda Quixote,ZZ-SECRET,1961-07-04,T\n");
    bad.extend_from_slice(b"3,Zelda Quixote 555-0199\n");
    let long = format!(
        "4,Zelda Quixote {},ZZ-SECRET,1961-07-04,T\n",
        "Baker Street ".repeat(6000)
    );
    bad.extend_from_slice(long.as_bytes());
    let ev = h.upload("labs", "bad-rows.csv", bad);
    let r = h.run(&ev).await;
    assert_eq!(r.counts.rejected, 5);

    // whole-file rejections: a missing column, a headerless file, an empty file
    let ev = h.upload("labs", "no-result.csv", t1.drop_column("result").csv());
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    let headerless =
        b"9,Zelda Quixote,ZZ-SECRET,1961-07-04,T\n10,Zelda,ZZ-SECRET,1961-07-04,T\n".to_vec();
    let ev = h.upload("labs", "headerless.csv", headerless);
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    let ev = h.upload("labs", "empty.csv", Vec::new());
    assert_eq!(h.run(&ev).await.status, RunStatus::Rejected);
    // SQS refusing a row
    let mut t2 = t1.clone();
    t2.set("5", "result", "ZZ-SECRET changed");
    *h.queue.refuse.lock().unwrap() = vec!["ZZ-SECRET changed".into()];
    let ev = h.upload("labs", "refused.csv", t2.csv());
    assert_eq!(h.run(&ev).await.counts.rejected, 1);
    h.queue.refuse.lock().unwrap().clear();
    // a failing queue
    h.queue.set_mode(QueueMode::EntryErr);
    let mut t3 = t1.clone();
    t3.set("6", "result", "ZZ-SECRET again");
    let ev = h.upload("labs", "queue-down.csv", t3.csv());
    errors.push(h.process(&ev).await.unwrap_err().to_string());
    h.queue.set_mode(QueueMode::Healthy);
    // a truncated gzip
    let gz = gzip(&t3.csv());
    let ev = h.upload("labs", "cut.csv.gz", gz[..gz.len() / 2].to_vec());
    if let Err(e) = h.process(&ev).await {
        errors.push(e.to_string());
    }
    // a corrupt snapshot
    h.restore_snapshot("labs", b"Zelda Quixote 555-0199".to_vec());
    errors.push(h.process(&ev).await.unwrap_err().to_string());

    let mut reasons: Vec<String> = Vec::new();
    for k in h.mem.keys("runs/labs/") {
        let v: serde_json::Value = serde_json::from_slice(&h.mem.get(BUCKET, &k).unwrap()).unwrap();
        if let Some(s) = v["reason"].as_str() {
            reasons.push(s.to_string());
        }
        // nothing but reasons, column names and identities in the whole report either
        let text = String::from_utf8(h.mem.get(BUCKET, &k).unwrap()).unwrap();
        for p in PII {
            assert!(!text.contains(p), "{k} contains {p}: {text}");
        }
    }
    for k in h.mem.keys("rejects/labs/") {
        for j in h.rejects(&k) {
            reasons.push(j["reason"].as_str().unwrap().to_string());
        }
    }
    assert!(reasons.len() >= 10, "{reasons:#?}");
    for s in reasons.iter().chain(&errors) {
        for p in PII {
            assert!(!s.contains(p), "`{s}` contains the row value {p}");
        }
    }
    // and no message attribute carries one
    for m in h.take_sent() {
        for v in m.attrs.values() {
            for p in PII {
                assert!(!v.contains(p));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headerless_file_does_not_leak_its_first_row() {
    let h = Harness::new();
    let ev = h.upload(
        "labs",
        "headerless.csv",
        b"17,Quixote,Quixote,1961-07-04,1961-07-04\n18,Zelda,x,y,z\n".to_vec(),
    );
    let r = h.run(&ev).await;
    assert_eq!(r.status, RunStatus::Rejected);
    let reason = r.reason.unwrap();
    for p in PII {
        assert!(!reason.contains(p), "`{reason}` contains {p}");
    }
    assert!(reason.contains("positions 2 and 3"), "{reason}");
    assert!(h.snapshot_bytes("labs").is_none());
}
