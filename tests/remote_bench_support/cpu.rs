//! CPU time of this process or of its waited-for children, from `getrusage` (microseconds).
//! Shared by the benchmarks (included with `#[path]`).

use std::time::Duration;

pub const RUSAGE_SELF: i32 = 0;
pub const RUSAGE_CHILDREN: i32 = -1;

/// CPU time (user + sys) of this process (`RUSAGE_SELF`) or of its waited-for children
/// (`RUSAGE_CHILDREN`), from `getrusage`, declared here because the `libc` crate is not a
/// dependency.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn cpu_time(who: i32) -> Option<Duration> {
    #[repr(C)]
    struct Timeval {
        sec: i64,
        usec: i64,
    }
    #[repr(C)]
    struct Rusage {
        utime: Timeval,
        stime: Timeval,
        rest: [i64; 14],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    let mut r = Rusage {
        utime: Timeval { sec: 0, usec: 0 },
        stime: Timeval { sec: 0, usec: 0 },
        rest: [0; 14],
    };
    // SAFETY: `r` is a valid, writable `struct rusage` of the 64-bit Linux layout.
    if unsafe { getrusage(who, &mut r) } != 0 {
        return None;
    }
    let us = |t: &Timeval| t.sec as u64 * 1_000_000 + t.usec as u64;
    Some(Duration::from_micros(us(&r.utime) + us(&r.stime)))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn cpu_time(_who: i32) -> Option<Duration> {
    None
}
