//! Running another program and reading its exit code (seeds 002 and 003).
//!
//! Python (seed 003):
//! ```python
//! import subprocess
//!
//! print('$ nslookup www.python.org')
//! r = subprocess.call(['nslookup', 'www.python.org'])
//! print('Exit code:', r)
//! ```
//! The seeds call `curl` and `nslookup`, which need the network; here the
//! programs are ones every machine has, one that succeeds and one that
//! fails.

use multiproc::subprocess;

pub fn main() {
    println!("$ uname -s");
    let r = subprocess::call(["uname", "-s"]).expect("uname");
    println!("Exit code: {r}");

    println!("$ ls /no/such/place");
    let r = subprocess::Command::new(["ls", "/no/such/place"]).stderr(subprocess::Stdio::Null).call().expect("ls");
    println!("Exit code: {r}");
}
