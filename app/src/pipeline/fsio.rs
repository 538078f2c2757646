//! Files the app writes appear whole or not at all: everything goes to a temporary file in the
//! destination's folder (so the rename cannot cross file systems), is flushed to disk, and is
//! renamed over the destination. A failed or killed write leaves the previous file intact; the
//! temporaries of a process that died are removed by [`remove_stale_temporaries`].

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Temporaries start with this, then the writing process id: `.sv-tmp-PID-N-NAME`.
const TEMP_PREFIX: &str = ".sv-tmp-";

fn temp_path(dest: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()))
}

/// Says why a destination cannot be written before any work is done: its folder is missing or
/// not writable, or it names a folder. Messages name the path as the user gave it.
pub fn check_writable(dest: &Path) -> Result<()> {
    if dest.as_os_str().is_empty() {
        bail!("no output path given");
    }
    if dest.is_dir() {
        bail!("{}: is a folder; give a file name", dest.display());
    }
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{}: the folder {} does not exist", dest.display(), dir.display());
    }
    // Temporaries of runs killed mid-write are of no use to anyone.
    remove_stale_temporaries(dir);
    // Creating (and removing) a temporary is the only reliable test (read-only mounts, ACLs).
    let probe = temp_path(dest);
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{}: cannot write in {} ({})", dest.display(), dir.display(), plain_io_error(&e)),
    }
}

/// The OS error without Rust's "(os error N)" suffix.
pub fn plain_io_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Removes a temporary when dropped unless it was renamed into place.
struct PendingTemp(Option<PathBuf>);

impl Drop for PendingTemp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `dest` through `write` on a buffered temporary file, then renames it into place.
/// Errors (a full disk, a read-only folder) name `dest` and leave any previous `dest` untouched.
pub fn write_atomic(dest: &Path, write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>) -> Result<()> {
    let tmp = temp_path(dest);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("{}: cannot write ({})", dest.display(), plain_io_error(&e)))?;
    let mut pending = PendingTemp(Some(tmp.clone()));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let result = write(&mut out).and_then(|()| {
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    });
    if let Err(e) = result {
        return Err(name_io_error(e, dest));
    }
    drop(out);
    std::fs::rename(&tmp, dest).map_err(|e| anyhow::anyhow!("{}: cannot write ({})", dest.display(), plain_io_error(&e)))?;
    pending.0 = None;
    Ok(())
}

/// An error of a write, re-said with the destination's name instead of the temporary's.
fn name_io_error(e: anyhow::Error, dest: &Path) -> anyhow::Error {
    let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => anyhow::anyhow!("{}: cannot write ({})", dest.display(), plain_io_error(io)),
        None => {
            let text = format!("{e:#}");
            if text.contains(TEMP_PREFIX) { anyhow::anyhow!("{}: cannot write", dest.display()) } else { e.context(format!("{}: cannot write", dest.display())) }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporaries in `dir` left by processes that no longer run (killed mid-write).
/// Returns how many bytes were freed.
pub fn remove_stale_temporaries(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut freed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(e.path()).is_ok() {
            freed += len;
        }
    }
    freed
}

/// Makes a write past the file-size limit (`ulimit -f`) fail with "File too large", reported and
/// cleaned up like a full disk, instead of killing the process with SIGXFSZ mid-file.
pub fn report_file_size_limits_as_errors() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGXFSZ: i32 = 25;
        const SIG_IGN: usize = 1;
        // SAFETY: installs the "ignore" disposition for one signal, before any threads start.
        unsafe {
            signal(SIGXFSZ, SIG_IGN);
        }
    }
}

/// Creates a folder (and its parents), naming it when that fails.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("sv-unit-fsio-{name}-")).tempdir().unwrap()
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file_and_leaves_no_temporary() {
        let dir = tmp("fail");
        let dir = dir.path();
        let dest = dir.join("points.ply");
        write_atomic(&dest, |w| Ok(w.write_all(b"good")?)).unwrap();
        let err = write_atomic(&dest, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device").into())
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("points.ply") && msg.contains("No space left on device") && !msg.contains(TEMP_PREFIX), "{msg}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn files_follow_the_umask_like_any_other_program() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("mode");
        let dir = dir.path();
        let dest = dir.join("a.bin");
        write_atomic(&dest, |w| Ok(w.write_all(b"x")?)).unwrap();
        let reference = dir.join("reference");
        std::fs::write(&reference, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), mode(&reference));
    }

    #[test]
    fn destinations_are_checked_before_the_work() {
        let dir = tmp("check");
        let dir = dir.path();
        check_writable(&dir.join("out.safetensors")).unwrap();
        let err = format!("{:#}", check_writable(&dir.join("missing/out.safetensors")).unwrap_err());
        assert!(err.contains("missing/out.safetensors") && err.contains("does not exist"), "{err}");
        let err = format!("{:#}", check_writable(&dir).unwrap_err());
        assert!(err.contains("is a folder"), "{err}");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tmp("stale");
        let dir = dir.path();
        // A pid far above pid_max cannot be running.
        std::fs::write(dir.join(format!("{TEMP_PREFIX}999999999-0-cache.safetensors")), vec![0u8; 1000]).unwrap();
        let mine = dir.join(format!("{TEMP_PREFIX}{}-0-x", std::process::id()));
        std::fs::write(&mine, b"in progress").unwrap();
        std::fs::write(dir.join("keep.safetensors"), b"k").unwrap();
        assert_eq!(remove_stale_temporaries(&dir), 1000);
        assert!(mine.exists() && dir.join("keep.safetensors").exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    }
}
