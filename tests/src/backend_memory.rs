//! Memory of a real `im-backends` process under abuse, read from `/proc`: a login flood against
//! the user service (bounded hashing memory) and a `get_multi_file` asking for one large file many
//! times (a reply over the limit is refused before any file is read). Used by the end-to-end
//! tests and by the `backend_memory` binary (`scripts/backend-memory.sh`) for the figures in
//! docs/RELIABILITY.md.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use im_proto::im::file::v1::file_service_client::FileServiceClient;
use im_proto::im::file::v1::{FileUploadData, GetMultiFileReq, PutSingleFileReq};
use im_proto::im::user::v1::user_service_client::UserServiceClient;
use im_proto::im::user::v1::{UsernameLoginReq, UsernameRegisterReq};
use tonic::transport::Channel;

use crate::process::ManagedProcess;
use crate::{free_port, loopback, wait_for, ScratchDir, INTERNAL_TOKEN, TEST_SECRET};

/// `im-backends` in its own process, so its memory is its own.
pub struct BackendProcess {
    pub addr: SocketAddr,
    child: ManagedProcess,
    _dir: ScratchDir,
}

impl BackendProcess {
    /// Starts `exe` (the `im-backends` command) running `services`, with `extra` flags.
    pub async fn start(exe: &str, services: &str, extra: &[&str]) -> Self {
        let dir = ScratchDir::new("backend-memory");
        std::fs::write(dir.path("jwt.key"), TEST_SECRET).expect("write the key");
        std::fs::write(dir.path("internal.token"), INTERNAL_TOKEN).expect("write the token");
        let addr = loopback(free_port());
        let arg = |name: &str| dir.path(name).display().to_string();
        let mut command = Command::new(exe);
        command
            .args(["--services", services, "--listen", &addr.to_string()])
            .args(["--database", &arg("im.db"), "--files-dir", &arg("files")])
            .args(["--jwt-secret-file", &arg("jwt.key")])
            .args(["--internal-token-file", &arg("internal.token")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        let child = ManagedProcess::spawn("im-backends", &mut command, exe);
        wait_for(
            "im-backends to listen",
            Duration::from_secs(20),
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await;
        Self {
            addr,
            child,
            _dir: dir,
        }
    }

    fn status(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a /proc status line");
        kib * 1024
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> u64 {
        self.status("VmRSS:")
    }

    /// Peak resident set size since start, in bytes.
    pub fn peak(&self) -> u64 {
        self.status("VmHWM:")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("backend URI")
            .connect()
            .await
            .expect("connect to im-backends")
    }

    pub async fn client(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }
}

/// `msg` from the signed-in user `u1` (the identity the gateway would set).
fn signed_in<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "x-user-id",
        tonic::metadata::MetadataValue::from_static("u1"),
    );
    req
}

/// Uploads `size` bytes as user `u1`, then asks for that file `copies` times in one
/// `get_multi_file`; the peak RSS before and after that call, and the call's status code.
pub async fn multi_file(
    backend: &BackendProcess,
    size: usize,
    copies: usize,
) -> (u64, u64, tonic::Code) {
    let mut files = FileServiceClient::new(backend.channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let put = files
        .put_single_file(signed_in(PutSingleFileReq {
            file_data: Some(FileUploadData {
                file_name: "big.bin".into(),
                file_content: vec![42; size],
            }),
        }))
        .await
        .expect("upload");
    let id = put.into_inner().file_info.expect("file info").file_id;
    let before = backend.peak();
    let code = match files
        .get_multi_file(signed_in(GetMultiFileReq {
            file_id_list: vec![id; copies],
        }))
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    (before, backend.peak(), code)
}

/// Registers and logs in `name`; the gRPC status code of the first call that failed, if any.
pub async fn register_and_login(
    mut client: UserServiceClient<Channel>,
    name: String,
) -> Result<(), tonic::Code> {
    let password = format!("pw-{name}-secret");
    client
        .username_register(UsernameRegisterReq {
            nickname: name.clone(),
            password: password.clone(),
        })
        .await
        .map_err(|s| s.code())?;
    client
        .username_login(UsernameLoginReq {
            nickname: name,
            password,
            device_id: "d1".into(),
            platform: "web".into(),
        })
        .await
        .map_err(|s| s.code())?;
    Ok(())
}

/// `users` users register and log in, `concurrency` at a time; every outcome.
pub async fn flood(
    client: &UserServiceClient<Channel>,
    tag: &str,
    users: usize,
    concurrency: usize,
) -> Vec<Result<(), tonic::Code>> {
    let mut out = Vec::with_capacity(users);
    for wave in 0..users.div_ceil(concurrency) {
        let calls: Vec<_> = (0..concurrency)
            .map(|i| wave * concurrency + i)
            .filter(|n| *n < users)
            .map(|n| tokio::spawn(register_and_login(client.clone(), format!("{tag}{n}"))))
            .collect();
        for call in calls {
            out.push(call.await.expect("call task"));
        }
    }
    out
}
