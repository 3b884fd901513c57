//! This executable's identity: its GNU build-id note, read from the
//! program headers the loader mapped (no file access), or `None` when the
//! linker left none.

use std::ffi::c_void;

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

struct Found(Option<Vec<u8>>);

/// The main program's build-id bytes, if it has one.
pub(crate) fn gnu_build_id() -> Option<Vec<u8>> {
    let mut found = Found(None);
    // SAFETY: dl_iterate_phdr calls `visit` with valid `dl_phdr_info` for
    // each loaded object while it holds the loader's lock; `data` is our
    // `Found`, alive for the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut found).cast()) };
    found.0
}

unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> i32 {
    // SAFETY: the loader passes a valid info; `data` is the `Found` given
    // above. The first object visited is the main program.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Found>()) };
    for i in 0..usize::from(info.dlpi_phnum) {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type != libc::PT_NOTE {
            continue;
        }
        let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
        // SAFETY: a PT_NOTE segment is mapped (it lies in a loaded,
        // readable segment) for p_memsz bytes from its address.
        let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
        if let Some(id) = build_id_in(notes) {
            found.0 = Some(id);
            break;
        }
    }
    // Only the main program: stop after the first object.
    1
}

/// The build-id in a run of ELF notes (4-byte aligned name and desc).
fn build_id_in(mut notes: &[u8]) -> Option<Vec<u8>> {
    let word = |b: &[u8], at: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?)) };
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)? as usize, word(notes, 4)? as usize, word(notes, 8)?);
        let name_end = 12usize.checked_add(namesz.next_multiple_of(4))?;
        let desc_end = name_end.checked_add(descsz.next_multiple_of(4))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes.get(12..12 + namesz)? == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_test_binary_has_a_build_id_that_readelf_agrees_with() {
        let ours = super::gnu_build_id().expect("Debian's gcc links with --build-id");
        assert!(ours.len() >= 16);
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("readelf").arg("-n").arg(&exe).output().expect("binutils' readelf");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
        assert!(text.contains(&format!("Build ID: {hex}")), "{hex} not in {text}");
    }
}
