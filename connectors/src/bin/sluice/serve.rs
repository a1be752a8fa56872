//! `sluice serve DIR`: the stream pipelines of a folder, one delivery stream each, behind one
//! Firehose API listener that routes requests by `DeliveryStreamName`; SIGHUP reads the folder
//! again (beyond Firehose, whose streams are made by API calls; as Vector and Prometheus reload).
//!
//! Guarantees: a file with an error (or a pipeline that cannot start) is reported and left out, and
//! the others are served; at a reload, a file whose text is unchanged (with the secrets it reads
//! through `${file:PATH}`: a renewed one is a change) keeps its pipeline running untouched, a
//! changed file that has an error keeps the pipeline it had (the error said), a new file's stream
//! is served once its pipeline is prepared, and a removed or changed file's pipeline stops the way
//! the whole process does at SIGTERM: its stream is taken out of the API first (a removed one is
//! then not found; a changed one is answered ServiceUnavailableException, which the SDKs retry,
//! until its new pipeline serves it), then its queue is closed, so every record acknowledged is in
//! its queue (and log) and delivered by the stopping run, or by the next one from the log; the new
//! pipeline of a changed file is prepared only after the old one has ended, so the two never share
//! a log, while the ports of its own listeners (`http`, `http_endpoint`) stay open in between,
//! their connections waiting for it ([`sluice_connectors::api::bound`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use sluice_connectors::api::admin::{FailedFile, FolderState, Served};
use sluice_connectors::api::firehose::ApiSlot;
use sluice_connectors::api::listener::open_listener_warning;
use sluice_connectors::api::{ListenerLimits, TlsFiles};
use sluice_connectors::sources::firehose::{SET_ACCESS_KEYS, SharedFirehose, router as firehose_router};
use sluice_connectors::tls::LOOK_EVERY;
use sluice_engine::cluster::Cluster;
use sluice_engine::config::{Plan, expanded_text, load_str_for};
use sluice_engine::contract::{SharedListener, StopSignal};
use sluice_engine::metrics::PipelineMetrics;
use sluice_engine::runtime::{RunOptions, RunReport};

use super::{Event, announce, monitored, registry, start_admin, summarize, watch_signals};

/// What `sluice serve` is told besides its folder.
pub struct ServeOptions {
    pub listen: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub workers: Option<usize>,
    pub region: String,
    pub tls: Option<TlsFiles>,
    pub limits: ListenerLimits,
    pub json_error_log: bool,
    /// `--cluster`: pipeline number i (file-name order) runs its timely cluster on the ports
    /// of the hosts file plus i.
    pub cluster: Option<Cluster>,
    /// `--watch`: reload when the folder's files change, as at SIGHUP.
    pub watch: bool,
}

/// A pipeline file as read: its text with its `${…}` expanded (what a reload compares: a renewed
/// secret file is a change; never shown) and its plan, or its errors (said).
struct Read {
    text: String,
    plan: Option<Plan>,
    /// Its errors (said), one line each; `None` when it has none.
    problems: Option<Vec<String>>,
}

/// The files of `files` with errors, as the dashboard lists them.
fn failed_files(files: &BTreeMap<PathBuf, Read>) -> Vec<FailedFile> {
    files
        .iter()
        .filter_map(|(file, read)| read.problems.clone().map(|problems| FailedFile { file: file_name(file), problems }))
        .collect()
}

/// A pipeline file's name in its folder.
fn file_name(file: &Path) -> String {
    file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// A pipeline being served.
struct Serving {
    /// Which of the process's runs it is (a changed file's next run has another).
    run: u64,
    /// The file's text it was made from, its `${…}` expanded ([`Read`]).
    text: String,
    name: String,
    stop: StopSignal,
    metrics: Arc<PipelineMetrics>,
    monitored: sluice_connectors::api::admin::MonitoredPipeline,
    thread: std::thread::JoinHandle<(Plan, Result<RunReport, sluice_engine::runtime::RunError>)>,
}

/// The process's state: what it serves, by file.
struct Server<'a> {
    dir: &'a Path,
    options: &'a ServeOptions,
    registry: sluice_engine::config::Registry,
    shared: Arc<SharedFirehose>,
    api: Option<Arc<ApiSlot>>,
    /// The process's stop (SIGINT, SIGTERM).
    stop: StopSignal,
    /// Where a run says it is stopping and that it ended.
    events: mpsc::Sender<Event>,
    /// The API's runtime, which watches each pipeline's stop.
    runtime: Option<tokio::runtime::Handle>,
    /// Runs started so far.
    runs: u64,
    served: Served,
    serving: BTreeMap<PathBuf, Serving>,
    /// How the folder was last read (`/metrics`).
    folder: FolderState,
    /// The worst outcome of the runs ended so far (0 delivered, 1 some to the error output, 2
    /// something undelivered), and its exit code.
    worst: (u8, ExitCode),
}

pub fn serve_command(dir: &Path, options: ServeOptions) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let (events, happened) = mpsc::channel();
    let mut server = Server {
        dir,
        options: &options,
        registry,
        shared: Arc::new(SharedFirehose::default()),
        api: None,
        stop: StopSignal::default(),
        events: events.clone(),
        runtime: None,
        runs: 0,
        served: Served::default(),
        serving: BTreeMap::new(),
        folder: FolderState::default(),
        worst: (0, ExitCode::SUCCESS),
    };
    // A changed pipeline's own listener stays open while it restarts (connections wait for its
    // next run instead of being refused).
    sluice_connectors::api::bound::keep_across_runs();
    let files = server.read_folder()?;
    server.folder.failed = failed_files(&files);
    let stop = server.stop.clone();
    // The address is taken before anything starts; connections wait until every pipeline is
    // prepared and its stream registered with the shared listener.
    let listener = sluice_connectors::api::bind(options.listen)?;
    let prepared = server.prepare_all(files);
    // A pipeline that bound a port and then could not start leaves it closed.
    sluice_connectors::api::bound::release_unclaimed();
    if prepared.is_empty() {
        say!("error: no stream pipeline in {} can be served", dir.display());
        return Ok(ExitCode::from(1));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-api")
        .enable_all()
        .build()
        .context("cannot start the API runtime")?;
    server.runtime = Some(runtime.handle().clone());
    server.served.replace(prepared.iter().map(|p| monitored(p.run.plan(), &p.metrics)).collect());
    server.served.set_folder(&server.folder);
    {
        // Served even without a firehose stream yet: a reload may add one.
        let api = server.shared.api(&options.region, options.limits);
        let names: Vec<String> = api.streams().map(|e| e.info.name.clone()).collect();
        let names = if names.is_empty() { "no stream yet".to_string() } else { names.join(", ") };
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        // One stream with access keys makes every request need a signature.
        let signed = api.streams().any(|e| !e.keys.is_empty());
        let verified = options.tls.as_ref().is_some_and(TlsFiles::verifies_clients);
        let what = "the Firehose API of `sluice serve`";
        if let Some(warning) = open_listener_warning(what, options.listen, signed || verified, SET_ACCESS_KEYS) {
            tracing::warn!("{warning}");
        }
        let slot = Arc::new(ApiSlot::new(api));
        let shared = Arc::clone(&server.shared);
        sluice_connectors::api::serve(
            runtime.handle(),
            listener,
            firehose_router(Arc::clone(&slot)),
            options.tls.as_ref().map(|files| files.served_for_each(server.served.clone())),
            (options.limits, sluice_connectors::api::listener::Wire::Http1),
            stop.clone(),
            move || shared.queues(),
        )?;
        server.api = Some(slot);
        say!("sluice serve: Firehose API on {scheme}://{} for {names}", options.listen);
    }
    if let Some(address) = options.admin {
        start_admin(address, server.served.clone())?;
        say!("sluice serve: metrics on http://{address}/metrics");
    }
    if options.watch {
        watch_folder(dir.to_path_buf(), stop.clone(), events.clone());
    }
    watch_signals(stop.clone(), RunOptions::default_stop_grace(), events, true);
    for p in prepared {
        server.start(p);
    }
    loop {
        match happened.recv() {
            Ok(Event::Reload(_)) if options.cluster.is_some() => say!(
                "sluice serve: SIGHUP ignored: a cluster's pipelines cannot be reloaded (their ports follow the files' order); restart every process instead"
            ),
            Ok(Event::Reload(why)) => server.reload(why),
            // A pipeline asked to stop by something else than a reload (a cluster's stop relayed
            // from another process): its stream is taken out, and its queue closed so that its
            // run drains and ends.
            Ok(Event::Stopping(run)) => server.withdraw(run),
            // A run that ended by itself (a cluster's stop came from another process, or it
            // failed): its stream is no longer served; when none is left, neither is the process.
            Ok(Event::Ended(run)) => {
                if server.finish_ended(run) {
                    break;
                }
            }
            Ok(Event::Stop) | Err(_) => break,
        }
    }
    let files: Vec<PathBuf> = server.serving.keys().cloned().collect();
    for file in &files {
        if let Some(serving) = server.serving.get(file) {
            serving.stop.stop();
        }
    }
    for file in files {
        if let Some(serving) = server.serving.remove(&file) {
            server.finish(serving);
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(server.worst.1)
}

/// A pipeline file's text as written, and with its `${…}` expanded (what a reload compares: a
/// renewed secret file is a change too; never shown).
struct FileText {
    written: String,
    expanded: String,
}

/// The folder's pipeline files: each `*.toml` (one that cannot be read left out) by name, in name
/// order.
fn folder_files(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, FileText>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| {
            let written = std::fs::read_to_string(&p).ok()?;
            let expanded = expanded_text(&written, p.parent().unwrap_or(Path::new("")));
            Some((p, FileText { written, expanded }))
        })
        .collect())
}

/// What the folder's pipeline files amount to, for `--watch` (nothing when it cannot be read).
fn folder_texts(dir: &Path) -> BTreeMap<PathBuf, String> {
    folder_files(dir).unwrap_or_default().into_iter().map(|(p, text)| (p, text.expanded)).collect()
}

/// `--watch`: looks at the folder every [`LOOK_EVERY`] and asks for a reload when what its files
/// hold differs from what was last taken and has settled (the same at two looks in a row, so a
/// file being written, or an editor's save in steps, is taken whole), until `stop`.
fn watch_folder(dir: PathBuf, stop: StopSignal, events: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut taken = folder_texts(&dir);
        let mut seen = taken.clone();
        while !stop.is_stopped() {
            std::thread::sleep(LOOK_EVERY);
            let now = folder_texts(&dir);
            if now != taken && now == seen {
                taken = now.clone();
                if events.send(Event::Reload("a file changed")).is_err() {
                    return;
                }
            }
            seen = now;
        }
    });
}

/// A pipeline prepared and not yet running.
struct Prepared {
    file: PathBuf,
    text: String,
    stop: StopSignal,
    metrics: Arc<PipelineMetrics>,
    run: sluice_engine::runtime::PreparedRun,
}

impl Server<'_> {
    /// Every `*.toml` of the folder, by name, read, and loaded unless it is served as it is now
    /// (errors said and left out).
    fn read_folder(&self) -> anyhow::Result<BTreeMap<PathBuf, Read>> {
        let files = folder_files(self.dir).with_context(|| format!("cannot read {}", self.dir.display()))?;
        let process = self.options.cluster.as_ref().map(|c| c.process);
        let mut read = BTreeMap::new();
        for (file, FileText { written, expanded: text }) in files {
            // A file served as it is is not loaded again (nor its errors said again).
            if self.serving.get(&file).is_some_and(|s| s.text == text) {
                read.insert(file, Read { text, plan: None, problems: None });
                continue;
            }
            let mut problems = None;
            // The text compared is the text loaded (the file is not read a second time).
            let base_dir = file.parent().unwrap_or(Path::new(""));
            let plan = match load_str_for(&file.display().to_string(), written, base_dir, &self.registry, process) {
                Ok(plan) if plan.is_batch() => {
                    say!(
                        "sluice serve: skipping {}: a batch pipeline (its sources end by themselves); run it with `sluice run`",
                        file.display()
                    );
                    None
                }
                Ok(plan) => Some(plan),
                Err(diagnostics) => {
                    say!("{diagnostics}\nsluice serve: skipping {}\n", file.display());
                    problems = Some(diagnostics.short());
                    None
                }
            };
            read.insert(file, Read { text, plan, problems });
        }
        Ok(read)
    }

    /// Prepares the pipelines of `files` (a name already served or taken by an earlier file is
    /// said and left out, as is one that cannot start), registering their streams.
    fn prepare_all(&mut self, files: BTreeMap<PathBuf, Read>) -> Vec<Prepared> {
        let count = self.serving.len() + files.values().filter(|r| r.plan.is_some()).count();
        let per_pipeline = (sluice_engine::runtime::default_workers() / count.max(1)).max(1);
        let mut prepared: Vec<Prepared> = Vec::new();
        // Pipeline number i, as `--cluster` counts them: the files that load, in name order.
        let mut next_index = 0;
        for (file, read) in files {
            let Some(plan) = read.plan else { continue };
            let taken = self.serving.values().any(|s| s.name == plan.name)
                || prepared.iter().any(|p| p.run.plan().name == plan.name);
            if taken {
                let problem = format!("another pipeline in {} is already named `{}`", self.dir.display(), plan.name);
                say!("sluice serve: skipping {}: {problem}", file.display());
                self.failed(&file, &problem);
                continue;
            }
            let i = next_index;
            next_index += 1;
            let metrics = Arc::new(plan.new_metrics());
            let stop = StopSignal::default();
            let mut options = RunOptions::for_plan(&plan);
            options.workers = self.options.workers.or(plan.workers).unwrap_or(per_pipeline).max(1);
            options.cluster = self.options.cluster.as_ref().map(|c| c.shifted(u16::try_from(i).unwrap_or(u16::MAX)));
            options.stop = stop.clone();
            options.shared = Some(Arc::clone(&self.shared) as Arc<dyn SharedListener>);
            options.json_error_log = self.options.json_error_log;
            // One that cannot start is left out like a bad file: the others are served.
            match sluice_engine::runtime::prepare(&plan, &options, Arc::clone(&metrics)) {
                Ok(run) => prepared.push(Prepared { file, text: read.text, stop, metrics, run }),
                Err(e) => {
                    self.shared.withdraw(&plan.name);
                    let problem = format!("pipeline {} could not start: {e}", plan.name);
                    say!("sluice serve: {problem}");
                    self.failed(&file, &problem);
                }
            }
        }
        prepared
    }

    /// Lists `file` among the files not served, for `problem` (redacted: the dashboard shows it).
    fn failed(&mut self, file: &Path, problem: &str) {
        let problems = vec![sluice_engine::redact::text(problem)];
        self.folder.failed.push(FailedFile { file: file_name(file), problems });
        self.folder.failed.sort_by(|a, b| a.file.cmp(&b.file));
    }

    /// Runs a prepared pipeline on a thread of its own.
    fn start(&mut self, prepared: Prepared) {
        let Prepared { file, text, stop, metrics, run } = prepared;
        announce(run.plan());
        let name = run.plan().name.clone();
        let monitored = monitored(run.plan(), &metrics);
        self.runs += 1;
        let run_number = self.runs;
        if let Some(runtime) = &self.runtime {
            let (stop, events) = (stop.clone(), self.events.clone());
            runtime.spawn(async move {
                stop.stopped().await;
                let _ = events.send(Event::Stopping(run_number));
            });
        }
        let events = self.events.clone();
        let thread = std::thread::spawn(move || {
            let plan = run.plan().clone();
            let result = run.run();
            let _ = events.send(Event::Ended(run_number));
            (plan, result)
        });
        self.serving.insert(file, Serving { run: run_number, text, name, stop, metrics, monitored, thread });
    }

    /// Takes the stream of the run `run` out of the API and closes its queue, if it is still
    /// served (a run a reload stopped was taken out then, and its stream may be a new run's now).
    fn withdraw(&self, run: u64) {
        let Some(serving) = self.serving.values().find(|s| s.run == run) else { return };
        if let Some(queue) = self.shared.withdraw(&serving.name) {
            self.publish(Vec::new());
            queue.close();
        }
    }

    /// Takes out the pipeline of the run `run`, which ended by itself, if it is still served (its
    /// stream withdrawn, its summary printed); whether that left none (none left by a reload is not
    /// an end: files may come back).
    fn finish_ended(&mut self, run: u64) -> bool {
        let Some(file) = self.serving.iter().find(|(_, s)| s.run == run).map(|(file, _)| file.clone()) else {
            return false;
        };
        let Some(serving) = self.serving.remove(&file) else { return false };
        if let Some(queue) = self.shared.withdraw(&serving.name) {
            queue.close();
        }
        self.publish(Vec::new());
        self.finish(serving);
        sluice_connectors::api::bound::release_unclaimed();
        self.serving.is_empty()
    }

    /// Waits for a stopping pipeline to end, prints its summary and keeps its outcome.
    fn finish(&mut self, serving: Serving) {
        let Ok((plan, result)) = serving.thread.join() else {
            self.worst = (2, ExitCode::from(1));
            return;
        };
        let (rank, code) = match result {
            Ok(report) => {
                let code = summarize(&plan, &report, &serving.metrics);
                let rank = if code == ExitCode::from(1) {
                    2
                } else if code == ExitCode::from(2) {
                    1
                } else {
                    0
                };
                (rank, code)
            }
            Err(e) => {
                say!("error: pipeline {}: {e}", plan.name);
                (2, ExitCode::from(1))
            }
        };
        if rank > self.worst.0 {
            self.worst = (rank, code);
        }
    }

    /// Serves the registered streams (those named in `reloading` answered as being reloaded), and
    /// shows the pipelines running in the admin endpoint.
    fn publish(&self, reloading: Vec<String>) {
        if let Some(slot) = &self.api {
            slot.replace(self.shared.rebuilt(&slot.current(), reloading));
        }
        self.served.replace(self.serving.values().map(|s| s.monitored.clone()).collect());
    }

    /// Reads the folder again and serves what it holds now (module docs).
    fn reload(&mut self, why: &str) {
        say!("sluice serve: {why}: reading {} again", self.dir.display());
        let mut files = match self.read_folder() {
            Ok(files) => {
                self.folder.failed = failed_files(&files);
                files
            }
            Err(e) => {
                say!("sluice serve: cannot reload: {e:#}; serving what was served");
                return;
            }
        };
        // Unchanged files, and changed ones with an error, keep their pipelines.
        let mut kept = 0;
        let mut ending: Vec<(PathBuf, bool)> = Vec::new();
        for (file, serving) in &self.serving {
            match files.get(file) {
                Some(read) if read.text == serving.text => {
                    files.remove(file);
                    kept += 1;
                }
                Some(read) if read.plan.is_none() => {
                    say!(
                        "sluice serve: {} changed and cannot be served (above); pipeline {} goes on as it was",
                        file.display(),
                        serving.name
                    );
                    files.remove(file);
                    kept += 1;
                }
                Some(_) => ending.push((file.clone(), true)),
                None => ending.push((file.clone(), false)),
            }
        }
        files.retain(|_, read| read.plan.is_some());
        // Out of the API first, then their queues closed: nothing is acknowledged into a queue no
        // run reads.
        let mut queues = Vec::new();
        let mut reloading = Vec::new();
        for (file, changed) in &ending {
            let Some(serving) = self.serving.get(file) else { continue };
            queues.extend(self.shared.withdraw(&serving.name));
            if *changed {
                reloading.push(serving.name.clone());
            }
        }
        let stopping: Vec<(PathBuf, Serving)> =
            ending.iter().filter_map(|(file, _)| self.serving.remove(file).map(|s| (file.clone(), s))).collect();
        self.publish(reloading);
        for queue in queues {
            queue.close();
        }
        for (_, serving) in &stopping {
            serving.stop.stop();
        }
        let stopped: BTreeMap<PathBuf, String> =
            stopping.iter().map(|(file, serving)| (file.clone(), serving.name.clone())).collect();
        for (_, serving) in stopping {
            self.finish(serving);
        }
        // A stop that came meanwhile: nothing new starts. (One after a stream registered finds it
        // among the queues the listener closes when it shuts down.)
        if self.stop.is_stopped() {
            return;
        }
        let prepared = self.prepare_all(files);
        if self.stop.is_stopped() {
            for p in prepared {
                if let Some(queue) = self.shared.withdraw(&p.run.plan().name) {
                    queue.close();
                }
            }
            return;
        }
        let (mut started, mut restarted) = (Vec::new(), Vec::new());
        for p in &prepared {
            let name = p.run.plan().name.clone();
            if stopped.contains_key(&p.file) { restarted.push(name) } else { started.push(name) }
        }
        // Removed, or changed and its new version could not start.
        let gone: Vec<String> = stopped
            .iter()
            .filter(|(file, _)| !prepared.iter().any(|p| &p.file == *file))
            .map(|(_, n)| n.clone())
            .collect();
        for p in prepared {
            self.start(p);
        }
        // The ports of removed pipelines, and of changed ones that moved or could not start.
        sluice_connectors::api::bound::release_unclaimed();
        self.publish(Vec::new());
        self.folder.reloads += 1;
        self.folder.last_reload_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.served.set_folder(&self.folder);
        let list = |names: &[String]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        say!(
            "sluice serve: reloaded {}: started {}; restarted {}; stopped {}; {kept} unchanged",
            self.dir.display(),
            list(&started),
            list(&restarted),
            list(&gone)
        );
    }
}
