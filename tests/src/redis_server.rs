//! A `redis-server` of the test's own on a free loopback port: no persistence, killed on drop,
//! restartable on the same port (the Redis-outage tests); and a Redis Cluster of several such
//! servers. `redis-cli` reads their own counters (`INFO commandstats`), so tests check Redis's
//! view, not ours.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ManagedProcess;
use crate::{free_port, wait_for, ScratchDir};

pub struct RedisServer {
    pub port: u16,
    child: Option<ManagedProcess>,
    /// Arguments beyond the defaults (a cluster member's).
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), |_| true).await
    }

    /// A server with `extra` arguments, on a free port that `port_ok` accepts.
    async fn start_with(extra: Vec<String>, port_ok: impl Fn(u16) -> bool) -> Self {
        // A port free a moment ago may be taken by a parallel test's server: then this one
        // exits at once, and another port is tried.
        for _ in 0..10 {
            let mut port = free_port();
            while !port_ok(port) {
                port = free_port();
            }
            let mut server = Self {
                port,
                child: None,
                extra: extra.clone(),
            };
            if server.start_here().await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(
            self.start_here().await,
            "redis-server exited at start on port {}",
            self.port
        );
    }

    /// Starts it on its port; `false` if it exited instead (the port was taken meanwhile).
    async fn start_here(&mut self) -> bool {
        let child = ManagedProcess::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                // `DEBUG SLEEP`: a Redis that is slow for a while (the heartbeat tests).
                .args(["--enable-debug-command", "local"])
                .args(&self.extra)
                .stdout(Stdio::null()),
            "scripts/bootstrap.sh installs it",
        );
        let child = self.child.insert(child);
        let port = self.port;
        wait_for(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                let running = child.is_running();
                async move {
                    if !running {
                        return Some(None);
                    }
                    let pong = tokio::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "PING"])
                        .output()
                        .await
                        .ok()?;
                    (String::from_utf8_lossy(&pong.stdout).trim() == "PONG").then_some(Some(()))
                }
            },
        )
        .await
        // Another server may have answered on a port this one could not bind.
        .is_some_and(|()| child.is_running())
    }

    /// Kills it (SIGKILL) and reaps it: its port is closed when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// `redis-cli` against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis-cli -x …`: `stdin` (raw bytes) becomes the last argument.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-x"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).expect("write to redis-cli");
        }
        let out = child.wait_with_output().expect("redis-cli ends");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `commands` sent in one pipeline (`redis-cli --pipe`), each as its arguments; the
    /// summary `redis-cli` prints.
    pub fn pipe(&self, commands: impl IntoIterator<Item = Vec<Vec<u8>>>) -> String {
        use std::io::Write;
        let mut resp = Vec::new();
        for args in commands {
            resp.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                resp.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                resp.extend_from_slice(&a);
                resp.extend_from_slice(b"\r\n");
            }
        }
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(&resp).expect("write to redis-cli");
        }
        let out = child.wait_with_output().expect("redis-cli ends");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a Redis that hangs without closing a connection.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("redis-server running");
        child.signal(if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        });
    }

    /// How many times Redis has run `command` (lower case), from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A Redis Cluster of `masters` servers (no replicas) on free ports, its slots spread evenly by
/// `redis-cli --cluster create`; killed on drop.
pub struct RedisCluster {
    pub shards: Vec<RedisServer>,
    _dir: ScratchDir,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> Self {
        let dir = ScratchDir::new("redis-cluster");
        // Each member also listens on its port + 10000 (the cluster bus).
        let bus_free = |port: u16| {
            port.checked_add(10_000)
                .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok())
        };
        let mut shards = Vec::with_capacity(masters);
        for i in 0..masters {
            let conf = dir.path(&format!("nodes-{i}.conf"));
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
                "--cluster-node-timeout".into(),
                "3000".into(),
                "--dir".into(),
                dir.0.display().to_string(),
            ];
            shards.push(RedisServer::start_with(extra, bus_free).await);
        }
        let addrs: Vec<String> = shards
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { shards, _dir: dir };
        wait_for(
            "the Redis Cluster to come up",
            Duration::from_secs(20),
            || {
                let ok = cluster
                    .shards
                    .iter()
                    .all(|s| s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
                async move { ok.then_some(()) }
            },
        )
        .await;
        cluster
    }

    /// The seed list for `cluster.redis_url`.
    pub fn url(&self) -> String {
        self.shards
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The shard (index into `shards`) that holds `key`, by Redis's own answer.
    pub fn shard_of(&self, key: &str) -> usize {
        let slot: u16 = self.shards[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        // `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <ranges>…`
        let nodes = self.shards[0].cli(&["CLUSTER", "NODES"]);
        let port = nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let owns = fields.iter().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                });
                let addr = fields.get(1)?.split('@').next()?;
                owns.then(|| addr.rsplit_once(':')?.1.parse::<u16>().ok())?
            })
            .expect("a shard owns the slot");
        self.shards
            .iter()
            .position(|s| s.port == port)
            .expect("the owner is one of ours")
    }
}
