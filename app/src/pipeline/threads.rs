//! Background threads that outlive no quit: each takes requests from a channel, runs them with a
//! panic guard (a crash is reported as an event and the thread carries on), and is cancelled and
//! joined when its handle is dropped. A worker still inside a model when the process exits would
//! run into libraries (OpenBLAS) that `exit` is tearing down; joining first, and skipping the C
//! destructors when a worker does not stop in time, makes quitting clean.

use crossbeam_channel::{Receiver, Sender, unbounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Threads of this kind still running, process-wide.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How long dropping a handle waits for its thread.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A flag that stops one piece of work (checked inside the models' layers, between tokens, between
/// frames).
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// The message of a caught panic.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

/// A named thread serving requests of type `R`, answering with events of type `E`.
pub struct ServiceThread<R: Send + 'static, E: Send + 'static> {
    requests: Option<Sender<R>>,
    pub events: Receiver<E>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// The request being served, and whether the thread is shutting down.
    current: Arc<std::sync::Mutex<(Cancel, bool)>>,
    name: String,
}

/// What a service gets for each request: the cancel flag of that request and the event sender.
pub struct Ctx<'a, E> {
    pub cancel: &'a Cancel,
    pub events: &'a Sender<E>,
}

impl<E> Ctx<'_, E> {
    pub fn send(&self, e: E) {
        let _ = self.events.send(e);
    }
}

impl<R: Send + 'static, E: Send + 'static> ServiceThread<R, E> {
    /// Spawns `name`, which keeps `state` and calls `serve` for each request. A panic inside
    /// `serve` becomes `on_panic(message)` and the thread takes the next request.
    pub fn spawn<S: Send + 'static>(
        name: &str,
        mut state: S,
        mut serve: impl FnMut(&mut S, R, &Ctx<E>) + Send + 'static,
        on_panic: impl Fn(String) -> E + Send + 'static,
    ) -> Self {
        let (req_tx, req_rx) = unbounded::<R>();
        let (ev_tx, ev_rx) = unbounded::<E>();
        let current = Arc::new(std::sync::Mutex::new((Cancel::new(), false)));
        let shared = current.clone();
        RUNNING.fetch_add(1, Ordering::SeqCst);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                struct Running;
                impl Drop for Running {
                    fn drop(&mut self) {
                        RUNNING.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _running = Running;
                for req in req_rx {
                    let cancel = {
                        let mut c = shared.lock().unwrap_or_else(|e| e.into_inner());
                        if c.1 {
                            break; // shutting down: what is still queued is skipped
                        }
                        c.0 = Cancel::new();
                        c.0.clone()
                    };
                    let ctx = Ctx { cancel: &cancel, events: &ev_tx };
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&mut state, req, &ctx)));
                    // The heap keeps a model's freed buffers for reuse while it runs (see
                    // spatial_models::tune_allocator); between requests they go back.
                    spatial_models::release_freed_memory();
                    if let Err(p) = served {
                        if ev_tx.send(on_panic(panic_message(p))).is_err() {
                            break;
                        }
                    }
                }
            })
            .expect("spawning a thread");
        Self { requests: Some(req_tx), events: ev_rx, handle: Some(handle), current, name: name.into() }
    }

    pub fn send(&self, r: R) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(r);
        }
    }

    /// Cancels the request being served now (later requests still run).
    pub fn cancel_current(&self) {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).0.cancel();
    }

    /// Stops the thread: cancels what it is doing, closes its queue and waits up to `timeout`.
    /// Returns whether it ended.
    pub fn shutdown(&mut self, timeout: Duration) -> bool {
        {
            let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
            c.0.cancel();
            c.1 = true;
        }
        self.requests = None;
        let Some(handle) = self.handle.take() else { return true };
        let start = Instant::now();
        while !handle.is_finished() {
            if start.elapsed() > timeout {
                eprintln!("warning: the {} thread did not stop within {:.0} s", self.name, timeout.as_secs_f64());
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = handle.join();
        true
    }
}

impl<R: Send + 'static, E: Send + 'static> Drop for ServiceThread<R, E> {
    fn drop(&mut self) {
        self.shutdown(JOIN_TIMEOUT);
    }
}

/// Ends the process with `code`. When every service thread has stopped, through `exit` as usual;
/// when one is still running (a load that cannot be interrupted), without running the C libraries'
/// destructors under it (`_exit`): every file the app writes is complete by then or written to a
/// temporary that is never renamed into place.
pub fn exit_process(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if RUNNING.load(Ordering::SeqCst) == 0 {
        std::process::exit(code);
    }
    unsafe extern "C" {
        fn _exit(code: i32) -> !;
    }
    // SAFETY: `_exit` only ends the process; nothing of ours needs cleaning up at this point.
    unsafe { _exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_reported_and_the_thread_carries_on() {
        let t = ServiceThread::spawn("test-panic", 0usize, |n: &mut usize, r: u32, ctx: &Ctx<String>| {
            *n += 1;
            if r == 1 {
                panic!("boom {n}");
            }
            ctx.send(format!("ok {r}"));
        }, |m| format!("crash: {m}"));
        t.send(1);
        t.send(2);
        assert_eq!(t.events.recv_timeout(Duration::from_secs(5)).unwrap(), "crash: boom 1");
        assert_eq!(t.events.recv_timeout(Duration::from_secs(5)).unwrap(), "ok 2");
    }

    #[test]
    fn dropping_the_handle_cancels_and_joins() {
        let before = RUNNING.load(Ordering::SeqCst);
        let t = ServiceThread::spawn("test-cancel", (), |_: &mut (), _r: (), ctx: &Ctx<()>| {
            while !ctx.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }, |_| ());
        t.send(());
        t.send(()); // queued: skipped once shutting down
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        drop(t);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(RUNNING.load(Ordering::SeqCst) <= before);
    }
}
