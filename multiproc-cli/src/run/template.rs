//! The command template: GNU parallel's replacement strings, shell quoting,
//! and the choice between `sh -c` and running the program directly.
//!
//! A substituted value is always one shell word (quoted), so a file named
//! `a b; rm -rf x` is an argument, never code. When the template's own text
//! needs no shell (plain words, a program found on `PATH`), jobs are
//! executed directly with the same argument vector the shell would have
//! built: that saves a shell per job and is what makes short jobs cheap.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// Which part of a value a replacement string takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    NoExtension,
    Basename,
    Dirname,
    BasenameNoExtension,
}

/// One replacement string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rep {
    /// `{}` and friends: every value of the job.
    All(Part),
    /// `{N}` and friends (1-based; negative counts from the end).
    Source(isize, Part),
    /// `{#}`: the job's number.
    Seq,
    /// `{%}`: the slot running it.
    Slot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Rep(Rep),
}

/// What one job is substituted from.
pub struct Job<'a> {
    pub seq: u64,
    pub slot: usize,
    pub values: &'a [Vec<u8>],
}

/// How a job is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exec {
    /// Through the shell: this text after `sh -c`.
    Shell(Vec<u8>),
    /// Directly: this argument vector.
    Argv(Vec<Vec<u8>>),
}

/// A parsed command template.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The words of a template that needs no shell, each a list of pieces.
    words: Option<Vec<Vec<Piece>>>,
    has_reps: bool,
}

/// Bytes a shell word may hold without quotes (GNU parallel's set).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_@%+:,./-".contains(&b)
}

/// `value` as one shell word.
pub fn quote(value: &[u8]) -> Vec<u8> {
    if !value.is_empty() && value.iter().all(|&b| plain(b)) {
        return value.to_vec();
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(b"'\"'\"'");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

fn last_slash(v: &[u8]) -> Option<usize> {
    v.iter().rposition(|&b| b == b'/')
}

fn basename(v: &[u8]) -> &[u8] {
    last_slash(v).map_or(v, |i| &v[i + 1..])
}

fn dirname(v: &[u8]) -> Vec<u8> {
    match last_slash(v) {
        None => b".".to_vec(),
        Some(0) => b"/".to_vec(),
        Some(i) => v[..i].to_vec(),
    }
}

/// Drops a final `.ext` of the last path component (GNU's `s:\.[^/.]+$::`).
fn no_extension(v: &[u8]) -> &[u8] {
    match v.iter().rposition(|&b| b == b'.') {
        Some(i) if i + 1 < v.len() && !v[i + 1..].contains(&b'/') => &v[..i],
        _ => v,
    }
}

fn part(v: &[u8], p: Part) -> Vec<u8> {
    match p {
        Part::Whole => v.to_vec(),
        Part::NoExtension => no_extension(v).to_vec(),
        Part::Basename => basename(v).to_vec(),
        Part::Dirname => dirname(v),
        Part::BasenameNoExtension => no_extension(basename(v)).to_vec(),
    }
}

/// Reads the inside of `{...}`: `Ok(None)` when it is not a replacement
/// string at all (`{foo}`, `{print $1}`), an error when it looks like one
/// but is not (`{1x}`, `{..}`).
fn parse_rep(inside: &[u8]) -> Result<Option<Rep>, String> {
    let s = String::from_utf8_lossy(inside);
    let Some(&first) = inside.first() else { return Ok(Some(Rep::All(Part::Whole))) };
    if !(first.is_ascii_digit() || b"-./#%+=".contains(&first)) {
        return Ok(None);
    }
    let suffix = |t: &str| -> Option<Part> {
        Some(match t {
            "" => Part::Whole,
            "." => Part::NoExtension,
            "/" => Part::Basename,
            "//" => Part::Dirname,
            "/." => Part::BasenameNoExtension,
            _ => return None,
        })
    };
    let unknown = || format!("unknown replacement string {{{s}}} (see multiproc run --help)");
    match &*s {
        "#" => return Ok(Some(Rep::Seq)),
        "%" => return Ok(Some(Rep::Slot)),
        _ => {}
    }
    let digits = s.trim_start_matches('-');
    let sign = s.len() - digits.len();
    let n_len = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n_len == 0 {
        if sign > 0 {
            return Err(unknown());
        }
        return suffix(&s).map(|p| Some(Rep::All(p))).ok_or_else(unknown);
    }
    if sign > 1 {
        return Err(unknown());
    }
    let n: isize = s[..sign + n_len].parse().map_err(|_| unknown())?;
    if n == 0 {
        return Err(format!("replacement string {{{s}}}: input sources count from 1"));
    }
    suffix(&s[sign + n_len..]).map(|p| Some(Rep::Source(n, p))).ok_or_else(unknown)
}

/// Shell words that are no program on `PATH` (or behave differently as
/// one): a template starting with one always goes through the shell.
const SHELL_ONLY: &[&str] = &[
    "exit", "cd", "export", "set", ".", "eval", "exec", "source", "ulimit", "umask", "alias", "read", "wait", "trap",
    "shift", "unset", "return", "break", "continue", "readonly", "times", ":", "if", "for", "while", "until", "case",
    "function", "local", "declare", "typeset", "let", "command", "builtin", "type", "hash",
];

fn on_path(program: &[u8]) -> bool {
    let program = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(program));
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return is_executable(program);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program))))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Template {
    /// Parses `text` for a run whose jobs have `sources` values each, or
    /// an unknown number (`None`, with `--colsep`).
    pub fn parse(text: &[u8], sources: Option<usize>) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let b = text[i];
            let close = (b == b'{' && (i == 0 || text[i - 1] != b'$'))
                .then(|| text[i + 1..].iter().position(|&c| c == b'}' || c == b'{' || c.is_ascii_whitespace()))
                .flatten()
                .filter(|&l| text[i + 1 + l] == b'}');
            if let Some(len) = close
                && let Some(rep) = parse_rep(&text[i + 1..i + 1 + len])?
            {
                if let (Rep::Source(n, _), Some(count)) = (rep, sources)
                    && n.unsigned_abs() > count
                {
                    return Err(format!(
                        "replacement string {{{}}}: there {} only {count} input source{}",
                        String::from_utf8_lossy(&text[i + 1..i + 1 + len]),
                        if count == 1 { "is" } else { "are" },
                        if count == 1 { "" } else { "s" },
                    ));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Rep(rep));
                i += len + 2;
                continue;
            }
            literal.push(b);
            i += 1;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let has_reps = pieces.iter().any(|p| matches!(p, Piece::Rep(_)));
        let words = Self::direct_words(&pieces, sources);
        Ok(Template { pieces, words, has_reps })
    }

    /// The template as argument-vector words, when no shell is needed to
    /// read it the way the shell would.
    fn direct_words(pieces: &[Piece], sources: Option<usize>) -> Option<Vec<Vec<Piece>>> {
        let mut words: Vec<Vec<Piece>> = Vec::new();
        let mut current: Vec<Piece> = Vec::new();
        let mut at_word_start = true;
        for piece in pieces {
            match piece {
                Piece::Text(t) => {
                    for &b in t {
                        if b == b' ' {
                            if !current.is_empty() {
                                words.push(std::mem::take(&mut current));
                            }
                            at_word_start = true;
                            continue;
                        }
                        // `=` in a first word is an assignment; anything
                        // outside the plain set means shell syntax.
                        if !plain(b) || (b == b'=' && words.is_empty()) || b == b'%' && at_word_start {
                            return None;
                        }
                        at_word_start = false;
                        match current.last_mut() {
                            Some(Piece::Text(s)) => s.push(b),
                            _ => current.push(Piece::Text(vec![b])),
                        }
                    }
                }
                Piece::Rep(rep) => {
                    // `{}` of several values is several shell words; only
                    // alone in its word does it map to arguments one to one.
                    if matches!(rep, Rep::All(_)) && sources != Some(1) {
                        return None;
                    }
                    at_word_start = false;
                    current.push(Piece::Rep(*rep));
                }
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
        let program = match words.first()?.as_slice() {
            [Piece::Text(p)] => p,
            _ => return None,
        };
        let name = String::from_utf8_lossy(program);
        if SHELL_ONLY.contains(&&*name) || !on_path(program) {
            return None;
        }
        Some(words)
    }

    fn expand_rep(rep: Rep, job: &Job, quoted: bool, out: &mut Vec<Vec<u8>>) {
        let q = |v: Vec<u8>| if quoted { quote(&v) } else { v };
        match rep {
            Rep::Seq => out.push(job.seq.to_string().into_bytes()),
            Rep::Slot => out.push(job.slot.to_string().into_bytes()),
            Rep::All(p) => out.extend(job.values.iter().map(|v| q(part(v, p)))),
            Rep::Source(n, p) => {
                let len = job.values.len() as isize;
                let index = if n > 0 { n - 1 } else { len + n };
                let value = usize::try_from(index).ok().and_then(|i| job.values.get(i));
                out.push(q(value.map_or_else(Vec::new, |v| part(v, p))));
            }
        }
    }

    /// The job's command as shell text (also what `--dry-run`, `--joblog`
    /// and errors show).
    pub fn shell_text(&self, job: &Job) -> Vec<u8> {
        let mut out = Vec::new();
        let mut expanded = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Rep(rep) => {
                    expanded.clear();
                    Self::expand_rep(*rep, job, true, &mut expanded);
                    out.extend_from_slice(&expanded.join(&b' '));
                }
            }
        }
        if !self.has_reps {
            for v in job.values {
                out.push(b' ');
                out.extend_from_slice(&quote(v));
            }
        }
        out
    }

    /// How to start the job.
    pub fn exec(&self, job: &Job) -> Exec {
        let Some(words) = &self.words else { return Exec::Shell(self.shell_text(job)) };
        let mut argv = Vec::with_capacity(words.len() + job.values.len());
        let mut expanded = Vec::new();
        for word in words {
            if let [Piece::Rep(rep @ Rep::All(_))] = word.as_slice() {
                // Alone in its word, `{}` of one value is one argument.
                Self::expand_rep(*rep, job, false, &mut argv);
                continue;
            }
            let mut arg = Vec::new();
            for piece in word {
                match piece {
                    Piece::Text(t) => arg.extend_from_slice(t),
                    Piece::Rep(rep) => {
                        expanded.clear();
                        Self::expand_rep(*rep, job, false, &mut expanded);
                        arg.extend_from_slice(&expanded.concat());
                    }
                }
            }
            argv.push(arg);
        }
        if !self.has_reps {
            argv.extend(job.values.iter().cloned());
        }
        Exec::Argv(argv)
    }
}

impl Exec {
    /// The argument vector to start: the shell's, or the program's own.
    pub fn argv(&self, shell: &OsString) -> Vec<OsString> {
        match self {
            Exec::Shell(text) => vec![shell.clone(), "-c".into(), OsString::from_vec(text.clone())],
            Exec::Argv(argv) => argv.iter().map(|a| OsString::from_vec(a.clone())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str, values: &[&str]) -> String {
        let values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        let tpl = Template::parse(t.as_bytes(), Some(values.len())).unwrap();
        String::from_utf8(tpl.shell_text(&Job { seq: 7, slot: 2, values: &values })).unwrap()
    }

    #[test]
    fn every_replacement_string() {
        assert_eq!(
            text("echo {} {.} {/} {//} {/.} {#} {%}", &["/x/y/z.tar.gz"]),
            "echo /x/y/z.tar.gz /x/y/z.tar z.tar.gz /x/y z.tar 7 2"
        );
        assert_eq!(text("echo {1} {2.} {-1/} {2//}", &["a b", "c'd.e"]), "echo 'a b' 'c'\"'\"'d' 'c'\"'\"'d.e' .");
        assert_eq!(text("echo {1/.} {2/}", &["dir/f.txt", "/r"]), "echo f r");
        assert_eq!(text("echo", &["a", "b c"]), "echo a 'b c'");
        assert_eq!(text("echo {}", &["a", "b c"]), "echo a 'b c'");
        assert_eq!(text("echo {.}", &["a.b/c"]), "echo a.b/c");
        assert_eq!(text("awk '{print $1}' {}", &["f"]), "awk '{print $1}' f");
        assert_eq!(text("echo ${HOME} {foo}", &["f"]), "echo ${HOME} {foo} f");
        assert_eq!(text("echo {}", &[""]), "echo ''");
    }

    #[test]
    fn hostile_values_stay_one_word() {
        assert_eq!(text("echo {}", &["a b; rm -rf x"]), "echo 'a b; rm -rf x'");
        assert_eq!(text("cat {}", &["$(reboot)`id`"]), "cat '$(reboot)`id`'");
        assert_eq!(quote(b"it's"), b"'it'\"'\"'s'");
    }

    #[test]
    fn unknown_replacement_strings_are_refused() {
        for bad in ["{1x}", "{..}", "{/./}", "{#1}", "{0}", "{--1}", "{= $_ =}x", "{+/}"] {
            let t = format!("echo {bad}");
            let r = Template::parse(t.as_bytes(), Some(1));
            assert!(r.is_err() || bad.contains(' '), "{bad} was accepted");
        }
        let err = Template::parse(b"echo {3}", Some(2)).unwrap_err();
        assert!(err.contains("only 2 input sources"), "{err}");
        assert!(Template::parse(b"echo {3}", None).is_ok());
    }

    #[test]
    fn plain_templates_run_without_a_shell() {
        let values = vec![b"a b".to_vec()];
        let job = Job { seq: 1, slot: 1, values: &values };
        let t = Template::parse(b"echo x{}y {#}", Some(1)).unwrap();
        assert_eq!(t.exec(&job), Exec::Argv(vec![b"echo".to_vec(), b"xa by".to_vec(), b"1".to_vec()]));
        let t = Template::parse(b"echo", Some(1)).unwrap();
        assert_eq!(t.exec(&job), Exec::Argv(vec![b"echo".to_vec(), b"a b".to_vec()]));
        for shell in ["echo {} > f", "exit {}", "A=1 env", "echo $X {}", "nosuchprogram-xyz {}"] {
            let t = Template::parse(shell.as_bytes(), Some(1)).unwrap();
            assert!(matches!(t.exec(&job), Exec::Shell(_)), "{shell}");
        }
        let two = vec![b"a".to_vec(), b"b".to_vec()];
        let t = Template::parse(b"echo {}", Some(2)).unwrap();
        assert!(matches!(t.exec(&Job { seq: 1, slot: 1, values: &two }), Exec::Shell(_)));
    }
}
