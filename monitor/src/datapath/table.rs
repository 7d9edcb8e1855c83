//! The flow table's bulk operations, which aya 0.14 does not wrap: one
//! `BPF_MAP_LOOKUP_BATCH` per few thousand entries instead of two syscalls
//! per entry, and `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which removes an entry
//! and returns its last value in one step (so nothing counted between a
//! read and a delete is lost).
//!
//! Commands and `union bpf_attr` layouts: include/uapi/linux/bpf.h; the
//! hash table's batch cursor is a `u32` bucket index
//! (kernel/bpf/hashtab.c, `__htab_map_lookup_and_delete_batch`).

use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries per batch call. A batch must hold a whole hash bucket (ENOSPC
/// otherwise); buckets hold a handful of entries.
const BATCH: usize = 4096;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<()> {
    // SAFETY: `attr` points to a live, initialised attribute struct of
    // `size` bytes whose pointers reference live buffers of the sizes the
    // command expects (each caller below).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of a hash map, in batches.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    lookup_each(fd, |k: &K, v: &V| out.push((*k, *v)))?;
    Ok(out)
}

/// Calls `f` with every entry of a hash map, read in batches into buffers
/// of [`BATCH`] entries (the memory used does not grow with the map).
/// Returns how many entries there were.
pub fn lookup_each<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&K, &V),
) -> std::io::Result<usize> {
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(BATCH);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(BATCH);
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&mut cursor_in as *mut u32) as u64
            },
            out_batch: (&mut cursor_out as *mut u32) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let res = bpf(
            BPF_MAP_LOOKUP_BATCH,
            (&mut attr as *mut BatchAttr).cast(),
            size_of::<BatchAttr>(),
        );
        let done = match res {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(BATCH);
        for i in 0..n {
            // SAFETY: the kernel wrote `count` keys and values; both types
            // are Pod (every bit pattern valid).
            let (k, v) = unsafe {
                (
                    keys.as_ptr().add(i).read().assume_init(),
                    values.as_ptr().add(i).read().assume_init(),
                )
            };
            f(&k, &v);
        }
        total += n;
        if done {
            return Ok(total);
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// Removes `key` and returns the value it had at that moment; `None` when
/// it was not there.
pub fn lookup_and_delete<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    key: &K,
) -> std::io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: (key as *const K) as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(
        BPF_MAP_LOOKUP_AND_DELETE_ELEM,
        (&mut attr as *mut ElemAttr).cast(),
        size_of::<ElemAttr>(),
    ) {
        // SAFETY: the kernel wrote the value (Pod).
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
