//! Named shared memory: who may remove the name, and nothing left behind.

mod common;

use common::{each_method, join};
use multiproc::{Error, Process, SharedMemory};

fn in_dev_shm(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name.trim_start_matches('/')).exists()
}

fn attach_and_write(name: String, text: String) -> usize {
    let shm = SharedMemory::attach(&name).unwrap();
    shm.write(0, text.as_bytes()).unwrap();
    shm.size()
    // Dropped here: an attached handle must not remove the name.
}

#[test]
fn an_attaching_process_never_removes_the_name() {
    each_method(|m| {
        let shm = SharedMemory::create(None, 4096).unwrap();
        let name = shm.name().to_owned();
        let mut p = Process::new(attach_and_write, (name.clone(), format!("from {m}"))).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 4096);
        // Python's resource tracker would have unlinked it by now.
        assert!(in_dev_shm(&name), "{m}");
        let again = SharedMemory::attach(&name).unwrap();
        let mut buf = vec![0u8; format!("from {m}").len()];
        again.read(0, &mut buf).unwrap();
        assert_eq!(buf, format!("from {m}").as_bytes());
        drop(again);
        drop(shm);
        assert!(!in_dev_shm(&name), "{m}: the owner's drop removes the name");
    });
}

fn received(shm: SharedMemory) -> u8 {
    let mut b = [0u8; 1];
    shm.read(10, &mut b).unwrap();
    b[0]
}

#[test]
fn a_block_passed_as_an_argument_is_not_owned_by_the_child() {
    each_method(|m| {
        let shm = SharedMemory::create(Some(&format!("mp-test-arg-{}-{m}", std::process::id())), 64).unwrap();
        shm.write(10, &[42]).unwrap();
        let name = shm.name().to_owned();
        // Under fork the child owns a copy of the block; it still must not unlink.
        let copy = SharedMemory::attach(&name).unwrap();
        let mut p = Process::new(received, (copy,)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 42);
        assert!(in_dev_shm(&name), "{m}");
        shm.unlink().unwrap();
        assert!(!in_dev_shm(&name));
        shm.unlink().unwrap();
    });
}

#[test]
fn the_memory_outlives_its_name() {
    let shm = SharedMemory::create(None, 32).unwrap();
    let other = SharedMemory::attach(shm.name()).unwrap();
    shm.unlink().unwrap();
    other.write(0, b"still here").unwrap();
    let mut buf = [0u8; 10];
    shm.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

#[test]
fn bad_input_is_a_typed_error() {
    assert!(matches!(SharedMemory::create(None, 0), Err(Error::InvalidSize)));
    assert!(matches!(SharedMemory::create(Some("a/b"), 8), Err(Error::InvalidName(_))));
    assert!(matches!(SharedMemory::attach(""), Err(Error::InvalidName(_))));
    let name = format!("mp-test-dup-{}", std::process::id());
    let first = SharedMemory::create(Some(&name), 8).unwrap();
    assert!(matches!(SharedMemory::create(Some(&name), 8), Err(Error::Io { .. })));
    let mut buf = [0u8; 4];
    assert!(matches!(first.read(6, &mut buf), Err(Error::IndexOutOfRange { .. })));
    assert!(matches!(first.write(usize::MAX, b"x"), Err(Error::IndexOutOfRange { .. })));
    drop(first);
    assert!(!in_dev_shm(&name));
}
