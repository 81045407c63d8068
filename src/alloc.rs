//! A global allocator that requests transparent huge pages from Linux for large blocks.
//!
//! glibc's allocator serves blocks above its mmap threshold (128 KiB at first, raised up
//! to 32 MiB after large frees) with fresh `mmap` mappings, so such a tensor (logits,
//! gate caches, gradients) is faulted in 4 KiB page by page on first write and unmapped
//! on drop. Smaller blocks come from its heap. [`HugePageAlloc`] passes every
//! call to [`std::alloc::System`] and marks the 2 MiB-aligned part of each block of at
//! least [`HUGE_PAGE_THRESHOLD`] bytes with `madvise(MADV_HUGEPAGE)`, so the kernel
//! faults it in 2 MiB at a time. It changes nothing where transparent huge pages are
//! off (`/sys/kernel/mm/transparent_hugepage/enabled` set to `never`) and on systems
//! other than Linux.
//!
//! The `ulmfit` binary uses it; a program that links the library opts in with
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: ulmfit::alloc::HugePageAlloc = ulmfit::alloc::HugePageAlloc;
//! # fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are advised to use huge pages (16 MiB).
pub const HUGE_PAGE_THRESHOLD: usize = 16 << 20;

/// Size of a transparent huge page on x86-64.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Marks the huge-page-aligned interior of `[ptr, ptr + size)` for huge pages. Failures
/// are ignored: the advice only changes speed.
fn advise(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = (ptr as usize).div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let end = (ptr as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: `[start, end)` lies inside a block the system allocator just
            // returned, and MADV_HUGEPAGE only changes how the kernel backs those pages,
            // not their contents or their mapping.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, size);
}

/// [`System`] with `madvise(MADV_HUGEPAGE)` on large blocks; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

// SAFETY: every method forwards to `System` with the same arguments and returns its
// result unchanged; `advise` does not touch the memory's contents.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() && layout.size() >= HUGE_PAGE_THRESHOLD {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() && layout.size() >= HUGE_PAGE_THRESHOLD {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() && new_size >= HUGE_PAGE_THRESHOLD {
            advise(new, new_size);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_keep_their_contents() {
        let alloc = HugePageAlloc;
        let size = HUGE_PAGE_THRESHOLD + (6 << 20) + 123;
        let layout = Layout::from_size_align(size, 64).expect("valid layout");
        // SAFETY: the layout has a non-zero size; the block is written, grown with
        // realloc, read back and freed with the layout it was last given.
        unsafe {
            let ptr = alloc.alloc_zeroed(layout);
            assert!(!ptr.is_null());
            assert_eq!(ptr as usize % 64, 0);
            let bytes = std::slice::from_raw_parts_mut(ptr, size);
            assert!(bytes.iter().all(|&b| b == 0));
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            let grown = alloc.realloc(ptr, layout, 2 * size);
            assert!(!grown.is_null());
            let bytes = std::slice::from_raw_parts(grown, size);
            assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            alloc.dealloc(grown, Layout::from_size_align(2 * size, 64).expect("valid"));
        }
    }
}
