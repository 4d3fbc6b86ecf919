//! Transparent huge pages for a large array that is about to be written.
//!
//! The gateway's key table is one flat array, 128 MiB at a million keys, and a lookup of a key
//! nobody asked for lately reads one line at a random place in it. On 4 KiB pages that read is
//! also a TLB miss and a page walk, nearly doubling its cost (BENCHMARKS.md, "huge pages for the
//! key table"). With 2 MiB pages, 64 TLB entries cover the whole table.
//!
//! Linux gives an anonymous mapping huge pages on its first touch when the mapping was advised
//! with `madvise(MADV_HUGEPAGE)` and `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or
//! `madvise` (most distributions' default). [`advise`] gives that advice for the whole 2 MiB
//! pages inside a region of a `Vec`'s spare capacity, before the caller writes it. It is a hint:
//! where the kernel has no huge page to give, or THP is `never`, the region stays on 4 KiB pages,
//! and nothing else changes.
//!
//! This is the one `unsafe` block in the workspace (every other crate forbids unsafe code):
//! `madvise` takes a raw address range, and neither the standard library nor a crate already in
//! the tree offers a safe call for this advice.

use std::io;
use std::mem::MaybeUninit;

/// The huge page size this crate aligns to (x86_64's and aarch64's with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole 2 MiB pages inside `region` with huge pages on first
/// touch. Returns how many bytes the advice covered: 0 when the region holds no whole 2 MiB page
/// (then no system call is made) or on a system without transparent huge pages.
///
/// Call it on memory not yet written (`Vec::spare_capacity_mut`): pages already touched stay as
/// they are until the kernel's background collapsing gets to them.
pub fn advise<T>(region: &mut [MaybeUninit<T>]) -> io::Result<usize> {
    let start = region.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(region);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end - end % HUGE_PAGE;
    if last <= first {
        return Ok(0);
    }
    advise_range(first, last - first)?;
    Ok(last - first)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_range(address: usize, length: usize) -> io::Result<()> {
    // SAFETY: `address..address + length` lies inside `region`, which the caller lends us
    // mutably for the call, and is page-aligned (a multiple of 2 MiB). `MADV_HUGEPAGE` changes
    // only which page size backs the range on later faults: not its contents, its protection or
    // its mapping, so no reference into it, now or later, can observe a difference.
    let status =
        unsafe { libc::madvise(address as *mut libc::c_void, length, libc::MADV_HUGEPAGE) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_address: usize, _length: usize) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_smaller_than_a_huge_page_is_left_alone() {
        let mut small: Vec<u64> = Vec::with_capacity(1024);
        assert_eq!(advise(small.spare_capacity_mut()).ok(), Some(0));
    }

    #[test]
    fn the_whole_huge_pages_of_a_large_region_are_advised_and_its_contents_kept() {
        let words = 8 * HUGE_PAGE / 8;
        let mut large: Vec<u64> = Vec::with_capacity(words);
        let region = std::mem::size_of_val(large.spare_capacity_mut());
        let advised = match advise(large.spare_capacity_mut()) {
            Ok(bytes) => bytes,
            // A kernel built without transparent huge pages refuses the advice.
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
                return;
            }
        };
        // Whatever the allocation's alignment, all but at most one huge page's worth is inside.
        assert!(advised % HUGE_PAGE == 0, "{advised}");
        assert!(
            advised >= region - HUGE_PAGE && advised <= region,
            "{advised} of {region}"
        );
        large.extend((0..words as u64).map(|n| n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        assert!(
            large
                .iter()
                .enumerate()
                .all(|(n, &word)| word == (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        );
    }
}
