//! `im.file.v1.FileService`: files stored on disk by content (`<dir>/<id[0..2]>/<id>`, id = hex
//! SHA-256), names and sizes in SQLite. A write goes to a temporary file that is synced and then
//! renamed, so a failed upload never leaves a partial file under an id.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use im_proto::im::file::v1::file_service_server::FileService;
use im_proto::im::file::v1::*;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use tonic::{Request, Response};

use crate::caller::Caller;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::util::{file_id, unix_millis};

pub const SERVICE_NAME: &str = "im.file.v1.FileService";
/// Files per multi-file call.
const MAX_FILES_PER_CALL: usize = 20;

#[derive(Clone)]
pub struct FileSvc {
    pub db: Db,
    pub store: Arc<FileStore>,
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

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(&id[..2]).join(id)
    }

    /// Stores `content` under its hash unless already stored; returns the id.
    fn put(&self, content: &[u8]) -> std::io::Result<String> {
        let id = hex::encode(Sha256::digest(content));
        let path = self.path_of(&id);
        if path.exists() {
            return Ok(id);
        }
        std::fs::create_dir_all(path.parent().expect("two-level path"))?;
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
        written.map(|_| id)
    }

    fn get(&self, id: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path_of(id))
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

impl FileSvc {
    fn check_upload<'a>(&self, data: &'a FileUploadData) -> Result<&'a str, ApiError> {
        let name = file_name(&data.file_name)?;
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
        Ok(name)
    }

    /// Validates every upload first, so a bad one in a batch stores nothing.
    async fn put_all(
        &self,
        owner: String,
        files: Vec<FileUploadData>,
    ) -> Result<Vec<FileInfo>, ApiError> {
        for f in &files {
            self.check_upload(f)?;
        }
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            files
                .iter()
                .map(|f| {
                    Ok(FileInfo {
                        file_id: store.put(&f.file_content)?,
                        file_name: f.file_name.trim().to_owned(),
                        file_size: f.file_content.len() as i64,
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("file task: {e}")))??;
        let rows = stored.clone();
        self.db
            .write(move |tx| {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO files (id, name, size, owner, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for f in &rows {
                    insert.execute(params![f.file_id, f.file_name, f.file_size, owner, unix_millis()])?;
                }
                Ok(())
            })
            .await?;
        Ok(stored)
    }

    async fn get_all(&self, ids: Vec<String>) -> Result<Vec<FileDownloadData>, ApiError> {
        for id in &ids {
            file_id("file_id", id)?;
        }
        let names = self
            .db
            .read(move |c| {
                ids.into_iter()
                    .map(|id| {
                        let name: Option<String> = c
                            .query_row("SELECT name FROM files WHERE id = ?1", [&id], |r| r.get(0))
                            .optional()?;
                        let name = name.ok_or_else(|| {
                            ApiError::not_found(format!("file_id: no file `{id}`"))
                        })?;
                        Ok((id, name))
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|(file_id, file_name)| {
                    let file_content = store.get(&file_id)?;
                    Ok(FileDownloadData {
                        file_id,
                        file_name,
                        file_content,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("file task: {e}")))?
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
        Caller::of(&request)?;
        let id = request.into_inner().file_id;
        let file_data = self.get_all(vec![id]).await?.pop();
        Ok(Response::new(GetSingleFileRsp { file_data }))
    }

    async fn get_multi_file(
        &self,
        request: Request<GetMultiFileReq>,
    ) -> ApiResult<GetMultiFileRsp> {
        Caller::of(&request)?;
        let ids = request.into_inner().file_id_list;
        batch("file_id_list", &ids)?;
        let file_data = self.get_all(ids).await?;
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
        let a = store.put(b"hello").unwrap();
        assert_eq!(a, hex::encode(Sha256::digest(b"hello")));
        assert_eq!(store.put(b"hello").unwrap(), a);
        assert_eq!(store.get(&a).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
