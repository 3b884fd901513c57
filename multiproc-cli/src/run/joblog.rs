//! `--joblog` in GNU parallel's exact format, and reading it back for
//! `--resume` and `--resume-failed` (ours or GNU parallel's).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// One finished job's row.
pub struct Row<'a> {
    pub seq: u64,
    pub start: SystemTime,
    pub runtime: Duration,
    pub received: u64,
    pub exitval: i32,
    pub signal: i32,
    pub command: &'a [u8],
}

/// Where rows go: a file (flushed per row, so a crash loses none) or stdout.
pub struct JobLog {
    out: Box<dyn Write + Send>,
}

impl JobLog {
    /// Opens `path`: appended to when resuming, else replaced.
    pub fn create(path: &Path, append: bool) -> Result<JobLog, String> {
        let err = |e: io::Error| format!("--joblog {}: {e}", path.display());
        let mut out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            let exists = append && path.metadata().is_ok_and(|m| m.len() > 0);
            let file = OpenOptions::new().create(true).write(true).append(append).truncate(!append).open(path);
            let file = file.map_err(err)?;
            if exists {
                return Ok(JobLog { out: Box::new(file) });
            }
            Box::new(file)
        };
        out.write_all(HEADER.as_bytes()).and_then(|()| out.flush()).map_err(err)?;
        Ok(JobLog { out })
    }

    pub fn write(&mut self, row: &Row) -> io::Result<()> {
        let start = row.start.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let mut line = format!(
            "{}\t:\t{:.3}\t{:10.3}\t0\t{}\t{}\t{}\t",
            row.seq,
            start,
            row.runtime.as_secs_f64(),
            row.received,
            row.exitval,
            row.signal
        )
        .into_bytes();
        // A command's newlines would break the one-row-per-job format.
        line.extend(row.command.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }
}

/// The jobs a joblog says ran: job number → whether it succeeded. A job
/// logged more than once counts by its last row.
pub fn read(path: &Path) -> Result<HashMap<u64, bool>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("--joblog {}: {e}", path.display())),
    };
    let mut done = HashMap::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("--joblog {}: {e}", path.display()))?;
        if n == 0 || line.is_empty() {
            continue;
        }
        let fields: Vec<&[u8]> = line.splitn(9, |&b| b == b'\t').collect();
        let number = |i: usize| -> Option<i64> { std::str::from_utf8(fields.get(i)?).ok()?.trim().parse().ok() };
        let (Some(seq), Some(exitval), Some(signal)) = (number(0), number(6), number(7)) else {
            return Err(format!("--joblog {}: line {} is not a joblog row", path.display(), n + 1));
        };
        done.insert(seq as u64, exitval == 0 && signal == 0);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_gnu_parallels_and_read_back() {
        let dir = std::env::temp_dir().join(format!("multiproc-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut log = JobLog::create(&path, false).unwrap();
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let row = |seq, exitval, signal| Row {
            seq,
            start,
            runtime: Duration::from_millis(4),
            received: 6,
            exitval,
            signal,
            command: b"echo a",
        };
        log.write(&row(1, 0, 0)).unwrap();
        log.write(&row(2, 3, 0)).unwrap();
        drop(log);
        let mut log = JobLog::create(&path, true).unwrap();
        log.write(&row(3, 0, 9)).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER}1\t:\t1700000000.123\t     0.004\t0\t6\t0\t0\techo a\n\
                 2\t:\t1700000000.123\t     0.004\t0\t6\t3\t0\techo a\n\
                 3\t:\t1700000000.123\t     0.004\t0\t6\t0\t9\techo a\n"
            )
        );
        let done = read(&path).unwrap();
        assert_eq!(done, HashMap::from([(1, true), (2, false), (3, false)]));
        assert!(read(&dir.join("none")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
