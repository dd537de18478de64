//! Shared memory mappings of BPF maps: the ring buffers' pages and the
//! per-CPU counters, read (and, for a ring's consumer page, written) without
//! a syscall.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};

/// A shared mapping of part of a map's fd, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes from `offset`, read-only or read-write. `what`
    /// names the region in the error.
    pub fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: usize,
        writable: bool,
        what: &str,
    ) -> Result<Self> {
        let offset = libc::off_t::try_from(offset).context("mmap offset")?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping at an address the kernel chooses, of
        // an fd the caller keeps open for the mapping's life; the kernel
        // checks length, offset and protection against the map.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mmap {what}"));
        }
        let ptr = NonNull::new(addr.cast::<u8>()).context("mmap returned null")?;
        Ok(Self { ptr, len })
    }

    /// The first mapped byte: page-aligned.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

// SAFETY: the mapping is owned by this value; what may be read or written
// through it, and how, is up to its owners, which synchronise with the kernel
// through atomics.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A `BPF_F_MMAPABLE` array map and a read-only mapping of its values
/// (from offset 0, `value_size` bytes each, page-rounded), for reading
/// without a syscall.
pub struct ArrayMapping {
    /// Keeps the map, and so the mapping's backing, alive.
    _map: MapData,
    pub mapping: Mapping,
    /// The array's entries.
    pub entries: usize,
}

impl ArrayMapping {
    pub fn new(map: Map, value_size: usize, what: &str) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("{what}: not an array map")
        };
        let entries = data
            .info()
            .with_context(|| format!("{what}: map info"))?
            .max_entries() as usize;
        let page = page_size();
        let mapping = Mapping::new(
            data.fd().as_fd(),
            (entries * value_size).div_ceil(page) * page,
            0,
            false,
            what,
        )?;
        Ok(Self {
            _map: data,
            mapping,
            entries,
        })
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}
