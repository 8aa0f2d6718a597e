//! The log's writer thread, as nginx's `access_log … buffer= flush=`: a line leaves the caller
//! as one copy into a shared buffer (no allocation, no system call, no waiting on the output); a
//! thread of its own writes the buffer out when it holds [`BATCH`] bytes, every [`FLUSH_EVERY`]
//! otherwise, and at the stop. Lines stay whole and in the order they were logged. Past
//! `max_queued` bytes (an output that does not keep up, a pipe nobody reads) lines are dropped
//! and counted, never waited for.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer: that one allocates and
//! sends every line through a channel, wakes its thread for each, and flushes whenever its
//! channel runs empty (under load: a `write` per line); measured on the bridge with the access
//! log on, it cost more CPU than writing to stderr directly (docs/BENCHMARKS.md, "The access log").

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// What one `write` of the thread carries when lines keep coming.
pub const BATCH: usize = 64 * 1024;
/// The longest a line waits in the buffer when few come.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a batch is full, or the stop.
    wake: Condvar,
    max_queued: usize,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    stopping: bool,
    /// The thread has ended: nothing will write what is appended now.
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.stopped || state.lines.len() + line.len() > self.max_queued {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let below = state.lines.len() < BATCH;
        state.lines.extend_from_slice(line);
        let full = below && state.lines.len() >= BATCH;
        drop(state);
        if full {
            self.wake.notify_one();
        }
    }
}

/// Where the log layer writes (a cheap handle; `MakeWriter`).
#[derive(Clone)]
pub struct LogQueue(Arc<Shared>);

/// One line's writer, as `tracing_subscriber` asks for one per event.
pub struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
    }
}

impl LogQueue {
    /// Lines dropped so far because the buffer was full (or the writer stopped).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread; dropping this writes out what is buffered and ends it.
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the thread writing to `out`, with room for `max_queued` bytes of lines.
pub fn start<W: Write + Send + 'static>(
    out: W,
    max_queued: usize,
) -> std::io::Result<(LogQueue, LogWriter)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::with_capacity(BATCH),
            ..State::default()
        }),
        wake: Condvar::new(),
        max_queued,
        dropped: AtomicU64::new(0),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || run(&shared, out)
        })?;
    Ok((
        LogQueue(shared.clone()),
        LogWriter {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = {
            let mut state = shared.lock();
            if state.lines.len() < BATCH && !state.stopping {
                state = shared
                    .wake
                    .wait_timeout(state, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.lines, &mut batch);
            if state.stopping && batch.is_empty() {
                state.stopped = true;
            }
            state.stopping
        };
        if batch.is_empty() {
            if stopping {
                let _ = out.flush();
                return;
            }
            continue;
        }
        // An output that fails loses this batch; there is nowhere else to say so.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // A burst may have grown it to `max_queued`: give that back.
        batch.shrink_to(4 * BATCH);
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// What the thread was given; while `gate` is held, every write waits.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            self.writes.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.bytes.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn log(queue: &LogQueue, range: std::ops::Range<usize>) {
        // One `write` per line, as the log layer does.
        for i in range {
            let line = format!("line {i}\n");
            queue.make_writer().write_all(line.as_bytes()).unwrap();
        }
    }

    #[test]
    fn lines_from_many_threads_are_whole_in_order_and_all_there_at_the_stop() {
        let sink = Sink::default();
        let (queue, writer) = start(sink.clone(), 64 << 20).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let queue = queue.clone();
                s.spawn(move || log(&queue, t * 50_000..(t + 1) * 50_000));
            }
        });
        drop(writer);
        let lines = sink.lines();
        assert_eq!(lines.len(), 200_000);
        assert_eq!(queue.dropped(), 0);
        // Each thread's lines in its order, none torn.
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
                .filter(|n| (t * 50_000..(t + 1) * 50_000).contains(n))
                .collect();
            assert_eq!(mine, (t * 50_000..(t + 1) * 50_000).collect::<Vec<_>>());
        }
        // Batched: far fewer writes than lines.
        assert!(sink.writes.load(Ordering::Relaxed) < 2_000);
    }

    #[test]
    fn a_lone_line_is_written_within_the_flush_interval() {
        let sink = Sink::default();
        let (queue, _writer) = start(sink.clone(), 1 << 20).unwrap();
        log(&queue, 0..1);
        let started = Instant::now();
        while sink.lines().is_empty() {
            assert!(started.elapsed() < FLUSH_EVERY * 20, "not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_output_that_does_not_keep_up_costs_lines_never_the_caller_s_time() {
        let sink = Sink::default();
        let (queue, writer) = start(sink.clone(), 16 * 1024).unwrap();
        let held = sink.gate.lock().unwrap();
        let started = Instant::now();
        log(&queue, 0..100_000);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the caller waited"
        );
        drop(held);
        drop(writer);
        let written = sink.lines();
        assert_eq!(written.len() as u64 + queue.dropped(), 100_000);
        // Room for the buffer (16 KiB) and the batch the thread held when the output stuck.
        assert!(queue.dropped() >= 90_000, "dropped {}", queue.dropped());
        let numbers: Vec<usize> = written
            .iter()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
    }
}
