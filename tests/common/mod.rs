//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use multiproc::{Process, Result, StartMethod};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A hang guard, not a synchronisation: far longer than anything here takes.
pub const GUARD: Duration = Duration::from_secs(120);

/// Joins, failing the test (and killing the child) if it hangs.
pub fn join<R: Serialize + DeserializeOwned + Send + 'static>(p: &mut Process<R>) -> Result<R> {
    match p.join_timeout(GUARD) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => {
            let _ = p.kill();
            panic!("{} hung for {GUARD:?}", p.name());
        }
        Err(e) => Err(e),
    }
}

/// Runs `test` once under each start method.
pub fn each_method(test: impl Fn(StartMethod)) {
    for m in StartMethod::ALL {
        test(m);
    }
}

/// A pidfd for any process (it need not be our child).
pub fn pidfd(pid: i32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just gave us this descriptor.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Waits up to `timeout` for the process behind `pidfd` to end.
pub fn exits_within(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd =
        libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&pidfd.as_fd()), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    n == 1
}

/// Pids of our children that are zombies (ended, not reaped).
pub fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1].parse::<i32>() == Ok(me) {
            zombies.push(pid);
        }
    }
    zombies
}

pub fn sleep_forever() {
    loop {
        std::thread::park();
    }
}

/// Runs `body` in a process of its own: a fresh run of this test binary
/// with only `name` selected. For tests that measure process-wide state
/// (open descriptors, children, zombies), which other tests running as
/// threads of the same process (`cargo test`) would disturb.
pub fn isolated(name: &str, body: impl FnOnce()) {
    isolated_with_env(name, &[], body)
}

/// [`isolated`], with `env` set in the process of its own.
pub fn isolated_with_env(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    const MARK: &str = "MULTIPROC_TEST_ISOLATED";
    if std::env::var(MARK).as_deref() == Ok(name) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(MARK, name)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "isolated run of {name} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serializes or deserializes only when told to: a value that cannot cross.
#[derive(Debug)]
pub struct Picky {
    pub fail_ser: bool,
    pub fail_de: bool,
}

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.fail_ser {
            return Err(serde::ser::Error::custom("refuses to serialize"));
        }
        (self.fail_ser, self.fail_de).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (fail_ser, fail_de) = <(bool, bool)>::deserialize(d)?;
        if fail_de {
            return Err(serde::de::Error::custom("refuses to deserialize"));
        }
        Ok(Picky { fail_ser, fail_de })
    }
}

/// A small seeded generator (xorshift64*): runs repeat from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A checksum of `bytes` that any damage changes.
pub fn checksum(bytes: &[u8]) -> u64 {
    // FNV's step, a word at a time (eight times faster than a byte at a
    // time, which made the stress tests spend most of their time here). Each
    // step is a bijection of the word and of the running hash, so any one
    // changed word changes the result; the length goes in last, so a
    // truncated message does too.
    let mut words = bytes.chunks_exact(8);
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(0x100_0000_01b3);
    let mut h =
        words.by_ref().fold(0xcbf2_9ce4_8422_2325u64, |h, w| step(h, u64::from_le_bytes(w.try_into().unwrap())));
    h = words.remainder().iter().fold(h, |h, b| step(h, u64::from(*b)));
    step(h, bytes.len() as u64)
}

/// `MULTIPROC_SEED`, or a fresh seed; print it so that a run can be repeated.
pub fn seed() -> u64 {
    std::env::var("MULTIPROC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    })
}

/// pyenv's interpreter for `version` (such as "3.7"), which the project's
/// machines have; a missing one fails the test rather than skip it.
pub fn python(version: &str) -> std::path::PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".pyenv"));
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("versions"))
        .unwrap_or_else(|e| panic!("no pyenv versions under {}: {e}", root.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{version}.")))
        .map(|e| e.path().join("bin/python3"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("Python {version} is not installed with pyenv"))
}

/// Runs `cargo build --quiet <args>` on this workspace, for the programs a
/// test starts (examples, the `panic = "abort"` program) — unless the test
/// command built them already and says so with `MULTIPROC_TEST_PREBUILT=1`:
/// then a no-op build is skipped, as each one waits its turn on cargo's lock
/// (two minutes behind the others on a loaded machine).
pub fn cargo_build(args: &[&str]) {
    if std::env::var_os("MULTIPROC_TEST_PREBUILT").is_some_and(|v| v == "1") {
        return;
    }
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let status = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--quiet"])
        .args(args)
        .args(["--manifest-path", manifest])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}
