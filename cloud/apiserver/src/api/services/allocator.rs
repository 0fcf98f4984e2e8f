//! The ranges Services take their cluster IPs and node ports from, and the bitmaps that say
//! which are taken: kube-apiserver's `ipallocator` and `portallocator`, with their messages.
//!
//! A dynamic allocation starts at a random place in the upper part of its range and scans
//! forward, wrapping, then tries the lower part the same way: KEP-3070 (IPs) and KEP-3668
//! (node ports) keep the lower part, whose size [`ServiceCidr::range_offset`] and
//! [`PortRange::range_offset`] compute as kube-apiserver does, for values users ask for by
//! number (the `kubernetes` Service's first IP, a DNS service's `.10`).
//!
//! Nothing here is stored: the bitmaps are rebuilt from the stored Services (see the module
//! above), so there is nothing to repair after a crash.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Why an allocation failed, worded as kube-apiserver's allocators word it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Nothing is free.
    #[error("range is full")]
    Full,
    /// The IP asked for is taken.
    #[error("provided IP is already allocated")]
    IpAllocated,
    /// The IP asked for is in the range's network but not one it hands out (the network or
    /// broadcast address).
    #[error("provided IP {0} is not in the valid range")]
    IpNotInRange(IpAddr),
    /// The IP asked for is in no service CIDR of this cluster (kube 1.33's `MetaAllocator`
    /// finds no allocator for it).
    #[error("the provided network does not match the current range")]
    MismatchedNetwork,
    /// The node port asked for is taken.
    #[error("provided port is already allocated")]
    PortAllocated,
    /// The node port asked for is outside the range.
    #[error("provided port is not in the valid range. The range of valid ports is {0}")]
    PortNotInRange(PortRange),
}

/// Why a range given on the command line is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `a.b.c.d/n`.
    #[error("{0:?} is not an IPv4 CIDR (a.b.c.d/n)")]
    NotCidr(String),
    /// A prefix kube-apiserver refuses, or one too small to hold a Service.
    #[error(
        "{0}: the service cluster IP range must be an IPv4 CIDR from /12 (kube-apiserver's limit) to /30"
    )]
    CidrSize(String),
    /// Not `first-last` or `first+count`.
    #[error("{0:?} is not a port range (first-last, as 30000-32767)")]
    NotPortRange(String),
}

/// The service CIDR (`--service-cluster-ip-range`), IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl ServiceCidr {
    /// The first address handed out (the network's `.1`): the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// How many addresses are handed out: all but the network and broadcast addresses.
    pub fn size(&self) -> u64 {
        (1u64 << (32 - self.prefix)) - 2
    }

    /// The index of `ip` among the addresses handed out.
    pub fn index(&self, ip: IpAddr) -> Result<u64, AllocError> {
        let IpAddr::V4(v4) = ip else {
            return Err(AllocError::MismatchedNetwork);
        };
        let mask = u32::MAX << (32 - self.prefix);
        if u32::from(v4) & mask != u32::from(self.network) {
            return Err(AllocError::MismatchedNetwork);
        }
        let offset = u64::from(u32::from(v4) - u32::from(self.network));
        if offset == 0 || offset > self.size() {
            return Err(AllocError::IpNotInRange(ip));
        }
        Ok(offset - 1)
    }

    /// The address at `index`.
    pub fn address(&self, index: u64) -> Ipv4Addr {
        let offset = u32::try_from(index + 1).unwrap_or(u32::MAX);
        Ipv4Addr::from(u32::from(self.network).saturating_add(offset))
    }

    /// The network address (what a dry run shows for an IP it would allocate, as
    /// kube-apiserver's does).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// kube's `calculateRangeOffset` for IPs: `min(max(16, size/16), 256)` of the CIDR's size,
    /// 0 for a CIDR of 16 addresses or fewer.
    pub fn range_offset(&self) -> u64 {
        let size = 1u64 << (32 - self.prefix);
        if size <= 16 {
            0
        } else {
            (size / 16).clamp(16, 256)
        }
    }
}

impl Default for ServiceCidr {
    /// kubeadm's default, `10.96.0.0/12`.
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 96, 0, 0),
            prefix: 12,
        }
    }
}

impl fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for ServiceCidr {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not = || RangeError::NotCidr(s.to_owned());
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(not)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| not())?;
        let prefix: u8 = prefix.parse().map_err(|_| not())?;
        if !(12..=30).contains(&prefix) {
            return Err(RangeError::CidrSize(s.to_owned()));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

/// The node port range (`--service-node-port-range`), both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    base: u16,
    size: u16,
}

impl PortRange {
    /// How many ports.
    pub fn size(&self) -> u64 {
        u64::from(self.size)
    }

    /// The index of `port`, or the error kube gives for one outside.
    pub fn index(&self, port: i64) -> Result<u64, AllocError> {
        let base = i64::from(self.base);
        if port < base || port >= base + i64::from(self.size) {
            return Err(AllocError::PortNotInRange(*self));
        }
        Ok(u64::try_from(port - base).unwrap_or(0))
    }

    /// The port at `index`.
    pub fn port(&self, index: u64) -> i64 {
        i64::from(self.base) + i64::try_from(index).unwrap_or(0)
    }

    /// kube's `calculateRangeOffset` for ports: `min(max(16, size/32), 128)`, 0 for 16 ports or
    /// fewer.
    pub fn range_offset(&self) -> u64 {
        let size = self.size();
        if size <= 16 {
            0
        } else {
            (size / 32).clamp(16, 128)
        }
    }
}

impl Default for PortRange {
    /// `30000-32767`.
    fn default() -> Self {
        Self {
            base: 30000,
            size: 2768,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = u32::from(self.base) + u32::from(self.size) - 1;
        write!(f, "{}-{last}", self.base)
    }
}

impl FromStr for PortRange {
    type Err = RangeError;

    /// `first-last`, `first+count` or one port, as kube's `ParsePortRange`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not = || RangeError::NotPortRange(s.to_owned());
        let t = s.trim();
        let (base, last) = if let Some((a, b)) = t.split_once('-') {
            (
                a.parse::<u16>().map_err(|_| not())?,
                b.parse::<u16>().map_err(|_| not())?,
            )
        } else if let Some((a, n)) = t.split_once('+') {
            let a = a.parse::<u16>().map_err(|_| not())?;
            let n = n.parse::<u16>().map_err(|_| not())?;
            (a, a.checked_add(n).ok_or_else(not)?)
        } else {
            let a = t.parse::<u16>().map_err(|_| not())?;
            (a, a)
        };
        if base == 0 || last < base {
            return Err(not());
        }
        Ok(Self {
            base,
            size: last - base + 1,
        })
    }
}

/// Which of `size` values are taken, with the lower `offset` of them kept for values asked
/// for by number.
#[derive(Debug, Clone)]
pub struct Bitmap {
    words: Vec<u64>,
    size: u64,
    offset: u64,
    used: u64,
}

impl Bitmap {
    /// All free.
    pub fn new(size: u64, offset: u64) -> Self {
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        Self {
            words: vec![0; words],
            size,
            offset: offset.min(size),
            used: 0,
        }
    }

    /// Whether `i` is taken.
    pub fn has(&self, i: u64) -> bool {
        i < self.size && self.word(i) & (1 << (i % 64)) != 0
    }

    fn word(&self, i: u64) -> u64 {
        usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .copied()
            .unwrap_or(0)
    }

    /// Takes `i`; false if it was taken already (or is out of range).
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.size || self.has(i) {
            return false;
        }
        if let Some(w) = usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.words.get_mut(w))
        {
            *w |= 1 << (i % 64);
            self.used += 1;
        }
        true
    }

    /// Frees `i` (nothing if it was free).
    pub fn clear(&mut self, i: u64) {
        if !self.has(i) {
            return;
        }
        if let Some(w) = usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.words.get_mut(w))
        {
            *w &= !(1 << (i % 64));
            self.used -= 1;
        }
    }

    /// How many are taken.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// A free value for a dynamic allocation, not taken yet: scanning from `random` (any
    /// number; reduced into the band) through the upper band, wrapping, then the lower band.
    /// `skip` says whether a free value may not be used after all (an IPAddress object a user
    /// made).
    pub fn next_free(&self, random: u64, skip: impl Fn(u64) -> bool) -> Result<u64, AllocError> {
        if self.used >= self.size {
            return Err(AllocError::Full);
        }
        for (lo, hi) in [(self.offset, self.size), (0, self.offset)] {
            let len = hi - lo;
            if len == 0 {
                continue;
            }
            let start = random % len;
            for k in 0..len {
                let i = lo + (start + k) % len;
                if !self.has(i) && !skip(i) {
                    return Ok(i);
                }
            }
        }
        Err(AllocError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cidr_and_its_bands() {
        let cidr = ServiceCidr::default();
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
        assert_eq!(cidr.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(cidr.size(), (1 << 20) - 2);
        assert_eq!(cidr.range_offset(), 256);
        assert_eq!(cidr.index("10.96.0.1".parse().expect("ip")), Ok(0));
        assert_eq!(cidr.address(9), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            cidr.index("10.96.0.0".parse().expect("ip")),
            Err(AllocError::IpNotInRange("10.96.0.0".parse().expect("ip")))
        );
        assert_eq!(
            cidr.index("10.111.255.255".parse().expect("ip")),
            Err(AllocError::IpNotInRange(
                "10.111.255.255".parse().expect("ip")
            ))
        );
        assert_eq!(
            cidr.index("10.112.0.1".parse().expect("ip")),
            Err(AllocError::MismatchedNetwork)
        );
        // A /28 keeps 16 for requests (min), a /29 none.
        let small: ServiceCidr = "10.0.0.0/28".parse().expect("cidr");
        assert_eq!((small.size(), small.range_offset()), (14, 0));
        let mid: ServiceCidr = "10.0.0.0/24".parse().expect("cidr");
        assert_eq!(mid.range_offset(), 16);
    }

    #[test]
    fn ranges_refused() {
        assert!(matches!(
            "10.0.0.0".parse::<ServiceCidr>(),
            Err(RangeError::NotCidr(_))
        ));
        assert!(matches!(
            "10.0.0.0/8".parse::<ServiceCidr>(),
            Err(RangeError::CidrSize(_))
        ));
        assert!(matches!(
            "fd00::/108".parse::<ServiceCidr>(),
            Err(RangeError::NotCidr(_))
        ));
        assert_eq!(
            "10.1.2.3/16"
                .parse::<ServiceCidr>()
                .expect("cidr")
                .to_string(),
            "10.1.0.0/16"
        );
        assert!("32767-30000".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }

    #[test]
    fn port_ranges_as_kube_parses_and_prints_them() {
        let r = PortRange::default();
        assert_eq!(r.to_string(), "30000-32767");
        assert_eq!(r.range_offset(), 86);
        assert_eq!("30000+2767".parse::<PortRange>(), Ok(r));
        assert_eq!("30000-32767".parse::<PortRange>(), Ok(r));
        assert_eq!(r.index(30000), Ok(0));
        assert_eq!(
            r.index(80).map_err(|e| e.to_string()),
            Err(
                "provided port is not in the valid range. The range of valid ports is 30000-32767"
                    .to_owned()
            )
        );
    }

    #[test]
    fn dynamic_allocations_take_the_upper_band_first_then_the_lower() {
        let mut b = Bitmap::new(8, 3);
        let mut got = Vec::new();
        for r in [0u64, 7, 1, 100, 5, 2, 9, 4] {
            let i = b.next_free(r, |_| false).expect("free");
            assert!(b.set(i));
            got.push(i);
        }
        // The five upper values (3..8) before any lower one.
        let (upper, lower) = got.split_at(5);
        assert!(upper.iter().all(|i| (3..8).contains(i)), "{got:?}");
        assert!(lower.iter().all(|i| *i < 3), "{got:?}");
        assert_eq!(b.used(), 8);
        assert_eq!(b.next_free(0, |_| false), Err(AllocError::Full));
        assert_eq!(AllocError::Full.to_string(), "range is full");
        b.clear(4);
        assert_eq!(b.next_free(0, |_| false), Ok(4));
        assert!(!b.set(3), "taken twice");
    }

    #[test]
    fn a_random_start_wraps_and_skips_what_is_vetoed() {
        let mut b = Bitmap::new(10, 0);
        assert!(b.set(8));
        assert_eq!(b.next_free(8, |_| false), Ok(9));
        assert_eq!(b.next_free(9, |i| i == 9), Ok(0));
        assert_eq!(b.next_free(0, |_| true), Err(AllocError::Full));
    }

    #[test]
    fn random_starts_spread_allocations() {
        let cidr = ServiceCidr::default();
        let b = Bitmap::new(cidr.size(), cidr.range_offset());
        let a = b.next_free(12_345, |_| false).expect("free");
        let c = b.next_free(987_654, |_| false).expect("free");
        assert_ne!(a, c);
        assert!(a >= 256 && c >= 256);
    }
}
