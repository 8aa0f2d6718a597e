//! SQLite access for the reference backends: one writer connection (writes are serialized), a
//! few reader connections (WAL lets them read while the writer writes), every call on the
//! blocking pool so async threads never wait on the disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::ApiError;

/// Readers kept open between calls; more are opened under load and closed after use.
const IDLE_READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema versions, applied in order on start; `PRAGMA user_version` records how far a file got.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    nickname      TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    phone         TEXT UNIQUE,
    description   TEXT NOT NULL DEFAULT '',
    avatar_id     TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL
);
CREATE TABLE verify_codes (
    id         TEXT PRIMARY KEY,
    phone      TEXT NOT NULL,
    code       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX verify_codes_by_phone ON verify_codes (phone, created_at);
CREATE TABLE friend_events (
    id         TEXT PRIMARY KEY,
    applicant  TEXT NOT NULL,
    respondent TEXT NOT NULL,
    status     INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 agreed, 2 refused
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX friend_events_one_pending ON friend_events (applicant, respondent) WHERE status = 0;
CREATE INDEX friend_events_by_respondent ON friend_events (respondent, status);
CREATE TABLE friends (
    user_id    TEXT NOT NULL,
    peer_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
CREATE TABLE chat_sessions (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    is_group   INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE chat_members (
    session_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    read_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, user_id)
);
CREATE INDEX chat_members_by_user ON chat_members (user_id);
CREATE TABLE messages (
    rowid         INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    session_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    sender_id     TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    message_type  INTEGER NOT NULL,
    text          TEXT NOT NULL,
    file_id       TEXT NOT NULL,
    file_name     TEXT NOT NULL,
    file_size     INTEGER NOT NULL,
    UNIQUE (session_id, seq),
    UNIQUE (sender_id, client_msg_id)
);
CREATE INDEX messages_by_time ON messages (session_id, created_at);
CREATE VIRTUAL TABLE messages_fts USING fts5 (text, content = 'messages', content_rowid = 'rowid', tokenize = 'trigram');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, text) VALUES (new.rowid, new.text);
END;
CREATE TABLE files (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- File names and ownership per upload, not per content (the first uploader's name leaked).
CREATE TABLE uploads (
    owner      TEXT NOT NULL,
    file_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner, file_id)
);
CREATE INDEX uploads_by_file ON uploads (file_id);
INSERT OR IGNORE INTO uploads (owner, file_id, name, size, created_at)
    SELECT owner, id, name, size, created_at FROM files;
DROP TABLE files;
-- Who may read a file: sessions whose messages reference it, and profile pictures.
CREATE INDEX messages_by_file ON messages (file_id);
CREATE INDEX users_by_avatar ON users (avatar_id);
"#,
];

#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("--database: cannot create {}: {e}", dir.display()))?;
        }
        let mut writer =
            open(path).map_err(|e| format!("--database: cannot open {}: {e}", path.display()))?;
        migrate(&mut writer).map_err(|e| format!("{}: migration failed: {e}", path.display()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer, on the blocking pool;
    /// commits when `f` returns `Ok`, rolls back otherwise.
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, ApiError> + Send + 'static,
    {
        self.write_recording(move |tx| f(tx).map(Ok)).await
    }

    /// Like [`write`](Self::write), for checks whose refusal must itself be stored (a wrong
    /// verification code counts an attempt): an inner `Err` from `f` is committed and then
    /// returned; an outer `Err` rolls back.
    pub async fn write_recording<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<Result<T, ApiError>, ApiError>
            + Send
            + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let verdict = f(&tx)?;
            tx.commit()?;
            verdict
        })
        .await
    }

    /// Runs `f` on the writer outside the async pools, for start-up passes over stored rows.
    pub fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&inner.path)?,
            };
            let out = f(&conn);
            let mut readers = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if readers.len() < IDLE_READERS {
                readers.push(conn);
            }
            out
        })
        .await
    }
}

/// Runs `f` on tokio's blocking pool (SQLite, the file store): the one place a handler's
/// blocking work goes, with a failed task answered INTERNAL.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("blocking task failed: {e}")))?
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_trigram_search_finds_chinese() {
        let dir = std::env::temp_dir().join(format!("im-db-test-{}", std::process::id()));
        let path = dir.join("t.db");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut conn = open(&path).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO messages (id, session_id, seq, sender_id, client_msg_id, created_at, \
             message_type, text, file_id, file_name, file_size) \
             VALUES ('m1', 's', 1, 'u', 'c', 0, 0, '今天天气很好，我们去公园吧', '', '', 0)",
            [],
        )
        .unwrap();
        let hits: i64 = conn
            .query_row(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '\"去公园\"'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn files_of_the_first_schema_become_uploads() {
        let dir = std::env::temp_dir().join(format!("im-db-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let mut conn = open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO files (id, name, size, owner, created_at) VALUES ('f', 'a.png', 3, 'u', 7)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let row: (String, String, String, i64) = conn
            .query_row("SELECT owner, file_id, name, size FROM uploads", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!(row, ("u".into(), "f".into(), "a.png".into(), 3));
        let _ = std::fs::remove_dir_all(dir);
    }
}
