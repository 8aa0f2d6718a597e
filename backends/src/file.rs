//! `im.file.v1.FileService`: files stored on disk by content (`<dir>/<id[0..2]>/<id>`, id = hex
//! SHA-256), one `uploads` row per uploader and file in SQLite (its name and size). A write goes
//! to a temporary file that is synced and then renamed, so a failed upload never leaves a
//! partial file under an id. Who may read a file: [`crate::file_access`].

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use im_proto::im::file::v1::file_service_server::FileService;
use im_proto::im::file::v1::*;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::file_access::{not_readable, readable_name};
use crate::util::{file_id, unix_millis};

pub const SERVICE_NAME: &str = "im.file.v1.FileService";
/// Files per multi-file call.
const MAX_FILES_PER_CALL: usize = 20;
/// Bytes a reply spends on one file besides its content (id, name, framing), generously.
const PER_FILE_OVERHEAD: usize = 512;

#[derive(Clone)]
pub struct FileSvc {
    pub db: Db,
    pub store: Arc<FileStore>,
    /// Largest reply, in bytes: the server's `max_message`, which agrees with the upstream's.
    pub max_reply: usize,
    /// Bytes one user may have stored, each distinct file counted once.
    pub max_storage_per_user: u64,
}

pub struct FileStore {
    dir: PathBuf,
    /// Largest file content accepted, in bytes.
    pub max_file_size: usize,
}

impl FileStore {
    pub fn open(dir: &Path, max_file_size: usize) -> Result<Self, String> {
        std::fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| format!("--files-dir: cannot create {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            max_file_size,
        })
    }

    /// The id `content` is stored under.
    pub fn id_of(content: &[u8]) -> String {
        hex::encode(Sha256::digest(content))
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(&id[..2]).join(id)
    }

    /// Stores `content` under `id` (its hash) unless already stored.
    fn put(&self, id: &str, content: &[u8]) -> std::io::Result<()> {
        let path = self.path_of(id);
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join(&id[..2]))?;
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{id}.{:08x}", rand::random::<u32>()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn get(&self, id: &str) -> Result<Vec<u8>, ApiError> {
        match std::fs::read(self.path_of(id)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_readable("file_id", id)),
            other => Ok(other?),
        }
    }
}

/// A plain file name: no directories, no `..`, no control characters, 1..=255 bytes.
fn file_name(value: &str) -> Result<&str, ApiError> {
    let v = value.trim();
    let bad = v.is_empty()
        || v.len() > 255
        || v == "."
        || v == ".."
        || v.contains(['/', '\\'])
        || v.chars().any(char::is_control);
    if bad {
        return Err(ApiError::invalid(
            "file_name must be a plain name (1 to 255 bytes, no `/`, `\\`, `..` or control characters)",
        ));
    }
    Ok(v)
}

/// One file of an upload, checked and hashed.
struct Upload {
    id: String,
    name: String,
    content: Vec<u8>,
}

/// Bytes `owner` would hold with `new` (id, size) added, each distinct file once.
fn storage_after(conn: &Connection, owner: &str, new: &[(String, u64)]) -> Result<u64, ApiError> {
    let used: u64 = conn.query_row(
        "SELECT COALESCE(SUM(size), 0) FROM uploads WHERE owner = ?1",
        [owner],
        |r| r.get(0),
    )?;
    let mut added = 0;
    let mut seen = HashSet::new();
    for (id, size) in new {
        let held = conn
            .query_row(
                "SELECT 1 FROM uploads WHERE owner = ?1 AND file_id = ?2",
                params![owner, id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !held && seen.insert(id.as_str()) {
            added += size;
        }
    }
    Ok(used + added)
}

impl FileSvc {
    fn check_upload(&self, data: FileUploadData) -> Result<Upload, ApiError> {
        let name = file_name(&data.file_name)?.to_owned();
        if data.file_content.is_empty() {
            return Err(ApiError::invalid("file_content is empty"));
        }
        if data.file_content.len() > self.store.max_file_size {
            return Err(ApiError::invalid(format!(
                "file_content is {} bytes; the limit is {} bytes",
                data.file_content.len(),
                self.store.max_file_size
            )));
        }
        Ok(Upload {
            id: FileStore::id_of(&data.file_content),
            name,
            content: data.file_content,
        })
    }

    fn check_quota(&self, total: u64) -> Result<(), ApiError> {
        if total > self.max_storage_per_user {
            return Err(ApiError::exhausted(format!(
                "storage quota: this upload would bring your files to {total} bytes; \
                 the limit is {} bytes per user",
                self.max_storage_per_user
            )));
        }
        Ok(())
    }

    /// Validates every upload and the quota first, so a refused batch stores nothing.
    async fn put_all(
        &self,
        owner: String,
        files: Vec<FileUploadData>,
    ) -> Result<Vec<FileInfo>, ApiError> {
        let uploads = files
            .into_iter()
            .map(|f| self.check_upload(f))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<(String, u64)> = uploads
            .iter()
            .map(|u| (u.id.clone(), u.content.len() as u64))
            .collect();
        let (o, s) = (owner.clone(), sizes.clone());
        let total = self.db.read(move |c| storage_after(c, &o, &s)).await?;
        self.check_quota(total)?;

        let store = self.store.clone();
        let uploads = crate::db::blocking(move || {
            for u in &uploads {
                store.put(&u.id, &u.content)?;
            }
            Ok(uploads)
        })
        .await?;
        let infos: Vec<FileInfo> = uploads
            .iter()
            .map(|u| FileInfo {
                file_id: u.id.clone(),
                file_name: u.name.clone(),
                file_size: u.content.len() as i64,
            })
            .collect();
        let rows = infos.clone();
        let svc = self.clone();
        self.db
            .write(move |tx| {
                // Again inside the write: concurrent uploads of one user cannot both fit.
                svc.check_quota(storage_after(tx, &owner, &sizes)?)?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO uploads (owner, file_id, name, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (owner, file_id) DO UPDATE SET name = excluded.name",
                )?;
                for f in &rows {
                    insert.execute(params![owner, f.file_id, f.file_name, f.file_size, unix_millis()])?;
                }
                Ok(())
            })
            .await?;
        Ok(infos)
    }

    /// The files of `ids` that `user` may read, each distinct id once, in first-asked order;
    /// refused before any content is read when they would not fit in one reply.
    async fn get_all(
        &self,
        user: String,
        mut ids: Vec<String>,
    ) -> Result<Vec<FileDownloadData>, ApiError> {
        for id in &ids {
            file_id("file_id", id)?;
        }
        let mut seen = HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let found = self
            .db
            .read(move |c| {
                ids.into_iter()
                    .map(|id| {
                        let name = readable_name(c, &user, &id)?
                            .ok_or_else(|| not_readable("file_id", &id))?;
                        let size: i64 = c
                            .query_row(
                                "SELECT size FROM uploads WHERE file_id = ?1 LIMIT 1",
                                [&id],
                                |r| r.get(0),
                            )
                            .optional()?
                            .ok_or_else(|| not_readable("file_id", &id))?;
                        Ok((id, name, size as usize))
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await?;
        let reply: usize = found
            .iter()
            .map(|(_, name, size)| size + name.len() + PER_FILE_OVERHEAD)
            .sum();
        if reply > self.max_reply {
            return Err(ApiError::exhausted(format!(
                "these files take {reply} bytes, over the {}-byte reply limit; ask for fewer at a time",
                self.max_reply
            )));
        }
        let store = self.store.clone();
        crate::db::blocking(move || {
            found
                .into_iter()
                .map(|(file_id, file_name, _)| {
                    Ok(FileDownloadData {
                        file_content: store.get(&file_id)?,
                        file_id,
                        file_name,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await
    }
}

fn batch<T>(field: &str, items: &[T]) -> Result<(), ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(format!("{field} is empty")));
    }
    if items.len() > MAX_FILES_PER_CALL {
        return Err(ApiError::invalid(format!(
            "{field} holds {} files; at most {MAX_FILES_PER_CALL} per call",
            items.len()
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl FileService for FileSvc {
    async fn put_single_file(
        &self,
        request: Request<PutSingleFileReq>,
    ) -> ApiResult<PutSingleFileRsp> {
        let caller = Caller::of(&request)?;
        let data = request
            .into_inner()
            .file_data
            .ok_or_else(|| ApiError::invalid("file_data is required"))?;
        let file_info = self.put_all(caller.user_id, vec![data]).await?.pop();
        Ok(Response::new(PutSingleFileRsp { file_info }))
    }

    async fn put_multi_file(
        &self,
        request: Request<PutMultiFileReq>,
    ) -> ApiResult<PutMultiFileRsp> {
        let caller = Caller::of(&request)?;
        let files = request.into_inner().file_data;
        batch("file_data", &files)?;
        let file_info = self.put_all(caller.user_id, files).await?;
        Ok(Response::new(PutMultiFileRsp { file_info }))
    }

    async fn get_single_file(
        &self,
        request: Request<GetSingleFileReq>,
    ) -> ApiResult<GetSingleFileRsp> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().file_id;
        let file_data = self.get_all(caller.user_id, vec![id]).await?.pop();
        Ok(Response::new(GetSingleFileRsp { file_data }))
    }

    async fn get_multi_file(
        &self,
        request: Request<GetMultiFileReq>,
    ) -> ApiResult<GetMultiFileRsp> {
        let caller = Caller::of(&request)?;
        let ids = request.into_inner().file_id_list;
        batch("file_id_list", &ids)?;
        let file_data = self.get_all(caller.user_id, ids).await?;
        Ok(Response::new(GetMultiFileRsp { file_data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_tricks_are_refused() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "x\u{0}y",
            &"n".repeat(256),
        ] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(file_name(" 照片.png ").unwrap(), "照片.png");
    }

    #[test]
    fn content_is_stored_once_under_its_hash() {
        let dir = std::env::temp_dir().join(format!("im-files-{}", std::process::id()));
        let store = FileStore::open(&dir, 1024).unwrap();
        let a = FileStore::id_of(b"hello");
        assert_eq!(a, hex::encode(Sha256::digest(b"hello")));
        store.put(&a, b"hello").unwrap();
        store.put(&a, b"hello").unwrap();
        assert_eq!(store.get(&a).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
