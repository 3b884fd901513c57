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

mod shareable {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::common::{GUARD, python};
    use super::in_dev_shm;
    use multiproc::shared_memory::{Item, ShareableList, SharedMemoryManager};
    use multiproc::{Error, Process, SharedMemory};

    /// Attaches to our list, reads it, changes it; then makes its own for
    /// us to read, and waits for a line before freeing it.
    const PY: &str = r#"
import sys
from multiprocessing import shared_memory, resource_tracker
l = shared_memory.ShareableList(name=sys.argv[1])
resource_tracker.unregister(l.shm._name, 'shared_memory')
print(list(l), l.format, flush=True)
l[0] = l[0] * 2
l[1] = 'py'
l[2] = 2.5
l[3] = False
l[4] = b'xyz'
l[5] = None
mine = shared_memory.ShareableList([7, 'h\u00e9llo w\u00f6rld', None, True, 1.5, b'\x01\x02', -2**63])
print(mine.shm.name, flush=True)
sys.stdin.readline()
mine[0] = 8
print(mine[0], flush=True)
sys.stdin.readline()
mine.shm.close()
mine.shm.unlink()
"#;

    #[test]
    fn python_and_rust_share_lists_both_ways() {
        for version in ["3.11", "3.13"] {
            let ours = ShareableList::new(
                None,
                [Item::Int(21), "hello".into(), Item::None, true.into(), 0.25.into(), Item::Str(String::new())],
            )
            .unwrap();
            let mut child = Command::new(python(version))
                .args(["-c", PY, ours.name().trim_start_matches('/')])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "[21, 'hello', None, True, 0.25, ''] q8sxxxxxx?xxxxxxxx?d8s", "Python {version}");
            line.clear();
            out.read_line(&mut line).unwrap();
            assert_eq!(
                ours.to_vec().unwrap(),
                [Item::Int(42), "py".into(), Item::Float(2.5), false.into(), Item::Bytes(b"xyz".to_vec()), Item::None],
                "Python {version} wrote these"
            );
            let theirs = ShareableList::attach(line.trim()).unwrap();
            assert_eq!(
                theirs.to_vec().unwrap(),
                [
                    Item::Int(7),
                    "héllo wörld".into(),
                    Item::None,
                    true.into(),
                    1.5.into(),
                    Item::Bytes(vec![1, 2]),
                    Item::Int(i64::MIN)
                ],
                "Python {version}'s list, read here"
            );
            theirs.set(1, "ça va").unwrap();
            theirs.set(2, 99).unwrap();
            let stdin = child.stdin.as_mut().unwrap();
            stdin.write_all(b"go\n").unwrap();
            line.clear();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "8");
            assert_eq!(theirs.get(0).unwrap(), Item::Int(8), "Python {version}'s write, seen here");
            assert_eq!(theirs.get(1).unwrap(), "ça va".into());
            child.stdin.as_mut().unwrap().write_all(b"done\n").unwrap();
            assert!(child.wait().unwrap().success(), "Python {version}");
        }
    }

    #[test]
    fn what_does_not_fit_is_refused_and_nothing_changes() {
        let l = ShareableList::new(None, ["1234567", "x"]).unwrap();
        l.set(0, "123456789").unwrap_err();
        assert_eq!(l.get(0).unwrap(), "1234567".into(), "a refused write changes nothing");
        l.set(1, "exactly8").unwrap();
        assert!(matches!(l.set(1, "nine byte"), Err(Error::ShareableList(_))));
        assert!(matches!(l.set(1, Item::Bytes(vec![1, 0])), Err(Error::ShareableList(_))), "a trailing NUL");
        assert!(matches!(ShareableList::new(None, ["a\0"]), Err(Error::ShareableList(_))));
        assert!(matches!(l.get(2), Err(Error::IndexOutOfRange { index: 2, len: 2 })));
        l.set(0, 1.5).unwrap();
        assert_eq!(l.get(0).unwrap(), Item::Float(1.5), "a slot may change type");
        assert_eq!((l.count(&1.5.into()).unwrap(), l.index(&"exactly8".into()).unwrap()), (1, Some(1)));
        let empty = ShareableList::new::<Item>(None, []).unwrap();
        assert!(empty.is_empty() && ShareableList::attach(empty.name()).unwrap().to_vec().unwrap().is_empty());
        // A block that is not a list is refused, not misread.
        let junk = SharedMemory::create(None, 64).unwrap();
        junk.write(0, &[0xff; 64]).unwrap();
        assert!(matches!(ShareableList::attach(junk.name()), Err(Error::ShareableList(_))));
        junk.write(0, &3i64.to_ne_bytes()).unwrap();
        assert!(matches!(ShareableList::attach(junk.name()), Err(Error::ShareableList(_))));
        // Whatever a block holds, reading it as a list is a value or a
        // typed error, never a panic: a valid list with bytes flipped.
        let good = ShareableList::new(None, [Item::Int(1), "two".into(), Item::None, 4.5.into()]).unwrap();
        let size = good.shm().size();
        let mut original = vec![0u8; size];
        good.shm().read(0, &mut original).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = original.clone();
            bytes[(x % size as u64) as usize] ^= (x >> 32) as u8 | 1;
            good.shm().write(0, &bytes).unwrap();
            if let Ok(l) = ShareableList::attach(good.name()) {
                let _ = l.to_vec();
                let _ = l.to_string();
            }
        }
    }

    /// Makes blocks through a manager, reports their names, then waits to
    /// be killed.
    fn make_and_wait(names: multiproc::Queue<String>) {
        let smm = SharedMemoryManager::start().unwrap();
        let block = smm.shared_memory(4096).unwrap();
        let list = smm.shareable_list(["a", "b"]).unwrap();
        names.put(&block.name().to_string()).unwrap();
        names.put(&list.name().to_string()).unwrap();
        loop {
            std::thread::park();
        }
    }

    fn gone_within(name: &str, guard: Duration) -> bool {
        let deadline = Instant::now() + guard;
        while in_dev_shm(name) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// A program killed with SIGKILL leaves none of its manager's blocks.
    #[test]
    fn a_killed_programs_manager_blocks_are_freed() {
        let names = multiproc::Queue::new(0).unwrap();
        let mut p = Process::new(make_and_wait, (names.clone(),)).with_daemon(true);
        p.start().unwrap();
        let made: Vec<String> = (0..2).map(|_| names.get_timeout(GUARD).unwrap()).collect();
        for name in &made {
            assert!(in_dev_shm(name), "{name} is there while its manager lives");
        }
        p.kill().unwrap();
        assert!(p.join().is_err());
        for name in &made {
            assert!(gone_within(name, GUARD), "{name} outlived its killed program");
        }
    }

    /// A manager dropped frees its blocks; its handles never do before.
    #[test]
    fn a_dropped_manager_frees_its_blocks_and_only_then() {
        let smm = SharedMemoryManager::start().unwrap();
        let names: Vec<String> = (0..5).map(|i| smm.shared_memory(100 + i).unwrap().name().to_string()).collect();
        for name in &names {
            assert!(in_dev_shm(name), "a dropped handle of a managed block leaves it");
        }
        drop(smm);
        for name in &names {
            assert!(!in_dev_shm(name), "{name} survived its manager");
        }
    }
}
