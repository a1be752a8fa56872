//! The `dedup` transform (issue 17): records posted to a real HTTP source on a schedule, with
//! duplicates at random distances inside and outside the window: exactly the expected records
//! survive, at 1, 2 and 4 workers; `max_keys` bounds the keys held under many more distinct keys;
//! config errors say what is wrong.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sluice_connectors::registry;
use sluice_engine::runtime::{RunOptions, run};
use sluice_engine::testkit::transform::{TransformCheck, conformance};
use sluice_engine::testkit::{plan_from_str, run_pipeline};

use super::support::{free_port, memory_objects};

/// The window of these tests, in seconds: a duplicate 0–2 s after the record kept is inside it
/// whatever the epochs' boundaries, one 7–8 s after is outside it (window + a step + an epoch).
const WINDOW_S: u64 = 4;

/// A group: a record kept at `at` seconds and its duplicates `after` seconds later.
struct Group {
    id: usize,
    number: usize,
    at: u64,
    after: Vec<u64>,
}

#[test]
fn duplicates_inside_the_window_are_dropped_and_outside_it_kept_at_1_2_and_4_workers() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    // 60 keys; each has a first group at 0–2 s and, for half of them, a second 7–8 s later; each
    // group has 0–3 duplicates 0–2 s after its first record.
    let mut groups = Vec::new();
    for id in 0..60 {
        let first = rng.random_range(0..=2);
        let mut starts = vec![first];
        if id % 2 == 0 {
            starts.push(first + rng.random_range(7..=8));
        }
        for (number, at) in starts.into_iter().enumerate() {
            let after = (0..rng.random_range(0..=3)).map(|_| rng.random_range(0..=2)).collect();
            groups.push(Group { id, number, at, after });
        }
    }
    let last = groups.iter().flat_map(|g| g.after.iter().map(move |a| g.at + a)).max().unwrap_or(0);
    // Sends by second: (id, group number, copy); copy 0 is the record the group keeps.
    let mut schedule: Vec<Vec<String>> = vec![Vec::new(); last as usize + 1];
    for g in &groups {
        schedule[g.at as usize].push(record(g.id, g.number, 0));
        for (copy, after) in g.after.iter().enumerate() {
            schedule[(g.at + after) as usize].push(record(g.id, g.number, copy + 1));
        }
    }
    let expected: BTreeSet<String> = groups.iter().map(|g| record(g.id, g.number, 0)).collect();
    let duplicates: usize = groups.iter().map(|g| g.after.len()).sum();

    for workers in [1, 2, 4] {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let toml = format!(
            "[pipeline]\nname = \"d\"\ndata_dir = \"{}\"\n[sources.in]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
             [transforms.once]\ntype = \"dedup\"\ninputs = [\"in\"]\nkey = \".id\"\nwindow_s = {WINDOW_S}\n\
             [sinks.o]\ntype = \"object_store\"\ninputs = [\"once\"]\nurl = \"memory://dedup-{workers}/o\"\nformat = \"ndjson\"\n",
            data.path().display()
        );
        let plan = plan_from_str(&toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(plan.new_metrics());
        let mut options = RunOptions::for_plan(&plan);
        options.workers = workers;
        let stop = options.stop.clone();
        let counters = Arc::clone(&metrics);
        let running = std::thread::spawn(move || run(&plan, &options, counters));
        let client = reqwest::blocking::Client::new();
        let url = format!("http://127.0.0.1:{port}/");
        let up = Instant::now();
        while client.post(&url).body("").send().is_err() {
            assert!(up.elapsed() < Duration::from_secs(20), "the http source did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        for (second, records) in schedule.iter().enumerate() {
            let due = Duration::from_secs(second as u64);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
            if !records.is_empty() {
                let answer = client.post(&url).body(records.join("\n")).send().unwrap();
                assert!(answer.status().is_success(), "{:?}", answer.text());
            }
        }
        stop.stop();
        running.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        let survived: BTreeSet<String> = memory_objects(&format!("dedup-{workers}")).into_values().flatten().collect();
        assert_eq!(survived, expected, "{workers} workers");
        let t = &metrics.transforms[0];
        assert_eq!(t.records_dropped.load(Relaxed), duplicates as u64, "{workers} workers");
        let counted: u64 = t
            .labelled
            .lock()
            .unwrap()
            .iter()
            .filter(|((f, _, _), _)| f.name == "DuplicatesDropped")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(counted, duplicates as u64);
    }
}

/// Record `copy` of group `number` of key `id`.
fn record(id: usize, number: usize, copy: usize) -> String {
    format!("{{\"id\":\"k{id}\",\"group\":{number},\"copy\":{copy}}}")
}

#[test]
fn max_keys_bounds_the_keys_held_under_many_more_distinct_keys() {
    // 200,000 distinct records (the whole record is the key) against a bound of 5,000 keys.
    let toml = "[pipeline]\nname = \"m\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 200000\n\
         [transforms.once]\ntype = \"dedup\"\ninputs = [\"gen\"]\nwindow_s = 600\nmax_keys = 5000\n\
         [sinks.o]\ntype = \"object_store\"\ninputs = [\"once\"]\nurl = \"memory://dedup-max/o\"\n";
    let (_, metrics) = run_pipeline(toml, &registry(), 2).unwrap();
    let t = &metrics.transforms[0];
    let labelled = |family: &str| -> u64 {
        t.labelled.lock().unwrap().iter().filter(|((f, _, _), _)| f.name == family).map(|(_, n)| n).sum()
    };
    let held = t.keys_held.load(Relaxed);
    assert!(held > 0 && held <= 5000, "{held} keys held");
    let (kept, dropped) = (t.records_out.load(Relaxed), t.records_dropped.load(Relaxed));
    assert_eq!(kept + dropped, 200_000);
    // The generator's records are distinct but for a few repeats: nearly all are kept, and all but
    // the keys held were forgotten early.
    assert!(dropped < 1_000, "{dropped} dropped");
    assert_eq!(labelled("DedupKeysForgotten"), kept - held as u64);
    assert_eq!(metrics.sinks[0].records_delivered.load(Relaxed), kept);
}

#[test]
fn dedup_config_errors_say_what_is_wrong() {
    let error = |keys: &str| {
        let toml = format!(
            "[pipeline]\nname = \"d\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
             [transforms.once]\ntype = \"dedup\"\ninputs = [\"gen\"]\n{keys}\n\
             [sinks.o]\ntype = \"object_store\"\ninputs = [\"once\"]\nurl = \"memory://d/o\"\n"
        );
        plan_from_str(&toml, &registry()).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let query = error("key = '.a |'");
    assert!(query.contains("10:") && query.contains("key query does not compile"), "{query}");
    let window = error("window_s = 0");
    assert!(window.contains("out of range") && window.contains("604800"), "{window}");
    let max = error("max_keys = 0");
    assert!(max.contains("remember nothing"), "{max}");
    let unknown = error("windows = 3");
    assert!(unknown.contains("windows"), "{unknown}");
}

#[test]
fn dedup_passes_the_conformance_kit_and_fails_records_its_key_query_fails_on() {
    let toml = "[pipeline]\nname = \"d\"\n[sources.gen]\ntype = \"generator\"\nprofile = \"vpcflow\"\nrecords = 1\n\
         [transforms.once]\ntype = \"dedup\"\ninputs = [\"gen\"]\nkey = '.id | ascii_downcase'\n\
         [sinks.o]\ntype = \"object_store\"\ninputs = [\"once\"]\nurl = \"memory://d/o\"\n";
    let plan = plan_from_str(toml, &registry()).unwrap_or_else(|e| panic!("{e}"));
    let transform = Arc::clone(&plan.transforms[0].transform);
    // Ten keys (in two spellings of case, which the key folds), a record the query fails on.
    let mut records: Vec<Vec<u8>> = (0..40).map(|i| format!("{{\"id\":\"K{}\"}}", i % 10).into_bytes()).collect();
    records.extend((0..10).map(|i| format!("{{\"id\":\"k{i}\"}}").into_bytes()));
    records.push(b"{\"id\":5}".to_vec());
    let report = conformance(&transform, &records, true, Duration::from_secs(20)).unwrap();
    assert!(
        report.passed(TransformCheck::AccountsForEveryRecord)
            && report.passed(TransformCheck::FailsRecordsAsTheyEntered)
    );
    let mut batch = sluice_engine::record::RecordBatch::with_capacity(1_000, 0);
    records.iter().for_each(|r| batch.push(r));
    let run =
        sluice_engine::testkit::transform::run_transform(&transform, vec![batch], Duration::from_secs(20)).unwrap();
    let kept: BTreeSet<String> = run.delivered.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    // The earliest of each key in its epoch, then the smallest bytes: "K…" sorts before "k…".
    let expected: BTreeSet<String> = (0..10).map(|i| format!("{{\"id\":\"K{i}\"}}")).collect();
    assert_eq!(kept, expected);
    assert_eq!(run.dropped, 40);
    assert_eq!(run.failed.len(), 1);
    assert_eq!((run.failed[0].1, run.failed[0].2.as_str()), ("processing-failed", "Dedup.KeyFailed"));
}
