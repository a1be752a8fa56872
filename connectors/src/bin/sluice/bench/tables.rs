//! The `tables` scenario: what a reference table's reload costs when few rows change, against one
//! where every row changes (what reloading a table without differences always costs), both timed
//! the same way in one invocation: from the moment the new file is in place to the moment the
//! arrangement on every worker holds the new rows (read, hash, parse the changed rows, exchange
//! them to their owners, arrange them).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_connectors::transforms::keyed::{self, Update};
use sluice_connectors::transforms::tables::{TableLoader, TableSpec};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

use super::{BenchError, io_error};

/// The table's rows: an address, an owner and a version.
fn write_table(path: &Path, rows: usize, version: impl Fn(usize) -> u32) -> Result<(), BenchError> {
    let mut text = String::with_capacity(rows * 40);
    text.push_str("ip,owner,version\n");
    for i in 0..rows {
        text.push_str(&format!("10.{}.{}.{},team-{},{}\n", i >> 16 & 255, i >> 8 & 255, i & 255, i % 97, version(i)));
    }
    let next = path.with_extension("next");
    std::fs::write(&next, text).map_err(io_error(format!("cannot write {}", next.display())))?;
    std::fs::rename(&next, path).map_err(io_error(format!("cannot rename into {}", path.display())))
}

/// Times the first load of a `rows`-row table, a reload changing `changed` rows, and a reload
/// changing every row, on `workers` workers; answers the note for the report.
pub(crate) fn reload_figures(work: &Path, rows: usize, changed: usize, workers: usize) -> Result<String, BenchError> {
    let dir = work.join("tables");
    std::fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
    let path = dir.join("assets.csv");
    write_table(&path, rows, |_| 1)?;
    let spec = TableSpec::new(&path.display().to_string(), "ip", "ip", "asset");
    let loader = TableLoader::open(spec, &dir).map_err(|e| BenchError::Io {
        what: "the tables scenario's table".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let loader = Arc::new(Mutex::new(Some((loader, path))));
    let times: Arc<Mutex<Vec<(Duration, usize)>>> = Arc::default();
    let recorded = Arc::clone(&times);
    let step = rows / changed.max(1);
    let guards = timely::execute(timely::Config::process(workers.max(1)), move |worker| {
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Update<String, String>>>>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let arranged = keyed::arrange_owned(input.to_stream(scope), "Arrange(bench)");
            arranged.stream.probe_with(&probe);
        });
        let mine = if worker.index() == 0 { loader.lock().ok().and_then(|mut l| l.take()) } else { None };
        if let Some((mut loader, path)) = mine {
            // 1: the first load; 2: `changed` rows changed; 3: every row changed.
            let versions: [&dyn Fn(usize) -> u32; 3] =
                [&|_| 1, &|i| if i % step == 0 && i / step < changed { 2 } else { 1 }, &|_| 3];
            for (epoch, version) in versions.into_iter().enumerate() {
                if epoch > 0 && write_table(&path, rows, version).is_err() {
                    break;
                }
                let started = Instant::now();
                let Ok(differences) = loader.reload() else { break };
                let n = differences.len();
                for (key, row, diff) in differences {
                    input.send(((key, row), epoch as u64, diff));
                }
                input.advance_to(epoch as u64 + 1);
                while probe.less_than(&(epoch as u64 + 1)) {
                    worker.step();
                }
                if let Ok(mut times) = recorded.lock() {
                    times.push((started.elapsed(), n));
                }
            }
        }
        input.close();
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .map_err(|e| BenchError::Io { what: "the tables scenario's dataflow".into(), source: std::io::Error::other(e) })?;
    for result in guards.join() {
        result.map_err(|e| BenchError::Io { what: "the tables scenario".into(), source: std::io::Error::other(e) })?;
    }
    std::fs::remove_dir_all(&dir).map_err(io_error(format!("cannot remove {}", dir.display())))?;
    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    let [(first, first_n), (few, few_n), (all, all_n)] = times[..] else {
        return Err(BenchError::Io {
            what: "the tables scenario".into(),
            source: std::io::Error::other("a reload failed; run `sluice bench --scenarios tables` to see it"),
        });
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "tables: a {rows}-row CSV table on {workers} workers: first load {:.0} ms ({first_n} updates); \
         reload changing every row {:.0} ms ({all_n} updates); reload changing {changed} rows {:.1} ms ({few_n} updates) \
         = {:.2} % of the full reload (target: under 1 %)",
        ms(first),
        ms(all),
        ms(few),
        100.0 * few.as_secs_f64() / all.as_secs_f64()
    ))
}
