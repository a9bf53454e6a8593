//! What a job in mode `allowlist` may reach: rules of host names and of addresses, each with
//! its ports, and the addresses no name may lead to unless an address rule names them.
//!
//! A rule is written as one string, in a policy's `[network] allow`, a request's `allow`, or
//! `toolbox run --allow`:
//!
//! - `pypi.org` — that name, port 443; `pypi.org:80,443`, `example.com:8000-8100`,
//!   `example.com:*` for other ports;
//! - `*.github.com` — every name beneath github.com (not github.com itself);
//! - `10.1.2.3:8080`, `192.168.0.0/16:5432`, `[fd00::1]:443`, `[fd00::/8]:*` — addresses
//!   and networks, for what has no name, and the only way to reach a loopback, private,
//!   link-local… address (see [`special`]).

use std::fmt;
use std::net::IpAddr;

/// The port a rule means when it names none.
pub const DEFAULT_PORT: u16 = 443;

/// One rule of an allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    /// Inclusive ranges, sorted, not overlapping.
    pub ports: Vec<(u16, u16)>,
}

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Every name ending in `.` + this one.
    Beneath(String),
    /// An address, or a network of them (`prefix` bits).
    Net { addr: IpAddr, prefix: u8 },
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Rule, String> {
        let bad = |why: &str| Err(format!("{text:?} is not an egress rule: {why}"));
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return bad("it is empty");
        }
        // `[v6 or v6/len]:ports`, a bare v6 (more than one colon), else `target[:ports]`.
        let (target, ports) = if let Some(rest) = text_trimmed.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return bad("a '[' without its ']'");
            };
            match after {
                "" => (inside, None),
                _ => match after.strip_prefix(':') {
                    Some(ports) => (inside, Some(ports)),
                    None => return bad("after ']' only ':PORTS' may follow"),
                },
            }
        } else if text_trimmed.matches(':').count() > 1 {
            (text_trimmed, None)
        } else {
            match text_trimmed.split_once(':') {
                Some((target, ports)) => (target, Some(ports)),
                None => (text_trimmed, None),
            }
        };
        let target = match parse_target(target) {
            Ok(target) => target,
            Err(why) => return bad(&why),
        };
        let ports = match ports {
            None => vec![(DEFAULT_PORT, DEFAULT_PORT)],
            Some(ports) => match parse_ports(ports) {
                Ok(ports) => ports,
                Err(why) => return bad(&why),
            },
        };
        Ok(Rule { target, ports })
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
    if let Some((addr, prefix)) = text.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} before '/' is not an IP address"))?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= most)
            .ok_or_else(|| format!("/{prefix} is not a prefix length (0 to {most})"))?;
        if mask(addr, prefix) != addr {
            return Err(format!(
                "{addr}/{prefix} has bits set past its prefix: write {}/{prefix}",
                mask(addr, prefix)
            ));
        }
        return Ok(Target::Net { addr, prefix });
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(Target::Net { addr, prefix });
    }
    if let Some(rest) = text.strip_prefix("*.") {
        return Ok(Target::Beneath(check_name(rest)?));
    }
    if text.contains('*') {
        return Err("a wildcard may only be a leading '*.' (*.example.com)".into());
    }
    Ok(Target::Name(check_name(text)?))
}

/// A host name as rules and requests compare them: ASCII, lowercase, no trailing dot; labels
/// of letters, digits, '-' and '_' (1 to 63 bytes), 253 bytes at most. An IP address is not
/// a name.
pub fn check_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{text:?} is not a host name (1 to 253 bytes)"));
    }
    for label in name.split('.') {
        let fine = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fine {
            return Err(format!(
                "{text:?} is not a host name (labels of letters, digits, '-' and '_'; \
                 IDNs in their xn-- form)"
            ));
        }
    }
    if name.parse::<IpAddr>().is_ok() || name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{text:?} is an address, not a host name"));
    }
    Ok(name)
}

fn parse_ports(text: &str) -> Result<Vec<(u16, u16)>, String> {
    if text == "*" {
        return Ok(vec![(1, u16::MAX)]);
    }
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let port = |p: &str| -> Result<u16, String> {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1 to 65535, a range A-B, or *)"))
        };
        let range = match part.split_once('-') {
            Some((low, high)) => (port(low)?, port(high)?),
            None => (port(part)?, port(part)?),
        };
        if range.0 > range.1 {
            return Err(format!("{part:?} is a range that runs backwards"));
        }
        ranges.push(range);
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(low) <= u32::from(last.1) + 1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    Ok(merged)
}

/// `addr` with every bit past `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    let cut = |width: u32| width - u32::from(prefix);
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(cut(32)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(cut(128)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

impl Rule {
    pub fn allows_port(&self, port: u16) -> bool {
        self.ports
            .iter()
            .any(|&(low, high)| low <= port && port <= high)
    }

    /// Whether this rule allows `name` (checked by [`check_name`]) on `port`.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        let named = match &self.target {
            Target::Name(rule) => rule == name,
            Target::Beneath(rule) => name
                .strip_suffix(rule.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Target::Net { .. } => false,
        };
        named && self.allows_port(port)
    }

    /// Whether this rule is an address rule that allows `addr` on `port`. An IPv4 address
    /// mapped into IPv6 is judged as the IPv4 address it is.
    pub fn allows_addr(&self, addr: IpAddr, port: u16) -> bool {
        let Target::Net { addr: net, prefix } = self.target else {
            return false;
        };
        let addr = addr.to_canonical();
        let same_family = net.is_ipv4() == addr.is_ipv4();
        same_family && mask(addr, prefix) == net && self.allows_port(port)
    }

    /// Whether everything `other` allows, this rule allows too (a request's rule within a
    /// policy's).
    pub fn covers(&self, other: &Rule) -> bool {
        let ports = other
            .ports
            .iter()
            .all(|&(low, high)| self.ports.iter().any(|&(l, h)| l <= low && high <= h));
        let target = match (&self.target, &other.target) {
            (Target::Name(a), Target::Name(b)) => a == b,
            (Target::Beneath(a), Target::Name(b) | Target::Beneath(b)) => b
                .strip_suffix(a.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (
                Target::Net { addr, prefix },
                Target::Net {
                    addr: other,
                    prefix: other_prefix,
                },
            ) => {
                addr.is_ipv4() == other.is_ipv4()
                    && prefix <= other_prefix
                    && mask(*other, *prefix) == *addr
            }
            _ => false,
        };
        // `*.a.com` also covers `*.a.com` itself.
        let same = self.target == other.target;
        (target || same) && ports
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Name(name) => write!(f, "{name}")?,
            Target::Beneath(name) => write!(f, "*.{name}")?,
            Target::Net { addr, prefix } => {
                let whole = if addr.is_ipv4() { 32 } else { 128 };
                let net = if *prefix == whole {
                    addr.to_string()
                } else {
                    format!("{addr}/{prefix}")
                };
                if addr.is_ipv6() {
                    write!(f, "[{net}]")?
                } else {
                    write!(f, "{net}")?
                }
            }
        }
        if self.ports == [(1, u16::MAX)] {
            return write!(f, ":*");
        }
        for (i, &(low, high)) in self.ports.iter().enumerate() {
            let sep = if i == 0 { ':' } else { ',' };
            if low == high {
                write!(f, "{sep}{low}")?;
            } else {
                write!(f, "{sep}{low}-{high}")?;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of address no name may lead to, unless an address rule names it: `None` for an
/// ordinary public address.
pub fn special(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(match o {
                [127, ..] => "loopback",
                [0, ..] => "unspecified",
                [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "private",
                [169, 254, 169, 254] => "link-local (the cloud metadata service)",
                [169, 254, ..] => "link-local",
                [100, 64..=127, ..] => "shared (CGNAT)",
                [192, 0, 0, _] => "IETF protocol assignments",
                [198, 18..=19, ..] => "benchmarking",
                [224..=239, ..] => "multicast",
                [240..=255, ..] => "reserved or broadcast",
                _ => return None,
            })
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special(IpAddr::V4(v4)).or(Some("IPv4-mapped"));
            }
            let s = v6.segments();
            Some(match s {
                [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
                [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
                [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible",
                [0x64, 0xff9b, ..] => "NAT64",
                [0xfd00..=0xfdff, ..] | [0xfc00..=0xfcff, ..] => "unique local (ULA)",
                [0xfe80..=0xfebf, ..] => "link-local",
                [0xfec0..=0xfeff, ..] => "site-local",
                [0xff00..=0xffff, ..] => "multicast",
                [0x2002, ..] => "6to4",
                [0x2001, 0, ..] => "Teredo",
                _ => return None,
            })
        }
    }
}

/// A job's allowlist, and how its connections are judged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// The name rule that lets `name` through on `port`.
    pub fn for_name(&self, name: &str, port: u16) -> Option<&Rule> {
        self.0.iter().find(|rule| rule.allows_name(name, port))
    }

    /// The address rule that lets `addr` through on `port`.
    pub fn for_addr(&self, addr: IpAddr, port: u16) -> Option<&Rule> {
        self.0.iter().find(|rule| rule.allows_addr(addr, port))
    }

    /// Whether `rule` stays within these (one of them covers it).
    pub fn cover(&self, rule: &Rule) -> bool {
        self.0.iter().any(|mine| mine.covers(rule))
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(none)");
        }
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (text, shown) in [
            ("pypi.org", "pypi.org:443"),
            ("PyPI.org.", "pypi.org:443"),
            ("*.github.com:443,80", "*.github.com:80,443"),
            (
                "example.com:8000-8100,8050,9000",
                "example.com:8000-8100,9000",
            ),
            ("example.com:*", "example.com:*"),
            ("10.1.2.3:8080", "10.1.2.3:8080"),
            ("192.168.0.0/16:5432", "192.168.0.0/16:5432"),
            ("[fd00::1]:443", "[fd00::1]:443"),
            ("[fd00::/8]:*", "[fd00::/8]:*"),
            ("fd00::/8", "[fd00::/8]:443"),
            ("::1", "[::1]:443"),
            ("127.0.0.1", "127.0.0.1:443"),
            ("a_b-c.internal:1-2,3", "a_b-c.internal:1-3"),
        ] {
            assert_eq!(rule(text).to_string(), shown, "{text}");
            assert_eq!(rule(shown), rule(text), "{shown}");
        }
        for bad in [
            "",
            "exa mple.com",
            "*.com*",
            "foo.*.com",
            "ex..com",
            "example.com:0",
            "example.com:70000",
            "example.com:9-3",
            "example.com:",
            "example.com:http",
            "10.0.0.1/33",
            "10.0.0.1/8",
            "[fd00::1",
            "[fd00::1]8080",
            "1.2.3",
            "https://pypi.org",
            "pypi.org/simple",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn names_match_exactly_or_beneath_and_ports_count() {
        let rules = Rules(vec![rule("pypi.org"), rule("*.github.com:443,80")]);
        assert!(rules.for_name("pypi.org", 443).is_some());
        assert!(rules.for_name("pypi.org", 80).is_none());
        assert!(rules.for_name("evil-pypi.org", 443).is_none());
        assert!(rules.for_name("files.pypi.org", 443).is_none());
        assert!(rules.for_name("api.github.com", 80).is_some());
        assert!(rules.for_name("a.b.github.com", 443).is_some());
        assert!(rules.for_name("github.com", 443).is_none());
        assert!(rules.for_name("evilgithub.com", 443).is_none());
        assert!(rules.for_name("api.github.com", 22).is_none());
        // Address rules never match names, name rules never addresses.
        let addr = Rules(vec![rule("127.0.0.1:8080")]);
        assert!(addr.for_name("localhost", 8080).is_none());
        assert!(rules
            .for_addr("140.82.112.3".parse().expect("ip"), 443)
            .is_none());
    }

    #[test]
    fn addresses_match_their_networks_and_mapped_ones_as_ipv4() {
        let rules = Rules(vec![rule("10.0.0.0/8:5432"), rule("[fd00::/8]:*")]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(rules.for_addr(ip("10.9.8.7"), 5432).is_some());
        assert!(rules.for_addr(ip("11.0.0.1"), 5432).is_none());
        assert!(rules.for_addr(ip("10.9.8.7"), 5433).is_none());
        assert!(rules.for_addr(ip("::ffff:10.1.1.1"), 5432).is_some());
        assert!(rules.for_addr(ip("fd12::3"), 1).is_some());
        assert!(rules.for_addr(ip("fe80::1"), 1).is_none());
        let everything = rule("0.0.0.0/0:*");
        assert!(everything.allows_addr(ip("169.254.169.254"), 80));
        assert!(!everything.allows_addr(ip("::1"), 80));
    }

    #[test]
    fn a_rule_covers_what_lies_within_it() {
        let covers = |a: &str, b: &str| rule(a).covers(&rule(b));
        assert!(covers("pypi.org", "pypi.org"));
        assert!(covers("pypi.org:80,443", "pypi.org"));
        assert!(!covers("pypi.org", "pypi.org:80"));
        assert!(!covers("pypi.org", "files.pypi.org"));
        assert!(covers("*.github.com", "api.github.com"));
        assert!(covers("*.github.com", "*.api.github.com"));
        assert!(covers("*.github.com", "*.github.com"));
        assert!(!covers("*.github.com", "github.com"));
        assert!(!covers("*.github.com", "*.com"));
        assert!(covers("10.0.0.0/8:*", "10.1.0.0/16:22"));
        assert!(!covers("10.1.0.0/16:*", "10.0.0.0/8:22"));
        assert!(!covers("10.0.0.0/8:*", "[::1]:22"));
        assert!(!covers("example.com:*", "93.184.216.34:443"));
        assert!(covers("example.com:1-100", "example.com:5-6,8"));
    }

    #[test]
    fn special_addresses_are_named() {
        let kind = |s: &str| special(s.parse().expect("ip"));
        assert_eq!(kind("127.0.0.1"), Some("loopback"));
        assert_eq!(kind("127.8.9.10"), Some("loopback"));
        assert_eq!(
            kind("169.254.169.254"),
            Some("link-local (the cloud metadata service)")
        );
        assert_eq!(kind("10.0.0.1"), Some("private"));
        assert_eq!(kind("172.20.0.1"), Some("private"));
        assert_eq!(kind("172.32.0.1"), None);
        assert_eq!(kind("192.168.1.1"), Some("private"));
        assert_eq!(kind("100.100.100.200"), Some("shared (CGNAT)"));
        assert_eq!(kind("0.0.0.0"), Some("unspecified"));
        assert_eq!(kind("224.0.0.251"), Some("multicast"));
        assert_eq!(kind("255.255.255.255"), Some("reserved or broadcast"));
        assert_eq!(kind("::1"), Some("loopback"));
        assert_eq!(kind("::"), Some("unspecified"));
        assert_eq!(kind("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(kind("::ffff:8.8.8.8"), Some("IPv4-mapped"));
        assert_eq!(kind("::127.0.0.1"), Some("IPv4-compatible"));
        assert_eq!(kind("64:ff9b::a9fe:a9fe"), Some("NAT64"));
        assert_eq!(kind("fd00:ec2::254"), Some("unique local (ULA)"));
        assert_eq!(kind("fe80::1"), Some("link-local"));
        assert_eq!(kind("ff02::1"), Some("multicast"));
        assert_eq!(kind("151.101.0.223"), None);
        assert_eq!(kind("2a04:4e42::223"), None);
    }
}
