//! The global allocator: mimalloc, called the way its fast path wants.
//!
//! The `mimalloc` crate's allocator asks `mi_malloc_aligned` for every
//! allocation, whatever its alignment; that path looks for a block of the
//! size that happens to be aligned and falls back to a generic search.
//! Measured under callgrind on the proxy (BENCHMARKS.md, issue 23): 64
//! allocations per forwarded request at ~73 instructions each, plus the
//! fallback's. Every mimalloc block of 16 bytes or more is 16-byte aligned
//! and every smaller one 8-byte aligned (its size classes), so, as Rust's
//! own `System` allocator does with `malloc`, an allocation whose alignment
//! is at most 16 and at most its size goes to plain `mi_malloc`; anything
//! else keeps the aligned calls. The `no_thp` feature of `libmimalloc-sys`
//! keeps transparent huge pages off (idle memory, see the footprint
//! benchmark).
#![allow(unsafe_code)] // a GlobalAlloc is unsafe by definition: four FFI calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this size has.
const MIN_ALIGN: usize = 16;

/// Whether mimalloc's natural alignment covers `layout` (std's rule for `malloc`).
fn natural(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

/// The process's allocator (see the module docs).
pub struct Mimalloc;

// SAFETY: each method forwards to the mimalloc call with the same contract
// (a block of at least `size` bytes aligned to at least `align`, or null);
// `natural` only picks the unaligned call where mimalloc's size classes
// guarantee the alignment. `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if natural(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if natural(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe {
            if natural(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byte(i: usize) -> u8 {
        u8::try_from(i % 251).unwrap_or(0)
    }

    /// Every size and alignment a Rust program asks for comes back aligned
    /// (zeroed when asked) and keeps its bytes through reallocations up and
    /// down.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=300).chain([511, 512, 4095, 4096, 70_000]) {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: the test's own blocks, each freed once with the
                // layout it has then.
                unsafe {
                    let zeroed = a.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size}/{align}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    a.dealloc(zeroed, layout);

                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                    for i in 0..size {
                        *p.add(i) = byte(i);
                    }
                    let bigger = size * 3 + 17;
                    let q = a.realloc(p, layout, bigger);
                    assert_eq!(q as usize % align, 0, "realloc {size}->{bigger}/{align}");
                    assert!((0..size).all(|i| *q.add(i) == byte(i)));
                    let smaller = (size / 2).max(1);
                    let grown = Layout::from_size_align(bigger, align).expect("layout");
                    let r = a.realloc(q, grown, smaller);
                    assert_eq!(r as usize % align, 0, "realloc {bigger}->{smaller}/{align}");
                    assert!((0..smaller).all(|i| *r.add(i) == byte(i)));
                    a.dealloc(r, Layout::from_size_align(smaller, align).expect("layout"));
                }
            }
        }
    }
}
