//! The revocation file (`auth.revocation_file`): an append-only log written by one thread of its
//! own, never on the request path. A revocation is in effect (in memory) at once; the writer
//! appends every revocation queued since its last write and syncs them with one `fdatasync`, so a
//! burst of logouts costs one sync, not one rewrite of the list each. [`Persisted::wait`] returns
//! once the sync that covers a revocation returned: that is when it survives a crash, and when
//! admin revoke and PushService `Revoke`/`Kick` answer. When the log holds more dead or repeated
//! lines than live entries, the writer rewrites it from the in-memory list (temporary file,
//! fsync, rename, fsync of the directory), and after a failed write it does the same, so the file
//! never misses a revocation that a later success acknowledged.
//!
//! Format, version 2: a header line, then one line per revocation, `<until> <sid as a JSON
//! string>`; a repeated sid keeps its latest end. A torn last line (a crash mid-append, never
//! acknowledged) is ignored. Version 1 (one JSON object, written whole on every change) is read
//! and rewritten as version 2.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

const HEADER: &str = "im-revocations 2\n";
/// Compact when the log has this many more lines than live entries (and twice as many).
const COMPACT_SLACK: usize = 10_000;
/// After a failed write, the next full rewrite is tried this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The in-memory list the log mirrors: sid -> unix seconds the denial ends.
pub type Entries = Arc<RwLock<HashMap<String, u64>>>;

/// What the writer has done so far.
#[derive(Clone, Debug, Default)]
struct Written {
    /// Every revocation numbered up to this one is on disk.
    durable: u64,
    /// The last failed write: the highest number it covered and why.
    failed: Option<(u64, Arc<str>)>,
}

/// Queued for the writer.
#[derive(Default)]
struct Queue {
    lines: Vec<(String, u64)>,
    /// Number of the last revocation queued.
    queued: u64,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    written: watch::Sender<Written>,
}

/// The open log and its writer thread; stopping (drop) writes what is queued first.
pub struct RevocationLog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A revocation's way to disk: [`wait`](Self::wait) until it is synced.
#[must_use = "wait on it before acknowledging a revocation, or drop it knowingly"]
pub struct Persisted(Option<(watch::Receiver<Written>, u64)>);

impl Persisted {
    /// Nothing to wait for (no file configured).
    pub fn in_memory() -> Self {
        Self(None)
    }

    /// Returns once the revocation is on disk, or the write's error, or a timeout's.
    pub async fn wait(self, timeout: Duration) -> Result<(), String> {
        let Some((mut rx, seq)) = self.0 else {
            return Ok(());
        };
        let outcome = tokio::time::timeout(timeout, async {
            let w = rx
                .wait_for(|w| {
                    w.durable >= seq || w.failed.as_ref().is_some_and(|(hi, _)| *hi >= seq)
                })
                .await
                .map_err(|_| "the revocation writer stopped".to_owned())?;
            if w.durable >= seq {
                return Ok(());
            }
            Err(w
                .failed
                .as_ref()
                .map_or_else(String::new, |(_, e)| e.to_string()))
        })
        .await;
        outcome.unwrap_or_else(|_| Err(format!("not written within {timeout:?}")))
    }
}

/// The log file, read and open for appending, before its writer starts.
pub struct LogFile(Writer);

impl LogFile {
    /// Reads `file` into a list (a missing file is empty), keeping at most `max_entries` of the
    /// longest-lived live ones, and opens it for appending (rewritten first when it was version
    /// 1 or missing). Errors name the file and what is wrong with it.
    pub fn open(
        file: &Path,
        max_entries: usize,
        now: u64,
    ) -> Result<(Self, HashMap<String, u64>), String> {
        let named = |what: String| format!("auth.revocation_file {}: {what}", file.display());
        let (mut live, rewrite, lines) = match std::fs::read(file) {
            Ok(bytes) => parse(&bytes).map_err(named)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), true, 0),
            Err(e) => return Err(named(format!("cannot read it: {e}"))),
        };
        live.retain(|_, until| *until >= now);
        if live.len() > max_entries {
            // Over the bound (a smaller max_revoked than before): keep the longest-lived.
            let mut all: Vec<(String, u64)> = live.into_iter().collect();
            all.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
            all.truncate(max_entries);
            live = all.into_iter().collect();
        }
        let mut writer = Writer {
            path: file.to_owned(),
            out: None,
            lines,
        };
        if rewrite {
            writer
                .rewrite(&live)
                .map_err(|e| named(format!("cannot write it: {e}")))?;
        } else {
            // Proves the file can be written before the gateway relies on it.
            writer
                .reopen()
                .map_err(|e| named(format!("cannot write it: {e}")))?;
        }
        Ok((Self(writer), live))
    }
}

impl RevocationLog {
    /// Starts the writer thread for `file`, which mirrors `entries` (read for compaction).
    pub fn start(file: LogFile, entries: Entries) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            written: watch::channel(Written::default()).0,
        });
        let thread = std::thread::Builder::new()
            .name("revocation-log".into())
            .spawn({
                let shared = shared.clone();
                move || run(file.0, &entries, &shared)
            })
            .map_err(|e| format!("auth.revocation_file: cannot start its writer thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues revocations already applied to the list; the handle covers them all.
    pub fn append(&self, entries: impl IntoIterator<Item = (String, u64)>) -> Persisted {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = q.lines.len();
        q.lines.extend(entries);
        q.queued += (q.lines.len() - before) as u64;
        let seq = q.queued;
        drop(q);
        self.shared.wake.notify_one();
        Persisted(Some((self.shared.written.subscribe(), seq)))
    }
}

impl Drop for RevocationLog {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file side of the writer thread.
struct Writer {
    path: PathBuf,
    out: Option<File>,
    /// Lines in the file now.
    lines: usize,
}

impl Writer {
    fn reopen(&mut self) -> std::io::Result<()> {
        self.out = Some(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }

    fn append(&mut self, lines: &[(String, u64)]) -> std::io::Result<()> {
        if self.out.is_none() {
            self.reopen()?;
        }
        let Some(out) = self.out.as_mut() else {
            return Err(std::io::Error::other("log not open"));
        };
        let mut buf = BufWriter::with_capacity(64 * 1024, &*out);
        for (sid, until) in lines {
            write_line(&mut buf, sid, *until)?;
        }
        buf.flush()?;
        drop(buf);
        out.sync_data()?;
        self.lines += lines.len();
        Ok(())
    }

    /// The whole list, written atomically in place of the log.
    fn rewrite(&mut self, entries: &HashMap<String, u64>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let written = (|| {
            let mut buf = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            buf.write_all(HEADER.as_bytes())?;
            for (sid, until) in entries {
                write_line(&mut buf, sid, *until)?;
            }
            buf.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            self.out = None;
            return written;
        }
        self.lines = entries.len();
        self.reopen()
    }
}

fn write_line(out: &mut impl Write, sid: &str, until: u64) -> std::io::Result<()> {
    // A JSON string: any sid, one line.
    let quoted = serde_json::to_string(sid).map_err(std::io::Error::other)?;
    writeln!(out, "{until} {quoted}")
}

/// The writer thread: waits for queued revocations, writes them all with one sync, and says so.
fn run(mut file: Writer, entries: &Entries, shared: &Shared) {
    let mut rewrite_due = false;
    loop {
        let (lines, queued, stop) = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while q.lines.is_empty() && !q.stop && !rewrite_due {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.lines.is_empty() && !q.stop && rewrite_due {
                // A failed write waits a little before it is tried again.
                q = shared
                    .wake
                    .wait_timeout(q, RETRY_AFTER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            (std::mem::take(&mut q.lines), q.queued, q.stop)
        };
        let live = entries.read().unwrap_or_else(PoisonError::into_inner).len();
        rewrite_due |= file.lines > 2 * live + COMPACT_SLACK;
        let result = if rewrite_due {
            // Everything queued so far is in the list already: a copy of it covers all of it.
            let copy = entries
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            file.rewrite(&copy)
        } else if lines.is_empty() {
            Ok(())
        } else {
            file.append(&lines)
        };
        shared.written.send_modify(|w| match &result {
            Ok(()) => w.durable = queued,
            Err(e) => {
                let why: Arc<str> = format!(
                    "auth.revocation_file {}: cannot write it: {e}",
                    file.path.display()
                )
                .into();
                tracing::error!(
                    "{why} (the revocations are in effect, but a restart would forget them)"
                );
                w.failed = Some((queued, why));
            }
        });
        rewrite_due = result.is_err();
        if stop {
            return;
        }
    }
}

/// A revocation file's entries (latest end per sid), whether it must be rewritten (version 1),
/// and how many lines it has.
fn parse(bytes: &[u8]) -> Result<(HashMap<String, u64>, bool, usize), String> {
    if bytes.first() == Some(&b'{') {
        return parse_v1(bytes).map(|entries| (entries, true, 0));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not a revocation file (not UTF-8: {e}); fix or remove it"))?;
    let Some(body) = text.strip_prefix(HEADER) else {
        return Err(format!(
            "not a revocation file (its first line is not `{}`); fix or remove it",
            HEADER.trim_end()
        ));
    };
    let mut entries = HashMap::new();
    let mut lines = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let Some(end) = rest.find('\n') else {
            // A torn last line: its append never synced, so it was never acknowledged.
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        lines += 1;
        let (sid, until) = parse_line(line).ok_or_else(|| {
            format!(
                "line {} is not `<until> \"<sid>\"`: {line:?}; fix or remove it",
                lines + 1
            )
        })?;
        let slot = entries.entry(sid).or_insert(until);
        *slot = (*slot).max(until);
    }
    Ok((entries, false, lines))
}

fn parse_line(line: &str) -> Option<(String, u64)> {
    let (until, sid) = line.split_once(' ')?;
    Some((serde_json::from_str(sid).ok()?, until.parse().ok()?))
}

/// Version 1: `{"version": 1, "revoked": {"<sid>": <until>, ...}}`.
fn parse_v1(bytes: &[u8]) -> Result<HashMap<String, u64>, String> {
    #[derive(serde::Deserialize)]
    struct Stored {
        version: u32,
        revoked: HashMap<String, u64>,
    }
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a revocation file ({e}); fix or remove it"))?;
    if stored.version != 1 {
        return Err(format!(
            "version {} is not supported (1 and 2 are)",
            stored.version
        ));
    }
    Ok(stored.revoked)
}
