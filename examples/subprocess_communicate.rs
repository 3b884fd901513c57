//! Popen with pipes and communicate: collecting output, and feeding an
//! interactive program several lines (seeds 002 and 003).
//!
//! Python (seed 003):
//! ```python
//! import subprocess
//!
//! print('$ date -R')
//! p = subprocess.Popen(['date', '-R'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
//! output, err = p.communicate()
//! print(output)
//! print(output.decode('utf-8'))
//! print('Exit code:', p.returncode)
//!
//! print('$ nslookup')
//! p = subprocess.Popen(['nslookup'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
//! output, err = p.communicate(b'set q=mx\npython.org\nexit\n')
//! print(output.decode('utf-8'))
//! print('Exit code:', p.returncode)
//! ```
//! `nslookup` needs the network, so the interactive program here is `bc`,
//! the calculator, fed its settings and questions line by line the same way.

use multiproc::subprocess::{Command, Stdio};

pub fn main() {
    println!("$ date -R");
    let mut p =
        Command::new(["date", "-R"]).stdin(Stdio::Pipe).stdout(Stdio::Pipe).stderr(Stdio::Pipe).popen().expect("date");
    let (output, _err) = p.communicate(None).expect("communicate");
    let output = output.expect("stdout was piped");
    println!("b{:?}", String::from_utf8_lossy(&output));
    print!("{}", String::from_utf8_lossy(&output));
    println!("Exit code: {}", p.returncode().expect("communicate waits"));

    println!("$ bc");
    let mut p = Command::new(["bc"]).stdin(Stdio::Pipe).stdout(Stdio::Pipe).stderr(Stdio::Pipe).popen().expect("bc");
    let (output, _err) = p.communicate(Some(b"scale=3\n10/4\n2^10\nquit\n")).expect("communicate");
    print!("{}", String::from_utf8(output.expect("stdout was piped")).expect("bc prints text"));
    println!("Exit code: {}", p.returncode().expect("communicate waits"));
}
