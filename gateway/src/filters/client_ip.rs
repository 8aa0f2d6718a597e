//! The client's IP: the socket peer, unless the peer is a trusted proxy (the CDN), then the
//! right-most untrusted `X-Forwarded-For` hop, or a configured client-IP header. A forged
//! `X-Forwarded-For` from an untrusted peer changes nothing.

use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR such as 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?,
        };
        Ok(Self { net, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `client_ip` in gateway.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// Peers whose forwarding headers are believed (the CDN's ranges).
    pub trusted_proxies: Vec<Cidr>,
    /// A header carrying the client IP set by the CDN (e.g. `CF-Connecting-IP`), used instead of
    /// `X-Forwarded-For` when the peer is trusted.
    pub header: Option<String>,
}

impl ClientIpConfig {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Resolves the client IP from the peer and the request's forwarding headers.
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
            header: None,
        }
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
