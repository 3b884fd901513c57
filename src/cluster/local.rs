//! A throwaway Redis for one machine: tests, examples, benchmarks, or a
//! scale-out pool tried out before there is a Redis to point it at.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Context;
use crate::{Error, Result};

/// A `redis-server` of this process's own on a Unix socket in a fresh
/// directory, without persistence; stopped and its directory removed on
/// drop. Needs Debian's `redis-server` (or one on `PATH`).
///
/// ```no_run
/// # #[multiproc::main] fn main() {
/// use multiproc::{Pool, cluster::LocalRedis};
/// fn double(x: i32) -> i32 { x * 2 }
/// let redis = LocalRedis::start().unwrap();
/// let pool = Pool::builder().redis(&redis.url(), "try-out").local_workers(2).build().unwrap();
/// assert_eq!(pool.map(double, [1, 2, 3]).unwrap(), [2, 4, 6]);
/// # }
/// ```
#[derive(Debug)]
pub struct LocalRedis {
    server: Child,
    dir: PathBuf,
}

/// Where Debian and others install `redis-server`; else `PATH`.
fn server_path() -> Option<PathBuf> {
    let known = ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"];
    known.into_iter().map(PathBuf::from).find(|p| p.exists()).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join("redis-server")).find(|p| p.exists())
    })
}

impl LocalRedis {
    /// Whether a `redis-server` is installed to start.
    ///
    /// ```
    /// let _ = multiproc::cluster::LocalRedis::installed();
    /// ```
    pub fn installed() -> bool {
        server_path().is_some()
    }

    /// Starts the server and waits (at most 30 s) until it accepts
    /// connections.
    pub fn start() -> Result<LocalRedis> {
        let program = server_path().ok_or_else(|| Error::ProgramNotFound { program: "redis-server".into() })?;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("multiproc-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context("a directory for a local redis-server")?;
        let server = Command::new(&program)
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(dir.join("redis.sock"))
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn { program: program.display().to_string(), source })?;
        let mut redis = LocalRedis { server, dir };
        let until = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(redis.socket()).is_err() {
            if let Ok(Some(status)) = redis.server.try_wait() {
                return Err(Error::Cluster(format!("redis-server ended at start: {status}")));
            }
            if Instant::now() > until {
                return Err(Error::Cluster("redis-server did not accept connections within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(redis)
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its URL, `redis+unix://...`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
