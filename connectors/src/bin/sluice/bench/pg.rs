//! The `postgres` scenario's server: a throwaway PostgreSQL cluster from the machine's server
//! binaries (`initdb` into a folder of its own under the system's temporary folder, which the
//! `postgres` user can reach; `pg_ctl start` on a free port on 127.0.0.1, as `postgres` when the
//! bench runs as root; trust authentication), stopped and removed when dropped; and
//! `psql` to set it up, count what a run loaded and empty the table for the next run.

use std::io;
use std::path::{Path, PathBuf};

use std::process::Command;

/// The table both cases load: four columns of CloudTrail.
pub(crate) const TABLE: &str = "cloudtrail_events";
/// Its columns and the JSON path each comes from.
pub(crate) const COLUMNS: [(&str, &str); 4] = [
    ("event_time", "eventTime"),
    ("event_name", "eventName"),
    ("user_name", "userIdentity.userName"),
    ("source_ip", "sourceIPAddress"),
];

/// A running cluster.
#[derive(Debug)]
pub(crate) struct PgServer {
    bin: PathBuf,
    /// Its folder (data, socket, log).
    dir: PathBuf,
    data: PathBuf,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
}

fn as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The newest server binaries under /usr/lib/postgresql, if any.
pub(crate) fn server_binaries() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn checked(mut command: Command, what: &str) -> io::Result<Vec<u8>> {
    let out = command.output()?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(io::Error::other(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl PgServer {
    /// `program` of the server binaries, run as `postgres` when we are root.
    fn command(bin: &Path, program: &str) -> Command {
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        } else {
            Command::new(bin.join(program))
        }
    }

    /// Starts a cluster with database `bench` and the scenario's table.
    pub(crate) fn start(bin: PathBuf) -> io::Result<PgServer> {
        let dir = &std::env::temp_dir().join(format!("sluice-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        if as_root() {
            checked(
                {
                    let mut c = Command::new("chown");
                    c.arg("-R").arg("postgres:").arg(dir);
                    c
                },
                "chown",
            )?;
        }
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut initdb = Self::command(&bin, "initdb");
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        checked(initdb, "initdb")?;
        let server = PgServer { bin, dir: dir.clone(), data, port };
        let mut start = Self::command(&server.bin, "pg_ctl");
        let options = format!("-c listen_addresses=127.0.0.1 -p {port} -k {}", dir.display());
        start.arg("-D").arg(&server.data).arg("-l").arg(dir.join("log")).args(["-w", "-o", &options, "start"]);
        checked(start, "pg_ctl start")?;
        server.psql("postgres", "CREATE DATABASE bench")?;
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|(c, _)| format!("{c} {}", if *c == "event_time" { "timestamptz" } else { "text" }))
            .collect();
        server.psql("bench", &format!("CREATE TABLE {TABLE} ({})", columns.join(", ")))?;
        Ok(server)
    }

    /// The URL sluice loads through.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/bench", self.port)
    }

    /// The psql command line loading `csv` into the table (the baseline), as arguments.
    pub(crate) fn copy_arguments(&self, csv: &Path) -> Vec<String> {
        let columns: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
        vec![
            "-X".into(),
            "-q".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
            "-d".into(),
            "bench".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-c".into(),
            format!("\\copy {TABLE} ({}) FROM '{}' CSV", columns.join(", "), csv.display()),
        ]
    }

    /// Runs `sql` in `database`; its output (unaligned, tuples only).
    pub(crate) fn psql(&self, database: &str, sql: &str) -> io::Result<String> {
        let mut command = Command::new("psql");
        command
            .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql]);
        Ok(String::from_utf8_lossy(&checked(command, &format!("psql: {sql}"))?).trim().to_string())
    }

    /// The rows loaded since the last call, after which the table (and sluice's ledger) are empty.
    pub(crate) fn take_rows(&self) -> io::Result<u64> {
        let rows = self.psql("bench", &format!("SELECT count(*) FROM {TABLE}"))?;
        self.psql("bench", &format!("TRUNCATE {TABLE}; DROP TABLE IF EXISTS sluice_loads"))?;
        rows.parse().map_err(|_| io::Error::other(format!("not a count: {rows}")))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = Self::command(&self.bin, "pg_ctl");
        stop.arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
