//! Debian's `etcd` (3.4) of the test's own: one member on free loopback client and peer ports,
//! its data in a scratch dir, killed on drop; stoppable and restartable on the same ports with
//! the same data (the registry-outage tests).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, ScratchDir};

pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    dir: ScratchDir,
    child: Option<Child>,
}

impl EtcdServer {
    pub fn start() -> Self {
        let mut server = Self {
            client_port: free_port(),
            peer_port: free_port(),
            dir: ScratchDir::new("etcd"),
            child: None,
        };
        server.restart();
        server
    }

    /// `127.0.0.1:port`, as routes.yaml's `discovery.etcd.endpoints` lists it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts it (again) on its ports and data dir and waits until it answers.
    pub fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (scripts/bootstrap.sh installs etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let health = format!("{client}/health");
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "--max-time", "1", &health])
                .output()
                .is_ok_and(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true")
                });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills it (SIGKILL) and waits until its client port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
