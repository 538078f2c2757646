//! The heap policy of `spatial_models::tune_allocator`: a model's large buffers, freed and
//! allocated again on a worker thread, come back without page faults, and
//! `release_freed_memory` hands them to the kernel afterwards. Its own process (no test harness):
//! the policy must be set before any other thread allocates, as `main` does.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    spatial_models::tune_allocator();
    // 96 MiB: over glibc's mmap limits on any thread (32 MiB on the main one, 64 MiB on others).
    const LEN: usize = (96 << 20) / 4;
    const PAGES: u64 = (96 << 20) / 4096;
    std::thread::spawn(|| {
        let first = std::hint::black_box(vec![1f32; LEN]);
        drop(first);
        let before = minor_faults();
        let second = std::hint::black_box(vec![2f32; LEN]);
        let faults = minor_faults() - before;
        assert_eq!(second[LEN - 1], 2.0);
        assert!(faults < PAGES / 10, "a freed 96 MiB buffer allocated again on a worker thread took {faults} page faults of {PAGES} pages: the heap did not keep it");
        drop(second);
        let held = resident_bytes();
        spatial_models::release_freed_memory();
        let released = held.saturating_sub(resident_bytes());
        assert!(released >= 64 << 20, "release_freed_memory gave back {} MiB of a freed 96 MiB buffer", released >> 20);
        println!("allocator: reuse took {faults} page faults of {PAGES}; release gave back {} MiB", released >> 20);
    })
    .join()
    .expect("the allocator checks failed");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {}

/// This thread's minor page faults (field 10 of /proc/thread-self/stat).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("reading /proc/thread-self/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    rest.split(' ').nth(10 - 3).and_then(|f| f.parse().ok()).expect("minflt in /proc/thread-self/stat")
}

/// The process's resident memory (/proc/self/statm, in pages of 4 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm.split(' ').nth(1).and_then(|f| f.parse().ok()).expect("resident pages in /proc/self/statm");
    pages * 4096
}
