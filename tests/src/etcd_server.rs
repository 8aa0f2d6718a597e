//! Debian's `etcd` (3.4) of the test's own: one member on free loopback client and peer ports,
//! its data in a scratch dir, killed on drop; stoppable and restartable on the same ports with
//! the same data (the registry-outage tests).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ManagedProcess;
use crate::{free_port, wait_for, ScratchDir};

pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    dir: ScratchDir,
    child: Option<ManagedProcess>,
}

impl EtcdServer {
    pub async fn start() -> Self {
        let mut server = Self {
            client_port: free_port(),
            peer_port: free_port(),
            dir: ScratchDir::new("etcd"),
            child: None,
        };
        server.restart().await;
        server
    }

    /// `127.0.0.1:port`, as routes.yaml's `discovery.etcd.endpoints` lists it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again) on its ports and data dir and waits until it answers.
    pub async fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        command
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let hint = "scripts/bootstrap.sh installs etcd-server";
        self.child = Some(ManagedProcess::spawn("etcd", &mut command, hint));
        let health = format!("{client}/health");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        wait_for(
            "etcd to report healthy",
            Duration::from_secs(20),
            || async {
                let resp = http.get(&health).send().await.ok()?;
                let body = resp.text().await.ok()?;
                body.contains("true").then_some(())
            },
        )
        .await;
    }

    /// Kills it (SIGKILL) and reaps it: its ports are closed when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
