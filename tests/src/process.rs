//! The one way tests run a child process (a gateway, a backend, redis-server, etcd, Prometheus):
//! started under a name that failures quote, signalled with `nix` (no `kill` subprocess), waited
//! for with a deadline and without blocking the runtime, and killed and reaped on drop within a
//! bounded time, so a test that fails never leaves a process behind or hangs in `Drop`.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How long `Drop` (and [`ManagedProcess::kill`]) waits for a SIGKILLed child to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(5);

pub struct ManagedProcess {
    name: String,
    child: Option<Child>,
}

impl ManagedProcess {
    /// Spawns `command`; panics naming `name` (and `hint`: how to get the program) if it cannot.
    pub fn spawn(name: &str, command: &mut Command, hint: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} ({hint})"));
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    /// The process id (0 once it was reaped).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal`; panics if it cannot be delivered (the process was reaped, say).
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.id() as i32);
        assert!(self.child.is_some(), "{} was already reaped", self.name);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("{signal} to {} ({pid}): {e}", self.name));
    }

    /// SIGTERM: the process's graceful stop; [`Self::wait_exit`] for its end.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Its exit status if it has ended (and is now reaped), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits (polling, the runtime stays free) until it ends; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then reap: once this returns the kernel has closed the process's sockets.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let deadline = Instant::now() + REAP_WITHIN;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!(
                    "{} ({}) not reaped {REAP_WITHIN:?} after SIGKILL",
                    self.name,
                    child.id()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
