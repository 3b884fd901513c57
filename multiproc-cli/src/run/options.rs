//! `multiproc run`'s command line, read the way GNU parallel reads its own:
//! options first, then the command's words, then input groups after `:::`,
//! `:::+`, `::::` and `::::+`. clap cannot express the separators, so this
//! is a small hand-written reader; its errors name the word that was wrong.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

/// One input source, before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The words after `:::`.
    Args(Vec<Vec<u8>>),
    /// The lines of a file after `::::` (`-` is standard input).
    File(PathBuf),
}

/// When `--halt` stops the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltWhen {
    /// Kill the running jobs.
    Now,
    /// Start no more jobs; wait for the running ones.
    Soon,
}

/// What `--halt` counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltOn {
    /// This many failed jobs.
    Fail(u64),
    /// This percentage of failed jobs.
    FailPercent(f64),
    /// This many successful jobs.
    Success(u64),
    /// This percentage of successful jobs.
    SuccessPercent(f64),
    /// This many finished jobs, whatever their result.
    Done(u64),
}

/// `--halt WHEN,WHAT=N`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    pub when: HaltWhen,
    pub on: HaltOn,
}

/// How many jobs run at once: `-j`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    Exactly(usize),
    PercentOfCpus(usize),
    CpusPlus(isize),
}

impl Jobs {
    /// The number of slots on a machine with `cpus` CPUs.
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            // GNU parallel's -j0: as many as possible.
            Jobs::Exactly(0) => 256,
            Jobs::Exactly(n) => n,
            Jobs::PercentOfCpus(p) => (cpus * p / 100).max(1),
            Jobs::CpusPlus(d) => (cpus as isize + d).max(1) as usize,
        }
    }
}

/// Everything `multiproc run` was told.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-j`, if given (the default differs between local and `--redis`).
    pub jobs: Option<Jobs>,
    pub keep_order: bool,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub halt: Option<Halt>,
    pub delay: Option<Duration>,
    /// `--grace`: between the stop signal and SIGKILL (default 2 s).
    pub grace: Option<Duration>,
    pub dry_run: bool,
    pub tag: bool,
    pub line_buffer: bool,
    pub joblog: Option<PathBuf>,
    pub resume: bool,
    pub resume_failed: bool,
    pub bar: bool,
    pub colsep: Option<String>,
    pub null: bool,
    pub redis: Option<String>,
    pub pool: Option<String>,
    /// The command's words, joined by spaces into shell text as GNU
    /// parallel does (`'echo {}; exit 3'` is one word holding a script).
    pub command: Vec<u8>,
    /// Input sources, each group's sources linked (`:::+`, `::::+`).
    pub groups: Vec<Vec<Source>>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Options>),
    Help,
}

pub const HELP: &str = "\
multiproc run: run a command once per input, in parallel (GNU parallel's way)

Usage: multiproc run [OPTIONS] COMMAND [ARGS...] [::: ARGS... | :::: FILES...]...
       ... | multiproc run [OPTIONS] COMMAND [ARGS...]          (inputs: stdin's lines)

Inputs
  ::: A B C        the arguments A, B, C; several ::: groups give every combination
  :::+ X Y Z       linked to the previous group: A X, B Y, C Z
  :::: FILE        the lines of FILE (- is stdin); ::::+ links it like :::+
  -a, --arg-file F  same as :::: F
  --colsep REGEX   split each input line into columns {1} {2} ...
  -0, --null       inputs are separated by NUL, not newline

Replacement strings (values are shell-quoted; without any, the input is appended)
  {}  input           {.}  without extension    {/}  basename     {//} dirname
  {/.} basename without extension   {#} job number   {%} slot number (1..-j)
  {N} {N.} {N/} {N//} {N/.}  the same for input source (or column) N; {-1} is the last

Options
  -j, --jobs N     N jobs at once (default: CPU count; with --redis, 64 in flight);
                   N% of the CPUs; +N / -N CPUs; 0: no limit
  -k, --keep-order print output in input order
  --timeout SECS   kill a job (its whole process group) running longer
  --retries N      run a failing job up to N times
  --halt SPEC      now|soon,fail=N|success=N|done=N|fail=P%|success=P% (or 0, 1, 2)
  --delay SECS     wait SECS between job starts
  --grace SECS     after SIGINT/SIGTERM, how long running jobs get before SIGKILL (default 2)
  --dry-run        print the commands, run nothing
  --tag            prefix each output line with the job's inputs
  --line-buffer    print output line by line as it comes (default: each job's output whole;
                   with -k, the first job's lines as they come, the others' when their turn
                   comes; with --redis, output stays whole: a job run again after its
                   worker died must not print twice)
  --joblog FILE    log each job in GNU parallel's format (- is stdout)
  --resume         skip jobs already in the joblog; --resume-failed also reruns failed ones
  --bar            progress bar on stderr (automatic on a terminal when the input size is known)
  --redis URL --pool NAME  run the jobs on the workers of that Redis-backed pool, started on
                   any machine with `multiproc worker --redis URL --pool NAME [-j N]`

Exit status: the number of failed jobs (101 for more than 100); with --halt, the
status of the job that halted the run; 255 for other errors; 130/143 after SIGINT/SIGTERM.
";

fn bytes(word: &OsString) -> Vec<u8> {
    word.clone().into_vec()
}

fn text(word: &OsString, option: &str) -> Result<String, String> {
    word.to_str().map(str::to_owned).ok_or_else(|| format!("{option}: the value is not valid UTF-8"))
}

fn seconds(value: &str, option: &str) -> Result<Duration, String> {
    let s: f64 =
        value.trim_end_matches('s').parse().map_err(|_| format!("{option}: '{value}' is not a number of seconds"))?;
    if !(s.is_finite() && s >= 0.0) {
        return Err(format!("{option}: '{value}' is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_jobs(value: &str) -> Result<Jobs, String> {
    let bad = || format!("-j: '{value}' is not N, N%, +N or -N");
    if let Some(p) = value.strip_suffix('%') {
        return p.parse().map(Jobs::PercentOfCpus).map_err(|_| bad());
    }
    if let Some(n) = value.strip_prefix('+') {
        return n.parse::<isize>().map(Jobs::CpusPlus).map_err(|_| bad());
    }
    if let Some(n) = value.strip_prefix('-') {
        return n.parse::<isize>().map(|n| Jobs::CpusPlus(-n)).map_err(|_| bad());
    }
    value.parse().map(Jobs::Exactly).map_err(|_| bad())
}

fn parse_halt(value: &str) -> Result<Option<Halt>, String> {
    let bad = || format!("--halt: '{value}' is not now|soon,fail=N|success=N|done=N|fail=P%|success=P%, 0, 1 or 2");
    match value {
        "0" | "never" => return Ok(None),
        "1" => return Ok(Some(Halt { when: HaltWhen::Soon, on: HaltOn::Fail(1) })),
        "2" => return Ok(Some(Halt { when: HaltWhen::Now, on: HaltOn::Fail(1) })),
        _ => {}
    }
    let (when, what) = value.split_once(',').ok_or_else(bad)?;
    let when = match when {
        "now" => HaltWhen::Now,
        "soon" => HaltWhen::Soon,
        _ => return Err(bad()),
    };
    let (kind, n) = what.split_once('=').ok_or_else(bad)?;
    let on = if let Some(p) = n.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad())?;
        if !(p > 0.0 && p <= 100.0) {
            return Err(bad());
        }
        match kind {
            "fail" => HaltOn::FailPercent(p),
            "success" => HaltOn::SuccessPercent(p),
            _ => return Err(bad()),
        }
    } else {
        let n: u64 = n.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        match kind {
            "fail" => HaltOn::Fail(n),
            "success" => HaltOn::Success(n),
            "done" => HaltOn::Done(n),
            _ => return Err(bad()),
        }
    };
    Ok(Some(Halt { when, on }))
}

fn is_separator(word: &[u8]) -> bool {
    matches!(word, b":::" | b":::+" | b"::::" | b"::::+")
}

/// Reads `multiproc run`'s arguments (those after `run`).
pub fn parse(args: &[OsString]) -> Result<Parsed, String> {
    let mut o = Options::default();
    let mut arg_files = Vec::new();
    let mut i = 0;
    // Options, up to the first word that is not one.
    while i < args.len() {
        let word = args[i].to_string_lossy().into_owned();
        if word == "--" {
            i += 1;
            break;
        }
        if !word.starts_with('-') || word == "-" || is_separator(word.as_bytes()) {
            break;
        }
        // `--name=value`, `-j4`: the value joined to the option.
        let (name, joined) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ if word.starts_with("-j") && word.len() > 2 && !word.starts_with("--") => {
                ("-j".to_owned(), Some(OsString::from(&word[2..])))
            }
            _ => (word.clone(), None),
        };
        let value = |i: &mut usize| -> Result<OsString, String> {
            if let Some(v) = &joined {
                return Ok(v.clone());
            }
            *i += 1;
            args.get(*i).cloned().ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-j" | "--jobs" | "-P" | "--max-procs" => o.jobs = Some(parse_jobs(&text(&value(&mut i)?, &name)?)?),
            "-k" | "--keep-order" => o.keep_order = true,
            "--timeout" => o.timeout = Some(seconds(&text(&value(&mut i)?, &name)?, &name)?),
            "--retries" => {
                let v = text(&value(&mut i)?, &name)?;
                o.retries = v.parse().map_err(|_| format!("--retries: '{v}' is not a count"))?;
            }
            "--halt" | "--halt-on-error" => o.halt = parse_halt(&text(&value(&mut i)?, &name)?)?,
            "--delay" => o.delay = Some(seconds(&text(&value(&mut i)?, &name)?, &name)?),
            "--grace" => o.grace = Some(seconds(&text(&value(&mut i)?, &name)?, &name)?),
            "--dry-run" | "--dryrun" => o.dry_run = true,
            "--tag" => o.tag = true,
            "--line-buffer" | "--lb" | "--linebuffer" => o.line_buffer = true,
            "--group" => o.line_buffer = false,
            "--joblog" => o.joblog = Some(PathBuf::from(value(&mut i)?)),
            "--resume" => o.resume = true,
            "--resume-failed" => o.resume_failed = true,
            "--bar" => o.bar = true,
            "--colsep" | "-C" => o.colsep = Some(text(&value(&mut i)?, &name)?),
            "-0" | "--null" => o.null = true,
            "-a" | "--arg-file" => arg_files.push(PathBuf::from(value(&mut i)?)),
            "--redis" => o.redis = Some(text(&value(&mut i)?, &name)?),
            "--pool" => o.pool = Some(text(&value(&mut i)?, &name)?),
            _ => return Err(format!("unknown option {word} (see multiproc run --help)")),
        }
        i += 1;
    }
    // The command: every word up to the first separator.
    let mut words = Vec::new();
    while i < args.len() && !is_separator(args[i].as_encoded_bytes()) {
        words.push(bytes(&args[i]));
        i += 1;
    }
    if words.is_empty() {
        return Err("no command given (see multiproc run --help)".into());
    }
    o.command = words.join(&b' ');
    for f in arg_files {
        o.groups.push(vec![Source::File(f)]);
    }
    // Input groups.
    while i < args.len() {
        let sep = args[i].as_encoded_bytes().to_vec();
        i += 1;
        let start = i;
        while i < args.len() && !is_separator(args[i].as_encoded_bytes()) {
            i += 1;
        }
        let values = &args[start..i];
        let linked = sep.ends_with(b"+");
        let sources: Vec<Source> = if sep.starts_with(b"::::") {
            if values.is_empty() {
                return Err(format!("{} needs at least one file", String::from_utf8_lossy(&sep)));
            }
            values.iter().map(|v| Source::File(PathBuf::from(v))).collect()
        } else {
            vec![Source::Args(values.iter().map(bytes).collect())]
        };
        for (k, source) in sources.into_iter().enumerate() {
            // Several files after one `::::` are separate sources (every
            // combination), as in GNU parallel; `::::+` links only the first.
            if (linked && k == 0) && !o.groups.is_empty() {
                o.groups.last_mut().expect("not empty").push(source);
            } else {
                o.groups.push(vec![source]);
            }
        }
    }
    if o.groups.is_empty() {
        o.groups.push(vec![Source::File(PathBuf::from("-"))]);
    }
    if o.redis.is_some() != o.pool.is_some() {
        return Err("--redis and --pool go together".into());
    }
    if o.resume && o.resume_failed {
        o.resume = false;
    }
    if (o.resume || o.resume_failed) && o.joblog.is_none() {
        return Err("--resume and --resume-failed need --joblog FILE".into());
    }
    Ok(Parsed::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> Options {
        let args: Vec<OsString> = words.iter().map(OsString::from).collect();
        match parse(&args).unwrap() {
            Parsed::Run(o) => *o,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn options_command_and_groups() {
        let o = run(&["-j4", "-k", "--timeout", "1.5", "echo", "{}", "-n", ":::", "a", "b", ":::+", "1", "2"]);
        assert_eq!(o.jobs, Some(Jobs::Exactly(4)));
        assert!(o.keep_order);
        assert_eq!(o.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(o.command, b"echo {} -n");
        assert_eq!(o.groups.len(), 1);
        assert_eq!(o.groups[0].len(), 2);
        let o = run(&["--jobs=+2", "true", ":::", "a", ":::", "b"]);
        assert_eq!(o.jobs.unwrap().resolve(2), 4);
        assert_eq!(o.groups.len(), 2);
        let o = run(&["true"]);
        assert_eq!(o.groups, vec![vec![Source::File(PathBuf::from("-"))]]);
    }

    #[test]
    fn jobs_and_halt_forms() {
        assert_eq!(parse_jobs("50%").unwrap().resolve(4), 2);
        assert_eq!(parse_jobs("-1").unwrap().resolve(4), 3);
        assert_eq!(parse_jobs("-9").unwrap().resolve(4), 1);
        assert!(parse_jobs("x").is_err());
        assert_eq!(parse_halt("now,fail=1").unwrap(), Some(Halt { when: HaltWhen::Now, on: HaltOn::Fail(1) }));
        assert_eq!(
            parse_halt("soon,fail=30%").unwrap(),
            Some(Halt { when: HaltWhen::Soon, on: HaltOn::FailPercent(30.0) })
        );
        assert_eq!(parse_halt("2").unwrap(), Some(Halt { when: HaltWhen::Now, on: HaltOn::Fail(1) }));
        assert!(parse_halt("later,fail=1").is_err());
        assert!(parse_halt("now,fail=0").is_err());
    }

    #[test]
    fn bad_lines_are_refused_with_the_word() {
        let err = |w: &[&str]| parse(&w.iter().map(OsString::from).collect::<Vec<_>>()).unwrap_err();
        assert!(err(&["--frobnicate", "echo"]).contains("--frobnicate"));
        assert!(err(&[":::", "a"]).contains("no command"));
        assert!(err(&["--timeout", "soon", "echo"]).contains("soon"));
        assert!(err(&["--resume", "echo"]).contains("--joblog"));
    }
}
