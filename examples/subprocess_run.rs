//! `subprocess.run` with stdout into a file, `run` with a pipe, and
//! `check_output` (seed 003).
//!
//! Python (seed 003):
//! ```python
//! import subprocess
//!
//! with open('output.txt', 'w') as f:
//!     subprocess.run(['date', '-R'], stdout=f)
//!
//! result = subprocess.run(['date', '-R'], stdout=subprocess.PIPE)
//! print(result)
//! print("------")
//! print(result.stdout)
//! print("------")
//! print(result.stdout.decode('utf-8'))
//!
//! result = subprocess.check_output(['date', '-R'])
//! print(result)
//! print(result.decode("utf-8"))
//! ```
//! The file goes into a fresh temporary directory rather than the current
//! one.

use multiproc::subprocess::{self, Command, Stdio};

pub fn main() {
    let dir = std::env::temp_dir().join(format!("multiproc-subprocess-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("output.txt");
    let f = std::fs::File::create(&path).expect("output.txt");
    Command::new(["date", "-R"]).stdout(f).run().expect("date -R into a file");
    print!("output.txt: {}", std::fs::read_to_string(&path).expect("read output.txt"));
    std::fs::remove_dir_all(&dir).expect("clean up");

    let result = Command::new(["date", "-R"]).stdout(Stdio::Pipe).run().expect("date -R");
    println!("{result}");
    println!("------");
    let stdout = result.stdout.expect("stdout was piped");
    println!("b{:?}", String::from_utf8_lossy(&stdout));
    println!("------");
    print!("{}", String::from_utf8_lossy(&stdout));

    let result = subprocess::check_output(["date", "-R"]).expect("date -R");
    println!("b{:?}", String::from_utf8_lossy(&result));
    print!("{}", String::from_utf8_lossy(&result));
}
