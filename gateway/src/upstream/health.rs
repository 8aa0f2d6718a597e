//! Endpoint health, keyed by address so it survives route reloads (a weight edit or a pool rename
//! does not reset it), with active `grpc.health.v1` checks run off the request path.
//!
//! States: an endpoint of a pool with a health check starts `Pending` and takes traffic only after
//! its first passing check; a `Healthy` one turns `Unhealthy` after `fall` failed checks (or at once
//! on a failed connect: passive ejection), and comes back after `rise` passing checks. Endpoints of
//! pools without checks start `Healthy`; a failed connect ejects them for [`PASSIVE_EJECTION`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::keyed_tasks::KeyedTasks;

/// How long an endpoint without active checks is skipped after a failed connect.
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(5);

/// Active check settings of one pool (all defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub grpc_service: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Pending,
    Healthy,
    Unhealthy,
}

/// Live state of one endpoint address: health, in-flight attempts, passive ejection.
#[derive(Debug)]
pub struct EndpointState {
    health: AtomicU8,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    inflight: AtomicU32,
    /// Milliseconds since the registry's epoch until which the endpoint is skipped.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
}

impl EndpointState {
    fn new(initial: Health, epoch: Instant) -> Self {
        Self {
            health: AtomicU8::new(initial as u8),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Pending,
            1 => Health::Healthy,
            _ => Health::Unhealthy,
        }
    }

    fn set(&self, h: Health) {
        self.health.store(h as u8, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the endpoint may take a new attempt now.
    pub fn available(&self) -> bool {
        self.health() == Health::Healthy
            && self.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts an attempt in flight until the guard drops (for `least_inflight`).
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// A connect to this endpoint failed: stop sending it traffic now.
    pub fn connect_failed(&self, actively_checked: bool) {
        if actively_checked {
            self.ok_streak.store(0, Ordering::Relaxed);
            self.set(Health::Unhealthy);
        } else {
            let until = self.now_ms() + PASSIVE_EJECTION.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
        }
    }

    /// Applies one active check result with rise/fall hysteresis; returns the new state when it changed.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<Health> {
        let before = self.health();
        let after = if passed {
            self.fail_streak.store(0, Ordering::Relaxed);
            let streak = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            match before {
                Health::Pending => Health::Healthy,
                Health::Unhealthy if streak >= rise => Health::Healthy,
                other => other,
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let streak = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            match before {
                Health::Pending => Health::Unhealthy,
                Health::Healthy if streak >= fall => Health::Unhealthy,
                other => other,
            }
        };
        (after != before).then(|| {
            self.set(after);
            after
        })
    }
}

/// Decrements the in-flight count of an endpoint when dropped.
pub struct InflightGuard(Arc<EndpointState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint states by address, shared by every route table a gateway builds.
/// Bounded by the endpoints of the current table: [`HealthRegistry::retain`] drops the rest.
#[derive(Clone)]
pub struct HealthRegistry {
    // A std Mutex: touched only when a table is built or reconciled, never per request.
    states: Arc<Mutex<HashMap<SocketAddr, Arc<EndpointState>>>>,
    epoch: Instant,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self {
            states: Arc::default(),
            epoch: Instant::now(),
        }
    }
}

impl HealthRegistry {
    /// The state of `addr`, created as `Pending` (checked pools) or `Healthy` (unchecked) if new.
    pub fn state(&self, addr: SocketAddr, checked: bool) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states
            .entry(addr)
            .or_insert_with(|| {
                let initial = if checked {
                    Health::Pending
                } else {
                    Health::Healthy
                };
                Arc::new(EndpointState::new(initial, self.epoch))
            })
            .clone()
    }

    /// Forgets addresses no longer in use.
    pub fn retain(&self, keep: &HashSet<SocketAddr>) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|addr, _| keep.contains(addr));
    }
}

/// Runs one checker task per (address, check settings) of the current table.
#[derive(Default)]
pub struct HealthSupervisor {
    tasks: KeyedTasks<(SocketAddr, HealthCheck)>,
}

impl HealthSupervisor {
    /// Starts checkers for new (address, settings) pairs and stops those no longer wanted.
    /// Must be called inside a tokio runtime.
    pub fn reconcile(&mut self, wanted: Vec<(SocketAddr, HealthCheck, Arc<EndpointState>)>) {
        let states: HashMap<(SocketAddr, HealthCheck), Arc<EndpointState>> = wanted
            .into_iter()
            .map(|(addr, check, state)| ((addr, check), state))
            .collect();
        let keys = states.keys().cloned().collect();
        self.tasks.reconcile(&keys, |(addr, check)| {
            run_checker(
                *addr,
                check.clone(),
                states[&(*addr, check.clone())].clone(),
            )
        });
    }
}

async fn run_checker(addr: SocketAddr, check: HealthCheck, state: Arc<EndpointState>) {
    let endpoint = match super::channels::endpoint_of(addr) {
        Ok(e) => e.connect_timeout(check.timeout).timeout(check.timeout),
        Err(e) => {
            tracing::error!(error = %e, "health check not started");
            return;
        }
    };
    let mut client = HealthClient::new(endpoint.connect_lazy());
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let request = HealthCheckRequest {
            service: check.grpc_service.clone(),
        };
        let passed = match tokio::time::timeout(check.timeout, client.check(request)).await {
            Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
            Ok(Err(status)) => {
                tracing::debug!(%addr, code = ?status.code(), "health check failed");
                false
            }
            Err(_) => false,
        };
        if let Some(now) = state.record_check(passed, check.rise, check.fall) {
            match now {
                Health::Healthy => tracing::info!(%addr, "endpoint is healthy"),
                _ => tracing::warn!(%addr, service = %check.grpc_service, "endpoint is unhealthy"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(initial: Health) -> EndpointState {
        EndpointState::new(initial, Instant::now())
    }

    #[test]
    fn pending_joins_on_first_pass() {
        let s = state(Health::Pending);
        assert!(!s.available());
        assert_eq!(s.record_check(true, 3, 3), Some(Health::Healthy));
        assert!(s.available());
    }

    #[test]
    fn fall_then_rise() {
        let s = state(Health::Healthy);
        assert_eq!(s.record_check(false, 2, 2), None);
        assert_eq!(s.record_check(false, 2, 2), Some(Health::Unhealthy));
        assert_eq!(s.record_check(true, 2, 2), None);
        assert!(!s.available());
        assert_eq!(s.record_check(true, 2, 2), Some(Health::Healthy));
    }

    #[test]
    fn a_pass_resets_the_fail_streak() {
        let s = state(Health::Healthy);
        s.record_check(false, 2, 2);
        s.record_check(true, 2, 2);
        assert_eq!(s.record_check(false, 2, 2), None);
        assert!(s.available());
    }

    #[test]
    fn connect_failure_ejects() {
        let checked = state(Health::Healthy);
        checked.connect_failed(true);
        assert_eq!(checked.health(), Health::Unhealthy);
        let unchecked = state(Health::Healthy);
        unchecked.connect_failed(false);
        assert!(!unchecked.available());
        assert_eq!(unchecked.health(), Health::Healthy);
    }

    #[test]
    fn registry_keys_by_address() {
        let reg = HealthRegistry::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = reg.state(addr, true);
        a.record_check(true, 1, 1);
        let b = reg.state(addr, true);
        assert!(Arc::ptr_eq(&a, &b));
        reg.retain(&HashSet::new());
        assert!(!Arc::ptr_eq(&a, &reg.state(addr, true)));
    }
}
