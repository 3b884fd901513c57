//! Communication through a pipe (seeds 000, 001 and 004).
//!
//! Python (seed 000):
//! ```python
//! def write_process(conn):
//!     print('Child process writing to the pipe...')
//!     conn.send([42, None, 'Hello'])
//!     conn.close()
//!
//! parent_conn, child_conn = Pipe()
//! p = Process(target=write_process, args=(child_conn,))
//! p.start()
//! print(f'Parent process reading from pipe... {parent_conn.recv()}')
//! p.join()
//! ```
//! Seed 001 sends in both directions within one process; seed 004 has a
//! producer and a consumer process at the two ends.

use multiproc::{Connection, Pipe, Process};

fn write_process(conn: Connection) {
    println!("Child process writing to the pipe...");
    conn.send(&(42, None::<i32>, "Hello")).expect("send");
    conn.close();
}

fn producer(pipe: Connection) {
    pipe.send("scott").expect("send");
}

fn consumer(pipe: Connection) {
    let data: String = pipe.recv().expect("recv");
    println!("{data}");
}

#[multiproc::main]
pub fn main() {
    // Seed 000: a child writes, the parent reads.
    let (parent_conn, child_conn) = Pipe(true).expect("pipe");
    let mut p = Process::new(write_process, (child_conn,));
    p.start().expect("start");
    let received: (i32, Option<i32>, String) = parent_conn.recv().expect("recv");
    println!("Parent process reading from pipe... {received:?}");
    p.join().expect("join");

    // Seed 001: both directions.
    let (conn_1, conn_2) = Pipe(true).expect("pipe");
    conn_1.send("pipe: [message] from conn_1").expect("send");
    println!("{}", conn_2.recv::<String>().expect("recv"));
    conn_2.send("pipe: [message] from conn_2").expect("send");
    println!("{}", conn_1.recv::<String>().expect("recv"));

    // Seed 004: a producer process and a consumer process.
    let (receive_pipe, send_pipe) = Pipe(true).expect("pipe");
    let mut my_producer = Process::new(producer, (send_pipe,));
    let mut my_consumer = Process::new(consumer, (receive_pipe,));
    my_producer.start().expect("start");
    my_consumer.start().expect("start");
    my_producer.join().expect("join");
    my_consumer.join().expect("join");
}
