//! etcd discovery: every key under the prefix is one endpoint, its value
//! `{"addr": "host:port", "weight": N}` (weight optional, 1 to 1000) as `im-backends --register`
//! writes it under a lease. The watcher reads the prefix, then follows a watch from the next
//! revision; on any error it reconnects with backoff, the last set serving meanwhile. An empty
//! prefix is an answer (every backend left), not a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchOptions};
use serde::Deserialize;

use super::{DiscoveredSets, EtcdTarget, Found, Source};

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A registration's value.
#[derive(Debug, Deserialize)]
struct Entry {
    addr: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// Parses one registration; a bad one is skipped (and logged), never fatal.
pub fn parse_entry(value: &[u8]) -> Result<Found, String> {
    let entry: Entry = serde_json::from_slice(value)
        .map_err(|e| format!("expected {{\"addr\": \"host:port\", \"weight\": 1}}: {e}"))?;
    let addr = super::endpoint_addr(&entry.addr)
        .ok_or_else(|| format!("`{}` is not an IP:port", entry.addr))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(format!("`{addr}` is not an address a gateway can call"));
    }
    if !(1..=1000).contains(&entry.weight) {
        return Err(format!("weight {} is not between 1 and 1000", entry.weight));
    }
    Ok(Found {
        addr,
        weight: entry.weight,
    })
}

fn apply(entries: &mut BTreeMap<Vec<u8>, Found>, kv: &KeyValue, source: &Source) {
    match parse_entry(kv.value()) {
        Ok(found) => {
            entries.insert(kv.key().to_vec(), found);
        }
        Err(e) => {
            entries.remove(kv.key());
            tracing::warn!(source = %source.describe(), key = %String::from_utf8_lossy(kv.key()), error = %e, "registration ignored");
        }
    }
}

/// Reads the prefix and follows its changes until the connection or the watch fails.
async fn follow(target: &EtcdTarget, source: &Source, sets: &DiscoveredSets) -> Result<(), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let mut client = Client::connect(&target.endpoints, Some(options))
        .await
        .map_err(|e| format!("connecting to etcd {}: {e}", target.endpoints.join(",")))?;
    let listing = client
        .get(
            target.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| format!("reading {}: {e}", target.prefix))?;
    let revision = listing.header().map_or(0, |h| h.revision());
    let mut entries = BTreeMap::new();
    for kv in listing.kvs() {
        apply(&mut entries, kv, source);
    }
    sets.found(source, entries.values().copied().collect());
    let mut stream = client
        .watch(
            target.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| format!("watching {}: {e}", target.prefix))?;
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|e| format!("watching {}: {e}", target.prefix))?
    {
        if resp.canceled() {
            return Err(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            ));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => apply(&mut entries, kv, source),
                EventType::Delete => {
                    entries.remove(kv.key());
                }
            }
        }
        sets.found(source, entries.values().copied().collect());
    }
    Err(format!("etcd ended the watch of {}", target.prefix))
}

/// Follows `target` until aborted, publishing each change to `sets`.
pub async fn watch(target: EtcdTarget, source: Source, sets: DiscoveredSets) {
    let mut delays = crate::backoff::delays(RETRY_MIN, RETRY_MAX);
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = follow(&target, &source, &sets).await {
            sets.failed(&source, e);
        }
        // A watch that ran fine for a while starts over quickly; repeated failures back off.
        if started.elapsed() > RETRY_MAX * 2 {
            delays = crate::backoff::delays(RETRY_MIN, RETRY_MAX);
        }
        tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_parse_or_say_why_not() {
        let f = parse_entry(br#"{"addr":"127.0.0.1:50051","weight":3}"#).unwrap();
        assert_eq!((f.addr.port(), f.weight), (50051, 3));
        assert_eq!(parse_entry(br#"{"addr":"localhost:1"}"#).unwrap().weight, 1);
        for (bad, why) in [
            (&br#"{"addr":"db:1"}"#[..], "not an IP:port"),
            (br#"{"addr":"0.0.0.0:1"}"#, "not an address"),
            (
                br#"{"addr":"127.0.0.1:1","weight":0}"#,
                "between 1 and 1000",
            ),
            (b"\xff{", "expected"),
        ] {
            let e = parse_entry(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
