//! The client's IP: the socket peer, unless the peer is a trusted proxy (the CDN), then the
//! right-most untrusted `X-Forwarded-For` hop, or a configured client-IP header. A forged
//! `X-Forwarded-For` from an untrusted peer changes nothing.
//!
//! Wherever a client IP is a key (rate-limit buckets, handshake budgets, connection slots), it is
//! [`ClientIpConfig::bucket`]: IPv4 as is, IPv6 by its network (`ipv6_prefix`, default /64), since
//! one subscriber holds a whole /64 and would otherwise get 2^64 buckets.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128):
/// `ipnet`'s, plus how an IPv4-mapped address matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` is in the network. Addresses are compared in their canonical form (an
    /// IPv4-mapped peer is IPv4), and a network written IPv4-mapped (`::ffff:10.0.0.0/104`)
    /// holds the IPv4 addresses it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, ip.to_canonical()) {
            (IpNet::V6(net), IpAddr::V4(a)) => net.contains(&a.to_ipv6_mapped()),
            (net, ip) => net.contains(&ip),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Self(IpNet::from(addr)));
        }
        let max = if s.contains(':') { 128 } else { 32 };
        match s.split_once('/') {
            Some((addr, _)) if addr.trim().parse::<IpAddr>().is_ok() => s
                .parse::<IpNet>()
                .map(Self)
                .map_err(|_| format!("`{s}`: prefix must be 0..={max}")),
            _ => Err(format!("`{s}` is not a CIDR such as 10.0.0.0/8")),
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `client_ip` in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// Peers whose forwarding headers are believed (the CDN's ranges).
    pub trusted_proxies: Vec<Cidr>,
    /// A header carrying the client IP set by the CDN (e.g. `CF-Connecting-IP`), used instead of
    /// `X-Forwarded-For` when the peer is trusted.
    pub header: Option<String>,
    /// Leading bits of an IPv6 address that make one client key (16..=128).
    pub ipv6_prefix: u8,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            header: None,
            ipv6_prefix: 64,
        }
    }
}

/// Every line of header `name` in `headers`, joined with `, ` as one list (RFC 9110 §5.3):
/// `X-Forwarded-For` sent as several lines is one chain, and reading only the first line would let
/// a client choose its own address. Lines that are not text are skipped.
pub fn header_list(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut lines = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = lines.next()?;
    Some(lines.fold(first.to_owned(), |mut all, line| {
        all.push_str(", ");
        all.push_str(line);
        all
    }))
}

impl ClientIpConfig {
    /// Why this section is invalid, if it is.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=128).contains(&self.ipv6_prefix) {
            return Err(format!(
                "ipv6_prefix is {}; use 16 to 128 (64, one subscriber's network, is the default)",
                self.ipv6_prefix
            ));
        }
        Ok(())
    }

    /// The key a client IP counts under: IPv4 as is, IPv6 masked to `ipv6_prefix` bits.
    pub fn bucket(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }

    /// Whether `ip` is one of the trusted proxies (the CDN).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted(ip)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Resolves the client IP from the peer and the request's forwarding headers; `header`
    /// returns every line of a header as one list ([`header_list`]).
    pub fn resolve(&self, peer: IpAddr, header: impl Fn(&str) -> Option<String>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted(peer) {
            return peer;
        }
        if let Some(name) = &self.header {
            if let Some(ip) = header(name).and_then(|v| v.trim().parse::<IpAddr>().ok()) {
                return ip.to_canonical();
            }
        }
        let Some(xff) = header("x-forwarded-for") else {
            return peer;
        };
        // Walk right to left: the first hop that is not one of our proxies is the client.
        let mut client = peer;
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = ip.to_canonical();
                    client = ip;
                    if !self.trusted(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last hop we could read.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(trusted: &[&str]) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ipv6_keys_by_network_and_header_lines_join() {
        let c = cfg(&[]);
        assert_eq!(c.bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(c.bucket(ip("198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(c.bucket(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        let full = ClientIpConfig {
            ipv6_prefix: 128,
            ..cfg(&[])
        };
        assert_eq!(full.bucket(ip("2001:db8::9")), ip("2001:db8::9"));
        assert!(ClientIpConfig {
            ipv6_prefix: 8,
            ..cfg(&[])
        }
        .validate()
        .is_err());
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7".parse().unwrap());
        assert_eq!(
            header_list(&h, "x-forwarded-for").unwrap(),
            "6.6.6.6, 198.51.100.7"
        );
        assert_eq!(header_list(&h, "x-real-ip"), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        assert!(Cidr::from_str("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::from_str("10.0.0.0/33").is_err());
        assert!(Cidr::from_str("ten").is_err());
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        // And ranges written IPv4-mapped hold IPv4 peers, mapped or not.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")) && mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("11.0.0.1")) && !mapped.contains(ip("2001:db8::1")));
    }

    #[test]
    fn untrusted_peer_ignores_forwarding_headers() {
        let c = cfg(&["10.0.0.0/8"]);
        let got = c.resolve(ip("203.0.113.9"), |_| Some("1.2.3.4".into()));
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_hop() {
        let c = cfg(&["10.0.0.0/8"]);
        let xff = "6.6.6.6, 198.51.100.7, 10.1.1.1";
        let got = c.resolve(ip("10.0.0.2"), |h| {
            (h == "x-forwarded-for").then(|| xff.into())
        });
        assert_eq!(
            got,
            ip("198.51.100.7"),
            "the client cannot spoof by prepending"
        );
        assert_eq!(c.resolve(ip("10.0.0.2"), |_| None), ip("10.0.0.2"));
    }

    #[test]
    fn cdn_header_when_configured() {
        let mut c = cfg(&["10.0.0.0/8"]);
        c.header = Some("cf-connecting-ip".into());
        let got = c.resolve(ip("10.0.0.2"), |h| {
            (h == "cf-connecting-ip").then(|| "192.0.2.1".into())
        });
        assert_eq!(got, ip("192.0.2.1"));
    }
}
