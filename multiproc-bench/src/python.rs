//! Finding and running the Python peer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python interpreter to compare against: `--python`, else
/// `MULTIPROC_BENCH_PYTHON`, else pyenv's 3.11, else `python3.11`.
pub(crate) fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("MULTIPROC_BENCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("pyenv").args(["prefix", "3.11"]).output()
        && out.status.success()
    {
        let prefix = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned();
        let exe = Path::new(&prefix).join("bin/python3");
        if exe.exists() {
            return Ok(exe);
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("3.11"))
                .map(|e| e.path().join("bin/python3"))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Ok(p);
            }
        }
    }
    which("python3.11").ok_or_else(|| "no Python 3.11 found: pass --python or set MULTIPROC_BENCH_PYTHON".into())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_string_lossy().split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// Runs a peer script (written to a temporary file: Python's spawn method
/// re-imports the main module by path) and returns what it printed.
pub(crate) fn run_script(python: &Path, name: &str, source: &str, args: &[String]) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("multiproc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let script = dir.join(name);
    std::fs::write(&script, source).map_err(|e| format!("{}: {e}", script.display()))?;
    let out = Command::new(python).arg(&script).args(args).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!("{} {name} failed: {}", python.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interpreter's version line.
pub(crate) fn version(python: &Path) -> String {
    Command::new(python)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The `<figure> <value>` lines a peer script printed.
pub(crate) struct Figures {
    values: HashMap<String, f64>,
    printed: String,
}

impl Figures {
    /// Runs a peer script and reads its figures.
    pub(crate) fn of_script(python: &Path, name: &str, source: &str, args: &[String]) -> Result<Figures, String> {
        let printed = run_script(python, name, source, args)?;
        let values = printed
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
            .collect();
        Ok(Figures { values, printed })
    }

    /// One figure, or an error that shows what the script printed.
    pub(crate) fn get(&self, name: &str) -> Result<f64, String> {
        self.values.get(name).copied().ok_or_else(|| format!("the peer printed no {name}: {}", self.printed))
    }
}
