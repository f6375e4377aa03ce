//! The lazy fill on the real kernel, in this test's own memory: a run of
//! precopied pages that straddles areas (as the image joins them), areas
//! split after registration, a page present before the fill (newer than
//! the store) and a page unmapped before the fill reached it.
//!
//! One UFFDIO_COPY fills one area only, and answers ENOENT for a range
//! reaching into the next one, as for a range unmapped. A fill that took
//! that answer for "gone" left the whole run reading as zero.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use lpm_engine::{FillPart, LazyFill};
use lpm_sys::uffd::{self, Uffd};

const PAGE: usize = 4096;
const PAGES: usize = 16;

/// The store's byte at `i` (the page's number in its first byte, so a
/// page copied to the wrong place shows).
fn pattern(i: usize) -> u8 {
    if i.is_multiple_of(PAGE) {
        (i / PAGE) as u8 + 1
    } else {
        (i.wrapping_mul(2654435761) >> 13) as u8
    }
}

/// A page store holding the pattern at offset 0, unlinked.
fn store() -> OwnedFd {
    let path = std::env::temp_dir().join(format!("lpm-lazy-fill-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    let mut f = File::options().read(true).write(true).create_new(true).open(&path).expect("create the store");
    std::fs::remove_file(&path).expect("unlink the store");
    f.write_all(&(0..PAGES * PAGE).map(pattern).collect::<Vec<u8>>()).expect("write the store");
    f.into()
}

#[test]
fn fill_follows_areas_split_present_and_gone() {
    // SAFETY: a fresh private anonymous mapping only this test uses; no
    // reference into it outlives the test, which unmaps it.
    let a = unsafe {
        libc::mmap(std::ptr::null_mut(), PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(a, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let base = a as u64;
    let at = |page: usize| (base + (page * PAGE) as u64) as *mut libc::c_void;
    // Page 2 is present before the fill: newer than the store, kept.
    // SAFETY: inside the mapping made above, writable.
    unsafe { *(at(2) as *mut u8) = 0xab };
    // Two areas side by side (pages 0-7 and 8-15), one run over both.
    // SAFETY: advice on the test's own mapping.
    assert_eq!(unsafe { libc::madvise(at(8), 8 * PAGE, libc::MADV_DONTFORK) }, 0, "madvise");

    let u = Uffd::new(uffd::create().expect("userfaultfd (needs root or vm.unprivileged_userfaultfd)"), std::process::id() as i32);
    u.api(0).expect("UFFDIO_API");
    u.register_missing(base, (PAGES * PAGE) as u64).expect("register both areas");
    // After registration the program splits the second area in three
    // (pages 8-11, 12-13 read-only, 14-15) and unmaps page 15.
    // SAFETY: on the test's own mapping; nothing refers to these pages.
    assert_eq!(unsafe { libc::mprotect(at(12), 2 * PAGE, libc::PROT_READ) }, 0, "mprotect");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::munmap(at(15), PAGE) }, 0, "munmap");

    let part =
        FillPart { pid: std::process::id() as i32, uffd: u.into_fd(), store: store(), runs: vec![(base, base + (PAGES * PAGE) as u64, 0)] };
    let fill = LazyFill::from_parts(vec![part]);
    assert_eq!(fill.pages_left(), PAGES as u64);
    let filler = std::thread::spawn(move || fill.run());
    // A fault of this thread while the fill runs, in the read-only part:
    // served (or filled already).
    // SAFETY: page 13 is mapped (read-only) and registered; the read
    // waits for the fill if the page is not in yet.
    let first = unsafe { std::ptr::read_volatile(at(13) as *const u8) };
    let st = filler.join().expect("fill thread").expect("the fill");
    assert_eq!(first, pattern(13 * PAGE), "page 13 read while the fill ran");
    assert_eq!((st.pages, st.dropped), ((PAGES - 2) as u64, 1), "pages filled and dropped: {st:?}");

    // SAFETY: pages 0-14 are mapped and readable, the userfaultfd is
    // closed (nothing waits on a fault any more).
    let mem = unsafe { std::slice::from_raw_parts(base as *const u8, 15 * PAGE) };
    for page in 0..15 {
        let got = &mem[page * PAGE..(page + 1) * PAGE];
        if page == 2 {
            assert_eq!(got[0], 0xab, "the page present before the fill was overwritten");
            assert!(got[1..].iter().all(|&b| b == 0), "the page present before the fill was overwritten");
            continue;
        }
        let want: Vec<u8> = (page * PAGE..(page + 1) * PAGE).map(pattern).collect();
        assert!(
            got == want.as_slice(),
            "page {page} does not hold the store's content (first byte {:#x}, expected {:#x})",
            got[0],
            want[0]
        );
    }
    // SAFETY: unmapping what this test mapped; `mem` is not used any more.
    assert_eq!(unsafe { libc::munmap(a, 15 * PAGE) }, 0, "munmap");
}
